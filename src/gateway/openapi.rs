//! The OpenAPI 3.1 document of the `/v2` gateway, served at
//! `GET /v2/openapi.json`. Nothing in it is typed twice: the component
//! schemas are walked at run time from the protobuf descriptors (field names
//! by the proto3 JSON mapping, descriptions from the `.proto` comments), and
//! the operations come from [`ROUTES`], one entry per route of the router.
//! `tests/api/openapi.rs` checks the table against the router itself and the
//! live server; `tests/openapi/run.sh` runs schemathesis against it.

use std::sync::OnceLock;

use axum::{
    body::Bytes,
    http::header,
    response::{IntoResponse, Response},
};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::schema;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No credentials: the reset link's token is its own.
    Public,
    /// The application's key (`X-Api-Key`).
    Key,
    /// The key, and a session when the caller has one (a supervisor's changes
    /// what the call does).
    KeyMaybeSession,
    /// The key and a session (`Authorization: Bearer`).
    Session,
}

/// What an operation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// A JSON body of this component, with a documented example (JSON text).
    Json {
        schema: &'static str,
        example: Option<&'static str>,
    },
    /// The reset form: `application/x-www-form-urlencoded`.
    Form,
}

/// What an operation answers with 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// One message, by component name.
    Message(&'static str),
    /// A bare array of a component.
    ListOf(&'static str),
    /// A bare array of strings (ids).
    Strings,
    /// `{}`.
    Empty,
    /// An HTML page.
    Html,
    /// This document.
    Document,
}

/// One method of a route.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    /// Lower case, as OpenAPI names it: `get`, `post`, `put`, `delete`.
    pub method: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    pub auth: Auth,
    pub body: Body,
    pub reply: Reply,
    /// Every error status the operation can answer.
    pub errors: &'static [u16],
}

/// One route: its path (OpenAPI form, `{usersId}`), its tag, its methods.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub path: &'static str,
    pub tag: &'static str,
    pub ops: &'static [Op],
}

/// Path parameters: (name, description, whether it is a UUID).
pub const PARAMS: &[(&str, &str, bool)] = &[
    ("usersId", "The ID of the user.", true),
    ("groupsId", "The ID of the group.", true),
    ("sessionId", "The ID of a session, as listed by `GET /v2/auth/sessions`.", true),
    ("appId", "The application's ID: the application of the API key (any other answers 404).", true),
    ("username", "The username whose password is to be reset.", false),
    ("token", "The token of the mailed reset link.", false),
];

/// The documented request of `POST /users` (catalyze-users.md).
const CREATE_USER_EXAMPLE: &str = r#"{
    "username": "username",
    "password": "test123",
    "email": {"primary": "primary@email.com", "secondary": "secondary@email.com", "work": "work@email.com", "other": "other@email.com"},
    "name": {"prefix": "prefix", "firstName": "first name", "middleName": "middle name", "lastName": "last name", "maidenName": "maiden name", "suffix": "jr"},
    "extras": {"extra1": "value1", "extra2": "value2"}
}"#;

/// The documented request of `PUT /users/{usersId}` (catalyze-users.md).
const UPDATE_USER_EXAMPLE: &str = CREATE_USER_EXAMPLE;

const FORGOT_USERNAME_EXAMPLE: &str = r#"{"email": "bobby@example.com"}"#;
const SIGN_IN_EXAMPLE: &str = r#"{"username": "username", "password": "correct horse battery"}"#;
const GROUP_EXAMPLE: &str = r#"{"name": "A Really Cool Group", "default": false}"#;

const fn op(method: &'static str, operation_id: &'static str, summary: &'static str) -> Op {
    Op {
        method,
        operation_id,
        summary,
        description: "",
        auth: Auth::Session,
        body: Body::None,
        reply: Reply::Empty,
        errors: &[400, 401, 503],
    }
}

/// Every route of the `/v2` router, each named once.
pub const ROUTES: &[Route] = &[
    Route {
        path: "/v2/users",
        tag: "users",
        ops: &[Op {
            description: "Self sign-up: open to anyone holding the application's key, and the reply carries a \
                          `sessionToken` for the new user. A supervisor's session may create users too (no token \
                          is issued then, and `active` is honoured). `username` and `password` are required; \
                          server-managed members sent back by old clients (`usersId`, `createdAt`, `updatedAt`, \
                          `sessionToken`) are ignored. The new user joins every default group.",
            auth: Auth::KeyMaybeSession,
            body: Body::Json { schema: "NewUser", example: Some(CREATE_USER_EXAMPLE) },
            reply: Reply::Message("User"),
            errors: &[400, 401, 409, 413, 415, 503],
            ..op("post", "createUser", "Create a user")
        }],
    },
    Route {
        path: "/v2/users/forgotUsername",
        tag: "users",
        ops: &[Op {
            description: "Mails a username reminder to every user whose primary address is `email`. Answers `{}` \
                          whether or not anyone has that address.",
            auth: Auth::Key,
            body: Body::Json { schema: "ForgotUsernameRequest", example: Some(FORGOT_USERNAME_EXAMPLE) },
            errors: &[400, 401, 413, 415, 429, 503],
            ..op("post", "forgotUsername", "Send a username reminder")
        }],
    },
    Route {
        path: "/v2/users/{usersId}",
        tag: "users",
        ops: &[
            Op {
                description: "The user themselves or a supervisor.",
                reply: Reply::Message("User"),
                errors: &[400, 401, 403, 404, 503],
                ..op("get", "getUser", "Retrieve a user by ID")
            },
            Op {
                description: "A JSON merge patch (RFC 7396): the members present replace the stored ones, nested \
                              objects (and `extras`) merge member by member, and `null` removes a member. \
                              `password` sets a new password and ends the user's other sessions; `username` \
                              renames the user; `active` is a supervisor's to change. Server-managed members are \
                              ignored. The user themselves or a supervisor.",
                body: Body::Json { schema: "User", example: Some(UPDATE_USER_EXAMPLE) },
                reply: Reply::Message("User"),
                errors: &[400, 401, 403, 404, 409, 413, 415, 503],
                ..op("put", "updateUser", "Update a user")
            },
            Op {
                description: "Deletes the user with their profile, sessions and group memberships. Cannot be \
                              undone. The user themselves or a supervisor.",
                errors: &[400, 401, 403, 404, 503],
                ..op("delete", "deleteUser", "Delete a user")
            },
        ],
    },
    Route {
        path: "/v2/users/{usersId}/groups",
        tag: "users",
        ops: &[Op {
            description: "The user themselves or a supervisor.",
            reply: Reply::ListOf("GroupRef"),
            errors: &[400, 401, 403, 404, 503],
            ..op("get", "listUserGroups", "Retrieve the groups of a user")
        }],
    },
    Route {
        path: "/v2/auth/signin",
        tag: "auth",
        ops: &[Op {
            description: "The reply is the user with a new `sessionToken`. An unknown username, a wrong password \
                          and an inactive account all answer 401 alike. After 5 failures for one username each \
                          further attempt waits longer (1 s, 2 s, 4 s ... up to 15 min): 429 with `Retry-After`.",
            auth: Auth::Key,
            body: Body::Json { schema: "SignInRequest", example: Some(SIGN_IN_EXAMPLE) },
            reply: Reply::Message("User"),
            errors: &[400, 401, 413, 415, 429, 503],
            ..op("post", "signIn", "Sign in")
        }],
    },
    Route {
        path: "/v2/auth/signout",
        tag: "auth",
        ops: &[Op {
            description: "Ends the session of the bearer token.",
            errors: &[401, 503],
            ..op("get", "signOut", "Sign out")
        }],
    },
    Route {
        path: "/v2/auth/verify",
        tag: "auth",
        ops: &[Op {
            description: "Whose the bearer token is, and until when it holds (the Catalyze JS SDK's \
                          `verifyToken`, which reads `userId`). No profile data: ids, expiry and role only. \
                          An unknown, ended or expired token answers 401.",
            reply: Reply::Message("VerifySessionResponse"),
            errors: &[401, 503],
            ..op("get", "verifySession", "Verify a session token")
        }],
    },
    Route {
        path: "/v2/auth/sessions",
        tag: "auth",
        ops: &[Op {
            description: "The caller's live sessions; `current` marks the one of this call.",
            reply: Reply::ListOf("Session"),
            errors: &[401, 503],
            ..op("get", "listSessions", "List the caller's sessions")
        }],
    },
    Route {
        path: "/v2/auth/sessions/{sessionId}",
        tag: "auth",
        ops: &[Op {
            description: "Ends one of the caller's sessions (a supervisor: any user's of the application).",
            errors: &[400, 401, 404, 503],
            ..op("delete", "revokeSession", "End a session")
        }],
    },
    Route {
        path: "/v2/groups",
        tag: "groups",
        ops: &[Op {
            description: "Supervisors only. `name` is required (1-1024 characters).",
            body: Body::Json { schema: "Group", example: Some(GROUP_EXAMPLE) },
            reply: Reply::Message("Group"),
            errors: &[400, 401, 403, 413, 415, 503],
            ..op("post", "createGroup", "Create a group")
        }],
    },
    Route {
        path: "/v2/groups/{groupsId}",
        tag: "groups",
        ops: &[
            Op {
                description: "Supervisors only.",
                reply: Reply::Message("Group"),
                errors: &[400, 401, 403, 404, 503],
                ..op("get", "getGroup", "Retrieve a group")
            },
            Op {
                description: "Supervisors only. A merge patch of `name` and `default`.",
                body: Body::Json { schema: "Group", example: Some(GROUP_EXAMPLE) },
                reply: Reply::Message("Group"),
                errors: &[400, 401, 403, 404, 413, 415, 503],
                ..op("put", "updateGroup", "Update a group")
            },
            Op {
                description: "Supervisors only. Deletes the group and its memberships, not its members.",
                errors: &[400, 401, 403, 404, 503],
                ..op("delete", "deleteGroup", "Delete a group")
            },
        ],
    },
    Route {
        path: "/v2/groups/{groupsId}/users/{usersId}",
        tag: "groups",
        ops: &[
            Op {
                description: "Supervisors only. Adding a member again changes nothing.",
                errors: &[400, 401, 403, 404, 503],
                ..op("post", "addMember", "Add a user to a group")
            },
            Op {
                description: "Supervisors only. 404 when the user was not a member.",
                errors: &[400, 401, 403, 404, 503],
                ..op("delete", "removeMember", "Remove a user from a group")
            },
        ],
    },
    Route {
        path: "/v2/groups/{groupsId}/members",
        tag: "groups",
        ops: &[Op {
            description: "Supervisors only. The members' ids, oldest membership first.",
            reply: Reply::Strings,
            errors: &[400, 401, 403, 404, 503],
            ..op("get", "listMembers", "List the members of a group")
        }],
    },
    Route {
        path: "/v2/app/{appId}/groups",
        tag: "groups",
        ops: &[Op {
            description: "Supervisors only.",
            reply: Reply::ListOf("Group"),
            errors: &[400, 401, 403, 404, 503],
            ..op("get", "listGroups", "List the application's groups")
        }],
    },
    Route {
        path: "/v2/app/{appId}/groups/default",
        tag: "groups",
        ops: &[Op {
            description: "Supervisors only. The groups every new user joins.",
            reply: Reply::ListOf("Group"),
            errors: &[400, 401, 403, 404, 503],
            ..op("get", "listDefaultGroups", "List the application's default groups")
        }],
    },
    Route {
        path: "/v2/{appId}/reset/user/{username}",
        tag: "reset",
        ops: &[Op {
            description: "When an active user has this username, mails a single-use link (valid 30 minutes) to \
                          their primary address. Answers `{}` whether or not the user exists.",
            auth: Auth::Key,
            errors: &[400, 401, 404, 429, 503],
            ..op("get", "requestPasswordReset", "Request a password reset")
        }],
    },
    Route {
        path: "/v2/reset/{token}",
        tag: "reset",
        ops: &[
            Op {
                description: "The page the mailed link opens: a form for the new password while the link is good, \
                              else a page that says why it is not (400).",
                auth: Auth::Public,
                reply: Reply::Html,
                errors: &[400, 503],
                ..op("get", "resetForm", "Open the password reset form")
            },
            Op {
                description: "The form's submission: sets the new password and ends every session of the user. A \
                              refused password gets the form again with the reason (400).",
                auth: Auth::Public,
                body: Body::Form,
                reply: Reply::Html,
                errors: &[400, 413, 415, 422, 503],
                ..op("post", "resetPassword", "Set a new password")
            },
        ],
    },
    Route {
        path: "/v2/openapi.json",
        tag: "meta",
        ops: &[Op {
            description: "Built from the protobuf descriptors and the router's route table.",
            auth: Auth::Public,
            reply: Reply::Document,
            errors: &[],
            ..op("get", "openapi", "This OpenAPI document")
        }],
    },
];

/// Members of `User` that are only ever sent (proto names).
pub const USER_INPUT_ONLY: &[&str] = &["username", "password"];

/// Statuses whose reply on an HTML route is a page (else the JSON errors).
const HTML_ERRORS: &[u16] = &[400, 429, 503];

fn error_description(status: u16) -> &'static str {
    match status {
        400 => {
            "The request is malformed: a member of the wrong type or value, or one the model does not have \
                (named by `field`), a body that is not a JSON object, or a path parameter that is no valid id."
        }
        401 => {
            "The API key, or the session token where one is needed, is missing or not valid, or the session \
                has expired (or, for sign-in, the username or password is wrong)."
        }
        403 => "The caller may not do this: another user's record, or a group route without a supervisor's session.",
        404 => "No such resource in the caller's application.",
        409 => "The username is taken in this application, or the user was changed concurrently too often.",
        413 => "The body is larger than 1 MiB.",
        415 => "The body's declared type can never carry JSON (`multipart/*`, images, ...).",
        422 => "The form body cannot be read.",
        429 => "Too many attempts: wait `Retry-After` seconds.",
        503 => "The service is temporarily unavailable: try again.",
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
            item.insert(op.method.to_owned(), operation(route, op, &params));
            if let Body::Json { schema, .. } = op.body {
                roots.push(schema);
            }
            if let Reply::Message(name) | Reply::ListOf(name) = op.reply {
                roots.push(name);
            }
        }
        paths.insert(route.path.to_owned(), Value::Object(item));
    }
    let mut schemas = local_schemas();
    roots.retain(|r| !schemas.contains_key(*r));
    proto_schemas(&roots, &mut schemas);

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
                    "description": "The request's id (the client's `X-Request-Id`, or a new UUID); logs and \
                                    the audit trail carry it.",
                    "schema": { "type": "string" },
                },
                "RetryAfter": {
                    "description": "Seconds to wait before trying again.",
                    "schema": { "type": "integer", "minimum": 1 },
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
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params.to_vec()));
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
        Reply::ListOf(name) => ("application/json", json!({ "type": "array", "items": reference(name) }), "Done."),
        Reply::Strings => ("application/json", json!({ "type": "array", "items": { "type": "string" } }), "Done."),
        Reply::Empty => ("application/json", reference("Empty"), "Done: `{}`."),
        Reply::Html => ("text/html", json!({ "type": "string" }), "The page."),
        Reply::Document => ("application/json", json!({ "type": "object" }), "The OpenAPI document."),
    };
    let mut ok = json!({
        "description": ok_description,
        "headers": { "X-Request-Id": { "$ref": "#/components/headers/RequestId" } },
        "content": { ok_type: { "schema": ok_schema } },
    });
    if let Some(links) = links(op) {
        ok["links"] = links;
    }
    responses.insert("200".into(), ok);
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
        if *status == 429 {
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
    let mut m = Map::new();
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
                                    `not_found`, `username_taken`, `throttled`, `unavailable`, ... (the gRPC \
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

/// Output-only (readOnly) and input-only (writeOnly) members, by message.
fn flags(message: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match message {
        "usersvc.v1.User" => (schema::USER_OUTPUT_ONLY, USER_INPUT_ONLY),
        "usersvc.v1.Group" => (schema::GROUP_OUTPUT_ONLY, &[]),
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
    fn every_path_parameter_is_described_and_operations_are_unique() {
        let mut ids = std::collections::HashSet::new();
        for route in ROUTES {
            for p in path_params(route.path) {
                assert!(PARAMS.iter().any(|(n, ..)| *n == p), "{}: no PARAMS entry for {p}", route.path);
            }
            for op in route.ops {
                assert!(ids.insert(op.operation_id), "operationId {} twice", op.operation_id);
            }
        }
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
