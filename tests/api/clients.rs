//! The compatibility suite: what deployed Catalyze clients put on the wire,
//! byte for byte (header names, order, values, bodies), sent to the real
//! binary (`usersvc serve` as a child process) over a plain TCP socket, and
//! read back the way each client reads it.
//!
//! - The JS SDK's jQuery wrapper (jQuery 2.1 in a browser): JSON bodies under
//!   jQuery's default `application/x-www-form-urlencoded; charset=UTF-8`,
//!   `Accept: */*`, `verifyToken` as `GET /v2/auth/verify/`.
//! - The JS SDK's Node wrapper and the official backend example: success is
//!   status 200 exactly; on failure `errors[0].code` goes to
//!   `res.status(...)`, so it must be the integer status.
//! - The iOS SDK (AFNetworking): `Authorization: Bearer (null)` before
//!   sign-in, `Content-Type` on GET and DELETE, `inviteCode` and `extras: {}`
//!   on sign-up, and `save` PUTs back every property it holds.
//! - A client with a typo: a member the model does not have is refused, never
//!   silently dropped.
//!
//! The same in a real browser (CORS preflight included) is in `browser.rs`.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Child, fresh_database, usersvc};

/// The origin of the web app the browser clients run in.
const WEB_APP: &str = "http://clinic.example.org";
/// What a browser sends as `User-Agent` (Chrome on macOS).
const BROWSER_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_1) AppleWebKit/537.36 (KHTML, like Gecko) \
                          Chrome/39.0.2171.95 Safari/537.36";
/// What AFNetworking sends as `User-Agent`.
const IOS_UA: &str = "ClinicApp/1.4 (iPhone; iOS 8.1.2; Scale/2.00)";

/// `usersvc serve` on a database of its own, with one application.
struct Served {
    http: SocketAddr,
    grpc: SocketAddr,
    app_id: String,
    key: String,
    db: String,
    log: PathBuf,
    _child: Child,
}

/// The addresses a `usersvc serve` logged it is serving on (its JSON log
/// line "usersvc serving"), once it has.
fn serving_addrs(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find_map(|line| {
        let fields = line.get("fields").filter(|f| f["message"] == "usersvc serving")?;
        Some((fields["http_addr"].as_str()?.parse().ok()?, fields["grpc_addr"].as_str()?.parse().ok()?))
    })
}

impl Served {
    async fn start(extra: &[&str]) -> Self {
        let db = fresh_database().await;
        let out = usersvc().args(["app", "create", "--name", "clinic", "--database-url", &db]).output().unwrap();
        assert!(out.status.success(), "app create: {}", String::from_utf8_lossy(&out.stderr));
        let created: Value = serde_json::from_slice(&out.stdout).unwrap();
        let tmp = std::env::temp_dir().join(format!("usersvc-clients-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&tmp).unwrap();
        let log = tmp.join("serve.log");
        // Port 0, and the ports read back from the server's own log: a port
        // picked free beforehand can be taken by another test's server in
        // between, and this test then talks to that one.
        let mut child = usersvc()
            .args(["serve", "--log-format", "json"])
            .args(["--database-url", &db, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--mail-dir", &tmp.join("mail").display().to_string(), "--hash-concurrency", "2"])
            .args(["--cors-origins", WEB_APP])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (http, grpc) = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addrs) = serving_addrs(&text) {
                break addrs;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("serve exited with {status}:\n{text}");
            }
            assert!(std::time::Instant::now() < deadline, "serve did not come up:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let served = Self {
            http,
            grpc,
            app_id: created["appId"].as_str().unwrap().to_owned(),
            key: created["apiKey"].as_str().unwrap().to_owned(),
            db,
            log,
            _child: Child(child),
        };
        while served.send(&format!("GET /healthz HTTP/1.1\r\nHost: {http}\r\n\r\n")).await.map(|r| r.status).ok()
            != Some(200)
        {
            assert!(std::time::Instant::now() < deadline, "serve did not come up:\n{}", served.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes `head` (the request line and headers, CRLF-separated, ending
    /// in a blank line) and `body` exactly as given, and reads one reply.
    /// The reply is read while the body is written: a server may answer
    /// before it has read the whole body (413) and stop reading.
    async fn send_with(&self, head: &str, body: &str) -> std::io::Result<Reply> {
        let mut conn = tokio::net::TcpStream::connect(self.http).await?;
        let (mut rx, mut tx) = conn.split();
        let write = async {
            tx.write_all(head.as_bytes()).await?;
            tx.write_all(body.as_bytes()).await
        };
        let read = tokio::time::timeout(Duration::from_secs(30), read_reply(&mut rx));
        tokio::pin!(write, read);
        let (mut writing, mut write_error) = (true, None);
        loop {
            tokio::select! {
                written = &mut write, if writing => {
                    writing = false;
                    write_error = written.err();
                }
                reply = &mut read => return match reply {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(e)) => Err(write_error.unwrap_or(e)),
                    Err(_) => Err(std::io::Error::other("no reply in 30 s")),
                },
            }
        }
    }

    async fn send(&self, head: &str) -> std::io::Result<Reply> {
        self.send_with(head, "").await
    }

    /// Sends and expects a reply; says what the server logged when not.
    async fn exchange(&self, head: &str, body: &str) -> Reply {
        match self.send_with(head, body).await {
            Ok(r) => r,
            Err(e) => panic!("{e} for\n{head}{body}\nserve's log:\n{}", self.log_text()),
        }
    }

    /// The JS SDK's jQuery wrapper in a browser on [`WEB_APP`], cross-origin.
    async fn jquery(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let host = self.http;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n");
        if !body.is_empty() {
            head += &format!("Content-Length: {}\r\n", body.len());
        }
        head += &format!("Accept: */*\r\nOrigin: {WEB_APP}\r\n");
        if let Some(token) = token {
            head += &format!("Authorization: Bearer {token}\r\n");
        }
        head += &format!("X-Api-Key: browser clinic.example.org {}\r\nUser-Agent: {BROWSER_UA}\r\n", self.key);
        if !body.is_empty() {
            head += "Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n";
        }
        head += &format!(
            "Referer: {WEB_APP}/signin.html\r\nAccept-Encoding: gzip, deflate, sdch\r\nAccept-Language: en-US,en;q=0.8\r\n\r\n"
        );
        self.exchange(&head, &body).await
    }

    /// The JS SDK's Node wrapper (and the backend example built on it).
    async fn node(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let host = self.http;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nX-Api-Key: node clinic-backend {}\r\n", self.key);
        if let Some(token) = token {
            head += &format!("Authorization: Bearer {token}\r\n");
        }
        head += &format!("accept: application/json\r\nhost: {host}\r\n");
        if !body.is_empty() {
            head += &format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len());
        }
        head += "Connection: close\r\n\r\n";
        self.exchange(&head, &body).await
    }

    /// The iOS SDK (AFNetworking 2): `token` None is `Bearer (null)`, and
    /// `Content-Type: application/json` goes on every request.
    async fn ios(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let host = self.http;
        let body = body.map(Value::to_string).unwrap_or_default();
        let token = token.unwrap_or("(null)");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
             Authorization: Bearer {token}\r\nX-Api-Key: ios org.example.clinic {}\r\nAccept-Language: en;q=1\r\n\
             User-Agent: {IOS_UA}\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n",
            self.key
        );
        if !body.is_empty() || method != "GET" && method != "DELETE" {
            head += &format!("Content-Length: {}\r\n", body.len());
        }
        head += "\r\n";
        self.exchange(&head, &body).await
    }
}

/// One HTTP/1.1 reply as read off the socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// What the Node wrapper passes to `res.status(...)` on a failure, after
    /// checking that it is the reply's own status.
    fn node_error_status(&self) -> u16 {
        let body = self.json();
        let code = &body["errors"][0]["code"];
        let Some(code) = code.as_u64() else { panic!("errors[0].code is not an integer: {body}") };
        assert_eq!(code, u64::from(self.status), "errors[0].code is the status: {body}");
        assert!(body["errors"][0]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert!(body["errors"][0]["reason"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        self.status
    }

    fn reason(&self) -> String {
        self.json()["errors"][0]["reason"].as_str().unwrap_or_default().to_owned()
    }
}

/// Reads one reply: status line, headers, and a body by `Content-Length` or
/// chunked transfer coding.
async fn read_reply(conn: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "closed before the headers: {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut fill = async |rest: &mut Vec<u8>, want: usize| -> std::io::Result<()> {
        while rest.len() < want {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("closed in the body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(std::io::Error::other)?;
        fill(&mut rest, len).await?;
        rest[..len].to_vec()
    } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = loop {
                if let Some(i) = rest[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + i;
                }
                let want = rest.len() + 1;
                fill(&mut rest, want).await?;
            };
            let size = std::str::from_utf8(&rest[at..line_end]).unwrap_or("").split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
            fill(&mut rest, line_end + 2 + size + 2).await?;
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            at = line_end + 2 + size + 2;
            if size == 0 {
                break body;
            }
        }
    } else {
        Vec::new()
    };
    Ok(Reply { status, headers, body })
}

fn assert_ok(r: &Reply, what: &str) -> Value {
    // The Node wrapper counts anything but exactly 200 as a failure.
    assert_eq!(r.status, 200, "{what}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

both_stores! {
async fn jquery_wrapper_signs_up_signs_in_and_verifies() {
    let s = Served::start(&[]).await;
    // Sign-up and sign-in with jQuery's default form content type.
    let signup = json!({"username": "jq.patient", "password": "correct horse battery", "email": {"primary": "jq@example.com"}});
    let r = s.jquery("POST", "/v2/users", None, Some(&signup)).await;
    let user = assert_ok(&r, "sign-up as x-www-form-urlencoded");
    assert_eq!(r.header("access-control-allow-origin"), Some(WEB_APP), "the browser may read it");
    assert_eq!(user["email"]["primary"], "jq@example.com");
    let id = user["usersId"].as_str().unwrap().to_owned();
    let r = s.jquery("POST", "/v2/auth/signin", None, Some(&json!({"username": "jq.patient", "password": "correct horse battery"}))).await;
    let signed_in = assert_ok(&r, "sign-in as x-www-form-urlencoded");
    assert_eq!(signed_in["usersId"], id.as_str());
    let token = signed_in["sessionToken"].as_str().unwrap().to_owned();

    // verifyToken: the trailing slash, `userId` read from the reply.
    let r = s.jquery("GET", "/v2/auth/verify/", Some(&token), None).await;
    let verified = assert_ok(&r, "verify");
    assert_eq!(verified["userId"], id.as_str(), "{verified}");
    assert_eq!(verified["usersId"], id.as_str(), "{verified}");
    let expires = chrono::DateTime::parse_from_rfc3339(verified["expiresAt"].as_str().unwrap()).unwrap();
    assert!(expires > chrono::Utc::now(), "{verified}");
    // Ids and expiry only: nothing of the profile.
    assert!(!verified.to_string().contains("jq@example.com"), "{verified}");
    assert_eq!(assert_ok(&s.jquery("GET", "/v2/auth/verify", Some(&token), None).await, "verify")["userId"], id.as_str());
    // Another route with a trailing slash is the same route.
    let r = s.jquery("GET", &format!("/v2/users/{id}/"), Some(&token), None).await;
    assert_eq!(assert_ok(&r, "GET with a trailing slash")["usersId"], id.as_str());

    // A body that is no JSON at all is a 400 that says so, not a 415.
    let head = format!(
        "POST /v2/auth/signin HTTP/1.1\r\nHost: {}\r\nContent-Length: 30\r\nAccept: */*\r\nOrigin: {WEB_APP}\r\n\
         X-Api-Key: browser clinic.example.org {}\r\nContent-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n\r\n",
        s.http, s.key
    );
    let r = s.exchange(&head, "username=jq&password=abcdefghi").await;
    assert_eq!((r.status, r.node_error_status(), r.reason().as_str()), (400, 400, "invalid_json"));
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("x-www-form-urlencoded"), "{}", r.json());

    // Signed out, the token verifies no more.
    assert_eq!(assert_ok(&s.jquery("GET", "/v2/auth/signout", Some(&token), None).await, "sign-out"), json!({}));
    let r = s.jquery("GET", "/v2/auth/verify/", Some(&token), None).await;
    assert_eq!(r.node_error_status(), 401);
    assert_eq!(r.reason(), "invalid_session");
    assert_eq!(r.header("access-control-allow-origin"), Some(WEB_APP), "a browser app can read the error too");
}
}

both_stores! {
async fn node_wrapper_reads_the_status_from_errors_code() {
    let s = Served::start(&[]).await;
    let body = json!({"username": "node.patient", "password": "correct horse battery"});
    let user = assert_ok(&s.node("POST", "/v2/users", None, Some(&body)).await, "sign-up");
    let token = user["sessionToken"].as_str().unwrap().to_owned();
    let id = user["usersId"].as_str().unwrap().to_owned();

    // Each failure's errors[0].code is its status, as res.status(...) takes it.
    let wrong = json!({"username": "node.patient", "password": "not the password"});
    let cases: Vec<(Reply, u16, &str)> = vec![
        (s.node("POST", "/v2/auth/signin", None, Some(&wrong)).await, 401, "invalid_credentials"),
        (s.node("GET", &format!("/v2/users/{}", uuid::Uuid::now_v7()), Some(&token), None).await, 404, "not_found"),
        (s.node("GET", &format!("/v2/users/{id}"), None, None).await, 401, "missing_session"),
        (s.node("GET", "/v2/users/not-an-id", Some(&token), None).await, 400, "invalid_field"),
        (s.node("POST", "/v2/users", None, Some(&body)).await, 409, "username_taken"),
        (s.node("POST", "/v2/groups", Some(&token), Some(&json!({"name": "g"}))).await, 403, "forbidden"),
        (s.node("GET", "/v2/no/such/route", None, None).await, 404, "not_found"),
        (s.node("PATCH", "/v2/users", None, None).await, 405, "method_not_allowed"),
    ];
    for (reply, status, reason) in cases {
        assert_eq!(reply.node_error_status(), status, "{reply:?}");
        assert_eq!(reply.reason(), reason, "{reply:?}");
    }
    // 413 and 429 keep the shape too.
    let big = json!({"username": "big", "password": "correct horse battery", "extras": {"x": "y".repeat(1_100_000)}});
    let r = s.node("POST", "/v2/users", None, Some(&big)).await;
    assert_eq!(r.node_error_status(), 413);
    let mut throttled = None;
    for _ in 0..8 {
        let r = s.node("POST", "/v2/auth/signin", None, Some(&wrong)).await;
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
    }
    let r = throttled.expect("sign-in throttled after the free failures");
    assert_eq!((r.node_error_status(), r.reason().as_str()), (429, "throttled"));
    assert!(r.header("retry-after").is_some());

    // Everything that works answers exactly 200.
    let me = assert_ok(&s.node("GET", &format!("/v2/users/{id}"), Some(&token), None).await, "read");
    assert_eq!(me["usersId"], id.as_str());
    assert_ok(&s.node("GET", "/v2/auth/verify", Some(&token), None).await, "verify");
    let forgot = json!({"email": "nobody@example.com"});
    assert_ok(&s.node("POST", "/v2/users/forgotUsername", None, Some(&forgot)).await, "forgotUsername");
    assert_ok(&s.node("GET", &format!("/v2/{}/reset/user/node.patient", s.app_id), None, None).await, "reset");
    assert_ok(&s.node("DELETE", &format!("/v2/users/{id}"), Some(&token), None).await, "delete");
}
}

both_stores! {
async fn ios_sdk_signs_up_saves_everything_it_holds_and_deletes() {
    let s = Served::start(&[]).await;
    // Sign-up before anyone is signed in: `Bearer (null)`, an empty
    // inviteCode and empty extras.
    let signup = json!({
        "username": "ios.patient", "password": "correct horse battery", "inviteCode": "",
        "email": {"primary": "ios@example.com"}, "extras": {},
    });
    let user = assert_ok(&s.ios("POST", "/v2/users", None, Some(&signup)).await, "sign-up with Bearer (null)");
    let id = user["usersId"].as_str().unwrap().to_owned();
    assert_eq!(user["extras"], json!({}));
    let signin = json!({"username": "ios.patient", "password": "correct horse battery"});
    let signed_in = assert_ok(&s.ios("POST", "/v2/auth/signin", None, Some(&signin)).await, "sign-in with Bearer (null)");
    let token = signed_in["sessionToken"].as_str().unwrap().to_owned();

    // GET with a Content-Type and no body.
    let mut held = assert_ok(&s.ios("GET", &format!("/v2/users/{id}"), Some(&token), None).await, "read");
    // `save`: every property it holds, read-only ones and the username it
    // signed up with included, an empty phoneNumber, and the change.
    let obj = held.as_object_mut().unwrap();
    obj.insert("sessionToken".into(), json!(token));
    obj.insert("username".into(), json!("ios.patient"));
    obj.insert("phoneNumber".into(), json!({}));
    obj.insert("active".into(), json!(true));
    obj.insert("name".into(), json!({"firstName": "Ada", "lastName": "Lovelace"}));
    for member in ["usersId", "createdAt", "updatedAt"] {
        assert!(obj.contains_key(member), "the read reply has {member}: {held}");
    }
    let saved = assert_ok(&s.ios("PUT", &format!("/v2/users/{id}"), Some(&token), Some(&held)).await, "save");
    assert_eq!(saved["name"]["firstName"], "Ada");
    assert_eq!(saved["usersId"], id.as_str());
    assert_eq!(saved["active"], true);
    // Saved twice (the SDK saves what the reply gave it): still fine.
    let again = assert_ok(&s.ios("PUT", &format!("/v2/users/{id}"), Some(&token), Some(&saved)).await, "save again");
    assert_eq!(again["name"], saved["name"]);
    // The session survives its own save, and sign-in still works by the name.
    let read = assert_ok(&s.ios("GET", &format!("/v2/users/{id}"), Some(&token), None).await, "read after save");
    assert_eq!(read["name"]["lastName"], "Lovelace");
    assert_ok(&s.ios("POST", "/v2/auth/signin", None, Some(&signin)).await, "sign-in after save");

    // A bogus bearer on a route that needs a session is a 401, as ever.
    let r = s.ios("GET", &format!("/v2/users/{id}"), None, None).await;
    assert_eq!((r.node_error_status(), r.reason().as_str()), (401, "invalid_session"));

    // DELETE with a Content-Type and no body.
    assert_eq!(assert_ok(&s.ios("DELETE", &format!("/v2/users/{id}"), Some(&token), None).await, "delete"), json!({}));
    let r = s.ios("POST", "/v2/auth/signin", None, Some(&signin)).await;
    assert_eq!(r.node_error_status(), 401);
}
}

both_stores! {
async fn bogus_bearers_are_ignored_where_no_session_is_needed() {
    let s = Served::start(&[]).await;
    let bogus = ["Bearer (null)", "Bearer ", "Bearer undefined", "Bearer null", "Bearer"];
    let send = async |method: &str, path: &str, authorization: &str, body: Option<Value>| {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAuthorization: {authorization}\r\n\
             X-Api-Key: {}\r\nContent-Length: {}\r\n\r\n",
            s.http,
            s.key,
            body.len()
        );
        s.exchange(&head, &body).await
    };
    for (i, auth) in bogus.iter().enumerate() {
        let name = format!("bogus.{i}");
        let body = json!({"username": name, "password": "correct horse battery", "email": {"primary": format!("{name}@example.com")}});
        let user = assert_ok(&send("POST", "/v2/users", auth, Some(body)).await, &format!("sign-up with {auth:?}"));
        assert!(user["sessionToken"].as_str().is_some_and(|t| !t.is_empty()), "a self sign-up: {user}");
        let signin = json!({"username": name, "password": "correct horse battery"});
        let user = assert_ok(&send("POST", "/v2/auth/signin", auth, Some(signin)).await, &format!("sign-in with {auth:?}"));
        let id = user["usersId"].as_str().unwrap().to_owned();
        let forgot = json!({"email": format!("{name}@example.com")});
        assert_ok(&send("POST", "/v2/users/forgotUsername", auth, Some(forgot)).await, &format!("forgotUsername with {auth:?}"));
        let path = format!("/v2/{}/reset/user/{name}", s.app_id);
        assert_ok(&send("GET", &path, auth, None).await, &format!("reset with {auth:?}"));
        // Where a session is needed, the same header is a 401.
        let r = send("GET", &format!("/v2/users/{id}"), auth, None).await;
        assert_eq!(r.node_error_status(), 401, "GET with {auth:?}");
        let r = send("GET", "/v2/auth/verify/", auth, None).await;
        assert_eq!(r.node_error_status(), 401, "verify with {auth:?}");
    }
}
}

both_stores! {
async fn members_the_model_lacks_are_refused_and_nothing_is_stored() {
    let s = Served::start(&[]).await;
    // The typo: refused, naming the member, and no user made.
    let typo = json!({"username": "typo", "password": "correct horse battery", "favouriteColour": "blue"});
    let r = s.node("POST", "/v2/users", None, Some(&typo)).await;
    assert_eq!((r.node_error_status(), r.reason().as_str()), (400, "unknown_field"));
    assert_eq!(r.json()["errors"][0]["field"], "favouriteColour");
    let signin = json!({"username": "typo", "password": "correct horse battery"});
    assert_eq!(s.node("POST", "/v2/auth/signin", None, Some(&signin)).await.node_error_status(), 401, "no user was made");
    // Corrected, it works (the name was never taken).
    let fixed = json!({"username": "typo", "password": "correct horse battery", "extras": {"favouriteColour": "blue"}});
    let user = assert_ok(&s.node("POST", "/v2/users", None, Some(&fixed)).await, "the corrected sign-up");
    let (id, token) = (user["usersId"].as_str().unwrap().to_owned(), user["sessionToken"].as_str().unwrap().to_owned());
    assert_eq!(user["extras"]["favouriteColour"], "blue");

    // Deeper: a nested member, one inside an array, a misspelt model member.
    let path = format!("/v2/users/{id}");
    for (body, field) in [
        (json!({"name": {"firstName": "Al", "nickname": "Al"}}), "name.nickname"),
        (json!({"addresses": [{"city": "Here"}, {"city": "There", "planet": "Mars"}]}), "addresses[1].planet"),
        (json!({"phoneNumbers": {"mobile": "555"}}), "phoneNumbers"),
        (json!({"email": {"primary": "a@example.com", "home": "b@example.com"}}), "email.home"),
    ] {
        let r = s.node("PUT", &path, Some(&token), Some(&body)).await;
        assert_eq!((r.node_error_status(), r.reason().as_str()), (400, "unknown_field"), "{body}");
        assert_eq!(r.json()["errors"][0]["field"], field, "{body}");
    }
    let after = assert_ok(&s.node("GET", &path, Some(&token), None).await, "read");
    assert!(after.get("name").is_none() && after.get("addresses").is_none(), "nothing of a refused PUT stored: {after}");
    assert!(after.get("email").is_none(), "{after}");

    // Members clients echo back are accepted and ignored, at the top.
    let echoed = json!({
        "usersId": uuid::Uuid::now_v7().to_string(), "userId": "someone else", "appId": "another app",
        "sessionToken": "not mine", "createdAt": "1999-01-01T00:00:00Z", "updatedAt": "1999-01-01T00:00:00Z",
        "inviteCode": "ABC", "name": {"firstName": "Echo"},
    });
    let saved = assert_ok(&s.node("PUT", &path, Some(&token), Some(&echoed)).await, "echoed members");
    assert_eq!(saved["usersId"], id.as_str());
    assert_eq!(saved["createdAt"], after["createdAt"]);
    assert_eq!(saved["name"]["firstName"], "Echo");
    // The same, over gRPC, cannot carry an unknown member at all; the
    // gateway's mapping dropped nothing above. A multipart body is refused
    // as a type that never carries JSON.
    let head = format!(
        "POST /v2/users HTTP/1.1\r\nHost: {}\r\nX-Api-Key: {}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 6\r\n\r\n",
        s.http, s.key
    );
    let r = s.exchange(&head, "--b--\r\n").await;
    assert_eq!((r.node_error_status(), r.reason().as_str()), (415, "unsupported_media_type"));
    // `text/plain`, a `fetch` of a string, is read as JSON.
    let body = json!({"username": "plain", "password": "correct horse battery"}).to_string();
    let head = format!(
        "POST /v2/users HTTP/1.1\r\nHost: {}\r\nX-Api-Key: {}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        s.http,
        s.key,
        body.len()
    );
    assert_ok(&s.exchange(&head, &body).await, "a JSON body sent as text/plain");
}
}

both_stores! {
async fn verify_session_over_grpc_and_across_applications() {
    use usersvc::pb::{self, user_service_client::UserServiceClient};
    let s = Served::start(&["--session-idle-timeout", "2s"]).await;
    let body = json!({"username": "grpc.verify", "password": "correct horse battery"});
    let user = assert_ok(&s.node("POST", "/v2/users", None, Some(&body)).await, "sign-up");
    let (id, token) = (user["usersId"].as_str().unwrap().to_owned(), user["sessionToken"].as_str().unwrap().to_owned());
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await.unwrap();
    let mut users = UserServiceClient::new(channel);
    let verify = |key: &str, token: Option<&str>| crate::common::with_auth(pb::VerifySessionRequest {}, Some(key), token);
    let out = users.verify_session(verify(&s.key, Some(&token))).await.unwrap().into_inner();
    assert_eq!((out.user_id.as_str(), out.users_id.as_str(), out.principal.as_str()), (id.as_str(), id.as_str(), "user"));
    assert!(!out.supervisor);
    assert!(!out.session_id.is_empty());
    let idle_end = chrono::DateTime::parse_from_rfc3339(&out.expires_at).unwrap();
    let max_end = chrono::DateTime::parse_from_rfc3339(&out.max_expires_at).unwrap();
    assert!(idle_end <= max_end && idle_end <= chrono::Utc::now() + chrono::Duration::seconds(3), "{out:?}");
    // No token: UNAUTHENTICATED.
    let e = users.verify_session(verify(&s.key, None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // Another application's key with this token: as good as none.
    let out = usersvc().args(["app", "create", "--name", "other", "--database-url", &s.db]).output().unwrap();
    let other: Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = users.verify_session(verify(other["apiKey"].as_str().unwrap(), Some(&token))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // Left idle past its timeout, the session verifies no more.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let r = s.node("GET", "/v2/auth/verify", Some(&token), None).await;
    assert_eq!((r.node_error_status(), r.reason().as_str()), (401, "session_expired"));
}
}
