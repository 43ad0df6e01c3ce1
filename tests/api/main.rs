//! End-to-end tests: the real servers on loopback ports, a real PostgreSQL,
//! real gRPC and HTTP clients.

#[macro_use]
mod common;

mod browser;
mod clients;
mod concurrency;
mod edge;
mod floods;
mod grpc_groups;
mod grpc_users;
mod http_gateway;
mod import;
mod listing;
mod mail;
mod mail_routes;
mod merge_patch;
mod mfa_passkey;
mod openapi;
mod operations;
mod paging;
mod passkeys;
mod processes;
mod reauth;
mod replicas;
mod rfc7396;
mod safeguards;
mod service_tokens;
mod smtp_sink;
mod telemetry;
mod tls;
mod totp;
mod trail;
mod upgrades;
mod usernames;
mod verification;
