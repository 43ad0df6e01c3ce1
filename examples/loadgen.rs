//! A small load generator for one read: `GET /v2/users/{id}` over the JSON
//! gateway and `GetUser` over gRPC, each at a fixed number of connections.
//! Prints one JSON line per run: requests/s, p50, p90, p99, max, errors.
//!
//! ```sh
//! cargo run --release -- serve &
//! export USERSVC_API_KEY=$(cargo run --release -- app create --name load | jq -r .apiKey)
//! cargo run --release --example loadgen -- 16 10
//! ```
//! Arguments: connections (16), seconds per run (10). Environment:
//! USERSVC_API_KEY (required), USERSVC_GRPC_ADDR, USERSVC_HTTP_ADDR (the
//! defaults of `serve`), LOADGEN_UPDATE=1 to also run UpdateUser.

use std::time::{Duration, Instant};

use pbjson_types::FieldMask;
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use usersvc::pb::{self, user_service_client::UserServiceClient};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn with_auth<T>(msg: T, key: &str, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert("x-api-key", MetadataValue::try_from(key).unwrap());
    req.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    req
}

fn report(name: &str, conns: usize, elapsed: Duration, mut lat: Vec<Duration>, errors: usize) {
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    println!(
        "{}",
        serde_json::json!({
            "scenario": name,
            "connections": conns,
            "requests": lat.len(),
            "rps": (lat.len() as f64 / elapsed.as_secs_f64()).round(),
            "p50_ms": ms(pct(0.50)),
            "p90_ms": ms(pct(0.90)),
            "p99_ms": ms(pct(0.99)),
            "max_ms": ms(lat.last().copied().unwrap_or_default()),
            "errors": errors,
        })
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let conns: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let grpc_addr = format!("http://{}", env("USERSVC_GRPC_ADDR", "127.0.0.1:50051"));
    let http_addr = format!("http://{}", env("USERSVC_HTTP_ADDR", "127.0.0.1:8080"));

    let key = std::env::var("USERSVC_API_KEY")
        .map_err(|_| anyhow::anyhow!("set USERSVC_API_KEY (from `usersvc app create`)"))?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();

    // One user and one connection per worker.
    let mut workers = Vec::new();
    for i in 0..conns {
        let channel = Channel::from_shared(grpc_addr.clone())?.connect().await?;
        let mut client = UserServiceClient::new(channel);
        let mut req = Request::new(pb::CreateUserRequest {
            user: Some(pb::User {
                username: format!("load{i}-{run_id}"),
                password: "load test password".into(),
                email: Some(pb::Email { primary: format!("load{i}@example.com"), ..Default::default() }),
                name: Some(pb::Name {
                    first_name: "Load".into(),
                    last_name: format!("Tester {i}"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        });
        req.metadata_mut().insert("x-api-key", MetadataValue::try_from(key.as_str())?);
        let user = client.create_user(req).await?.into_inner();
        workers.push((client, user.users_id, user.session_token));
    }
    eprintln!("loadgen: {conns} users ready");

    // gRPC GetUser.
    let steps = workers.iter().cloned().map(|(client, id, token)| {
        let key = key.clone();
        move || {
            let (mut client, req) =
                (client.clone(), with_auth(pb::GetUserRequest { users_id: id.clone() }, &key, &token));
            async move { client.get_user(req).await.is_ok() }
        }
    });
    measure("grpc GetUser", conns, secs, steps.collect()).await?;

    // HTTP GET /v2/users/{id}: one keep-alive connection per worker.
    let steps = workers.iter().map(|(_, id, token)| {
        let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap_or_default();
        let (url, key, auth) =
            (format!("{http_addr}/v2/users/{id}"), format!("browser loadgen {key}"), format!("Bearer {token}"));
        move || {
            let req = http.get(&url).header("X-Api-Key", &key).header("Authorization", &auth);
            async move {
                match req.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    });
    measure("http GET /v2/users/{id}", conns, secs, steps.collect()).await?;

    if std::env::var("LOADGEN_UPDATE").is_ok() {
        let steps = workers.iter().cloned().map(|(client, id, token)| {
            let key = key.clone();
            let mut n = 0u64;
            move || {
                n += 1;
                let req = pb::UpdateUserRequest {
                    users_id: id.clone(),
                    user: Some(pb::User {
                        name: Some(pb::Name { last_name: format!("Tester {n}"), ..Default::default() }),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask { paths: vec!["name.last_name".into()] }),
                };
                let (mut client, req) = (client.clone(), with_auth(req, &key, &token));
                async move { client.update_user(req).await.is_ok() }
            }
        });
        measure("grpc UpdateUser", conns, secs, steps.collect()).await?;
    }
    Ok(())
}

/// Runs every worker's step over and over until the time is up, timing each
/// (a step answers whether it succeeded), then reports the run.
async fn measure<S, F>(name: &str, conns: usize, secs: u64, steps: Vec<S>) -> anyhow::Result<()>
where
    S: FnMut() -> F + Send + 'static,
    F: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = steps
        .into_iter()
        .map(|mut step| {
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if step().await {
                        lat.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    report(name, conns, start.elapsed(), lat, errors);
    Ok(())
}
