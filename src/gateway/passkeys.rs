//! Passkey routes: JSON in and out of the `*Passkey*` calls of
//! `UserService`. The ceremony's options and the browser's credential are
//! JSON objects here and JSON strings in gRPC; the gateway only moves them
//! between the two forms.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::json::{self, Mode};
use super::{ApiResult, CallMeta, Gateway, reply};
use crate::pb;

/// The body member that carries the browser's `PublicKeyCredential`.
const CREDENTIAL: &str = "credential";

/// A start's reply: the options as webauthn-rs made them
/// (`{"publicKey": {...}}`) with `ceremonyId` beside them.
pub(super) fn options_reply(ceremony: &pb::PasskeyCeremony) -> ApiResult {
    let mut options: Map<String, Value> = serde_json::from_str(&ceremony.options_json)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))?;
    options.insert("ceremonyId".into(), Value::String(ceremony.ceremony_id.clone()));
    Ok(axum::Json(Value::Object(options)).into_response())
}

/// A finish's body: `credential` (a JSON object, or the same as a string)
/// taken out as JSON text, the rest parsed as `message` (whose
/// `credentialJson` it fills).
pub(super) fn credential_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    message: &str,
) -> Result<(T, Option<String>), ApiError> {
    let declared = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let top = declared.split(['/', ';']).next().unwrap_or_default().trim().to_ascii_lowercase();
    if !body.is_empty() && matches!(top.as_str(), "multipart" | "image" | "audio" | "video" | "font" | "model") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be a JSON object (Content-Type: application/json)",
        ));
    }
    let mut value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}"))
        })?
    };
    let Value::Object(obj) = &mut value else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "the body must be a JSON object"));
    };
    let credential = match obj.remove(CREDENTIAL) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        Some(_) => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                CREDENTIAL,
                "credential: must be the PublicKeyCredential as a JSON object",
            ));
        }
    };
    let rest = serde_json::to_vec(&value).unwrap_or_default();
    let parsed = json::parse(headers, &rest, message, &[], Mode::Whole)?;
    Ok((parsed.message, credential))
}

/// The service names the credential by its proto field; the body calls it
/// `credential`.
pub(super) fn credential_field(mut e: ApiError) -> ApiError {
    if e.item.field.as_deref() == Some("credentialJson") {
        e.item.field = Some(CREDENTIAL.into());
        e.item.message = e.item.message.replacen("credentialJson", CREDENTIAL, 1);
    }
    e
}

pub async fn registration_options(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(users_id): Path<String>,
) -> ApiResult {
    let req = pb::StartPasskeyRegistrationRequest { users_id };
    let out = gw.users.start_passkey_registration(meta.request(req)).await?;
    options_reply(out.get_ref())
}

pub async fn register(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(users_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (mut req, credential): (pb::FinishPasskeyRegistrationRequest, _) =
        credential_body(&headers, &body, "FinishPasskeyRegistrationRequest")?;
    req.users_id = users_id;
    if let Some(c) = credential {
        req.credential_json = c;
    }
    let out = gw.users.finish_passkey_registration(meta.request(req)).await.map_err(|s| credential_field(s.into()))?;
    Ok((StatusCode::CREATED, axum::Json(out.into_inner())).into_response())
}

pub async fn list(State(gw): State<Gateway>, meta: CallMeta, Path(users_id): Path<String>) -> ApiResult {
    let out = gw.users.list_passkeys(meta.request(pb::ListPasskeysRequest { users_id })).await?;
    Ok(reply(out.get_ref()))
}

pub async fn remove(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path((users_id, passkey_id)): Path<(String, String)>,
) -> ApiResult {
    let out = gw.users.remove_passkey(meta.request(pb::RemovePasskeyRequest { users_id, passkey_id })).await?;
    Ok(reply(out.get_ref()))
}

pub async fn sign_in_options(State(gw): State<Gateway>, meta: CallMeta, headers: HeaderMap, body: Bytes) -> ApiResult {
    let req: pb::StartPasskeySignInRequest =
        json::parse(&headers, &body, "StartPasskeySignInRequest", &[], Mode::Whole)?.message;
    let out = gw.users.start_passkey_sign_in(meta.request(req)).await?;
    options_reply(out.get_ref())
}

pub async fn sign_in(State(gw): State<Gateway>, meta: CallMeta, headers: HeaderMap, body: Bytes) -> ApiResult {
    let (mut req, credential): (pb::FinishPasskeySignInRequest, _) =
        credential_body(&headers, &body, "FinishPasskeySignInRequest")?;
    if let Some(c) = credential {
        req.credential_json = c;
    }
    let out = gw.users.finish_passkey_sign_in(meta.request(req)).await.map_err(|s| credential_field(s.into()))?;
    Ok(super::users::reply_user(out.get_ref()))
}

/// The document's schemas of these routes that are no protobuf message.
pub fn schemas() -> Map<String, Value> {
    let credential = |what: &str| {
        json!({
            "type": "object",
            "description": format!(
                "The `PublicKeyCredential` that `{what}` answered, as JSON with its binary members \
                 in base64url (as webauthn-rs reads it)."
            ),
            "required": ["id", "rawId", "response", "type"],
        })
    };
    let mut m = Map::new();
    m.insert(
        "PasskeyOptions".into(),
        json!({
            "type": "object",
            "description": "A ceremony's start: webauthn-rs's options (`publicKey`, binary members in base64url, \
                            to decode before they go to `navigator.credentials`) and the `ceremonyId` to send \
                            back with the finish (good for 5 minutes, once).",
            "required": ["ceremonyId", "publicKey"],
            "properties": {
                "ceremonyId": { "type": "string", "format": "uuid" },
                "publicKey": { "type": "object" },
            },
        }),
    );
    m.insert(
        "PasskeyRegistration".into(),
        json!({
            "type": "object",
            "description": "The finish of a registration.",
            "required": ["ceremonyId", "credential"],
            "additionalProperties": false,
            "properties": {
                "ceremonyId": { "type": "string", "format": "uuid" },
                "name": { "type": "string", "maxLength": 100, "description": "A name for the passkey (\"Passkey\" when absent)." },
                "credential": credential("navigator.credentials.create()"),
            },
        }),
    );
    m.insert(
        "SignInMfa".into(),
        json!({
            "type": "object",
            "description": "The second step of a sign-in: the `mfaToken` and either a `code` (TOTP or recovery \
                            code) or a passkey's `ceremonyId` and `credential`.",
            "required": ["mfaToken"],
            "additionalProperties": false,
            "properties": {
                "mfaToken": { "type": "string", "description": "The `mfaToken` of the sign-in's reply." },
                "code": { "type": "string", "description": "Six digits of the authenticator app, or a recovery code." },
                "ceremonyId": {
                    "type": "string",
                    "format": "uuid",
                    "description": "Instead of `code`: the `ceremonyId` of `POST /v2/auth/signin/mfa/passkey/options`.",
                },
                "credential": credential("navigator.credentials.get()"),
            },
        }),
    );
    m.insert(
        "PasskeySignIn".into(),
        json!({
            "type": "object",
            "description": "The finish of a passkey sign-in.",
            "required": ["ceremonyId", "credential"],
            "additionalProperties": false,
            "properties": {
                "ceremonyId": { "type": "string", "format": "uuid" },
                "credential": credential("navigator.credentials.get()"),
            },
        }),
    );
    m
}
