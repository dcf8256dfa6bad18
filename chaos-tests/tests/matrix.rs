//! The bounded chaos matrix CI runs: every nemesis once against local node
//! processes with both workloads (short phases), and two nemeses against
//! the container appliance when docker works here.

mod common;

use std::sync::Mutex;

use common::{build_floe, chaos, local_target_usable};

/// The scenarios start clusters of their own; two at once would starve a
/// 2-core machine, so the tests take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn report(out: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

#[test]
fn every_nemesis_against_local_processes() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(reason) = local_target_usable() {
        eprintln!("skipping the local chaos matrix: {reason}");
        return;
    }
    let floe = build_floe(&[], None);
    let out = tempfile::Builder::new()
        .prefix("floe-chaos-matrix-")
        .tempdir()
        .unwrap();
    let output = chaos(&[
        "--target",
        "local",
        "--nemesis",
        "all",
        "--workload",
        "both",
        "--seconds",
        "3",
        "--steady-seconds",
        "2",
        "--recovery-seconds",
        "2",
        "--seed",
        "20240601",
        "--binary",
        floe.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let report = report(out.path());
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(
        cells.len(),
        floe_chaos::nemesis::ALL.len(),
        "one scenario per nemesis"
    );
    for cell in cells {
        // Clock skew needs libfaketime (installed by `make chaos-test`).
        let skipped_for_faketime = cell["skipped"]
            .as_str()
            .is_some_and(|reason| reason.contains("libfaketime"));
        assert!(
            cell["skipped"].is_null() || skipped_for_faketime,
            "{} was skipped: {}",
            cell["label"],
            cell["skipped"]
        );
        if skipped_for_faketime {
            continue;
        }
        assert!(
            cell["ops"]["ok"].as_u64().unwrap() > 100,
            "{}: too few operations succeeded",
            cell["label"]
        );
        assert!(
            !cell["faults"].as_array().unwrap().is_empty(),
            "{}: no fault injected",
            cell["label"]
        );
    }
    assert!(
        output.status.success(),
        "violations found; kept in {}",
        out.keep().display()
    );
    // Each scenario wrote its timeline.
    assert!(out.path().join("cells/kill-leader/timeline.svg").exists());
}

#[test]
fn two_nemeses_against_the_container_appliance() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !floe_chaos::targets::containers::docker_available() {
        eprintln!("skipping the container target: docker (with compose) is not available");
        return;
    }
    let floe = build_floe(&[], None);
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let out = tempfile::Builder::new()
        .prefix("floe-chaos-containers-")
        .tempdir()
        .unwrap();
    let output = chaos(&[
        "--target",
        "containers",
        "--nemesis",
        "kill-leader,partition-follower",
        "--workload",
        "both",
        "--seconds",
        "3",
        "--steady-seconds",
        "2",
        "--recovery-seconds",
        "2",
        "--seed",
        "7",
        "--binary",
        floe.to_str().unwrap(),
        "--deploy-dir",
        deploy.to_str().unwrap(),
        "--rebuild-image",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let report = report(out.path());
    assert_eq!(report["cells"].as_array().unwrap().len(), 2);
    assert!(
        output.status.success(),
        "violations found; kept in {}",
        out.keep().display()
    );
}
