fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build offline-capable and free of system packages.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    // etcd's put API, for the benchmark's comparison run only (no server side).
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd_kv.proto"], &["proto"])?;
    Ok(())
}
