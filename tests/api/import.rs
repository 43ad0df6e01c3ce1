//! `usersvc import`, run as an operator would on a file from another
//! system: users with bcrypt, PBKDF2, scrypt, argon2i and plaintext
//! passwords sign in with their old passwords (and leave with argon2id
//! hashes), a second run adds nothing, bad lines are named and the good
//! ones still go in.

use serde_json::{Value, json};
use usersvc::pb;

use crate::common::{self, TestApp, spawn};

/// Users in the big file: the 20,000.
const USERS: usize = 20_000;

async fn sign_in(t: &TestApp, username: &str, password: &str) -> (u16, Value) {
    let res = t
        .http
        .post(t.url("/v2/auth/signin"))
        .header("X-Api-Key", format!("browser api.catalyze.io {}", t.api_key))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

/// Runs `usersvc import` on the file; (success, summary, stderr).
async fn import(t: &TestApp, args: &[&str], file: &std::path::Path) -> (bool, Value, String) {
    let out = common::usersvc_awaited()
        .arg("import")
        .args(["--app", &t.app_id.to_string()])
        .args(args)
        .arg(file)
        .env("DATABASE_URL", &t.db_url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.success(), summary, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write(lines: &[String]) -> tempfile_path::Path {
    tempfile_path::write(&lines.join("\n"))
}

/// A file in the temporary directory, removed when dropped.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    impl std::ops::Deref for Path {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }
    pub fn write(text: &str) -> Path {
        let p = std::env::temp_dir().join(format!("usersvc-import-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&p, text).unwrap();
        Path(p)
    }
}

fn hashes() -> Vec<(&'static str, String)> {
    use password_hash::{PasswordHasher as _, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let argon2i = argon2::Argon2::new(
        argon2::Algorithm::Argon2i,
        argon2::Version::V0x13,
        argon2::Params::new(8192, 3, 1, None).unwrap(),
    )
    .hash_password(b"argon2i password", &salt)
    .unwrap()
    .to_string();
    let pbkdf2 = pbkdf2::Pbkdf2
        .hash_password_customized(
            b"pbkdf2 password",
            Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
            None,
            pbkdf2::Params { rounds: 10_000, output_length: 32 },
            &salt,
        )
        .unwrap()
        .to_string();
    let scrypt = scrypt::Scrypt
        .hash_password_customized(b"scrypt password", None, None, scrypt::Params::new(12, 8, 1, 32).unwrap(), &salt)
        .unwrap()
        .to_string();
    vec![
        ("bcrypt password", bcrypt::hash("bcrypt password", 4).unwrap()),
        ("argon2i password", argon2i),
        ("pbkdf2 password", pbkdf2),
        ("scrypt password", scrypt),
    ]
}

both_stores! {
async fn twenty_thousand_users_come_in_and_sign_in_with_their_old_passwords() {
    let t = spawn().await;
    let (_, boss) = t.supervisor("import-boss").await;
    t.groups()
        .await
        .create_group(t.req(
            pb::CreateGroupRequest { group: Some(pb::Group { name: "nurses".into(), ..Default::default() }) },
            Some(&boss),
        ))
        .await
        .unwrap();

    let schemes = hashes();
    let mut lines = Vec::with_capacity(USERS + 10);
    for i in 0..USERS {
        let line = match i {
            // A few in the clear: hashed on import (at the service's cost).
            0..8 => json!({"username": format!("imp-{i}"), "password": format!("plain password {i}")}),
            8..12 => {
                let (_, hash) = &schemes[i - 8];
                json!({"username": format!("imp-{i}"), "passwordHash": hash, "groups": ["nurses"],
                       "email": {"primary": format!("imp-{i}@example.org")}, "name": {"firstName": "Imp"}})
            }
            _ => {
                let (_, hash) = &schemes[i % schemes.len()];
                json!({"username": format!("imp-{i}"), "passwordHash": hash, "createdAt": "2019-03-04T05:06:07Z"})
            }
        };
        lines.push(line.to_string());
    }
    let good = lines.len();
    // Bad lines among the good, each named by its number.
    let bad = [
        (lines.len() + 1, "{not json".to_owned(), "not JSON"),
        (lines.len() + 2, json!({"username": "bad-1", "password": "long enough", "shoeSize": 9}).to_string(), "shoeSize"),
        (lines.len() + 3, json!({"username": "bad-2", "password": "long enough", "age": 900}).to_string(), "age"),
        (lines.len() + 4, json!({"username": "bad-3", "passwordHash": "$md5$aa$bb"}).to_string(), "unknown password hash scheme"),
        (lines.len() + 5, json!({"username": "bad-4", "password": "long enough", "groups": ["ghosts"]}).to_string(), "ghosts"),
        (lines.len() + 6, json!({"username": "bad-5"}).to_string(), "password or passwordHash"),
    ];
    lines.extend(bad.iter().map(|(_, l, _)| l.clone()));
    // A repeat of a good line: skipped, not failed.
    lines.push(lines[20].clone());
    let file = write(&lines);

    let (ok, summary, stderr) = import(&t, &[], &file).await;
    assert!(!ok, "bad lines make the exit status non-zero");
    assert_eq!(summary["read"], lines.len(), "{summary} {stderr}");
    assert_eq!(summary["imported"], good, "{summary} {stderr}");
    assert_eq!(summary["skipped"], 1, "{summary}");
    assert_eq!(summary["failed"], bad.len(), "{summary}");
    for (n, _, why) in &bad {
        let said = stderr.lines().find(|l| l.contains(&format!("line {n}:"))).unwrap_or_else(|| panic!("line {n} named: {stderr}"));
        assert!(said.contains(why), "line {n}: {said}");
    }
    assert!(!stderr.contains("long enough"), "no password echoed");

    // Every scheme signs in with the old password, once rehashed.
    for (i, (password, _)) in schemes.iter().enumerate() {
        let name = format!("imp-{}", 8 + i);
        let (status, user) = sign_in(&t, &name, password).await;
        assert_eq!(status, 200, "{name}: {user}");
        assert_eq!(user["email"]["primary"], format!("{name}@example.org"));
        let id = user["usersId"].as_str().unwrap().to_owned();
        let rehashed = "SELECT count(*) FROM users WHERE id = $1 AND password_hash LIKE '$argon2id$v=19$m=19456,t=2,p=1$%'";
        assert_eq!(t.count(rehashed, &id).await, 1, "{name} rehashed to argon2id at the first sign-in");
        assert_eq!(sign_in(&t, &name, password).await.0, 200, "{name} signs in again under the new hash");
        assert_eq!(sign_in(&t, &name, "wrong password").await.0, 401);
        // Named groups and the default ones, as at sign-up.
        assert_eq!(t.count("SELECT count(*) FROM memberships WHERE user_id = $1", &id).await, 1);
    }
    assert_eq!(sign_in(&t, "imp-3", "plain password 3").await.0, 200);
    assert_eq!(sign_in(&t, "imp-1000", schemes[1000 % schemes.len()].0).await.0, 200);
    assert_eq!(sign_in(&t, "imp-1000", "bcrypt password plus").await.0, 401);

    // One user.import record per user, from the operator.
    let records = t.count_app("SELECT count(*) FROM audit_events WHERE action = 'user.import' AND app_id = $1").await;
    assert_eq!(records as usize, good);

    // A second run adds nothing and says how many it skipped.
    let (_, again, _) = import(&t, &[], &file).await;
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["skipped"], good + 1, "{again}");

    // A page walk over gRPC lists every user once, oldest first: the
    // imported users' ids carry their old creation time.
    let mut users = t.users().await;
    let (mut token, mut seen) = (String::new(), std::collections::BTreeSet::new());
    let mut pages = 0;
    loop {
        let page = users
            .list_users(t.req(pb::ListUsersRequest { page_size: 1000, page_token: token, ..Default::default() }, Some(&boss)))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        for u in page.users {
            assert!(seen.insert(u.users_id), "listed once");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), good + 1, "every imported user and the supervisor");
    assert!(pages >= 20);
}
}

both_stores! {
async fn parse_and_keycloak_exports_import() {
    let t = spawn().await;
    let parse = json!({"results": [
        {"_id": "p1", "username": "parse-ada", "email": "ada@example.org",
         "_hashed_password": bcrypt::hash("parse password", 4).unwrap(),
         "_created_at": {"$date": "2018-01-01T00:00:00.000Z"}, "_rperm": ["*"], "clinic": "north"},
        {"_id": "p2", "username": "parse-nopass"}
    ]});
    let file = write(&[parse.to_string()]);
    let (ok, summary, stderr) = import(&t, &["--format", "parse"], &file).await;
    assert!(!ok);
    assert_eq!((summary["imported"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert!(stderr.contains("user 2:"), "{stderr}");
    let (status, user) = sign_in(&t, "parse-ada", "parse password").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["createdAt"], "2018-01-01T00:00:00Z");
    assert_eq!(user["extras"]["clinic"], "north");

    // Keycloak's PBKDF2 credential, made as Keycloak makes it.
    use base64::{Engine, engine::general_purpose::STANDARD};
    let salt = b"keycloak-salt-16";
    let mut derived = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"keycloak password", salt, 27_500, &mut derived);
    let realm = json!({"realm": "clinic", "users": [{
        "username": "kc-bob", "email": "bob@example.org", "firstName": "Bob", "lastName": "Keys", "enabled": true,
        "credentials": [{"type": "password",
            "secretData": json!({"value": STANDARD.encode(derived), "salt": STANDARD.encode(salt)}).to_string(),
            "credentialData": json!({"hashIterations": 27_500, "algorithm": "pbkdf2-sha256", "additionalParameters": {}}).to_string()}]
    }]});
    let file = write(&[realm.to_string()]);
    let (ok, summary, stderr) = import(&t, &["--format", "keycloak"], &file).await;
    assert!(ok, "{summary} {stderr}");
    let (status, user) = sign_in(&t, "kc-bob", "keycloak password").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["name"]["lastName"], "Keys");
}
}

async fn get(t: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let res = t
        .http
        .get(t.url(path))
        .header("X-Api-Key", format!("browser api.catalyze.io {}", t.api_key))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

both_stores! {
async fn export_gives_the_whole_record_and_reimports_elsewhere() {
    let t = spawn().await;
    let (_, boss) = t.supervisor("export-boss").await;
    let nurses = t
        .groups()
        .await
        .create_group(t.req(
            pb::CreateGroupRequest { group: Some(pb::Group { name: "nurses".into(), ..Default::default() }) },
            Some(&boss),
        ))
        .await
        .unwrap()
        .into_inner();
    let (ada, ada_token) = t.sign_up("export-ada").await;
    let (_, eve_token) = t.sign_up("export-eve").await;
    t.groups()
        .await
        .add_member(t.req(pb::AddMemberRequest { groups_id: nurses.groups_id.clone(), users_id: ada.clone() }, Some(&boss)))
        .await
        .unwrap();
    assert_eq!(get(&t, &format!("/v2/users/{ada}"), &boss).await.0, 200, "a disclosure to account for");

    // The user's own copy: everything but the password hash.
    let (status, doc) = get(&t, &format!("/v2/users/{ada}/export"), &ada_token).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["usersId"], ada.as_str());
    assert_eq!(doc["username"], "export-ada");
    assert_eq!(doc["email"]["primary"], "export-ada@example.com");
    assert_eq!(doc["supervisor"], false);
    assert!(doc["groups"].as_array().unwrap().iter().any(|g| g["name"] == "nurses"), "{doc}");
    assert_eq!(doc["sessions"].as_array().unwrap().len(), 1, "{doc}");
    let disclosed = doc["disclosures"].as_array().unwrap();
    assert!(disclosed.iter().any(|d| d["action"] == "user.read" && d["actor"] == "supervisor"), "{doc}");
    assert!(doc.get("passwordHash").is_none() && !doc.to_string().contains("$argon2"), "never a hash over HTTP");
    // A supervisor may; to another user it is not there; nobody unknown is found.
    assert_eq!(get(&t, &format!("/v2/users/{ada}/export"), &boss).await.0, 200);
    assert_eq!(get(&t, &format!("/v2/users/{ada}/export"), &eve_token).await.0, 404);
    assert_eq!(get(&t, &format!("/v2/users/{}/export", uuid::Uuid::now_v7()), &boss).await.0, 404);
    assert_eq!(get(&t, "/v2/users/not-an-id/export", &boss).await.0, 400);
    let exports = t.count("SELECT count(*) FROM audit_events WHERE action = 'user.export' AND subject_id = $1", &ada).await;
    assert_eq!(exports, 2, "each export recorded");

    // The operator's export of the application, into a second application.
    let out = common::cli(&t.db_url, &["export", "--app", &t.app_id.to_string()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l.contains("\"passwordHash\":\"$argon2id$")), "the operator's form carries hashes");
    let file = write(&lines);
    let (app2, key2) = crate::common::new_application(&t.app).await;
    let imported = common::usersvc_awaited()
        .args(["import", "--create-groups", "--app", &app2.to_string()])
        .arg(&*file)
        .env("DATABASE_URL", &t.db_url)
        .output()
        .await
        .unwrap();
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let summary: Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(summary["imported"], 3, "{summary}");

    let res = t
        .http
        .post(t.url("/v2/auth/signin"))
        .header("X-Api-Key", format!("browser api.catalyze.io {key2}"))
        .json(&json!({"username": "export-ada", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "the same password signs in to the second application");
    let moved: Value = res.json().await.unwrap();
    assert_ne!(moved["usersId"], ada.as_str(), "a new id there");
    assert_eq!(moved["email"], doc["email"]);
    assert_eq!(moved["createdAt"], doc["createdAt"], "joined when they joined");
    let groups = t.count("SELECT count(*) FROM memberships m JOIN groups g ON g.id = m.group_id WHERE g.name = 'nurses' AND m.user_id = $1",
        moved["usersId"].as_str().unwrap()).await;
    assert_eq!(groups, 1, "and in the group of the same name");
    let boss2 = t.count("SELECT count(*) FROM users WHERE app_id = $1 AND supervisor", &app2.to_string()).await;
    assert_eq!(boss2, 1, "the supervisor is one there too");
}
}
