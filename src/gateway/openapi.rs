//! The OpenAPI 3.1 document of the `/v2` gateway, served at
//! `GET /v2/openapi.json`. Nothing in it is typed twice: the component
//! schemas are walked at run time from the protobuf descriptors (field names
//! by the proto3 JSON mapping, descriptions from the `.proto` comments), and
//! the operations come from [`ROUTES`], the table the router is built from.
//! `tests/api/openapi.rs` checks the document against the live server;
//! `tests/openapi/run.sh` runs schemathesis against it.

use std::sync::OnceLock;

use axum::{
    body::Bytes,
    http::header,
    response::{IntoResponse, Response},
};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::routes::{Auth, Body, Op, PARAMS, ROUTES, Reply, Route};
use crate::schema;

/// Members of `User` that are only ever sent (proto names).
pub const USER_INPUT_ONLY: &[&str] = &["username", "password"];

/// Statuses whose reply on an HTML route is a page (else the JSON errors).
const HTML_ERRORS: &[u16] = &[400, 429, 503];

fn error_description(status: u16) -> &'static str {
    match status {
        400 => {
            "The request is malformed: a member of the wrong type or value, or one the model does not have \
                (named by `field`), a body that is not a JSON object, or a path parameter that is no valid id. On the \
                passkey routes also `passkeys_not_configured`: the application has no WebAuthn relying party."
        }
        401 => {
            "The API key, or the session token where one is needed, is missing or not valid, or the session \
                has expired (or, for sign-in, the username or password is wrong)."
        }
        403 => {
            "The caller may not do this: a group route without a supervisor's session (`forbidden`); or a change \
                of one's own password, username or primary email from a session signed in longer ago than \
                `--privileged-session-max-age` (15 min) without `currentPassword` (`reauthentication_required`), \
                or with a wrong one (`invalid_current_password`)."
        }
        404 => "No such resource in the caller's application.",
        409 => {
            "The username is taken in this application, or the user was changed concurrently too often; on the \
                passkey routes, the passkey is registered already (`passkey_taken`), or another sign-in with it \
                came first (`contention`)."
        }
        413 => "The body is larger than 1 MiB.",
        415 => "The body's declared type can never carry JSON (`multipart/*`, images, ...).",
        422 => "The form body cannot be read.",
        429 => "Too many attempts: wait `Retry-After` seconds.",
        503 => {
            "The service is temporarily unavailable: try again. `overloaded`: too many password hashes are \
                waiting (a flood of sign-ins or sign-ups); the call was refused at once, and `Retry-After` \
                says when to try again. `timeout`: the request was not finished within the server's limit \
                (`--request-timeout`), most often because the database stopped answering, as during a \
                failover."
        }
        _ => "An error.",
    }
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

/// `GET /v2/openapi.json`.
pub async fn serve() -> Response {
    static BYTES: OnceLock<Bytes> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| Bytes::from(serde_json::to_vec(document()).unwrap_or_default())).clone();
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn build() -> Value {
    let mut paths = Map::new();
    let mut roots: Vec<&str> = Vec::new();
    for route in ROUTES {
        let params: Vec<Value> = path_params(route.path).map(path_param).collect();
        let mut item = Map::new();
        for op in route.ops {
            item.insert(op.method.name().to_owned(), operation(route, op, &params));
            if let Body::Json { schema, .. } = op.body {
                roots.push(schema);
            }
            match op.reply {
                Reply::Message(name) | Reply::ListOf(name) | Reply::Created(name) => roots.push(name),
                Reply::Export => roots.extend(["User", "Session", "Disclosure"]),
                _ => {}
            }
        }
        paths.insert(route.path.to_owned(), Value::Object(item));
    }
    let mut schemas = local_schemas();
    // UserUpdate is made from User's schema once that is built.
    roots.retain(|r| !schemas.contains_key(*r) && *r != USER_UPDATE);
    roots.push("User");
    proto_schemas(&roots, &mut schemas);
    if let Some(update) = user_update(&schemas) {
        schemas.insert(USER_UPDATE.into(), update);
    }

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "usersvc /v2",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "The Catalyze BaaS /v2 users API, served by usersvc's JSON gateway.",
            "description": "Users, sessions, groups and password resets of one application (picked by its \
                            API key). Every rule lives in the gRPC services (proto/usersvc/v1); the gateway \
                            translates JSON by the proto3 JSON mapping. A body is read as JSON whatever its \
                            declared type (`application/x-www-form-urlencoded` and `text/plain` too, as \
                            browser libraries send it), except types that never carry JSON (`multipart/*`, \
                            images: 415). A member no message has is refused (400 naming it), except the \
                            members clients echo back, which are ignored: `usersId`, `sessionToken`, \
                            `createdAt`, `updatedAt`, `inviteCode`, `appId`, `userId`. Every route also \
                            answers with a trailing slash. Every error is \
                            `{\"errors\": [{\"code\": <the HTTP status>, \"reason\", \"message\", \"field\"?}]}`.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "tags": [
            { "name": "users", "description": "Users and their PII." },
            { "name": "auth", "description": "Sessions: sign-in, sign-out, listing and ending sessions." },
            { "name": "groups", "description": "Named sets of users; supervisors only." },
            { "name": "reset", "description": "Password reset by mailed link." },
            { "name": "passkeys", "description": "Passkeys (WebAuthn): registration, listing, removal, sign-in." },
            { "name": "verification", "description": "Email verification by mailed link." },
            { "name": "meta", "description": "This document." },
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Api-Key",
                    "description": "The application's key: `{platform} {identifier} {key}` (e.g. \
                                    `browser api.catalyze.io KEY`) or the bare key.",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer {sessionToken}`, the token of sign-up or sign-in.",
                },
            },
            "headers": {
                "RequestId": {
                    "description": "The request's id: the client's `X-Request-Id` when it is 1 to 64 of \
                                    `A-Z a-z 0-9 . _ : -` (any other is dropped), else the server's own \
                                    (`X-Server-Request-Id`); logs and the audit trail carry it.",
                    "schema": { "type": "string", "maxLength": 64 },
                },
                "ServerRequestId": {
                    "description": "The server's own id of the request, made for every request whatever \
                                    the client sent; logs and the audit trail carry it too.",
                    "schema": { "type": "string", "format": "uuid" },
                },
                "RetryAfter": {
                    "description": "Seconds to wait before trying again.",
                    "schema": { "type": "integer", "minimum": 1 },
                },
                "Link": {
                    "description": "RFC 8288: where the next page of this listing is, \
                                    `<PATH?pageSize=N&pageToken=T>; rel=\"next\"` (a reference relative to \
                                    this server, percent-encoded). Absent on the last page.",
                    "schema": { "type": "string" },
                },
            },
        },
    })
}

/// The parameter names of a path: `/v2/users/{usersId}` -> `usersId`.
pub fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn path_param(name: &str) -> Value {
    let (description, uuid) =
        PARAMS.iter().find(|(n, ..)| *n == name).map(|(_, d, u)| (*d, *u)).unwrap_or(("A path segment.", false));
    let schema =
        if uuid { json!({ "type": "string", "format": "uuid" }) } else { json!({ "type": "string", "minLength": 1 }) };
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": schema })
}

fn operation(route: &Route, op: &Op, params: &[Value]) -> Value {
    let mut o = Map::new();
    o.insert("operationId".into(), json!(op.operation_id));
    o.insert("summary".into(), json!(op.summary));
    if !op.description.is_empty() {
        o.insert("description".into(), json!(op.description));
    }
    o.insert("tags".into(), json!([route.tag]));
    let mut params = params.to_vec();
    params.extend(op.query.iter().map(|(name, description, ty)| {
        let schema = if *ty == "integer" {
            json!({ "type": "integer", "minimum": 1, "maximum": 1000 })
        } else {
            json!({ "type": *ty })
        };
        json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
    }));
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    let security = match op.auth {
        Auth::Public => json!([]),
        Auth::Key => json!([{ "apiKey": [] }]),
        Auth::KeyMaybeSession => json!([{ "apiKey": [] }, { "apiKey": [], "bearer": [] }]),
        Auth::Session => json!([{ "apiKey": [], "bearer": [] }]),
    };
    o.insert("security".into(), security);
    match op.body {
        Body::None => {}
        Body::Json { schema, example } => {
            let mut media = Map::new();
            media.insert("schema".into(), reference(schema));
            if let Some(e) = example.and_then(|e| serde_json::from_str::<Value>(e).ok()) {
                media.insert("example".into(), e);
            }
            o.insert("requestBody".into(), json!({ "required": true, "content": { "application/json": media } }));
        }
        Body::Form => {
            o.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "content": { "application/x-www-form-urlencoded": { "schema": reference("ResetForm") } },
                }),
            );
        }
    }
    let mut responses = Map::new();
    let (ok_type, ok_schema, ok_description) = match op.reply {
        Reply::Message(name) => ("application/json", reference(name), "Done."),
        Reply::Created(name) => ("application/json", reference(name), "Created."),
        Reply::ListOf(name) => ("application/json", json!({ "type": "array", "items": reference(name) }), "Done."),
        Reply::Strings => ("application/json", json!({ "type": "array", "items": { "type": "string" } }), "Done."),
        Reply::Empty => ("application/json", reference("Empty"), "Done: `{}`."),
        Reply::Html => ("text/html", json!({ "type": "string" }), "The page."),
        Reply::Document => ("application/json", json!({ "type": "object" }), "The OpenAPI document."),
        Reply::Export => ("application/json", export_schema(), "The user's record."),
    };
    let mut ok = json!({
        "description": ok_description,
        "headers": {
            "X-Request-Id": { "$ref": "#/components/headers/RequestId" },
            "X-Server-Request-Id": { "$ref": "#/components/headers/ServerRequestId" },
        },
        "content": { ok_type: { "schema": ok_schema } },
    });
    if op.next_link {
        ok["headers"]["Link"] = json!({ "$ref": "#/components/headers/Link" });
    }
    if let Some(links) = links(op) {
        ok["links"] = links;
    }
    let ok_status = if matches!(op.reply, Reply::Created(_)) { "201" } else { "200" };
    responses.insert(ok_status.into(), ok);
    for status in op.errors {
        let mut content = Map::new();
        let html = op.reply == Reply::Html && HTML_ERRORS.contains(status);
        if html {
            content.insert("text/html".into(), json!({ "schema": { "type": "string" } }));
        }
        // On an HTML route a malformed path is still answered in JSON.
        if !html || *status == 400 {
            content.insert("application/json".into(), json!({ "schema": reference("Errors") }));
        }
        let mut headers = Map::new();
        headers.insert("X-Request-Id".into(), json!({ "$ref": "#/components/headers/RequestId" }));
        headers.insert("X-Server-Request-Id".into(), json!({ "$ref": "#/components/headers/ServerRequestId" }));
        if *status == 429 || *status == 503 {
            headers.insert("Retry-After".into(), json!({ "$ref": "#/components/headers/RetryAfter" }));
        }
        responses.insert(
            status.to_string(),
            json!({ "description": error_description(*status), "headers": headers, "content": content }),
        );
    }
    o.insert("responses".into(), Value::Object(responses));
    Value::Object(o)
}

/// What `ExportUser` answers: a `User` with its username, groups,
/// sessions, second factors and disclosures beside its members.
fn export_schema() -> Value {
    json!({ "allOf": [reference("User"), {
        "type": "object",
        "properties": {
            "username": { "type": "string" },
            "supervisor": { "type": "boolean" },
            "groups": { "type": "array", "items": { "type": "object", "properties": {
                "groupsId": { "type": "string" }, "name": { "type": "string" } } } },
            "sessions": { "type": "array", "items": { "type": "object", "properties": {
                "sessionId": { "type": "string" }, "createdAt": { "type": "string" },
                "lastSeenAt": { "type": "string" }, "expiresAt": { "type": "string" } } } },
            "disclosures": { "type": "array", "items": reference("Disclosure") },
            "secondFactors": { "type": "object", "properties": {
                "totp": { "type": "object", "properties": {
                    "confirmed": { "type": "boolean" }, "recoveryCodesLeft": { "type": "integer" } } },
                "passkeys": { "type": "array", "items": reference("Passkey") } } },
        },
    }] })
}

/// Where a reply leads: the id member of what it answers (`usersId` of a
/// `User`; of the first item of a list) fills the parameter of that name in
/// every other operation whose path takes only it.
fn links(op: &Op) -> Option<Value> {
    let (name, pointer) = match op.reply {
        Reply::Message(name) => (name, "#"),
        Reply::ListOf(name) => (name, "#/0"),
        _ => return None,
    };
    let message = schema::message(name)?;
    let mut links = Map::new();
    for field in message.fields() {
        let id = field.json_name();
        for route in ROUTES {
            if path_params(route.path).ne(std::iter::once(id)) {
                continue;
            }
            for target in route.ops.iter().filter(|t| t.operation_id != op.operation_id) {
                links.insert(
                    target.operation_id.to_owned(),
                    json!({
                        "operationId": target.operation_id,
                        "parameters": { id: format!("$response.body{pointer}/{id}") },
                    }),
                );
            }
        }
    }
    (!links.is_empty()).then_some(Value::Object(links))
}

/// The schemas that are no protobuf message: the gateway's own shapes.
fn local_schemas() -> Map<String, Value> {
    let mut m = super::passkeys::schemas();
    m.insert(
        "Errors".into(),
        json!({
            "type": "object",
            "description": "Every error of the API.",
            "required": ["errors"],
            "properties": { "errors": { "type": "array", "minItems": 1, "items": reference("ErrorItem") } },
        }),
    );
    m.insert(
        "ErrorItem".into(),
        json!({
            "type": "object",
            "required": ["code", "reason", "message"],
            "properties": {
                "code": {
                    "type": "integer",
                    "minimum": 400,
                    "maximum": 599,
                    "description": "The reply's HTTP status, as deployed Catalyze clients read it \
                                    (`errors[0].code`).",
                },
                "reason": {
                    "type": "string",
                    "description": "A stable machine word: `invalid_field`, `unknown_field`, `invalid_json`, \
                                    `invalid_body`, `invalid_api_key`, `missing_api_key`, `missing_session`, \
                                    `invalid_session`, `session_expired`, `invalid_credentials`, `forbidden`, \
                                    `reauthentication_required` (403: a change of one's own password, username \
                                    or primary email needs a recent sign-in or `currentPassword`), \
                                    `invalid_current_password` (403: the `currentPassword` sent is wrong), \
                                    `not_found`, `username_taken`, `passkeys_not_configured` (400: the application has no WebAuthn \
                                    relying party), `passkey_taken`, \
                                    `email_unverified` (403, sign-in: the application requires a verified \
                                    address and the user's is not; said only for the right password), \
                                    `already_verified` (409: a verification link asked for a verified address), \
                                    `throttled`, `unavailable`, `overloaded`, `timeout`, \
                                    `invalid_code` (401: a wrong or used second-factor code, or a passkey assertion that \
                                    does not verify as one), `invalid_mfa_token` \
                                    (401: the sign-in's `mfaToken` is unknown, used or expired), \
                                    `mfa_already_enrolled` (409), `mfa_required` (403: a supervisor of an application \
                                    that requires a second factor of supervisors has none yet), ... (the gRPC \
                                    `ErrorInfo` reason, lower case).",
                },
                "message": { "type": "string", "description": "For people; may change." },
                "field": {
                    "type": "string",
                    "description": "The member at fault, as a JSON path: `email.primary`, `addresses[0].zipCode`.",
                },
            },
        }),
    );
    m.insert("Empty".into(), json!({ "type": "object", "maxProperties": 0, "description": "An empty object: `{}`." }));
    m.insert(
        "NewUser".into(),
        json!({
            "description": "A user to create: a `User` whose `username` and `password` are required.",
            "allOf": [reference("User")],
            "required": USER_INPUT_ONLY.iter().map(|f| schema::snake_to_camel(f)).collect::<Vec<_>>(),
        }),
    );
    m.insert(
        "ResetForm".into(),
        json!({
            "type": "object",
            "description": "The reset form's fields; the two must be the same.",
            "required": ["password", "confirm"],
            "properties": {
                "password": { "type": "string", "description": "The new password." },
                "confirm": { "type": "string", "description": "The new password again." },
            },
        }),
    );
    m
}

/// The body of an update: a `User`'s members and `currentPassword` beside
/// them (one object: `User` refuses members it does not have, so an `allOf`
/// could not add one).
const USER_UPDATE: &str = "UserUpdate";

fn user_update(schemas: &Map<String, Value>) -> Option<Value> {
    let mut update = schemas.get("User")?.clone();
    update["description"] = json!(
        "A merge patch of a `User`, and beside its members the caller's current password when the change needs it."
    );
    update["properties"].as_object_mut()?.insert(
        "currentPassword".into(),
        json!({
            "type": "string",
            "writeOnly": true,
            "description": "The caller's current password. Needed to change one's own `password`, `username` or \
                            `email.primary` from a session signed in longer ago than `--privileged-session-max-age` \
                            (default 15 min): without it 403 `reauthentication_required`, wrong 403 \
                            `invalid_current_password`. Checked and throttled as a sign-in; never stored or \
                            echoed; ignored when not needed.",
        }),
    );
    Some(update)
}

/// Output-only (readOnly) and input-only (writeOnly) members, by message.
fn flags(message: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match message {
        "usersvc.v1.User" => (schema::USER_OUTPUT_ONLY, USER_INPUT_ONLY),
        "usersvc.v1.Group" => (schema::GROUP_OUTPUT_ONLY, &[]),
        "usersvc.v1.Email" => (&["primary_verified"], &[]),
        _ => (&[], &[]),
    }
}

/// The component name of a message: its short name in this API's package,
/// else its full name.
pub fn component_name(m: &MessageDescriptor) -> String {
    if m.package_name() == "usersvc.v1" { m.name().to_owned() } else { m.full_name().to_owned() }
}

/// Adds a component for each named message and every message it reaches.
fn proto_schemas(roots: &[&str], out: &mut Map<String, Value>) {
    let mut todo: Vec<MessageDescriptor> = roots.iter().filter_map(|r| schema::message(r)).collect();
    while let Some(m) = todo.pop() {
        let name = component_name(&m);
        if out.contains_key(&name) {
            continue;
        }
        let s = message_schema(&m, &mut todo);
        out.insert(name, s);
    }
}

fn message_schema(m: &MessageDescriptor, todo: &mut Vec<MessageDescriptor>) -> Value {
    let (read_only, write_only) = flags(m.full_name());
    let mut props = Map::new();
    for f in m.fields() {
        let mut s = field_schema(&f, todo);
        if let Value::Object(obj) = &mut s {
            if let Some(d) = comment(m, f.path()) {
                obj.insert("description".into(), json!(d));
            }
            if read_only.contains(&f.name()) {
                obj.insert("readOnly".into(), json!(true));
            }
            if write_only.contains(&f.name()) {
                obj.insert("writeOnly".into(), json!(true));
            }
        }
        props.insert(f.json_name().to_owned(), s);
    }
    let mut s = Map::new();
    s.insert("type".into(), json!("object"));
    if let Some(d) = comment(m, m.path()) {
        s.insert("description".into(), json!(d));
    }
    s.insert("properties".into(), Value::Object(props));
    // A member the message does not have is refused, not dropped.
    s.insert("additionalProperties".into(), json!(false));
    Value::Object(s)
}

fn field_schema(f: &FieldDescriptor, todo: &mut Vec<MessageDescriptor>) -> Value {
    if f.is_map()
        && let Kind::Message(entry) = f.kind()
    {
        return json!({ "type": "object", "additionalProperties": kind_schema(&entry.map_entry_value_field().kind(), todo) });
    }
    let item = kind_schema(&f.kind(), todo);
    if f.is_list() { json!({ "type": "array", "items": item }) } else { item }
}

fn kind_schema(kind: &Kind, todo: &mut Vec<MessageDescriptor>) -> Value {
    match kind {
        Kind::Double => json!({ "type": "number", "format": "double" }),
        Kind::Float => json!({ "type": "number", "format": "float" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
        Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }),
        // The proto3 JSON mapping writes 64-bit integers as strings.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({ "type": ["string", "integer"], "format": "int64" })
        }
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Enum(e) => {
            json!({ "type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>() })
        }
        Kind::Message(m) if schema::is_json_value(m) => json!({}),
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Struct" | "google.protobuf.Empty" => json!({ "type": "object" }),
            "google.protobuf.ListValue" => json!({ "type": "array" }),
            "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
            "google.protobuf.Duration" | "google.protobuf.FieldMask" => json!({ "type": "string" }),
            _ => {
                todo.push(m.clone());
                reference(&component_name(m))
            }
        },
    }
}

/// The comment of a message or field in its `.proto`, from the source info
/// the descriptor set carries: lines joined into paragraphs.
fn comment(m: &MessageDescriptor, path: &[i32]) -> Option<String> {
    let info = m.parent_file_descriptor_proto().source_code_info.as_ref()?;
    let loc = info.location.iter().find(|l| l.path == path)?;
    let text = loc.leading_comments.as_deref().or(loc.trailing_comments.as_deref())?;
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(|p| p.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect();
    (!paragraphs.is_empty()).then(|| paragraphs.join("\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the document names a component that is there.
    #[test]
    fn references_resolve() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("not local: {r}"));
                        assert!(doc.pointer(pointer).is_some(), "unresolved {r}");
                    }
                    o.values().for_each(|c| walk(doc, c));
                }
                Value::Array(a) => a.iter().for_each(|c| walk(doc, c)),
                _ => {}
            }
        }
        walk(document(), document());
    }

    #[test]
    fn user_schema_from_descriptors() {
        let user = &document()["components"]["schemas"]["User"];
        assert_eq!(user["properties"]["phoneNumber"]["$ref"], "#/components/schemas/PhoneNumber");
        assert_eq!(
            user["properties"]["age"],
            json!({ "type": "integer", "format": "int32", "description": "Age in years, 0-150." })
        );
        assert_eq!(user["properties"]["usersId"]["readOnly"], true);
        assert_eq!(user["properties"]["password"]["writeOnly"], true);
        assert_eq!(
            user["properties"]["extras"]["description"].as_str().map(|d| d.starts_with("Any JSON value")),
            Some(true)
        );
    }
}
