//! The `/v2` route table: every route's path, methods and handlers, with
//! what the OpenAPI document says of each (auth, body, reply, errors). The
//! router ([`router`]) and the document (`openapi.rs`) are both built from
//! [`ROUTES`], so a route cannot be served undocumented or documented
//! unserved.

use axum::{
    Router,
    routing::{MethodFilter, MethodRouter, on},
};

use super::{Gateway, groups, mfa, openapi, passkeys, reset, users, verification};

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
    /// One message, by component name, answered with 201 (a resource made).
    Created(&'static str),
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
    /// A user's whole record (`ExportUser`): the `User` and what goes with it.
    Export,
}

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    /// As OpenAPI names it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// Routes a method to a handler: `|m| on(m, users::get)`. It is handed the
/// op's own method, so the method is named once and the served one cannot
/// differ from the documented one.
pub type Handler = fn(MethodFilter) -> MethodRouter<Gateway>;

/// One method of a route.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub method: Method,
    pub handler: Handler,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    pub auth: Auth,
    pub body: Body,
    pub reply: Reply,
    /// Every error status the operation can answer.
    pub errors: &'static [u16],
    /// Query parameters it takes: (name, description, JSON schema type).
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// Whether its 200 may carry `Link: <...>; rel="next"`: a documented
    /// bare array, a page of it at a time ([`ARRAY_PAGE_QUERY`]).
    pub next_link: bool,
}

/// One route: its path (OpenAPI form, `{usersId}`, which is axum's too), its
/// tag, its methods.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub path: &'static str,
    pub tag: &'static str,
    pub ops: &'static [Op],
}

impl Route {
    /// Every op of the route on one path; other methods answer 405 with
    /// `Allow`.
    pub fn method_router(&self) -> MethodRouter<Gateway> {
        self.ops.iter().fold(MethodRouter::new(), |r, op| r.merge((op.handler)(op.method.filter())))
    }
}

/// The `/v2` routes of [`ROUTES`], without layers. Whole paths rather than
/// a nested router, which rewrites every request's path on the way in.
pub fn router() -> Router<Gateway> {
    ROUTES.iter().fold(Router::new(), |r, route| r.route(route.path, route.method_router()))
}

/// Path parameters: (name, description, whether it is a UUID).
pub const PARAMS: &[(&str, &str, bool)] = &[
    ("usersId", "The ID of the user.", true),
    ("groupsId", "The ID of the group.", true),
    ("sessionId", "The ID of a session, as listed by `GET /v2/auth/sessions`.", true),
    ("appId", "The application's ID: the application of the API key (any other answers 404).", true),
    ("username", "The username whose password is to be reset.", false),
    ("token", "The token of the mailed link (password reset or email verification).", false),
    ("passkeyId", "The ID of a passkey, as listed by `GET /v2/users/{usersId}/passkeys`.", true),
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
const SIGN_IN_MFA_EXAMPLE: &str = r#"{"mfaToken": "mfa token of the sign-in", "code": "123456"}"#;
const START_MFA_PASSKEY_EXAMPLE: &str = r#"{"mfaToken": "mfa token of the sign-in"}"#;
const ENROL_TOTP_EXAMPLE: &str = r#"{}"#;
const REMOVE_TOTP_EXAMPLE: &str = r#"{"currentPassword": "correct horse battery"}"#;
const CONFIRM_TOTP_EXAMPLE: &str = r#"{"code": "123456"}"#;
const GROUP_EXAMPLE: &str = r#"{"name": "A Really Cool Group", "default": false}"#;

const fn op(method: Method, operation_id: &'static str, summary: &'static str, handler: Handler) -> Op {
    Op {
        method,
        handler,
        operation_id,
        summary,
        description: "",
        auth: Auth::Session,
        body: Body::None,
        reply: Reply::Empty,
        errors: &[400, 401, 503],
        query: &[],
        next_link: false,
    }
}

/// The query of a documented bare-array listing: what a client that pages
/// sends. One that does not gets the first 1000 items and a `Link` to the
/// rest.
const ARRAY_PAGE_QUERY: &[(&str, &str, &str)] = &[
    (
        "pageSize",
        "Items on a page: 1 to 1000. Without it, 1000: the reply holds at most 1000 items, and a `Link` \
         rel=\"next\" header leads to the rest.",
        "integer",
    ),
    (
        "pageToken",
        "Where the page starts: the `pageToken` of the `Link` rel=\"next\" of the page before (follow the link as \
         it is). Bound to this listing; a token of another is refused (400).",
        "string",
    ),
];

/// What every paged bare-array listing's description ends with.
macro_rules! array_paged {
    ($description:literal) => {
        concat!(
            $description,
            " The reply is the documented bare array, a page of it: at most `pageSize` items (1000 without it). \
             When there are more, a `Link: <...?pageSize=N&pageToken=T>; rel=\"next\"` header (RFC 8288, a \
             reference relative to this server) leads to the next page; the last page has none."
        )
    };
}

/// Every route of the `/v2` router and of the document, each named once.
pub const ROUTES: &[Route] = &[
    Route {
        path: "/v2/users",
        tag: "users",
        ops: &[
            Op {
                description: "Self sign-up: open to anyone holding the application's key, and the reply carries a \
                          `sessionToken` for the new user. A supervisor's session may create users too (no token \
                          is issued then, and `active` is honoured). `username` and `password` are required; \
                          server-managed members sent back by old clients (`usersId`, `createdAt`, `updatedAt`, \
                          `sessionToken`) are ignored. The new user joins every default group. Sign-ups without \
                          a supervisor's session are limited per client address (`--signup-per-address` an hour, \
                          default 20): past it, 429 with `Retry-After`.",
                auth: Auth::KeyMaybeSession,
                body: Body::Json { schema: "NewUser", example: Some(CREATE_USER_EXAMPLE) },
                reply: Reply::Message("User"),
                errors: &[400, 401, 409, 413, 415, 429, 503],
                ..op(Method::Post, "createUser", "Create a user", |m| on(m, users::create))
            },
            Op {
                description: "The application's users, oldest first, a page at a time: `{\"users\": [...], \
                          \"nextPageToken\": \"...\"}` (no token on the last page). Filters are exact and all must \
                          hold; `email`, `username` and `mrn` are matched through blind indexes, without \
                          decrypting anyone. A supervisor or a service token; each user listed is recorded in the trail.",
                reply: Reply::Message("ListUsersResponse"),
                errors: &[400, 401, 403, 404, 503],
                query: &[
                    ("pageSize", "Users on a page: 1 to 1000, default 100.", "integer"),
                    ("pageToken", "The `nextPageToken` of the page before (with the same filters).", "string"),
                    ("email", "Only the users with this primary address.", "string"),
                    ("username", "Only the user with this username.", "string"),
                    ("groupsId", "Only the members of this group.", "string"),
                    ("active", "`true` or `false`: only active, or only inactive, users.", "boolean"),
                    (
                        "mrn",
                        "Only the users with this medical record number (`mrns[].mrn`), at any institution; \
                         case and surrounding spaces aside.",
                        "string",
                    ),
                ],
                ..op(Method::Get, "listUsers", "List and search users", |m| on(m, users::list))
            },
        ],
    },
    Route {
        path: "/v2/users/forgotUsername",
        tag: "users",
        ops: &[Op {
            description: "Mails a username reminder to every user whose primary address is `email`. Answers `{}` \
                          whether or not anyone has that address, after the same work (whom it is for is looked \
                          up after the reply). An address gets at most 3 such mails an hour (reminders and reset \
                          links together; `--mail-per-recipient`): past that the request is answered alike and \
                          no mail goes.",
            auth: Auth::Key,
            body: Body::Json { schema: "ForgotUsernameRequest", example: Some(FORGOT_USERNAME_EXAMPLE) },
            errors: &[400, 401, 413, 415, 429, 503],
            ..op(Method::Post, "forgotUsername", "Send a username reminder", |m| on(m, users::forgot_username))
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
                ..op(Method::Get, "getUser", "Retrieve a user by ID", |m| on(m, users::get))
            },
            Op {
                description: "A JSON merge patch (RFC 7396): the members present replace the stored ones, nested \
                              objects (and `extras`) merge member by member, and `null` removes a member. \
                              `password` sets a new password and ends the user's other sessions; `username` \
                              renames the user; `active` is a supervisor's to change (false ends the user's \
                              sessions and voids their reset links). Server-managed members are ignored. The user \
                              themselves or a supervisor. A user's own `password`, `username` or `email.primary` \
                              needs a session signed in within `--privileged-session-max-age` (15 min) or \
                              `currentPassword` (403 `reauthentication_required`, `invalid_current_password`); \
                              after a password or address change a notice is mailed to the old address.",
                body: Body::Json { schema: "UserUpdate", example: Some(UPDATE_USER_EXAMPLE) },
                reply: Reply::Message("User"),
                errors: &[400, 401, 403, 404, 409, 413, 415, 503],
                ..op(Method::Put, "updateUser", "Update a user", |m| on(m, users::update))
            },
            Op {
                description: "Deletes the user with their profile, sessions and group memberships. Cannot be \
                              undone. The user themselves or a supervisor.",
                errors: &[400, 401, 403, 404, 503],
                ..op(Method::Delete, "deleteUser", "Delete a user", |m| on(m, users::delete))
            },
        ],
    },
    Route {
        path: "/v2/users/{usersId}/groups",
        tag: "users",
        ops: &[Op {
            description: array_paged!("The user themselves or a supervisor. In group id order."),
            reply: Reply::ListOf("GroupRef"),
            errors: &[400, 401, 403, 404, 503],
            query: ARRAY_PAGE_QUERY,
            next_link: true,
            ..op(Method::Get, "listUserGroups", "Retrieve the groups of a user", |m| on(m, users::groups))
        }],
    },
    Route {
        path: "/v2/users/{usersId}/disclosures",
        tag: "users",
        ops: &[Op {
            description: "The accounting of disclosures of the user's record: every access to it in the trail, \
                          oldest first (who, when, which fields, from where; never values). The user themselves \
                          or a supervisor; the listing is itself recorded. Without `pageToken`, the first page.",
            reply: Reply::Message("ListDisclosuresResponse"),
            errors: &[400, 401, 403, 404, 503],
            query: &[
                ("pageSize", "Records on a page: 1 to 1000, default 100.", "integer"),
                ("pageToken", "The `nextPageToken` of the page before.", "string"),
            ],
            ..op(Method::Get, "listDisclosures", "List who accessed a user's record", |m| on(m, users::disclosures))
        }],
    },
    Route {
        path: "/v2/users/{usersId}/export",
        tag: "users",
        ops: &[Op {
            description: "The user's whole record as one JSON document (HIPAA right of access, 45 CFR 164.524), \
                          in the form `usersvc import` reads: the user's members, `username`, `supervisor`, \
                          `groups`, the live `sessions` (ids and times) and the accounting of `disclosures`. Never \
                          the password hash. The user themselves or a supervisor; recorded as `user.export`.",
            reply: Reply::Export,
            errors: &[400, 401, 403, 404, 503],
            ..op(Method::Get, "exportUser", "Export a user's whole record", |m| on(m, users::export))
        }],
    },
    Route {
        path: "/v2/auth/signin",
        tag: "auth",
        ops: &[Op {
            description: "The reply is the user with a new `sessionToken`. An unknown username, a wrong password \
                          and an inactive account all answer 401 alike. After 5 failures for one username each \
                          further attempt waits longer (1 s, 2 s, 4 s ... up to 15 min): 429 with `Retry-After`. \
                          Where the application's `--verify-email` is `required`, the right password of a user \
                          whose primary address is not verified answers 403 `email_unverified`, and nothing else; \
                          a new verification link is mailed to that address (within `--mail-per-recipient`). \
                          A user with a second factor (TOTP or a passkey) gets, for the right password, only \
                          `{\"mfaRequired\": true, \"mfaToken\": \"...\"}` (no `sessionToken`, no profile): the \
                          sign-in is finished by `POST /v2/auth/signin/mfa`.",
            auth: Auth::Key,
            body: Body::Json { schema: "SignInRequest", example: Some(SIGN_IN_EXAMPLE) },
            reply: Reply::Message("User"),
            errors: &[400, 401, 403, 413, 415, 429, 503],
            ..op(Method::Post, "signIn", "Sign in", |m| on(m, users::sign_in))
        }],
    },
    Route {
        path: "/v2/auth/signin/mfa",
        tag: "auth",
        ops: &[Op {
            description: "The second step of a sign-in that answered `{\"mfaRequired\": true, \"mfaToken\": \"...\"}` \
                          (a user with a second factor): the `mfaToken` (5 minutes, once) and a `code`: the six \
                          digits of the authenticator app (each usable once) or one of the recovery codes (each \
                          once). The reply is a sign-in's: the user with a new `sessionToken`. An unknown, used or \
                          expired token answers 401 `invalid_mfa_token` (sign in again); a wrong code 401 \
                          `invalid_code`, and wrong codes are throttled as passwords are (429 `throttled` with \
                          `Retry-After`). Instead of a `code`, a user with a passkey may send the `ceremonyId` of \
                          `POST /v2/auth/signin/mfa/passkey/options` and the browser's `credential`: an assertion \
                          that does not verify (another user's passkey, a wrong signature) is a wrong code (401 \
                          `invalid_code`, throttled alike); a malformed `credential` or a bad `ceremonyId` a 400 \
                          naming it; both `code` and `credential`, or neither, a 400.",
            auth: Auth::Key,
            body: Body::Json { schema: "SignInMfa", example: Some(SIGN_IN_MFA_EXAMPLE) },
            reply: Reply::Message("User"),
            errors: &[400, 401, 413, 415, 429, 503],
            ..op(Method::Post, "signInMfa", "Finish a sign-in with a second factor", |m| on(m, mfa::sign_in))
        }],
    },
    Route {
        path: "/v2/auth/signin/mfa/passkey/options",
        tag: "auth",
        ops: &[Op {
            description: "For the second step of a sign-in, with a passkey instead of a code: the options for \
                          `navigator.credentials.get()`, limited to the passkeys of the `mfaToken`'s user, and the \
                          `ceremonyId` that `POST /v2/auth/signin/mfa` takes with the `credential`. The token is \
                          not used up. An unknown, used or expired token answers 401 `invalid_mfa_token`; an \
                          application without a relying party 400 `passkeys_not_configured`.",
            auth: Auth::Key,
            body: Body::Json { schema: "StartMfaPasskeyRequest", example: Some(START_MFA_PASSKEY_EXAMPLE) },
            reply: Reply::Message("PasskeyOptions"),
            errors: &[400, 401, 413, 415, 503],
            ..op(Method::Post, "startMfaPasskey", "Start a passkey as the second factor", |m| {
                on(m, mfa::passkey_options)
            })
        }],
    },
    Route {
        path: "/v2/users/{usersId}/mfa/totp",
        tag: "users",
        ops: &[
            Op {
                description: "Starts a TOTP (RFC 6238) enrolment of the caller's own record: the reply's \
                              `otpauthUri` (SHA-1, 6 digits, 30 s) and `qrCode` (an SVG data URI of it) go to an \
                              authenticator app; nothing changes at sign-in until it is confirmed. A new enrolment \
                              replaces one still pending; while one is active, 409 `mfa_already_enrolled` (remove \
                              it first). Needs a session signed in within `--privileged-session-max-age` or \
                              `currentPassword` (403 `reauthentication_required`, `invalid_current_password`).",
                body: Body::Json { schema: "EnrolTotpRequest", example: Some(ENROL_TOTP_EXAMPLE) },
                reply: Reply::Message("EnrolTotpResponse"),
                errors: &[400, 401, 403, 404, 409, 413, 415, 429, 503],
                ..op(Method::Post, "enrolTotp", "Enrol an authenticator app (TOTP)", |m| on(m, mfa::enrol))
            },
            Op {
                description: "Removes the user's TOTP factor (active or pending) and recovery codes; a notice is \
                              mailed to their primary address. The user themselves with a session signed in within \
                              `--privileged-session-max-age` or their `currentPassword` in the body (else 403 \
                              `reauthentication_required`, `invalid_current_password`), or a supervisor (no body). \
                              404 when there is none.",
                body: Body::Json { schema: "RemoveTotpRequest", example: Some(REMOVE_TOTP_EXAMPLE) },
                errors: &[400, 401, 403, 404, 413, 415, 429, 503],
                ..op(Method::Delete, "removeTotp", "Remove the authenticator app (TOTP)", |m| on(m, mfa::remove))
            },
        ],
    },
    Route {
        path: "/v2/users/{usersId}/mfa/totp/confirm",
        tag: "users",
        ops: &[Op {
            description: "Activates the pending enrolment with a `code` of the authenticator app and answers ten \
                          single-use `recoveryCodes`, shown only here. From then on a sign-in asks for a code. The \
                          caller's own record. A wrong code: 401 `invalid_code` (throttled as passwords are); \
                          no pending enrolment: 404.",
            body: Body::Json { schema: "ConfirmTotpRequest", example: Some(CONFIRM_TOTP_EXAMPLE) },
            reply: Reply::Message("ConfirmTotpResponse"),
            errors: &[400, 401, 403, 404, 413, 415, 429, 503],
            ..op(Method::Post, "confirmTotp", "Confirm the authenticator app (TOTP)", |m| on(m, mfa::confirm))
        }],
    },
    Route {
        path: "/v2/auth/signout",
        tag: "auth",
        ops: &[Op {
            description: "Ends the session of the bearer token.",
            errors: &[401, 503],
            ..op(Method::Get, "signOut", "Sign out", |m| on(m, users::sign_out))
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
            ..op(Method::Get, "verifySession", "Verify a session token", |m| on(m, users::verify))
        }],
    },
    Route {
        path: "/v2/auth/sessions",
        tag: "auth",
        ops: &[Op {
            description: array_paged!(
                "The caller's live sessions, oldest first; `current` marks the one of this call."
            ),
            reply: Reply::ListOf("Session"),
            errors: &[400, 401, 503],
            query: ARRAY_PAGE_QUERY,
            next_link: true,
            ..op(Method::Get, "listSessions", "List the caller's sessions", |m| on(m, users::sessions))
        }],
    },
    Route {
        path: "/v2/auth/sessions/{sessionId}",
        tag: "auth",
        ops: &[Op {
            description: "Ends one of the caller's sessions (a supervisor: any user's of the application).",
            errors: &[400, 401, 404, 503],
            ..op(Method::Delete, "revokeSession", "End a session", |m| on(m, users::revoke_session))
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
            ..op(Method::Post, "createGroup", "Create a group", |m| on(m, groups::create))
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
                ..op(Method::Get, "getGroup", "Retrieve a group", |m| on(m, groups::get))
            },
            Op {
                description: "Supervisors only. A merge patch of `name` and `default`.",
                body: Body::Json { schema: "Group", example: Some(GROUP_EXAMPLE) },
                reply: Reply::Message("Group"),
                errors: &[400, 401, 403, 404, 413, 415, 503],
                ..op(Method::Put, "updateGroup", "Update a group", |m| on(m, groups::update))
            },
            Op {
                description: "Supervisors only. Deletes the group and its memberships, not its members.",
                errors: &[400, 401, 403, 404, 503],
                ..op(Method::Delete, "deleteGroup", "Delete a group", |m| on(m, groups::delete))
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
                ..op(Method::Post, "addMember", "Add a user to a group", |m| on(m, groups::add_member))
            },
            Op {
                description: "Supervisors only. 404 when the user was not a member.",
                errors: &[400, 401, 403, 404, 503],
                ..op(Method::Delete, "removeMember", "Remove a user from a group", |m| on(m, groups::remove_member))
            },
        ],
    },
    Route {
        path: "/v2/groups/{groupsId}/members",
        tag: "groups",
        ops: &[Op {
            description: array_paged!(
                "Supervisors only. The members' ids, in id order (the order the users were created in). Each \
                 member listed is recorded in the trail."
            ),
            reply: Reply::Strings,
            errors: &[400, 401, 403, 404, 503],
            query: ARRAY_PAGE_QUERY,
            next_link: true,
            ..op(Method::Get, "listMembers", "List the members of a group", |m| on(m, groups::members))
        }],
    },
    Route {
        path: "/v2/app/{appId}/groups",
        tag: "groups",
        ops: &[Op {
            description: array_paged!("Supervisors only. Oldest first."),
            reply: Reply::ListOf("Group"),
            errors: &[400, 401, 403, 404, 503],
            query: ARRAY_PAGE_QUERY,
            next_link: true,
            ..op(Method::Get, "listGroups", "List the application's groups", |m| on(m, groups::list_all))
        }],
    },
    Route {
        path: "/v2/app/{appId}/groups/default",
        tag: "groups",
        ops: &[Op {
            description: array_paged!("Supervisors only. The groups every new user joins, oldest first."),
            reply: Reply::ListOf("Group"),
            errors: &[400, 401, 403, 404, 503],
            query: ARRAY_PAGE_QUERY,
            next_link: true,
            ..op(Method::Get, "listDefaultGroups", "List the application's default groups", |m| {
                on(m, groups::list_default)
            })
        }],
    },
    Route {
        path: "/v2/{appId}/reset/user/{username}",
        tag: "reset",
        ops: &[Op {
            description: "When an active user has this username, mails a single-use link (valid 30 minutes from \
                          the request) to their primary address. Answers `{}` whether or not the user exists, after \
                          the same work (the user is looked up after the reply). An address gets at most 3 such \
                          mails an hour (`--mail-per-recipient`): past that no link is sent and the earlier one \
                          still works.",
            auth: Auth::Key,
            errors: &[400, 401, 404, 429, 503],
            ..op(Method::Get, "requestPasswordReset", "Request a password reset", |m| on(m, reset::request))
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
                ..op(Method::Get, "resetForm", "Open the password reset form", |m| on(m, reset::form))
            },
            Op {
                description: "The form's submission: sets the new password and ends every session of the user. A \
                              refused password gets the form again with the reason (400).",
                auth: Auth::Public,
                body: Body::Form,
                reply: Reply::Html,
                errors: &[400, 413, 415, 422, 503],
                ..op(Method::Post, "resetPassword", "Set a new password", |m| on(m, reset::submit))
            },
        ],
    },
    Route {
        path: "/v2/users/{usersId}/passkeys/options",
        tag: "passkeys",
        ops: &[Op {
            description: "Starts registering a passkey for the caller's own record (a session signed in within \
                          `--privileged-session-max-age`, else 403 `reauthentication_required`): the options for \
                          `navigator.credentials.create()` (a discoverable credential with user verification) and \
                          the `ceremonyId` of the finish. No body. An application without a relying party \
                          (`usersvc app update --webauthn-rp-id`) answers 400 `passkeys_not_configured`.",
            reply: Reply::Message("PasskeyOptions"),
            errors: &[400, 401, 403, 404, 503],
            ..op(Method::Post, "startPasskeyRegistration", "Start registering a passkey", |m| {
                on(m, passkeys::registration_options)
            })
        }],
    },
    Route {
        path: "/v2/users/{usersId}/passkeys",
        tag: "passkeys",
        ops: &[
            Op {
                description: "Finishes a registration with the browser's credential: 201 with the passkey (never \
                              its key material), recorded as `passkey.registered`. An unknown, used, expired or \
                              another user's `ceremonyId`, a credential that is not one or does not verify, and a \
                              user at the limit of 10 passkeys answer 400 naming the member; a credential \
                              registered already 409 `passkey_taken`.",
                body: Body::Json { schema: "PasskeyRegistration", example: None },
                reply: Reply::Created("Passkey"),
                errors: &[400, 401, 403, 404, 409, 413, 415, 503],
                ..op(Method::Post, "finishPasskeyRegistration", "Register a passkey", |m| on(m, passkeys::register))
            },
            Op {
                description: "A user's passkeys, oldest first: ids, names and times. The user themself or a \
                              supervisor.",
                reply: Reply::Message("ListPasskeysResponse"),
                errors: &[400, 401, 404, 503],
                ..op(Method::Get, "listPasskeys", "List a user's passkeys", |m| on(m, passkeys::list))
            },
        ],
    },
    Route {
        path: "/v2/users/{usersId}/verification",
        tag: "verification",
        ops: &[Op {
            description: "Mails the user a new single-use link (valid 24 hours) that verifies their primary email \
                          address (`email.primaryVerified`), as sign-up and a change of address do where the \
                          application's `--verify-email` is `optional` or `required`. The user themselves or a \
                          supervisor. An address gets at most 3 mails an hour (with reminders and reset links; \
                          `--mail-per-recipient`): past that the request is answered alike and no mail goes. \
                          403 `forbidden` where verification is `off`; 400 `invalid_field` (`email.primary`) for \
                          a user without an address; 409 `already_verified` when it is verified already.",
            errors: &[400, 401, 403, 404, 409, 503],
            ..op(Method::Post, "sendVerification", "Send an email verification link", |m| on(m, verification::send))
        }],
    },
    Route {
        path: "/v2/verify/{token}",
        tag: "verification",
        ops: &[
            Op {
                description: "The page the mailed verification link opens: a button that confirms the address. \
                              Opening it changes nothing (mail scanners fetch links).",
                auth: Auth::Public,
                reply: Reply::Html,
                errors: &[],
                ..op(Method::Get, "verifyEmailForm", "Open the email verification page", |m| on(m, verification::form))
            },
            Op {
                description: "The page's button: marks the address the link was mailed to verified while it is \
                              still the user's primary, and voids the user's other links. A link used, replaced, \
                              expired or for an address the user no longer has gets a page that says so (400).",
                auth: Auth::Public,
                reply: Reply::Html,
                errors: &[400, 413, 503],
                ..op(Method::Post, "verifyEmail", "Verify an email address", |m| on(m, verification::submit))
            },
        ],
    },
    Route {
        path: "/v2/users/{usersId}/passkeys/{passkeyId}",
        tag: "passkeys",
        ops: &[Op {
            description: "Removes a passkey, recorded as `passkey.removed`. The user themself or a supervisor.",
            errors: &[400, 401, 404, 503],
            ..op(Method::Delete, "removePasskey", "Remove a passkey", |m| on(m, passkeys::remove))
        }],
    },
    Route {
        path: "/v2/auth/passkey/options",
        tag: "passkeys",
        ops: &[Op {
            description: "Starts a sign-in with a passkey: the options for `navigator.credentials.get()` and the \
                          `ceremonyId` of the finish. Without a `username` (or with an empty body) any discoverable \
                          credential of the application may answer; with one, only that user's (a username \
                          without passkeys, known or not, gets options naming a decoy credential made from it: \
                          the options do not tell who is registered).",
            auth: Auth::Key,
            body: Body::Json { schema: "StartPasskeySignInRequest", example: None },
            reply: Reply::Message("PasskeyOptions"),
            errors: &[400, 401, 413, 415, 503],
            ..op(Method::Post, "startPasskeySignIn", "Start a passkey sign-in", |m| on(m, passkeys::sign_in_options))
        }],
    },
    Route {
        path: "/v2/auth/passkey",
        tag: "passkeys",
        ops: &[Op {
            description: "Finishes a passkey sign-in: the reply is sign-in's, the user with a new `sessionToken`. \
                          An unknown credential, one that does not verify, one whose signature counter went \
                          backwards (a cloned authenticator; recorded as `passkey.counter_regressed`) and an \
                          inactive user all answer 401 `invalid_credentials`; throttled as a password sign-in \
                          (429 with `Retry-After`). A bad `ceremonyId` or a malformed credential is a 400. Where \
                          the application's `--verify-email` is `required`, a good assertion of a user whose \
                          primary address is not verified answers 403 `email_unverified`, and nothing else; a \
                          new verification link is mailed to that address (within `--mail-per-recipient`).",
            auth: Auth::Key,
            body: Body::Json { schema: "PasskeySignIn", example: None },
            reply: Reply::Message("User"),
            errors: &[400, 401, 403, 409, 413, 415, 429, 503],
            ..op(Method::Post, "finishPasskeySignIn", "Sign in with a passkey", |m| on(m, passkeys::sign_in))
        }],
    },
    Route {
        path: "/v2/openapi.json",
        tag: "meta",
        ops: &[Op {
            description: "Built from the protobuf descriptors and the router's route table.",
            auth: Auth::Public,
            reply: Reply::Document,
            errors: &[],
            ..op(Method::Get, "openapi", "This OpenAPI document", |m| on(m, openapi::serve))
        }],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A path given twice would be merged by the router but overwritten in
    /// the document.
    #[test]
    fn every_path_parameter_is_described_and_paths_and_operations_are_unique() {
        let (mut paths, mut ids) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        for route in ROUTES {
            assert!(paths.insert(route.path), "{} twice", route.path);
            for p in openapi::path_params(route.path) {
                assert!(PARAMS.iter().any(|(n, ..)| *n == p), "{}: no PARAMS entry for {p}", route.path);
            }
            for op in route.ops {
                assert!(ids.insert(op.operation_id), "operationId {} twice", op.operation_id);
            }
        }
    }

    /// A `Link` stands in for the `nextPageToken` a bare array cannot hold:
    /// only there, and always with the parameters it carries.
    #[test]
    fn links_only_on_paged_bare_arrays() {
        for route in ROUTES {
            for op in route.ops {
                let array = matches!(op.reply, Reply::ListOf(_) | Reply::Strings);
                assert_eq!(op.next_link, array, "{} {}", op.operation_id, route.path);
                if op.next_link {
                    assert_eq!(op.query, ARRAY_PAGE_QUERY, "{}", op.operation_id);
                    assert!(op.errors.contains(&400), "{}: a bad pageSize is a 400", op.operation_id);
                }
            }
        }
    }

    /// axum panics on a path it cannot parse, paths that conflict and a
    /// method given twice on one path: here rather than at start-up.
    #[test]
    fn the_table_makes_a_router() {
        let _ = router();
    }
}
