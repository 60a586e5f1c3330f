//! Compiles `napalm/v1/*.proto` with tonic-prost-build and a vendored protoc, so no system
//! protoc is needed. Also writes a file descriptor set, used by tests to check that every
//! message of the contract is exercised.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    std::env::set_var("PROTOC", &protoc);

    let files = [
        "napalm/v1/common.proto",
        "napalm/v1/agent.proto",
        "napalm/v1/coordinator.proto",
        "napalm/trust/v1/trust.proto",
    ]
    .map(PathBuf::from);
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    // `prost::Name` on every message: full proto names, used by the contract tests.
    config.enable_type_names();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("napalm_v1_descriptor.bin"))
        .compile_with_config(config, &files, &[PathBuf::from("."), include])?;
    Ok(())
}
