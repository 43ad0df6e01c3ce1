//! What the gateway's handlers call: the service traits that tonic generates
//! from `proto/`, implemented two ways.
//!
//! - [`Local`]: the services of this process, called directly. The handler
//!   calls the same trait method the gRPC server calls, with the same
//!   `Request` (metadata, no peer address), and gets the same `Status`; what
//!   it skips is encoding the message, routing it as an HTTP/2 request and
//!   decoding it again, which cost a cached read about a fifth of its time.
//! - [`Remote`]: a service in another process, over a gRPC channel
//!   (`usersvc gateway --grpc-upstream`).

use std::sync::Arc;

use pbjson_types::Empty;
use tonic::{Request, Response, Status};

use super::GrpcTransport;
use crate::observe::local_rpc;
use crate::pb::{
    self, group_service_client::GroupServiceClient, group_service_server::GroupService,
    user_service_client::UserServiceClient, user_service_server::UserService,
};

/// A service of this process, observed like a call from the network.
pub struct Local<T>(pub Arc<T>);

/// A service reached over gRPC.
pub struct Remote<C>(pub C);

/// Implements a service trait for [`Local`] and [`Remote`], one method per
/// RPC: `method(Request) -> Response = "RpcName"`.
macro_rules! upstream {
    ($service:ident, $client:ident, $name:literal, { $($method:ident($req:ty) -> $res:ty = $rpc:literal;)* }) => {
        #[tonic::async_trait]
        impl<T: $service> $service for Local<T> {
            $(
                async fn $method(&self, request: Request<$req>) -> Result<Response<$res>, Status> {
                    local_rpc(concat!($name, "/", $rpc), request, |r| self.0.$method(r)).await
                }
            )*
        }

        #[tonic::async_trait]
        impl $service for Remote<$client<GrpcTransport>> {
            $(
                async fn $method(&self, request: Request<$req>) -> Result<Response<$res>, Status> {
                    self.0.clone().$method(request).await
                }
            )*
        }
    };
}

upstream!(UserService, UserServiceClient, "usersvc.v1.UserService", {
    create_user(pb::CreateUserRequest) -> pb::User = "CreateUser";
    get_user(pb::GetUserRequest) -> pb::User = "GetUser";
    update_user(pb::UpdateUserRequest) -> pb::User = "UpdateUser";
    delete_user(pb::DeleteUserRequest) -> Empty = "DeleteUser";
    forgot_username(pb::ForgotUsernameRequest) -> Empty = "ForgotUsername";
    list_user_groups(pb::ListUserGroupsRequest) -> pb::ListUserGroupsResponse = "ListUserGroups";
    sign_in(pb::SignInRequest) -> pb::User = "SignIn";
    sign_out(pb::SignOutRequest) -> Empty = "SignOut";
    request_password_reset(pb::RequestPasswordResetRequest) -> Empty = "RequestPasswordReset";
    reset_password(pb::ResetPasswordRequest) -> Empty = "ResetPassword";
    list_sessions(pb::ListSessionsRequest) -> pb::ListSessionsResponse = "ListSessions";
    revoke_session(pb::RevokeSessionRequest) -> Empty = "RevokeSession";
    verify_session(pb::VerifySessionRequest) -> pb::VerifySessionResponse = "VerifySession";
    list_disclosures(pb::ListDisclosuresRequest) -> pb::ListDisclosuresResponse = "ListDisclosures";
    list_users(pb::ListUsersRequest) -> pb::ListUsersResponse = "ListUsers";
    export_user(pb::ExportUserRequest) -> pbjson_types::Struct = "ExportUser";
    start_passkey_registration(pb::StartPasskeyRegistrationRequest) -> pb::PasskeyCeremony = "StartPasskeyRegistration";
    finish_passkey_registration(pb::FinishPasskeyRegistrationRequest) -> pb::Passkey = "FinishPasskeyRegistration";
    list_passkeys(pb::ListPasskeysRequest) -> pb::ListPasskeysResponse = "ListPasskeys";
    remove_passkey(pb::RemovePasskeyRequest) -> Empty = "RemovePasskey";
    start_passkey_sign_in(pb::StartPasskeySignInRequest) -> pb::PasskeyCeremony = "StartPasskeySignIn";
    finish_passkey_sign_in(pb::FinishPasskeySignInRequest) -> pb::User = "FinishPasskeySignIn";
    send_verification(pb::SendVerificationRequest) -> Empty = "SendVerification";
    verify_email(pb::VerifyEmailRequest) -> Empty = "VerifyEmail";
    enrol_totp(pb::EnrolTotpRequest) -> pb::EnrolTotpResponse = "EnrolTotp";
    confirm_totp(pb::ConfirmTotpRequest) -> pb::ConfirmTotpResponse = "ConfirmTotp";
    remove_totp(pb::RemoveTotpRequest) -> Empty = "RemoveTotp";
    sign_in_mfa(pb::SignInMfaRequest) -> pb::User = "SignInMfa";
    start_mfa_passkey(pb::StartMfaPasskeyRequest) -> pb::PasskeyCeremony = "StartMfaPasskey";
});

upstream!(GroupService, GroupServiceClient, "usersvc.v1.GroupService", {
    create_group(pb::CreateGroupRequest) -> pb::Group = "CreateGroup";
    get_group(pb::GetGroupRequest) -> pb::Group = "GetGroup";
    update_group(pb::UpdateGroupRequest) -> pb::Group = "UpdateGroup";
    delete_group(pb::DeleteGroupRequest) -> Empty = "DeleteGroup";
    add_member(pb::AddMemberRequest) -> Empty = "AddMember";
    remove_member(pb::RemoveMemberRequest) -> Empty = "RemoveMember";
    list_members(pb::ListMembersRequest) -> pb::ListMembersResponse = "ListMembers";
    list_groups(pb::ListGroupsRequest) -> pb::ListGroupsResponse = "ListGroups";
});
