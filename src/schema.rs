//! The proto schema at run time: field paths for masks and errors, and the
//! descriptors that resolve them. Shared by the services and the gateway so
//! both name fields the same way.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

/// The pool of every message in `proto/`.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The set is produced by build.rs from this crate's own protos, so a
        // failure here is a build defect, not a run-time condition.
        #[allow(clippy::expect_used)]
        DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptor set built by build.rs decodes")
    })
}

/// The descriptor of a message of package `usersvc.v1` by its short name.
pub fn message(name: &str) -> Option<MessageDescriptor> {
    pool().get_message_by_name(&format!("usersvc.v1.{name}"))
}

/// Whether a message is `google.protobuf.Value`: any JSON below it.
pub fn is_json_value(m: &MessageDescriptor) -> bool {
    m.full_name() == "google.protobuf.Value"
}

/// Output-only fields of `User` (proto names): the server manages them, and
/// a request that sends them back (as old clients do) has them ignored.
pub const USER_OUTPUT_ONLY: &[&str] =
    &["users_id", "created_at", "updated_at", "session_token", "mfa_required", "mfa_token"];
/// Members that deployed Catalyze clients send in request bodies and the
/// server manages or does not use (the iOS SDK's `save` sends back every
/// property it holds; its sign-up sends `inviteCode`): accepted and ignored
/// in any body, as their snake_case forms are. Any other member that no
/// message field has is refused.
pub const ECHOED_MEMBERS: &[&str] =
    &["usersId", "sessionToken", "createdAt", "updatedAt", "inviteCode", "appId", "userId"];
/// Output-only fields of `Group`.
pub const GROUP_OUTPUT_ONLY: &[&str] = &["groups_id"];

/// `address_line1` -> `addressLine1`, as the proto3 JSON mapping names fields.
pub fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `addressLine1` -> `address_line1`.
pub fn camel_to_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a field-mask path on dots; a segment in backticks may hold dots
/// (AIP-161), and a doubled backtick inside it stands for one.
pub fn split_path(path: &str) -> Result<Vec<String>, String> {
    let mut segments = Vec::new();
    let mut chars = path.chars().peekable();
    loop {
        let mut seg = String::new();
        if chars.peek() == Some(&'`') {
            chars.next();
            loop {
                match chars.next() {
                    Some('`') if chars.peek() == Some(&'`') => {
                        chars.next();
                        seg.push('`');
                    }
                    Some('`') => break,
                    Some(c) => seg.push(c),
                    None => return Err(format!("unclosed backtick in path {path:?}")),
                }
            }
            match chars.next() {
                None => {
                    segments.push(seg);
                    return Ok(segments);
                }
                Some('.') => segments.push(seg),
                Some(_) => return Err(format!("text after a quoted segment in path {path:?}")),
            }
        } else {
            loop {
                match chars.next() {
                    Some('.') => break,
                    Some(c) => seg.push(c),
                    None => {
                        if seg.is_empty() {
                            return Err(format!("empty segment in path {path:?}"));
                        }
                        segments.push(seg);
                        return Ok(segments);
                    }
                }
            }
            if seg.is_empty() {
                return Err(format!("empty segment in path {path:?}"));
            }
            segments.push(seg);
        }
    }
}

/// Quotes a segment for a field-mask path when it needs it.
pub fn quote_segment(seg: &str) -> String {
    if !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        seg.to_owned()
    } else {
        format!("`{}`", seg.replace('`', "``"))
    }
}

/// A proto field path of an error ("addresses[0].zip_code") in the JSON
/// form clients of the gateway know ("addresses[0].zipCode").
pub fn field_path_to_json(path: &str) -> String {
    path.split('.').map(snake_to_camel).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_conversions() {
        assert_eq!(snake_to_camel("address_line1"), "addressLine1");
        assert_eq!(snake_to_camel("users_id"), "usersId");
        assert_eq!(camel_to_snake("addressLine1"), "address_line1");
        assert_eq!(camel_to_snake("usersId"), "users_id");
        assert_eq!(field_path_to_json("addresses[0].zip_code"), "addresses[0].zipCode");
    }

    #[test]
    fn paths_split_with_quotes() {
        assert_eq!(split_path("name.last_name").unwrap(), vec!["name", "last_name"]);
        assert_eq!(split_path("extras.`a.b`.c").unwrap(), vec!["extras", "a.b", "c"]);
        assert_eq!(split_path("extras.`x``y`").unwrap(), vec!["extras", "x`y"]);
        assert!(split_path("a..b").is_err());
        assert!(split_path("").is_err());
        assert!(split_path("extras.`open").is_err());
        assert_eq!(quote_segment("a.b"), "`a.b`");
        assert_eq!(quote_segment("plain_1"), "plain_1");
        assert_eq!(
            split_path(&format!("extras.{}", quote_segment("we`ird.key"))).unwrap(),
            vec!["extras", "we`ird.key"]
        );
    }

    #[test]
    fn descriptors_resolve() {
        let user = message("User").unwrap();
        assert!(user.get_field_by_name("address_line1").is_none());
        assert_eq!(user.get_field_by_name("phone_number").unwrap().json_name(), "phoneNumber");
    }
}
