//! OpenTelemetry export: with OTEL_EXPORTER_OTLP_ENDPOINT set, the real
//! binary sends its spans over OTLP/HTTP, flushes them on SIGTERM, and the
//! spans carry no username or password.

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

type Posts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A tiny OTLP/HTTP collector: records every POST as (path, body).
async fn sink() -> (u16, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let posts: Posts = Arc::default();
    let recorded = posts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let _ = serve(stream, recorded).await;
            });
        }
    });
    (port, posts)
}

/// Answers each request on a (keep-alive) connection with 200 and no body.
async fn serve(mut stream: TcpStream, posts: Posts) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or_default().to_owned(), words.next().unwrap_or_default().to_owned());
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        if method == "POST" {
            posts.lock().unwrap().push((path, body));
        }
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await?;
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn spans_are_exported_over_otlp_http() {
    exported_spans("200", true);
}

/// With a batch delay far past the test, only the flush on shutdown sends.
#[test]
fn spans_buffered_at_sigterm_are_flushed() {
    exported_spans("600000", false);
}

/// Runs the server with export on, the given OTEL_BSP_SCHEDULE_DELAY,
/// drives a sign-up through it, stops it with SIGTERM, and checks what the
/// collector got; `periodic`: the batch is sent before SIGTERM.
fn exported_spans(schedule_delay_ms: &str, periodic: bool) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sink_port, posts) = rt.block_on(sink());
    let dir = std::env::temp_dir().join(format!("usersvc-otel-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/db.sqlite", dir.display());
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (grpc, http) = (free(), free());
    let bin = env!("CARGO_BIN_EXE_usersvc");
    let created = Command::new(bin)
        .args(["app", "create", "--name", "t", "--database-url", &db])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let key = serde_json::from_slice::<Value>(&created.stdout).unwrap()["apiKey"].as_str().unwrap().to_owned();
    let mut server = Command::new(bin)
        .args(["serve", "--database-url", &db])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}"), "--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--mail-dir", &dir.join("mail").display().to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{sink_port}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", schedule_delay_ms)
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    rt.block_on(async {
        let base = format!("http://127.0.0.1:{http}");
        let c = reqwest::Client::new();
        let mut up = false;
        for _ in 0..100 {
            if c.get(format!("{base}/healthz")).send().await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "the server came up");
        let res = c
            .post(format!("{base}/v2/users"))
            .header("X-Api-Key", &key)
            .json(&json!({
                "username": "Otel.Secretname",
                "password": "pw-Otel-Hidden-42",
                "email": {"primary": "otel.secret@example.org"},
            }))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        c.get(format!("{base}/healthz")).send().await.unwrap();
        if periodic {
            for _ in 0..50 {
                if !posts.lock().unwrap().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(!posts.lock().unwrap().is_empty(), "a batch sent on schedule, before shutdown");
        }
    });
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let status = server.wait().unwrap();
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&dir);
    let posts = posts.lock().unwrap().clone();
    let traces: Vec<&Vec<u8>> =
        posts.iter().filter(|(p, b)| p == "/v1/traces" && !b.is_empty()).map(|(_, b)| b).collect();
    assert!(
        !traces.is_empty(),
        "a non-empty POST to /v1/traces; got {:?}",
        posts.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let all: Vec<u8> = traces.iter().flat_map(|b| b.iter().copied()).collect();
    assert!(contains(&all, "usersvc"), "the service name");
    assert!(contains(&all, "rpc"), "the rpc span");
    // Exactly, in protobuf: resource attribute {key: "service.name", value:
    // {string_value: "usersvc"}}, and a span named "rpc" (field 5).
    assert!(contains(&all, "\x0a\x0cservice.name\x12\x09\x0a\x07usersvc"), "service.name = usersvc");
    assert!(contains(&all, "\x2a\x03rpc"), "a span named rpc");
    for secret in ["Otel.Secretname", "otel.secretname", "pw-Otel", "otel.secret@example.org", key.as_str()] {
        assert!(!contains(&all, secret), "the exported spans hold {secret}");
    }
}
