//! End-to-end tests: the real servers on loopback ports, a real PostgreSQL,
//! real gRPC and HTTP clients.

#[macro_use]
mod common;

mod browser;
mod grpc_groups;
mod grpc_users;
mod http_gateway;
mod mail;
mod processes;
mod safeguards;
mod smtp_sink;
