//! `GET /v2/openapi.json` against the server it documents: every operation
//! of the document is served, each documented path answers exactly its
//! documented methods, every `$ref` resolves, and the user model is whole.
//! (The router and the document are built from one table,
//! `src/gateway/routes.rs`, so no route can be in one and not the other.)

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{TestApp, spawn};

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch", "head", "options", "trace"];

/// A path of the document with each parameter filled.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { uuid::Uuid::new_v4().to_string() } else { seg.to_owned() })
        .collect::<Vec<_>>()
        .join("/")
}

impl TestApp {
    async fn openapi(&self) -> Value {
        let res = self.http.get(self.url("/v2/openapi.json")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(ct.starts_with("application/json"), "{ct}");
        res.json().await.unwrap()
    }

    /// Sends `method path` with the key and no body; fails when the router
    /// has no such route or method.
    async fn assert_served(&self, method: &str, path: &str) {
        let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let url = self.url(&concrete(path));
        let res = self
            .http
            .request(m, &url)
            .header("X-Api-Key", format!("browser usersvc.test {}", self.api_key))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}: {text}");
        assert!(
            !(status == StatusCode::NOT_FOUND && text.contains("no such route")),
            "{method} {url} is not routed: {text}"
        );
    }

    /// PATCH, which no route takes, is refused with 405 and an `Allow` that
    /// names exactly the documented methods (and HEAD, which GET brings).
    async fn assert_methods(&self, path: &str, item: &Value) {
        let mut documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| METHODS.contains(&k.as_str()))
            .map(|k| k.to_ascii_uppercase())
            .collect();
        if documented.iter().any(|m| m == "GET") {
            documented.push("HEAD".into());
        }
        documented.sort();
        let url = self.url(&concrete(path));
        let res = self.http.patch(&url).header("X-Api-Key", &self.api_key).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "PATCH {url}");
        let allow = res.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let mut allowed: Vec<String> = allow.split(',').map(|m| m.trim().to_owned()).collect();
        allowed.sort();
        assert_eq!(allowed, documented, "Allow of {path}");
    }
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.strip_prefix('#').unwrap()).unwrap_or_else(|| panic!("unresolved {r}"))),
        None => v,
    }
}

/// The schema of `path` ("email.primary", "addresses[].geocode") inside a
/// component, following `$ref`s and arrays.
fn member<'a>(doc: &'a Value, schema: &'a Value, path: &str) -> &'a Value {
    let mut s = resolve(doc, schema);
    for seg in path.split('.') {
        let (name, array) = seg.strip_suffix("[]").map_or((seg, false), |n| (n, true));
        s = resolve(doc, s["properties"].get(name).unwrap_or_else(|| panic!("no member {name} of {path}")));
        if array {
            assert_eq!(s["type"], "array", "{path}: {name} is not an array");
            s = resolve(doc, &s["items"]);
        }
    }
    s
}

/// Every `$ref` in the document resolves.
fn assert_refs_resolve(doc: &Value, v: &Value, at: &str) {
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("$ref") {
                let r = r.as_str().unwrap();
                let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{at}: non-local $ref {r}"));
                assert!(doc.pointer(pointer).is_some(), "{at}: $ref {r} does not resolve");
            }
            for (k, c) in o {
                assert_refs_resolve(doc, c, &format!("{at}/{k}"));
            }
        }
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| assert_refs_resolve(doc, c, &format!("{at}/{i}"))),
        _ => {}
    }
}

/// Every member of a reply is a property of its schema, down the tree
/// (`extras` is any JSON).
fn assert_conforms(doc: &Value, schema: &Value, v: &Value, at: &str) {
    let s = resolve(doc, schema);
    match v {
        Value::Object(o) if s.get("properties").is_some() => {
            for (k, c) in o {
                let p = s["properties"].get(k).unwrap_or_else(|| panic!("{at}.{k} is not in the schema"));
                assert_conforms(doc, p, c, &format!("{at}.{k}"));
            }
        }
        Value::Array(items) if s["type"] == "array" => {
            items.iter().for_each(|c| assert_conforms(doc, &s["items"], c, &format!("{at}[]")));
        }
        Value::String(_) => assert_eq!(s["type"], "string", "{at}"),
        Value::Bool(_) => assert_eq!(s["type"], "boolean", "{at}"),
        Value::Number(_) => assert!(s["type"] == "integer" || s["type"] == "number", "{at}"),
        _ => {}
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

both_stores! {
async fn openapi_documents_every_route_of_the_router() {
    let t = spawn().await;
    let doc = t.openapi().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();

    // Every documented operation served, and no other method on its path.
    assert!(paths.len() >= 18, "only {} paths documented", paths.len());
    for (path, item) in paths {
        t.assert_methods(path, item).await;
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            t.assert_served(method, path).await;
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path}: summary");
            // 201 where the operation makes a resource (a passkey).
            let ok = &op["responses"];
            assert!(ok["200"].is_object() || ok["201"].is_object(), "{method} {path}: 200");
            for (status, res) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let errors = &res["content"]["application/json"]["schema"]["$ref"];
                    let html = res["content"]["text/html"].is_object();
                    assert!(errors == "#/components/schemas/Errors" || html, "{method} {path} {status}: {res}");
                }
            }
            assert!(op["security"].is_array(), "{method} {path}: security");
        }
    }

    assert_refs_resolve(&doc, &doc, "#");

    // Security as the service enforces it.
    let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    assert_eq!(security("/v2/users", "post"), json!([{"apiKey": []}, {"apiKey": [], "bearer": []}]));
    assert_eq!(security("/v2/users/{usersId}", "get"), json!([{"apiKey": [], "bearer": []}]));
    assert_eq!(security("/v2/auth/signin", "post"), json!([{"apiKey": []}]));
    assert_eq!(security("/v2/reset/{token}", "post"), json!([]));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["apiKey"], json!({"type": "apiKey", "in": "header", "name": "X-Api-Key", "description": schemes["apiKey"]["description"]}));
    assert_eq!(schemes["bearer"]["scheme"], "bearer");

    // The documented bodies, as examples.
    let example = |path: &str, method: &str| doc["paths"][path][method]["requestBody"]["content"]["application/json"]["example"].clone();
    assert_eq!(example("/v2/users", "post"), fixture("create_short.json"));
    assert_eq!(example("/v2/users/{usersId}", "put"), fixture("update.json"));
    assert_eq!(example("/v2/users/forgotUsername", "post"), fixture("forgot_username.json"));

    // Bare arrays and empty objects where the documentation has them.
    let ok = |path: &str, method: &str| doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"].clone();
    assert_eq!(ok("/v2/users/{usersId}/groups", "get"), json!({"type": "array", "items": {"$ref": "#/components/schemas/GroupRef"}}));
    assert_eq!(ok("/v2/groups/{groupsId}/members", "get"), json!({"type": "array", "items": {"type": "string"}}));
    assert_eq!(ok("/v2/app/{appId}/groups", "get"), json!({"type": "array", "items": {"$ref": "#/components/schemas/Group"}}));
    assert_eq!(ok("/v2/app/{appId}/groups/default", "get"), json!({"type": "array", "items": {"$ref": "#/components/schemas/Group"}}));
    assert_eq!(ok("/v2/auth/sessions", "get"), json!({"type": "array", "items": {"$ref": "#/components/schemas/Session"}}));
    // Those bare arrays come a page at a time: pageSize and pageToken, and a Link to the next page.
    for path in ["/v2/users/{usersId}/groups", "/v2/groups/{groupsId}/members", "/v2/app/{appId}/groups", "/v2/app/{appId}/groups/default", "/v2/auth/sessions"] {
        let op = &doc["paths"][path]["get"];
        assert_eq!(op["responses"]["200"]["headers"]["Link"], json!({"$ref": "#/components/headers/Link"}), "{path}");
        let params = op["parameters"].as_array().unwrap();
        let size = params.iter().find(|p| p["name"] == "pageSize").unwrap_or_else(|| panic!("{path}: pageSize"));
        assert_eq!((size["in"].as_str(), size["schema"]["maximum"].as_i64()), (Some("query"), Some(1000)), "{path}");
        assert!(params.iter().any(|p| p["name"] == "pageToken"), "{path}: pageToken");
        assert!(op["responses"]["400"].is_object(), "{path}: a bad pageSize is a 400");
    }
    // The user listing's filters, each a query parameter.
    let listing = doc["paths"]["/v2/users"]["get"]["parameters"].as_array().unwrap();
    for name in ["pageSize", "pageToken", "email", "username", "groupsId", "active", "mrn"] {
        let p = listing.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("listUsers: {name}"));
        assert_eq!(p["in"], "query", "{name}");
    }
    assert!(doc["paths"]["/v2/users/{usersId}"]["get"]["responses"]["200"]["headers"].get("Link").is_none());
    for (path, method) in [("/v2/users/{usersId}", "delete"), ("/v2/auth/signout", "get"), ("/v2/users/forgotUsername", "post"), ("/v2/{appId}/reset/user/{username}", "get")] {
        assert_eq!(resolve(&doc, &ok(path, method))["maxProperties"], 0, "{method} {path}");
    }
    let reset_form = &doc["paths"]["/v2/reset/{token}"];
    assert!(reset_form["get"]["responses"]["200"]["content"]["text/html"].is_object());
    let form = resolve(&doc, &reset_form["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]);
    assert!(form["properties"]["password"].is_object() && form["properties"]["confirm"].is_object());
    let errors = &doc["components"]["schemas"]["Errors"];
    assert_eq!(member(&doc, errors, "errors[].code")["type"], "integer");
    assert_eq!(member(&doc, errors, "errors[].reason")["type"], "string");
    assert_eq!(member(&doc, errors, "errors[].field")["type"], "string");
    assert!(doc["paths"]["/v2/auth/signin"]["post"]["responses"]["429"].is_object());

    // The whole user model, from the descriptors.
    let user = &doc["components"]["schemas"]["User"];
    for (path, ty) in [
        ("username", "string"), ("password", "string"), ("email.primary", "string"), ("email.other", "string"),
        ("name.firstName", "string"), ("name.maidenName", "string"), ("phoneNumber.preferred", "string"),
        ("dob", "string"), ("age", "integer"), ("addresses[].addressLine1", "string"),
        ("addresses[].zipCode", "string"), ("addresses[].geocode.latitude", "number"), ("gender", "string"),
        ("maritalStatus", "string"), ("guardians[].guardianId", "string"), ("confCode", "string"),
        ("languages[].languageMode", "string"), ("socialIds[].handle", "string"), ("mrns[].institutionsId", "string"),
        ("healthPlans[].memberId", "string"), ("avatar", "string"), ("ssn", "string"), ("profilePhoto", "string"),
        ("sessionToken", "string"), ("usersId", "string"), ("createdAt", "string"), ("updatedAt", "string"),
        ("active", "boolean"),
    ] {
        assert_eq!(member(&doc, user, path)["type"], ty, "User.{path}");
    }
    assert_eq!(user["properties"]["extras"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["description"], "extras is any JSON");
    for ro in ["usersId", "createdAt", "updatedAt", "sessionToken"] {
        assert_eq!(user["properties"][ro]["readOnly"], true, "{ro}");
    }
    for wo in ["username", "password"] {
        assert_eq!(user["properties"][wo]["writeOnly"], true, "{wo}");
    }
    assert_eq!(doc["components"]["schemas"]["Group"]["properties"]["groupsId"]["readOnly"], true);
    assert!(user["properties"]["email"]["description"].as_str().unwrap().contains("primary"), "comments from the proto");

    // A real reply has no member the document does not know.
    let body = fixture("create_full.json");
    let mut body = body.as_object().unwrap().clone();
    body.insert("password".into(), json!("correct horse battery"));
    let res = t.http.post(t.url("/v2/users")).header("X-Api-Key", &t.api_key).json(&body).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let created: Value = res.json().await.unwrap();
    assert_conforms(&doc, &ok("/v2/users", "post"), &created, "User");
    let res = t.http.get(t.url("/v2/auth/sessions")).header("X-Api-Key", &t.api_key)
        .bearer_auth(created["sessionToken"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_conforms(&doc, &ok("/v2/auth/sessions", "get"), &res.json().await.unwrap(), "sessions");
    let res = t.http.get(t.url("/v2/auth/verify")).header("X-Api-Key", &t.api_key)
        .bearer_auth(created["sessionToken"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_conforms(&doc, &ok("/v2/auth/verify", "get"), &res.json().await.unwrap(), "verify");
    assert_eq!(user["additionalProperties"], false, "unknown members are refused, and the document says so");
}
}
