fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build offline-capable and free of system packages.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/floe.proto"], &["proto"])?;
    Ok(())
}
