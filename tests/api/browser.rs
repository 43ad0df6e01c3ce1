//! Real browsers: headless Chromium, driven over the W3C WebDriver protocol
//! (plain HTTP JSON to a chromedriver each test starts).
//! - The mailed password-reset link, with JavaScript switched off.
//! - The mailed email-verification link, the same way.
//! - A web app on another origin calling sign-up, sign-in and verify with
//!   `fetch` and the Catalyze headers, through CORS preflights.
//! - A passkey registered and used to sign in, with chromedriver's virtual
//!   authenticator (the W3C WebAuthn WebDriver extension).
//! - A TOTP enrolment from a web app: its QR code drawn as an image, then a
//!   sign-in finished with the second factor.
//!
//! Ignored by plain `cargo test`: it needs `chromium` and `chromedriver`.
//! `.ci/run` installs them and runs `cargo test --test api browser -- --ignored`;
//! run that way without them, the test fails and says why.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::Code;
use usersvc::pb;

use crate::common::{TestApp, spawn_alone};
use crate::smtp_sink::{SmtpSink, text_part};

/// The key of a web element reference in W3C WebDriver replies.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The reset link of a message.
fn reset_link(data: &str) -> String {
    let text = text_part(data);
    let start = text.find("http://").expect("a link");
    text[start..].split_whitespace().next().unwrap().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A chromedriver of this test's own, killed on drop.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chromedriver {
    /// Starts `chromedriver` (or `$CHROMEDRIVER`) and waits until it is ready.
    async fn start(http: &reqwest::Client) -> Self {
        let program = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let port = free_port();
        let child = Command::new(&program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{program}`: {e}. This test needs chromium and chromedriver \
                     (Debian: apt-get install chromium chromium-driver; .ci/run does that)"
                )
            });
        let mut driver = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = driver.child.try_wait().unwrap() {
                panic!("`{program} --port={port}` exited before it was ready: {exit}");
            }
            if let Ok(res) = http.get(format!("{}/status", driver.url())).send().await
                && let Ok(status) = res.json::<Value>().await
                && status["value"]["ready"] == json!(true)
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver on port {port} did not answer /status in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One browser: a WebDriver session with a profile directory of its own.
/// Dropped before `quit` (a failed assertion), it still ends the session,
/// so no Chromium outlives the test.
struct Browser {
    http: reqwest::Client,
    driver_port: u16,
    session: String,
    profile: PathBuf,
    open: bool,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.open {
            // No runtime to await in here: a plain HTTP/1.1 DELETE by hand.
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.driver_port)) {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
                let _ = write!(
                    conn,
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.session, self.driver_port
                );
                // chromedriver answers once the browser is gone; it may keep
                // the connection open, so stop at the end of the headers.
                let (mut reply, mut buf) = (Vec::new(), [0u8; 1024]);
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    reply.extend_from_slice(&buf[..n]);
                    if reply.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// A chromedriver and its browser with JavaScript off, checked off: a
    /// page's script does not run.
    async fn without_script(http: &reqwest::Client) -> (Chromedriver, Self) {
        let driver = Chromedriver::start(http).await;
        let browser = Browser::open(http, &driver, false).await;
        browser.goto("data:text/html,<title>script off</title><script>document.title='script on'</script>").await;
        assert_eq!(browser.title().await, "script off");
        (driver, browser)
    }

    async fn open(http: &reqwest::Client, driver: &Chromedriver, javascript: bool) -> Self {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        assert!(
            std::path::Path::new(&binary).exists(),
            "no Chromium at {binary}: install chromium (.ci/run does) or set CHROMIUM"
        );
        let profile = std::env::temp_dir().join(format!("usersvc-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).unwrap();
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": binary,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                        // 2 blocks JavaScript, 1 allows it.
                        "prefs": { "profile.managed_default_content_settings.javascript": if javascript { 1 } else { 2 } },
                    },
                },
            },
        });
        let res = http
            .post(format!("{}/session", driver.url()))
            .json(&caps)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("POST /session to chromedriver");
        let status = res.status();
        let body: Value = res.json().await.expect("a JSON reply to POST /session");
        let session = match body["value"]["sessionId"].as_str() {
            Some(id) if status.is_success() => id.to_owned(),
            _ => {
                let _ = std::fs::remove_dir_all(&profile);
                panic!("chromedriver refused a new session ({status}): {body}");
            }
        };
        Self { http: http.clone(), driver_port: driver.port, session, profile, open: true }
    }

    /// One command; the reply's `value`, or the WebDriver error.
    async fn try_call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("http://127.0.0.1:{}/session/{}{path}", self.driver_port, self.session);
        let mut req = self.http.request(method.clone(), &url).timeout(Duration::from_secs(60));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let ok = res.status().is_success();
        let mut reply: Value = res.json().await.unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        let value = reply["value"].take();
        if ok { Ok(value) } else { Err(value) }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method.clone(), path, body).await.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Runs `script` in the page; it calls its last argument with the result.
    async fn run_async(&self, script: &str, args: Value) -> Value {
        self.call(Method::POST, "/execute/async", Some(json!({ "script": script, "args": args }))).await
    }

    async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn title(&self) -> String {
        self.call(Method::GET, "/title", None).await.as_str().unwrap().to_owned()
    }

    async fn source(&self) -> String {
        self.call(Method::GET, "/source", None).await.as_str().unwrap().to_owned()
    }

    async fn try_find(&self, css: &str) -> Result<String, Value> {
        let found = self.try_call(Method::POST, "/element", Some(json!({ "using": "css selector", "value": css })));
        let found = found.await?;
        match found[ELEMENT].as_str() {
            Some(el) => Ok(el.to_owned()),
            None => panic!("chromedriver found {css} but sent no element reference: {found}"),
        }
    }

    async fn find(&self, css: &str) -> String {
        match self.try_find(css).await {
            Ok(el) => el,
            Err(e) => panic!("no element {css} ({e}); the page is:\n{}", self.source().await),
        }
    }

    /// Waits for an element to appear (the next page to load), up to `secs`.
    async fn wait_for(&self, css: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(el) = self.try_find(css).await {
                return el;
            }
            if Instant::now() > deadline {
                panic!("no element {css} after {secs} s; the page is:\n{}", self.source().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, el: &str) -> String {
        self.call(Method::GET, &format!("/element/{el}/text"), None).await.as_str().unwrap().to_owned()
    }

    async fn attribute(&self, el: &str, name: &str) -> Option<String> {
        self.call(Method::GET, &format!("/element/{el}/attribute/{name}"), None).await.as_str().map(str::to_owned)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.call(Method::POST, &format!("/element/{el}/clear"), Some(json!({}))).await;
        self.call(Method::POST, &format!("/element/{el}/value"), Some(json!({ "text": text }))).await;
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.call(Method::POST, &format!("/element/{el}/click"), Some(json!({}))).await;
    }

    /// Types the new password twice and submits the form.
    async fn submit_reset(&self, password: &str, confirm: &str) {
        self.type_into("#password", password).await;
        self.type_into("#confirm", confirm).await;
        self.click("button[type=submit]").await;
    }

    async fn quit(mut self) {
        self.call(Method::DELETE, "", None).await;
        self.open = false;
    }
}

async fn sign_in(t: &TestApp, password: &str) -> Result<pb::User, tonic::Status> {
    let req = pb::SignInRequest { username: "browsing".into(), password: password.into() };
    t.users().await.sign_in(t.req(req, None)).await.map(|r| r.into_inner())
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
async fn reset_form_works_in_headless_chromium() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(url)).await;
    let (id, old_session) = t.sign_up("browsing").await;
    sign_in(&t, "correct horse battery").await.expect("the old password works before the reset");

    // The mailed link.
    let res = t
        .http
        .get(t.url(&format!("/v2/{}/reset/user/browsing", t.app_id)))
        .header("X-Api-Key", &t.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let got = sink.wait_for(1, 10).await;
    assert_eq!(got.len(), 1, "one reset mail");
    let link = reset_link(&got[0].data);
    assert!(link.starts_with(&format!("http://{}/v2/reset/", t.app.http_addr)), "{link}");

    // The form, in Chromium.
    // The page must work without JavaScript: give it none.
    let http = reqwest::Client::new();
    let (driver, browser) = Browser::without_script(&http).await;

    browser.goto(&link).await;
    assert_eq!(browser.title().await, "Password reset");
    let page = browser.source().await;
    assert!(!page.to_ascii_lowercase().contains("<script"), "the form page has no script:\n{page}");
    assert!(page.contains("Choose a new password"), "{page}");

    // Two different passwords: the form again, with the reason as an alert.
    browser.submit_reset("a new password", "another password").await;
    let error = browser.wait_for("#error", 15).await;
    assert_eq!(browser.attribute(&error, "role").await.as_deref(), Some("alert"));
    let said = browser.text(&error).await;
    assert!(said.contains("not the same"), "{said}");
    assert_eq!(browser.title().await, "Password reset");

    // The same password twice: done.
    browser.submit_reset("a new password", "a new password").await;
    let done = browser.wait_for("p[role=status]", 15).await;
    let heading = browser.text(&browser.find("h1").await).await;
    assert_eq!(heading, "Your password has been changed");
    let said = browser.text(&done).await;
    assert!(said.contains("sign in with your new password"), "{said}");
    assert!(browser.source().await.contains("Your password has been changed"));
    browser.quit().await;
    drop(driver);

    // The old password and the old session are gone; the new password works.
    let e = sign_in(&t, "correct horse battery").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = t.users().await.get_user(t.req(pb::GetUserRequest { users_id: id }, Some(&old_session))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let signed_in = sign_in(&t, "a new password").await.expect("the new password works");
    assert!(!signed_in.session_token.is_empty());
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
async fn verification_page_works_in_headless_chromium() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(url)).await;
    crate::common::admin(&t.app)
        .set_verify_email(t.app_id, usersvc::store::VerifyMode::Required)
        .await
        .expect("app update");
    t.sign_up("browsing").await;
    let e = sign_in(&t, "correct horse battery").await.expect_err("unverified under required");
    assert_eq!(e.code(), Code::PermissionDenied);
    let got = sink.wait_for(2, 10).await;
    assert_eq!(got.len(), 2, "the sign-up's link and the refused sign-in's");
    let link = reset_link(&got[0].data);
    assert!(link.starts_with(&format!("http://{}/v2/verify/", t.app.http_addr)), "{link}");

    // The page must work without JavaScript: give it none.
    let http = reqwest::Client::new();
    let (_driver, browser) = Browser::without_script(&http).await;

    // Opening the page verifies nothing.
    browser.goto(&link).await;
    assert_eq!(browser.title().await, "Email verification");
    let page = browser.source().await;
    assert!(!page.to_ascii_lowercase().contains("<script"), "the page has no script:\n{page}");
    assert!(page.contains("Confirm your email address"), "{page}");
    sign_in(&t, "correct horse battery").await.expect_err("still unverified after opening the page");

    // The button does.
    browser.click("button[type=submit]").await;
    let status = browser.wait_for("[role=status]", 15).await;
    assert!(browser.text(&status).await.contains("Thank you"), "{}", browser.source().await);
    let signed_in = sign_in(&t, "correct horse battery").await.expect("verified: signs in");
    assert!(signed_in.email.unwrap().primary_verified);

    // The link works once: the page says so.
    browser.goto(&link).await;
    browser.click("button[type=submit]").await;
    let alert = browser.wait_for("[role=alert]", 15).await;
    assert!(browser.text(&alert).await.contains("used, replaced or never issued"), "{}", browser.source().await);
    browser.quit().await;
}

/// Serves one small HTML page at every path, on a port of its own: the web
/// app's origin. Ends with the returned handle.
async fn web_app_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let page = "<!doctype html><title>Clinic</title><p>A clinic's web app.</p>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, task)
}

/// What the web app runs: the Catalyze JS SDK's calls as `fetch`, each with
/// `X-Api-Key` (so each is preflighted), reporting status and body.
const SDK_CALLS: &str = r#"
const [base, key, name, done] = arguments;
const call = async (method, path, headers, body) => {
  const r = await fetch(base + path, { method, headers: { 'X-Api-Key': 'browser clinic ' + key, ...headers }, body });
  return { status: r.status, body: await r.json(), requestId: r.headers.get('x-request-id') };
};
(async () => {
  const out = {};
  const user = { username: name, password: 'correct horse battery', email: { primary: name + '@example.com' } };
  out.signUp = await call('POST', '/v2/users', { 'Content-Type': 'application/json', 'Accept': 'application/json' }, JSON.stringify(user));
  // As jQuery sends it: the JSON under the form content type.
  out.signIn = await call('POST', '/v2/auth/signin', { 'Content-Type': 'application/x-www-form-urlencoded; charset=UTF-8', 'Accept': '*/*' },
    JSON.stringify({ username: name, password: 'correct horse battery' }));
  const token = out.signIn.body.sessionToken;
  out.verify = await call('GET', '/v2/auth/verify/', { 'Authorization': 'Bearer ' + token });
  out.wrong = await call('POST', '/v2/auth/signin', { 'Content-Type': 'application/json' },
    JSON.stringify({ username: name, password: 'not the password' }));
  done(out);
})().catch(e => done({ failed: String(e) }));
"#;

#[tokio::test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
async fn web_app_on_another_origin_signs_up_and_in_through_cors() {
    let (page_port, page_task) = web_app_server().await;
    // The page is served on one port under two names, two origins: only
    // the first is allowed.
    let allowed = format!("http://127.0.0.1:{page_port}");
    let refused = format!("http://localhost:{page_port}");
    let t = spawn_alone(|a| a.gateway.cors_origins = vec![allowed.clone()]).await;
    let base = format!("http://{}", t.app.http_addr);

    let http = reqwest::Client::new();
    let driver = Chromedriver::start(&http).await;
    let browser = Browser::open(&http, &driver, true).await;
    browser.goto(&format!("{allowed}/signin.html")).await;
    assert_eq!(browser.title().await, "Clinic");
    let out = browser.run_async(SDK_CALLS, json!([base, t.api_key, "web.patient"])).await;
    assert!(out["failed"].is_null(), "the web app's calls failed: {out}");
    assert_eq!(out["signUp"]["status"], 200, "{out}");
    let id = out["signUp"]["body"]["usersId"].as_str().unwrap_or_else(|| panic!("{out}")).to_owned();
    assert!(out["signUp"]["body"]["sessionToken"].as_str().is_some_and(|t| !t.is_empty()), "{out}");
    assert!(out["signUp"]["requestId"].as_str().is_some_and(|r| !r.is_empty()), "x-request-id is exposed: {out}");
    assert_eq!(out["signIn"]["status"], 200, "{out}");
    assert_eq!(out["signIn"]["body"]["usersId"], id.as_str(), "{out}");
    assert_eq!(out["verify"]["status"], 200, "{out}");
    assert_eq!(out["verify"]["body"]["userId"], id.as_str(), "{out}");
    assert_eq!(out["wrong"]["status"], 401, "{out}");
    assert_eq!(out["wrong"]["body"]["errors"][0]["code"], 401, "{out}");
    assert_eq!(out["wrong"]["body"]["errors"][0]["reason"], "invalid_credentials", "{out}");

    // The same page from an origin not allowed: the browser refuses it.
    browser.goto(&format!("{refused}/signin.html")).await;
    let out = browser.run_async(SDK_CALLS, json!([base, t.api_key, "web.intruder"])).await;
    assert!(out["failed"].as_str().is_some_and(|e| e.contains("Failed to fetch")), "{out}");
    browser.quit().await;
    drop(driver);
    page_task.abort();

    // Only the allowed origin's sign-up exists.
    let req = pb::SignInRequest { username: "web.intruder".into(), password: "correct horse battery".into() };
    let e = t.users().await.sign_in(t.req(req, None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "the refused origin's preflight stopped its sign-up");
}

/// The web app's call to the service with the Catalyze headers, for the
/// page scripts below (they name `base` and `key` among their arguments).
const CALL: &str = r#"
const call = async (method, path, token, body) => {
  const headers = { 'X-Api-Key': 'browser clinic ' + key, 'Content-Type': 'application/json' };
  if (token) headers['Authorization'] = 'Bearer ' + token;
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
};
"#;

/// A page script with [`CALL`] in front of it.
fn with_call(script: &str) -> String {
    format!("{CALL}{script}")
}

/// What the passkey page runs: sign-up, a passkey registered with
/// `navigator.credentials.create`, sign-out, then a sign-in with
/// `navigator.credentials.get` alone (no username), each reported.
const PASSKEY_CALLS: &str = r#"
const [base, key, name, done] = arguments;
const dec = s => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4)), c => c.charCodeAt(0));
const enc = b => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
(async () => {
  const out = {};
  const user = { username: name, password: 'correct horse battery', email: { primary: name + '@example.com' } };
  out.signUp = await call('POST', '/v2/users', null, user);
  const id = out.signUp.body.usersId, token = out.signUp.body.sessionToken;
  out.regOptions = await call('POST', '/v2/users/' + id + '/passkeys/options', token);
  const pk = out.regOptions.body.publicKey;
  pk.challenge = dec(pk.challenge);
  pk.user.id = dec(pk.user.id);
  (pk.excludeCredentials || []).forEach(c => c.id = dec(c.id));
  const created = await navigator.credentials.create({ publicKey: pk });
  out.register = await call('POST', '/v2/users/' + id + '/passkeys', token, {
    ceremonyId: out.regOptions.body.ceremonyId,
    name: 'Virtual authenticator',
    credential: {
      id: created.id, rawId: enc(created.rawId), type: created.type,
      response: { attestationObject: enc(created.response.attestationObject), clientDataJSON: enc(created.response.clientDataJSON) },
    },
  });
  out.signOut = await call('GET', '/v2/auth/signout', token);
  out.signInOptions = await call('POST', '/v2/auth/passkey/options', null, {});
  const rq = out.signInOptions.body.publicKey;
  rq.challenge = dec(rq.challenge);
  (rq.allowCredentials || []).forEach(c => c.id = dec(c.id));
  const got = await navigator.credentials.get({ publicKey: rq });
  out.signIn = await call('POST', '/v2/auth/passkey', null, {
    ceremonyId: out.signInOptions.body.ceremonyId,
    credential: {
      id: got.id, rawId: enc(got.rawId), type: got.type,
      response: {
        authenticatorData: enc(got.response.authenticatorData), clientDataJSON: enc(got.response.clientDataJSON),
        signature: enc(got.response.signature), userHandle: got.response.userHandle ? enc(got.response.userHandle) : null,
      },
    },
  });
  out.verify = await call('GET', '/v2/auth/verify', out.signIn.body.sessionToken);
  out.oldToken = await call('GET', '/v2/auth/verify', token);
  done(out);
})().catch(e => done({ failed: String(e) }));
"#;

#[tokio::test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
async fn passkey_registered_and_signed_in_with_chromiums_virtual_authenticator() {
    let (page_port, page_task) = web_app_server().await;
    // http://localhost is a secure context: WebAuthn works there, with
    // the rp id `localhost`.
    let origin = format!("http://localhost:{page_port}");
    let t = spawn_alone(|a| a.gateway.cors_origins = vec![origin.clone()]).await;
    crate::common::admin(&t.app).set_webauthn(t.app_id, "localhost", std::slice::from_ref(&origin)).await.unwrap();
    let base = format!("http://{}", t.app.http_addr);

    let http = reqwest::Client::new();
    let driver = Chromedriver::start(&http).await;
    let browser = Browser::open(&http, &driver, true).await;
    browser.goto(&format!("{origin}/app.html")).await;
    assert_eq!(browser.title().await, "Clinic");
    // The W3C WebAuthn WebDriver extension: a platform authenticator that
    // keeps discoverable credentials and verifies its user.
    browser
        .call(
            Method::POST,
            "/webauthn/authenticator",
            Some(json!({
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
            })),
        )
        .await;
    let out = browser.run_async(&with_call(PASSKEY_CALLS), json!([base, t.api_key, "passkey.patient"])).await;
    assert!(out["failed"].is_null(), "the page's passkey calls failed: {out}");
    assert_eq!(out["signUp"]["status"], 200, "{out}");
    let id = out["signUp"]["body"]["usersId"].as_str().unwrap_or_else(|| panic!("{out}")).to_owned();
    assert_eq!(out["regOptions"]["status"], 200, "{out}");
    assert_eq!(out["register"]["status"], 201, "{out}");
    assert_eq!(out["register"]["body"]["name"], "Virtual authenticator", "{out}");
    assert_eq!(out["signOut"]["status"], 200, "{out}");
    assert_eq!(out["signInOptions"]["status"], 200, "{out}");
    assert_eq!(out["signIn"]["status"], 200, "{out}");
    assert_eq!(out["signIn"]["body"]["usersId"], id.as_str(), "{out}");
    assert_eq!(out["verify"]["status"], 200, "the passkey's session works: {out}");
    assert_eq!(out["verify"]["body"]["userId"], id.as_str(), "{out}");
    assert_eq!(out["oldToken"]["status"], 401, "signed out before: {out}");
    browser.quit().await;
    drop(driver);
    page_task.abort();

    let listed = t
        .users()
        .await
        .list_passkeys(
            t.req(pb::ListPasskeysRequest { users_id: id.clone() }, out["signIn"]["body"]["sessionToken"].as_str()),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.passkeys.len(), 1);
    assert!(!listed.passkeys[0].last_used_at.is_empty(), "its use is recorded");
    // The trail has the registration and the sign-in by passkey.
    let mut trail = Vec::new();
    let filter = usersvc::store::AuditFilter { app_id: Some(t.app_id), ..Default::default() };
    crate::common::admin(&t.app).list_trail(filter, &mut trail).await.unwrap();
    let trail = String::from_utf8(trail).unwrap();
    assert!(trail.contains("\"passkey.registered\""), "{trail}");
    assert!(trail.lines().any(|l| l.contains("\"session.sign_in\"") && l.contains("method:passkey")), "{trail}");
}

/// What the TOTP page runs, in two parts. The first signs up, enrols and
/// shows the QR code as an image; the second (given the code the test
/// computed from the secret) confirms, then signs in with the password and
/// a recovery code, each reported.
const TOTP_ENROL: &str = r#"
const [base, key, name, done] = arguments;
(async () => {
  const out = {};
  out.signUp = await call('POST', '/v2/users', null, { username: name, password: 'correct horse battery' });
  const id = out.signUp.body.usersId, token = out.signUp.body.sessionToken;
  out.enrol = await call('POST', '/v2/users/' + id + '/mfa/totp', token);
  const img = document.createElement('img');
  document.body.appendChild(img);
  await new Promise((ok, fail) => { img.onload = ok; img.onerror = () => fail(new Error('the QR code did not load')); img.src = out.enrol.body.qrCode; });
  out.qr = { width: img.naturalWidth, height: img.naturalHeight };
  out.id = id; out.token = token;
  done(out);
})().catch(e => done({ failed: String(e) }));
"#;

const TOTP_SIGN_IN: &str = r#"
const [base, key, name, id, token, code, done] = arguments;
(async () => {
  const out = {};
  out.confirm = await call('POST', '/v2/users/' + id + '/mfa/totp/confirm', token, { code });
  out.signIn = await call('POST', '/v2/auth/signin', null, { username: name, password: 'correct horse battery' });
  out.second = await call('POST', '/v2/auth/signin/mfa', null, { mfaToken: out.signIn.body.mfaToken, code: out.confirm.body.recoveryCodes[0] });
  out.verify = await call('GET', '/v2/auth/verify', out.second.body.sessionToken);
  done(out);
})().catch(e => done({ failed: String(e) }));
"#;

#[tokio::test]
#[ignore = "needs chromium and chromedriver; .ci/run installs them"]
async fn totp_enrolment_in_a_web_app_shows_its_qr_code_and_ends_in_a_second_factor_sign_in() {
    let (page_port, page_task) = web_app_server().await;
    let origin = format!("http://127.0.0.1:{page_port}");
    let t = spawn_alone(|a| a.gateway.cors_origins = vec![origin.clone()]).await;
    let base = format!("http://{}", t.app.http_addr);

    let http = reqwest::Client::new();
    let driver = Chromedriver::start(&http).await;
    let browser = Browser::open(&http, &driver, true).await;
    browser.goto(&format!("{origin}/security.html")).await;
    let out = browser.run_async(&with_call(TOTP_ENROL), json!([base, t.api_key, "web.clinician"])).await;
    assert!(out["failed"].is_null(), "the enrolment failed: {out}");
    assert_eq!(out["enrol"]["status"], 200, "{out}");
    // The browser drew the QR code the reply carries: a square image.
    let (w, h) = (out["qr"]["width"].as_u64().unwrap_or(0), out["qr"]["height"].as_u64().unwrap_or(0));
    assert!(w >= 21 && w == h, "the QR code rendered as {w}x{h}: {out}");
    let uri = out["enrol"]["body"]["otpauthUri"].as_str().unwrap_or_else(|| panic!("{out}"));
    let code = crate::totp::code_at(&crate::totp::secret_of(uri), crate::totp::now());

    let (id, token) = (out["id"].clone(), out["token"].clone());
    let out =
        browser.run_async(&with_call(TOTP_SIGN_IN), json!([base, t.api_key, "web.clinician", id, token, code])).await;
    assert!(out["failed"].is_null(), "the sign-in failed: {out}");
    assert_eq!(out["confirm"]["status"], 200, "{out}");
    assert_eq!(out["confirm"]["body"]["recoveryCodes"].as_array().map(Vec::len), Some(10), "{out}");
    assert_eq!(out["signIn"]["status"], 200, "{out}");
    assert_eq!(out["signIn"]["body"]["mfaRequired"], true, "{out}");
    assert!(out["signIn"]["body"].get("sessionToken").is_none(), "no session before the second factor: {out}");
    assert_eq!(out["second"]["status"], 200, "{out}");
    assert_eq!(out["verify"]["status"], 200, "{out}");
    assert_eq!(out["verify"]["body"]["userId"], id, "{out}");
    browser.quit().await;
    drop(driver);
    page_task.abort();
}
