//! A passkey as the second factor of a password sign-in (in place of a
//! TOTP code), over JSON and gRPC, on both stores, with the software
//! authenticator of `passkeys.rs`; and the email check of a passkey-only
//! sign-in under `--verify-email required`.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;
use usersvc::pb;
use usersvc::store::{MfaPolicy, VerifyMode};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::prelude::{RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::common::{self, TestApp, spawn};
use crate::passkeys::{ORIGIN, assertion, authenticator, ceremony, configure, field, reason, register};

const PASSWORD: &str = "correct horse battery";

/// A password sign-in; the reply.
async fn password_sign_in(t: &TestApp, username: &str) -> (StatusCode, Value) {
    t.post("/v2/auth/signin", None, Some(json!({ "username": username, "password": PASSWORD }))).await
}

/// The mfaToken of a password sign-in that must ask for a second factor.
async fn mfa_token(t: &TestApp, username: &str) -> String {
    let (status, out) = password_sign_in(t, username).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["mfaRequired"], true, "{out}");
    assert!(out.get("sessionToken").is_none() && out.get("usersId").is_none(), "nothing else: {out}");
    out["mfaToken"].as_str().unwrap().to_owned()
}

/// Passkey options for the token's user, answered by `auth`: the body of
/// the second step (not sent).
async fn passkey_step(t: &TestApp, auth: &mut WebauthnAuthenticator<SoftPasskey>, token: &str) -> Value {
    let (status, options) =
        t.post("/v2/auth/signin/mfa/passkey/options", None, Some(json!({ "mfaToken": token }))).await;
    assert_eq!(status, StatusCode::OK, "{options}");
    let (ceremony_id, options) = ceremony(options);
    assert_eq!(options["publicKey"]["allowCredentials"].as_array().map(Vec::len), Some(1), "{options}");
    let rcr: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let credential = auth.do_authentication(Url::parse(ORIGIN).unwrap(), rcr).expect("the authenticator signs");
    json!({ "mfaToken": token, "ceremonyId": ceremony_id, "credential": credential })
}

async fn second_step(t: &TestApp, body: Value) -> (StatusCode, Value) {
    t.post("/v2/auth/signin/mfa", None, Some(body)).await
}

both_stores!(
    async fn a_passkey_finishes_a_password_sign_in_once() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("ada").await;
        // Before a passkey, the password alone signs in.
        let (status, out) = password_sign_in(&t, "ada").await;
        assert!(status == StatusCode::OK && out["sessionToken"].is_string(), "{out}");
        let mut auth = authenticator();
        register(&t, &mut auth, &id, &token).await;

        let mfa = mfa_token(&t, "ada").await;
        // Options do not use the token up: asked twice, both answered.
        let (status, _) = t.post("/v2/auth/signin/mfa/passkey/options", None, Some(json!({ "mfaToken": mfa }))).await;
        assert_eq!(status, StatusCode::OK);
        let body = passkey_step(&t, &mut auth, &mfa).await;
        let (status, out) = second_step(&t, body).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["usersId"], id.as_str());
        assert!(out.get("mfaRequired").is_none(), "{out}");
        let session = out["sessionToken"].as_str().unwrap().to_owned();
        let res = t.http.get(t.url(&format!("/v2/users/{id}"))).header("X-Api-Key", &t.api_key).bearer_auth(&session);
        let res = res.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "the session works");

        // The token is single use: neither options nor a second step.
        let (status, out) = t.post("/v2/auth/signin/mfa/passkey/options", None, Some(json!({ "mfaToken": mfa }))).await;
        assert_eq!((status, reason(&out)), (StatusCode::UNAUTHORIZED, "invalid_mfa_token"), "{out}");
        let (status, out) = second_step(&t, json!({ "mfaToken": mfa, "code": "123456" })).await;
        assert_eq!((status, reason(&out)), (StatusCode::UNAUTHORIZED, "invalid_mfa_token"), "{out}");
        let (status, out) =
            t.post("/v2/auth/signin/mfa/passkey/options", None, Some(json!({ "mfaToken": "nope" }))).await;
        assert_eq!((status, reason(&out)), (StatusCode::UNAUTHORIZED, "invalid_mfa_token"), "{out}");
        let (status, out) = t.post("/v2/auth/signin/mfa/passkey/options", None, Some(json!({}))).await;
        assert_eq!((status, field(&out)), (StatusCode::BAD_REQUEST, "mfaToken"), "{out}");

        // A second sign-in works the same (the counter moved on).
        let mfa = mfa_token(&t, "ada").await;
        let (status, out) = second_step(&t, passkey_step(&t, &mut auth, &mfa).await).await;
        assert_eq!(status, StatusCode::OK, "{out}");

        let trail = t.trail_of().await;
        let ok: Vec<_> =
            trail.iter().filter(|r| r["action"] == "session.sign_in_mfa" && r["outcome"] == "ok").collect();
        assert_eq!(ok.len(), 2, "{ok:?}");
        assert!(ok.iter().all(|r| r["fields"].as_array().unwrap().contains(&json!("passkey"))), "{ok:?}");
        assert!(!trail.iter().any(|r| r.to_string().contains(&mfa)), "the token is never recorded");
    }
);

both_stores!(
    async fn another_users_passkey_and_garbage_are_refused_and_throttled() {
        let t = spawn().await;
        configure(&t).await;
        let (ada, ada_token) = t.sign_up("ada").await;
        let (bob, bob_token) = t.sign_up("bob").await;
        let mut ada_auth = authenticator();
        let mut bob_auth = authenticator();
        register(&t, &mut ada_auth, &ada, &ada_token).await;
        register(&t, &mut bob_auth, &bob, &bob_token).await;
        let mfa = mfa_token(&t, "ada").await;

        // The caller's mistakes are 400s naming the member, and cost nothing.
        let (status, options) =
            t.post("/v2/auth/signin/mfa/passkey/options", None, Some(json!({ "mfaToken": mfa }))).await;
        assert_eq!(status, StatusCode::OK);
        let ceremony_id = options["ceremonyId"].clone();
        for (body, member) in [
            (json!({ "mfaToken": mfa, "ceremonyId": ceremony_id, "credential": 5 }), "credential"),
            (json!({ "mfaToken": mfa, "ceremonyId": ceremony_id, "credential": { "id": "x" } }), "credential"),
            (json!({ "mfaToken": mfa, "ceremonyId": ceremony_id }), "credential"),
            (json!({ "mfaToken": mfa, "code": "123456", "ceremonyId": ceremony_id, "credential": {} }), "code"),
            (json!({ "mfaToken": mfa }), "code"),
            (json!({ "mfaToken": mfa, "ceremonyId": "not-a-uuid", "credential": { "id": "x" } }), "ceremonyId"),
        ] {
            let (status, out) = second_step(&t, body.clone()).await;
            assert_eq!((status, field(&out)), (StatusCode::BAD_REQUEST, member), "{body}: {out}");
        }
        let res = t
            .http
            .post(t.url("/v2/auth/signin/mfa"))
            .header("X-Api-Key", &t.api_key)
            .header("Content-Type", "application/json")
            .body("{\"mfaToken\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "not JSON");

        // Bob's own good assertion, for ada's token: a wrong factor.
        let bobs = assertion(&t, &mut bob_auth, "bob").await;
        let (status, options) =
            t.post("/v2/auth/signin/mfa/passkey/options", None, Some(json!({ "mfaToken": mfa }))).await;
        assert_eq!(status, StatusCode::OK);
        let body = json!({ "mfaToken": mfa, "ceremonyId": options["ceremonyId"], "credential": bobs["credential"] });
        let (status, out) = second_step(&t, body).await;
        assert_eq!((status, reason(&out)), (StatusCode::UNAUTHORIZED, "invalid_code"), "{out}");

        // Ada's own assertion of another ceremony: wrong too; then throttled.
        let mut statuses = vec![status];
        for _ in 0..5 {
            let stale = passkey_step(&t, &mut ada_auth, &mfa).await;
            let (_, fresh) =
                t.post("/v2/auth/signin/mfa/passkey/options", None, Some(json!({ "mfaToken": mfa }))).await;
            let body = json!({ "mfaToken": mfa, "ceremonyId": fresh["ceremonyId"], "credential": stale["credential"] });
            let (status, out) = second_step(&t, body).await;
            assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS, "{status} {out}");
            statuses.push(status);
        }
        assert_eq!(&statuses[..5], [StatusCode::UNAUTHORIZED; 5], "5 free failures");
        assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
        // Even the right passkey waits now, and the token was not used up.
        let (status, out) = second_step(&t, passkey_step(&t, &mut ada_auth, &mfa).await).await;
        assert_eq!((status, reason(&out)), (StatusCode::TOO_MANY_REQUESTS, "throttled"), "{out}");

        let trail = t.trail_of().await;
        let failed = trail
            .iter()
            .filter(|r| r["action"] == "session.sign_in_mfa" && r["outcome"] == "failed")
            .filter(|r| r["fields"].as_array().unwrap().contains(&json!("passkey")))
            .count();
        assert_eq!(failed, 5, "every refusal is recorded");
        assert!(trail.iter().any(|r| r["action"] == "session.sign_in_mfa" && r["outcome"] == "throttled"));
    }
);

both_stores!(
    async fn a_supervisor_with_only_a_passkey_passes_the_required_for_supervisors_gate() {
        let t = spawn().await;
        configure(&t).await;
        common::admin(&t.app).set_mfa_policy(t.app_id, MfaPolicy::RequiredForSupervisors).await.unwrap();
        let (boss, boss_token) = t.supervisor("chief").await;
        let users = |token: &str| {
            t.http.get(t.url("/v2/users")).header("X-Api-Key", &t.api_key).bearer_auth(token.to_owned()).send()
        };
        let res = users(&boss_token).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let got: Value = res.json().await.unwrap();
        assert_eq!(reason(&got), "mfa_required");
        let mut auth = authenticator();
        register(&t, &mut auth, &boss, &boss_token).await;
        assert_eq!(users(&boss_token).await.unwrap().status(), StatusCode::OK, "a passkey is a second factor");
        // And the password alone no longer signs them in.
        let mfa = mfa_token(&t, "chief").await;
        let (status, out) = second_step(&t, passkey_step(&t, &mut auth, &mfa).await).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(users(out["sessionToken"].as_str().unwrap()).await.unwrap().status(), StatusCode::OK);
    }
);

both_stores!(
    async fn the_grpc_door_takes_a_passkey_as_the_second_factor() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("grace").await;
        let mut auth = authenticator();
        register(&t, &mut auth, &id, &token).await;
        let mut users = t.users().await;
        let sign_in = pb::SignInRequest { username: "grace".into(), password: PASSWORD.into() };
        let first = users.sign_in(t.req(sign_in, None)).await.unwrap().into_inner();
        assert!(first.mfa_required && !first.mfa_token.is_empty() && first.session_token.is_empty());

        let e = users
            .start_mfa_passkey(t.req(pb::StartMfaPasskeyRequest { mfa_token: "nope".into() }, None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(e.get_error_details().error_info().unwrap().reason, "INVALID_MFA_TOKEN");

        let start = pb::StartMfaPasskeyRequest { mfa_token: first.mfa_token.clone() };
        let ceremony = users.start_mfa_passkey(t.req(start, None)).await.unwrap().into_inner();
        let rcr: RequestChallengeResponse = serde_json::from_str(&ceremony.options_json).unwrap();
        let credential = auth.do_authentication(Url::parse(ORIGIN).unwrap(), rcr).unwrap();
        let mut req = pb::SignInMfaRequest {
            mfa_token: first.mfa_token.clone(),
            ceremony_id: ceremony.ceremony_id,
            credential_json: serde_json::to_string(&credential).unwrap(),
            ..Default::default()
        };
        // Both a code and a credential: refused as the caller's mistake.
        req.code = "123456".into();
        let e = users.sign_in_mfa(t.req(req.clone(), None)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        req.code.clear();
        let user = users.sign_in_mfa(t.req(req.clone(), None)).await.unwrap().into_inner();
        assert_eq!(user.users_id, id);
        assert!(!user.session_token.is_empty() && !user.mfa_required);
        let e = users.sign_in_mfa(t.req(req, None)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
);

both_stores!(
    async fn a_passkey_sign_in_of_an_unverified_user_is_refused_under_required() {
        let t = spawn().await;
        configure(&t).await;
        let (id, token) = t.sign_up("una").await;
        let mut auth = authenticator();
        register(&t, &mut auth, &id, &token).await;
        common::admin(&t.app).set_verify_email(t.app_id, VerifyMode::Required).await.unwrap();
        let body = assertion(&t, &mut auth, "una").await;
        let (status, out) = t.post("/v2/auth/passkey", None, Some(body)).await;
        assert_eq!((status, reason(&out)), (StatusCode::FORBIDDEN, "email_unverified"), "{out}");
        assert!(out.get("sessionToken").is_none());
        let errors = out["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "nothing else: {out}");
        // As for the password.
        let (status, out) = password_sign_in(&t, "una").await;
        assert_eq!((status, reason(&out)), (StatusCode::FORBIDDEN, "email_unverified"), "{out}");
        // Optional again: the passkey signs in.
        common::admin(&t.app).set_verify_email(t.app_id, VerifyMode::Optional).await.unwrap();
        let (status, out) = t.post("/v2/auth/passkey", None, Some(assertion(&t, &mut auth, "una").await)).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        let trail = t.trail_of().await;
        assert!(trail.iter().any(|r| r["action"] == "session.sign_in" && r["outcome"] == "unverified"));
    }
);

both_stores!(
    async fn a_key_rotation_reseals_totp_secrets_and_passkeys_and_both_still_sign_in() {
        let t = spawn().await;
        configure(&t).await;
        let (ada, ada_token) = t.sign_up("ada").await;
        let mut auth = authenticator();
        register(&t, &mut auth, &ada, &ada_token).await;
        let (bea, bea_token) = t.sign_up("bea").await;
        let (secret, _) = crate::totp::enrol(&t, &bea, &bea_token).await;

        let admin = common::admin(&t.app);
        let done = admin.rotate_app(t.app_id).await.unwrap();
        assert_eq!((done.users, done.totp_secrets, done.passkeys), (2, 1, 1), "{done:?}");
        // Under the new key: what each ciphertext names.
        let store = admin.store.as_ref();
        let current = store.current_app_key(t.app_id, usersvc::crypto::keyring::DATA).await.unwrap().unwrap().id;
        let secrets = store.sealed_page(usersvc::store::ApartSeal::TotpSecret, t.app_id, None, 10).await.unwrap();
        let passkeys = store.sealed_page(usersvc::store::ApartSeal::Passkey, t.app_id, None, 10).await.unwrap();
        assert_eq!((secrets.len(), passkeys.len()), (1, 1));
        for sealed in secrets.iter().chain(&passkeys) {
            assert_eq!(usersvc::crypto::key_id_of(&sealed.ct).unwrap(), current);
        }
        // The next rotation moves each on once more, and only once.
        let again = admin.rotate_app(t.app_id).await.unwrap();
        assert_eq!((again.users, again.totp_secrets, again.passkeys), (2, 1, 1), "{again:?}");

        // Both factors still finish a password sign-in.
        let body = passkey_step(&t, &mut auth, &mfa_token(&t, "ada").await).await;
        let (status, out) = second_step(&t, body).await;
        assert_eq!((status, out["usersId"].as_str()), (StatusCode::OK, Some(ada.as_str())), "{out}");
        let code = crate::totp::code_at(&secret, crate::totp::now() + 30);
        let (status, out) = second_step(&t, json!({ "mfaToken": mfa_token(&t, "bea").await, "code": code })).await;
        assert_eq!((status, out["usersId"].as_str()), (StatusCode::OK, Some(bea.as_str())), "{out}");
    }
);

both_stores!(
    async fn the_users_export_lists_their_second_factors_and_none_of_their_secrets() {
        let t = spawn().await;
        configure(&t).await;
        let (ada, ada_token) = t.sign_up("ada").await;
        let mut auth = authenticator();
        let registered = register(&t, &mut auth, &ada, &ada_token).await;
        let (_, codes) = crate::totp::enrol(&t, &ada, &ada_token).await;

        let text = export_of(&t, &ada_token, &ada).await;
        let doc: Value = serde_json::from_str(&text).unwrap();
        let factors = &doc["secondFactors"];
        // (A number of the document is a double, as in any protobuf Struct.)
        assert_eq!(factors["totp"]["confirmed"], true, "{doc}");
        assert_eq!(factors["totp"]["recoveryCodesLeft"].as_f64(), Some(10.0), "{doc}");
        let passkeys = factors["passkeys"].as_array().unwrap();
        assert_eq!(passkeys.len(), 1, "{doc}");
        assert_eq!(passkeys[0]["passkeyId"], registered["passkeyId"]);
        assert_eq!(passkeys[0]["name"], "My laptop");
        // Nothing that would let the reader sign in as the user.
        for code in &codes {
            assert!(!text.contains(code.as_str()), "a recovery code: {text}");
        }
        for word in ["otpauth", "secret", "publicKey", "credential", "cred_id", "counter"] {
            assert!(!text.contains(word), "{word}: {text}");
        }

        // Without factors: none listed.
        let (bea, bea_token) = t.sign_up("bea").await;
        let doc: Value = serde_json::from_str(&export_of(&t, &bea_token, &bea).await).unwrap();
        assert_eq!(doc["secondFactors"], json!({ "passkeys": [] }));
    }
);

/// `GET /v2/users/{id}/export` with the token; the body.
async fn export_of(t: &TestApp, token: &str, id: &str) -> String {
    let req = t.http.get(t.url(&format!("/v2/users/{id}/export"))).header("X-Api-Key", &t.api_key);
    let res = req.bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.unwrap()
}
