//! Passkeys (WebAuthn) over JSON and gRPC, on both stores, without a
//! browser: webauthn-authenticator-rs's software authenticator answers
//! the ceremonies (`tests/api/browser.rs` has the Chromium run).

use reqwest::StatusCode;
use serde_json::{Value, json};
use usersvc::pb;
use usersvc::store::AuditFilter;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::common::{self, Backend, TestApp, spawn};

const RP_ID: &str = "example.org";
pub(crate) const ORIGIN: &str = "https://app.example.org";

pub(crate) async fn configure(t: &TestApp) {
    common::admin(&t.app).set_webauthn(t.app_id, RP_ID, &[ORIGIN.to_owned()]).await.expect("configure passkeys");
}

impl TestApp {
    async fn pk(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).header("X-Api-Key", &self.api_key);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        self.pk(reqwest::Method::POST, path, token, body).await
    }

    pub(crate) async fn trail_of(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let filter = AuditFilter { app_id: Some(self.app_id), ..Default::default() };
        common::admin(&self.app).list_trail(filter, &mut out).await.unwrap();
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

pub(crate) fn reason(body: &Value) -> &str {
    body["errors"][0]["reason"].as_str().unwrap_or_default()
}

pub(crate) fn field(body: &Value) -> &str {
    body["errors"][0]["field"].as_str().unwrap_or_default()
}

/// Splits a start's reply into its ceremony id and the options.
pub(crate) fn ceremony(mut options: Value) -> (String, Value) {
    let id = options.as_object_mut().unwrap().remove("ceremonyId").unwrap().as_str().unwrap().to_owned();
    (id, options)
}

pub(crate) fn authenticator() -> WebauthnAuthenticator<SoftPasskey> {
    // `true`: it claims user verification, as a platform authenticator does.
    WebauthnAuthenticator::new(SoftPasskey::new(true))
}

/// Registers a passkey for the user with the software authenticator;
/// returns the 201 body.
pub(crate) async fn register(
    t: &TestApp,
    auth: &mut WebauthnAuthenticator<SoftPasskey>,
    id: &str,
    token: &str,
) -> Value {
    let (status, options) = t.post(&format!("/v2/users/{id}/passkeys/options"), Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{options}");
    assert_eq!(options["publicKey"]["rp"]["id"], RP_ID);
    assert_eq!(options["publicKey"]["authenticatorSelection"]["residentKey"], "required");
    let (ceremony_id, mut options) = ceremony(options);
    // The software token cannot keep resident keys; the server does not
    // insist (a browser's authenticator does keep one).
    options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = json!(false);
    let ccr: CreationChallengeResponse = serde_json::from_value(options).unwrap();
    let credential = auth.do_registration(Url::parse(ORIGIN).unwrap(), ccr).expect("the authenticator registers");
    let body = json!({ "ceremonyId": ceremony_id, "name": "My laptop", "credential": credential });
    let (status, out) = t.post(&format!("/v2/users/{id}/passkeys"), Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    out
}

/// Starts a sign-in limited to `username`'s passkeys and answers it;
/// returns the finish's body (not sent).
pub(crate) async fn assertion(t: &TestApp, auth: &mut WebauthnAuthenticator<SoftPasskey>, username: &str) -> Value {
    let (status, options) = t.post("/v2/auth/passkey/options", None, Some(json!({ "username": username }))).await;
    assert_eq!(status, StatusCode::OK, "{options}");
    let (ceremony_id, options) = ceremony(options);
    assert_eq!(options["publicKey"]["allowCredentials"].as_array().map(Vec::len), Some(1), "{options}");
    let rcr: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let credential = auth.do_authentication(Url::parse(ORIGIN).unwrap(), rcr).expect("the authenticator signs");
    json!({ "ceremonyId": ceremony_id, "credential": credential })
}

both_stores!(
    async fn routes_are_refused_without_a_relying_party() {
        let t = spawn().await;
        let (id, token) = t.sign_up("nopasskeys").await;
        for (path, tok) in [
            (format!("/v2/users/{id}/passkeys/options"), Some(token.as_str())),
            ("/v2/auth/passkey/options".to_owned(), None),
        ] {
            let (status, body) = t.post(&path, tok, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(reason(&body), "passkeys_not_configured", "{path}");
        }
        let (status, body) = t.pk(reqwest::Method::GET, &format!("/v2/users/{id}/passkeys"), Some(&token), None).await;
        assert_eq!((status, reason(&body)), (StatusCode::BAD_REQUEST, "passkeys_not_configured"));
        let body = json!({ "ceremonyId": uuid::Uuid::now_v7(), "credential": { "id": "x" } });
        let (status, body) = t.post("/v2/auth/passkey", None, Some(body)).await;
        assert_eq!((status, reason(&body)), (StatusCode::BAD_REQUEST, "passkeys_not_configured"));
        // gRPC says the same, as FAILED_PRECONDITION.
        let e = t
            .users()
            .await
            .start_passkey_sign_in(t.req(pb::StartPasskeySignInRequest::default(), None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        // The password sign-in is as it was.
        let (status, out) = t
            .post("/v2/auth/signin", None, Some(json!({"username": "nopasskeys", "password": "correct horse battery"})))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(out["sessionToken"].is_string());
    }
);

both_stores!(
    async fn register_list_sign_in_and_remove() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("pkuser").await;
        let mut auth = authenticator();
        let made = register(&t, &mut auth, &id, &token).await;
        assert_eq!(made["name"], "My laptop");
        assert!(made["createdAt"].as_str().unwrap().ends_with('Z'));
        let passkey_id = made["passkeyId"].as_str().unwrap().to_owned();

        let (status, list) = t.pk(reqwest::Method::GET, &format!("/v2/users/{id}/passkeys"), Some(&token), None).await;
        assert_eq!(status, StatusCode::OK);
        let listed = list["passkeys"].as_array().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["passkeyId"], passkey_id.as_str());
        let members: Vec<&String> = listed[0].as_object().unwrap().keys().collect();
        assert_eq!(members, ["createdAt", "name", "passkeyId"], "no key material, no last use yet");

        // Signed out, signed in with the passkey alone.
        let finish = assertion(&t, &mut auth, "pkuser").await;
        let (status, user) = t.post("/v2/auth/passkey", None, Some(finish.clone())).await;
        assert_eq!(status, StatusCode::OK, "{user}");
        assert_eq!(user["usersId"], id.as_str());
        assert_eq!(user["email"]["primary"], "pkuser@example.com");
        let session = user["sessionToken"].as_str().unwrap().to_owned();
        let (status, who) = t.pk(reqwest::Method::GET, "/v2/auth/verify", Some(&session), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(who["usersId"], id.as_str());

        // The ceremony was used up.
        let (status, body) = t.post("/v2/auth/passkey", None, Some(finish)).await;
        assert_eq!((status, field(&body)), (StatusCode::BAD_REQUEST, "ceremonyId"), "{body}");

        // Over gRPC: listed with its last use.
        let listed = t
            .users()
            .await
            .list_passkeys(t.req(pb::ListPasskeysRequest { users_id: id.clone() }, Some(&session)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.passkeys.len(), 1);
        assert!(!listed.passkeys[0].last_used_at.is_empty());

        let trail = t.trail_of().await;
        assert!(trail.iter().any(|r| r["action"] == "passkey.registered" && r["objectId"] == passkey_id.as_str()));
        assert!(
            trail.iter().any(|r| r["action"] == "session.sign_in"
                && r["outcome"] == "ok"
                && r["fields"].as_array().unwrap().iter().any(|f| f == "method:passkey")),
            "{trail:?}"
        );

        let path = format!("/v2/users/{id}/passkeys/{passkey_id}");
        let (status, body) = t.pk(reqwest::Method::DELETE, &path, Some(&session), None).await;
        assert_eq!((status, body), (StatusCode::OK, json!({})));
        let (_, list) = t.pk(reqwest::Method::GET, &format!("/v2/users/{id}/passkeys"), Some(&token), None).await;
        assert_eq!(list["passkeys"].as_array().map(Vec::len).unwrap_or(0), 0);
        assert!(t.trail_of().await.iter().any(|r| r["action"] == "passkey.removed"));

        // Removed: the options offer a decoy, the same as for a username
        // nobody has, and always the same for one username.
        let allowed = |options: Value| options["publicKey"]["allowCredentials"].clone();
        let (status, options) = t.post("/v2/auth/passkey/options", None, Some(json!({ "username": "pkuser" }))).await;
        assert_eq!(status, StatusCode::OK);
        let decoy = allowed(options);
        assert_eq!(decoy.as_array().map(Vec::len), Some(1), "{decoy}");
        let (_, again) = t.post("/v2/auth/passkey/options", None, Some(json!({ "username": "pkuser" }))).await;
        assert_eq!(allowed(again), decoy);
        let (_, nobody) = t.post("/v2/auth/passkey/options", None, Some(json!({ "username": "nobody" }))).await;
        let nobody = allowed(nobody);
        assert_eq!(nobody.as_array().map(Vec::len), Some(1));
        assert_ne!(nobody, decoy);
        let (_, again) = t.post("/v2/auth/passkey/options", None, Some(json!({ "username": "nobody" }))).await;
        assert_eq!(allowed(again), nobody);
    }
);

both_stores!(
    async fn another_user_cannot_see_or_remove_passkeys() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("pkowner").await;
        let (_, other) = t.sign_up("pkother").await;
        let mut auth = authenticator();
        let passkey_id = register(&t, &mut auth, &id, &token).await["passkeyId"].as_str().unwrap().to_owned();
        let (status, _) = t.pk(reqwest::Method::GET, &format!("/v2/users/{id}/passkeys"), Some(&other), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let path = format!("/v2/users/{id}/passkeys/{passkey_id}");
        let (status, _) = t.pk(reqwest::Method::DELETE, &path, Some(&other), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // Nor register one on their record.
        let (status, _) = t.post(&format!("/v2/users/{id}/passkeys/options"), Some(&other), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // Still there; a supervisor may list and remove it.
        let (_, boss) = t.supervisor("pkboss").await;
        let (status, list) = t.pk(reqwest::Method::GET, &format!("/v2/users/{id}/passkeys"), Some(&boss), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["passkeys"].as_array().unwrap().len(), 1);
        let (status, _) = t.pk(reqwest::Method::DELETE, &path, Some(&boss), None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = t.pk(reqwest::Method::DELETE, &path, Some(&boss), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
);

both_stores!(
    async fn garbage_credentials_and_bad_ceremonies_are_400() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("pkgarbage").await;
        let register_path = format!("/v2/users/{id}/passkeys");
        let (_, options) = t.post(&format!("/v2/users/{id}/passkeys/options"), Some(&token), None).await;
        let (ceremony_id, _) = ceremony(options);
        for credential in [
            json!({}),
            json!({"id": "AAAA", "rawId": "!!", "response": 7, "type": "public-key"}),
            json!(42),
            json!("{not json"),
        ] {
            let body = json!({ "ceremonyId": ceremony_id, "credential": credential });
            let (status, out) = t.post(&register_path, Some(&token), Some(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{credential}: {out}");
            assert_eq!(field(&out), "credential", "{out}");
            let body = json!({ "ceremonyId": ceremony_id, "credential": credential });
            let (status, out) = t.post("/v2/auth/passkey", None, Some(body)).await;
            assert_eq!((status, field(&out)), (StatusCode::BAD_REQUEST, "credential"), "{out}");
        }
        // Not JSON at all, an unknown member, no ceremony.
        let res = t
            .http
            .post(t.url("/v2/auth/passkey"))
            .header("X-Api-Key", &t.api_key)
            .header("Content-Type", "application/json")
            .body("{{{")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let (status, out) =
            t.post(&register_path, Some(&token), Some(json!({ "ceremonyId": ceremony_id, "bogus": 1 }))).await;
        assert_eq!((status, field(&out)), (StatusCode::BAD_REQUEST, "bogus"), "{out}");
        let (status, out) =
            t.post("/v2/auth/passkey", None, Some(json!({ "ceremonyId": "nope", "credential": {} }))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");

        // A well-formed credential on a ceremony that is not there.
        let mut auth = authenticator();
        let (_, options) = t.post(&format!("/v2/users/{id}/passkeys/options"), Some(&token), None).await;
        let (_, mut options) = ceremony(options);
        options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = json!(false);
        let ccr: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = auth.do_registration(Url::parse(ORIGIN).unwrap(), ccr).unwrap();
        let body = json!({ "ceremonyId": uuid::Uuid::now_v7(), "credential": credential });
        let (status, out) = t.post(&register_path, Some(&token), Some(body)).await;
        assert_eq!((status, field(&out)), (StatusCode::BAD_REQUEST, "ceremonyId"), "{out}");
    }
);

both_stores!(
    async fn expired_and_reused_ceremonies_are_refused() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("pkexpiry").await;
        let mut auth = authenticator();
        let (_, options) = t.post(&format!("/v2/users/{id}/passkeys/options"), Some(&token), None).await;
        let (ceremony_id, mut options) = ceremony(options);
        options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = json!(false);
        let ccr: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = auth.do_registration(Url::parse(ORIGIN).unwrap(), ccr).unwrap();
        let past = match common::backend() {
            Backend::Postgres => {
                "UPDATE passkey_ceremonies SET expires_at = now() - interval '1 minute' WHERE id = $1 AND app_id = $2"
            }
            Backend::Sqlite => "UPDATE passkey_ceremonies SET expires_at = 0 WHERE id = $1 AND app_id = $2",
        };
        assert!(t.exec2(past, uuid::Uuid::parse_str(&ceremony_id).unwrap(), t.app_id).await);
        let body = json!({ "ceremonyId": ceremony_id, "credential": credential });
        let (status, out) = t.post(&format!("/v2/users/{id}/passkeys"), Some(&token), Some(body.clone())).await;
        assert_eq!((status, field(&out)), (StatusCode::BAD_REQUEST, "ceremonyId"), "{out}");
        assert!(out["errors"][0]["message"].as_str().unwrap().contains("expired"), "{out}");
        // And gone: the same again is unknown.
        let (status, out) = t.post(&format!("/v2/users/{id}/passkeys"), Some(&token), Some(body)).await;
        assert_eq!((status, field(&out)), (StatusCode::BAD_REQUEST, "ceremonyId"), "{out}");
        assert!(!out["errors"][0]["message"].as_str().unwrap().contains("expired"), "{out}");

        // A registration's ceremony is not another user's to finish.
        register(&t, &mut auth, &id, &token).await;
        let (other_id, other) = t.sign_up("pkexpiry2").await;
        let (_, options) = t.post(&format!("/v2/users/{id}/passkeys/options"), Some(&token), None).await;
        let (ceremony_id, _) = ceremony(options);
        let body = json!({ "ceremonyId": ceremony_id, "credential": {} });
        let (status, _) = t.post(&format!("/v2/users/{other_id}/passkeys"), Some(&other), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
);

both_stores!(
    async fn a_counter_that_goes_backwards_is_refused_and_recorded() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("pkclone").await;
        let mut auth = authenticator();
        let passkey_id = register(&t, &mut auth, &id, &token).await["passkeyId"].as_str().unwrap().to_owned();
        // Two assertions: the first made (counter 1) is sent after the
        // second (counter 2), as a clone of the authenticator would.
        let older = assertion(&t, &mut auth, "pkclone").await;
        let newer = assertion(&t, &mut auth, "pkclone").await;
        let (status, out) = t.post("/v2/auth/passkey", None, Some(newer)).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        let (status, out) = t.post("/v2/auth/passkey", None, Some(older)).await;
        assert_eq!((status, reason(&out)), (StatusCode::UNAUTHORIZED, "invalid_credentials"), "{out}");
        let trail = t.trail_of().await;
        assert!(
            trail.iter().any(|r| r["action"] == "passkey.counter_regressed" && r["objectId"] == passkey_id.as_str()),
            "{trail:?}"
        );
        assert!(trail.iter().any(|r| r["action"] == "session.sign_in" && r["outcome"] == "failed"));
        // The passkey still works with a counter that moves on.
        let next = assertion(&t, &mut auth, "pkclone").await;
        let (status, _) = t.post("/v2/auth/passkey", None, Some(next)).await;
        assert_eq!(status, StatusCode::OK);
    }
);

both_stores!(
    async fn passkey_sign_in_of_an_inactive_user_is_refused_like_a_wrong_password() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("pkinactive").await;
        let mut auth = authenticator();
        register(&t, &mut auth, &id, &token).await;
        let (_, boss) = t.supervisor("pkboss2").await;
        let (status, _) =
            t.pk(reqwest::Method::PUT, &format!("/v2/users/{id}"), Some(&boss), Some(json!({"active": false}))).await;
        assert_eq!(status, StatusCode::OK);
        let finish = assertion(&t, &mut auth, "pkinactive").await;
        let (status, out) = t.post("/v2/auth/passkey", None, Some(finish)).await;
        assert_eq!((status, reason(&out)), (StatusCode::UNAUTHORIZED, "invalid_credentials"), "{out}");
    }
);

both_stores!(
    async fn the_operator_sets_and_clears_the_relying_party_with_app_update() {
        let t = spawn().await;
        // An origin off the rp id's domain, or none, is refused.
        let out = common::app_update(&t, &["--webauthn-rp-id", RP_ID, "--webauthn-origin", "https://evil.test"]).await;
        assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = common::app_update(&t, &["--webauthn-rp-id", RP_ID]).await;
        assert!(!out.status.success());
        let (status, _) = t.post("/v2/auth/passkey/options", None, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "nothing was set");

        let out = common::app_update(&t, &["--webauthn-rp-id", RP_ID, "--webauthn-origin", ORIGIN]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Read per request: the running server sees it at once.
        let (status, options) = t.post("/v2/auth/passkey/options", None, None).await;
        assert_eq!(status, StatusCode::OK, "{options}");
        assert_eq!(options["publicKey"]["rpId"], RP_ID);
        assert!(options.get("mediation").is_none());
        assert!(t.trail_of().await.iter().any(|r| r["action"] == "app.update"));

        let out = common::app_update(&t, &["--webauthn-rp-id", ""]).await;
        assert!(out.status.success());
        let (status, body) = t.post("/v2/auth/passkey/options", None, None).await;
        assert_eq!((status, reason(&body)), (StatusCode::BAD_REQUEST, "passkeys_not_configured"));
    }
);

both_stores!(
    async fn the_grpc_door_carries_options_and_credentials_as_json() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("pkgrpc").await;
        let mut users = t.users().await;
        let mut auth = authenticator();
        let started = users
            .start_passkey_registration(
                t.req(pb::StartPasskeyRegistrationRequest { users_id: id.clone() }, Some(&token)),
            )
            .await
            .unwrap()
            .into_inner();
        let mut options: Value = serde_json::from_str(&started.options_json).unwrap();
        options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = json!(false);
        let ccr: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = auth.do_registration(Url::parse(ORIGIN).unwrap(), ccr).unwrap();
        let req = pb::FinishPasskeyRegistrationRequest {
            users_id: id.clone(),
            ceremony_id: started.ceremony_id,
            credential_json: serde_json::to_string(&credential).unwrap(),
            name: String::new(),
        };
        let made = users.finish_passkey_registration(t.req(req, Some(&token))).await.unwrap().into_inner();
        assert_eq!(made.name, "Passkey");

        let req = pb::StartPasskeySignInRequest { username: "pkgrpc".into() };
        let started = users.start_passkey_sign_in(t.req(req, None)).await.unwrap().into_inner();
        let rcr: RequestChallengeResponse = serde_json::from_str(&started.options_json).unwrap();
        let assertion = auth.do_authentication(Url::parse(ORIGIN).unwrap(), rcr).unwrap();
        let req = pb::FinishPasskeySignInRequest {
            ceremony_id: started.ceremony_id.clone(),
            credential_json: serde_json::to_string(&assertion).unwrap(),
        };
        let user = users.finish_passkey_sign_in(t.req(req.clone(), None)).await.unwrap().into_inner();
        assert_eq!(user.users_id, id);
        assert!(!user.session_token.is_empty());
        // Used up; garbage is INVALID_ARGUMENT naming the field.
        let e = users.finish_passkey_sign_in(t.req(req, None)).await.unwrap_err();
        assert_eq!(
            (e.code(), common::violation_field(&e).as_deref()),
            (tonic::Code::InvalidArgument, Some("ceremony_id"))
        );
        let req = pb::FinishPasskeySignInRequest { ceremony_id: started.ceremony_id, credential_json: "[]".into() };
        let e = users.finish_passkey_sign_in(t.req(req, None)).await.unwrap_err();
        assert_eq!(
            (e.code(), common::violation_field(&e).as_deref()),
            (tonic::Code::InvalidArgument, Some("credential_json"))
        );
        let e = users
            .remove_passkey(t.req(pb::RemovePasskeyRequest { users_id: id, passkey_id: made.passkey_id }, None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
);

both_stores!(
    async fn failed_passkey_sign_ins_are_throttled_with_the_password_ones() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("pkthrottle").await;
        let mut auth = authenticator();
        register(&t, &mut auth, &id, &token).await;
        // An assertion of one ceremony sent with another's id: its
        // challenge is not that ceremony's, so it fails, counted against
        // the user it names.
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let stale = assertion(&t, &mut auth, "pkthrottle").await;
            let (status, _) = t.post("/v2/auth/passkey/options", None, Some(json!({ "username": "pkthrottle" }))).await;
            assert_eq!(status, StatusCode::OK);
            let (_, fresh) = t.post("/v2/auth/passkey/options", None, Some(json!({ "username": "pkthrottle" }))).await;
            let body = json!({ "ceremonyId": fresh["ceremonyId"], "credential": stale["credential"] });
            let (status, out) = t.post("/v2/auth/passkey", None, Some(body)).await;
            assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS, "{status} {out}");
            statuses.push(status);
        }
        assert_eq!(&statuses[..5], [StatusCode::UNAUTHORIZED; 5], "5 free failures");
        assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
        // The same count as the password's: its sign-in waits too.
        let body = json!({ "username": "pkthrottle", "password": "correct horse battery" });
        let (status, _) = t.post("/v2/auth/signin", None, Some(body)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    }
);
