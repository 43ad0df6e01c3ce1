//! Compiles `proto/` without a system `protoc`: protox parses the files, the
//! descriptor set feeds tonic-prost-build (messages and services) and
//! pbjson-build (serde impls that follow the proto3 JSON mapping).
use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &["usersvc/v1/users.proto", "usersvc/v1/groups.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds migrations/ at compile time; a new file must
    // rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    let fds = compiler.file_descriptor_set();
    let encoded = fds.encode_to_vec();
    // Written by hand: compile_fds does not write the set, and server
    // reflection and the gateway's strict JSON check both need it.
    fs::write(out_dir.join("usersvc_descriptor.bin"), &encoded)?;

    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    pbjson_build::Builder::new().register_descriptors(&encoded)?.ignore_unknown_fields().build(&[".usersvc.v1"])?;
    Ok(())
}
