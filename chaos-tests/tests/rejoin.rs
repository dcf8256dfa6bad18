//! A short rejoin measurement: five followers stopped (SIGKILL and SIGTERM
//! alternately), down 1–2 s, restarted. None of it may cost the cluster
//! its leader: a restarted follower must rejoin without deposing anyone.

mod common;

use common::{build_floe, chaos, local_target_usable};

#[test]
fn restarted_followers_rejoin_without_a_leader_change() {
    if let Err(reason) = local_target_usable() {
        eprintln!("skipping the rejoin measurement: {reason}");
        return;
    }
    let floe = build_floe(&[], None);
    let out = tempfile::Builder::new()
        .prefix("floe-chaos-rejoin-")
        .tempdir()
        .unwrap();
    let table = out.path().join("rejoin.md");
    let output = chaos(&[
        "rejoin",
        "--trials",
        "5",
        "--down-min-ms",
        "1000",
        "--down-max-ms",
        "2000",
        "--settle-ms",
        "1000",
        "--ready-timeout-seconds",
        "30",
        "--seed",
        "20240601",
        "--binary",
        floe.to_str().unwrap(),
        "--out",
        table.to_str().unwrap(),
    ]);
    let text =
        std::fs::read_to_string(table.with_extension("json")).expect("the trials written as JSON");
    let trials: Vec<serde_json::Value> = serde_json::from_str(&text).expect("JSON");
    assert_eq!(trials.len(), 5, "every trial ran");
    for trial in &trials {
        assert!(
            trial["time_to_ready_ms"].is_u64(),
            "trial {}: node {} not ready within 30 s",
            trial["index"],
            trial["node"]
        );
        assert!(
            trial["writes_ok"].as_u64().unwrap() > 0,
            "trial {}: no write succeeded",
            trial["index"]
        );
    }
    let changes: Vec<String> = trials
        .iter()
        .filter(|trial| trial["leader_changes"].as_u64() != Some(0))
        .map(|trial| {
            format!(
                "trial {} ({} node {}): {} change(s)",
                trial["index"], trial["signal"], trial["node"], trial["leader_changes"]
            )
        })
        .collect();
    assert!(
        changes.is_empty(),
        "restarting a follower changed the leader: {}",
        changes.join("; ")
    );
    assert!(
        output.status.success(),
        "floe-chaos rejoin failed; kept in {}",
        out.keep().display()
    );
}
