//! Types generated from `proto/`, with serde impls that follow the proto3 JSON
//! mapping (which is the documented /v2 JSON).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/usersvc.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/usersvc.v1.serde.rs"));

/// The encoded descriptor set of every file in `proto/` and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/usersvc_descriptor.bin"));
