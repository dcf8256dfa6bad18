//! Shared by the chaos integration tests: locating (or building) the floe
//! binary, and running the floe-chaos binary as an operator would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const CHAOS: &str = env!("CARGO_BIN_EXE_floe-chaos");

/// The profile directory this test was built into (`target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_path_buf()
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds `floe` with `features` into `target_dir` (same profile as this
/// test) and returns its path. `FLOE_BINARY` overrides for the default build.
pub fn build_floe(features: &[&str], target_dir: Option<&Path>) -> PathBuf {
    if features.is_empty() && target_dir.is_none() {
        if let Ok(binary) = std::env::var("FLOE_BINARY") {
            return PathBuf::from(binary);
        }
    }
    let profile = profile_dir();
    let release = profile.file_name().is_some_and(|name| name == "release");
    let target_dir = target_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| profile.parent().expect("target dir").to_path_buf());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    // `cargo test` hands its test processes variables describing this
    // package (CARGO_PKG_*, CARGO_MANIFEST_DIR, LD_LIBRARY_PATH …); a nested
    // build that inherits them sees a changed environment and rebuilds
    // crates with build scripts (ring and everything above it).
    for (name, _) in std::env::vars() {
        let keep = matches!(name.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR")
            || name.starts_with("CARGO_BUILD_");
        if (name.starts_with("CARGO_") && !keep)
            || name == "LD_LIBRARY_PATH"
            || name.starts_with("__CARGO")
        {
            command.env_remove(&name);
        }
    }
    command
        .current_dir(workspace_root())
        .args(["build", "-p", "floe-node", "--bin", "floe"])
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        command.arg("--release");
    }
    if !features.is_empty() {
        command.arg("--features").arg(features.join(","));
    }
    let status = command.status().expect("running cargo build");
    assert!(
        status.success(),
        "building floe with features {features:?} failed"
    );
    target_dir
        .join(if release { "release" } else { "debug" })
        .join("floe")
}

/// Runs floe-chaos with `args`; prints its output (the summary table).
pub fn chaos(args: &[&str]) -> Output {
    let output = Command::new(CHAOS)
        .args(args)
        .output()
        .expect("running floe-chaos");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Whether the local target can run every nemesis here (root, iptables, mount).
pub fn local_target_usable() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
    if uid.ok().as_deref() != Some("0") {
        return Err("not root: partitions (iptables) and disk-full (tmpfs) need root".into());
    }
    if !floe_chaos::targets::iptables::available() {
        return Err("iptables does not work here".into());
    }
    Ok(())
}
