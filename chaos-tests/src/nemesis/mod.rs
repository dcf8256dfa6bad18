//! Nemeses: the faults, how each is injected into a target and healed.

use serde::Serialize;

pub mod churn;
pub mod inject;
pub mod schedule;

pub use inject::{heal, inject, ActiveFault, FaultContext};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// SIGKILL a random node; restart it at heal.
    KillRandom,
    /// SIGKILL the leader; restart it at heal.
    KillLeader,
    /// SIGSTOP the leader; SIGCONT at heal.
    PauseLeader,
    /// SIGSTOP a follower; SIGCONT at heal.
    PauseFollower,
    /// The leader cut off from both followers (a minority of one).
    PartitionLeader,
    /// One follower cut off from the others.
    PartitionFollower,
    /// A bridge: the leader and one follower cannot reach each other, the
    /// third node reaches both. Clients talk to every node, so both sides
    /// keep receiving requests. (Targets that can only isolate whole nodes
    /// isolate a random node instead.)
    PartitionSplit,
    /// Every node SIGKILLed at once, then all restarted.
    PowerCut,
    /// Each node in turn stopped gracefully and started again.
    RollingRestart,
    /// A follower down while the leader snapshots and purges its log past
    /// the follower's last entry; on restart it must install a snapshot.
    SnapshotCatchup,
    /// One follower SIGKILLed and restarted again and again (down 1–3 s,
    /// up 1–3 s) until the heal: restarts must not cost the cluster its leader.
    RejoinStorm,
    /// Only the leader's node-to-node (QUIC, UDP) traffic dropped, both
    /// ways; its client ports stay reachable and clients keep using it.
    IsolateLeaderPeers,
    /// SIGTERM a node (leader or follower) under load: the time it takes to
    /// exit is measured, and it must not campaign while stopping; started
    /// again at heal.
    SlowShutdown,
    /// One node's wall clock shifted by tens of seconds (libfaketime).
    ClockSkew,
    /// One node's filesystem filled up; freed at heal.
    DiskFull,
}

pub const ALL: [Nemesis; 15] = [
    Nemesis::KillRandom,
    Nemesis::KillLeader,
    Nemesis::PauseLeader,
    Nemesis::PauseFollower,
    Nemesis::PartitionLeader,
    Nemesis::PartitionFollower,
    Nemesis::PartitionSplit,
    Nemesis::PowerCut,
    Nemesis::RollingRestart,
    Nemesis::SnapshotCatchup,
    Nemesis::RejoinStorm,
    Nemesis::IsolateLeaderPeers,
    Nemesis::SlowShutdown,
    Nemesis::ClockSkew,
    Nemesis::DiskFull,
];

impl Nemesis {
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::KillRandom => "kill-random",
            Nemesis::KillLeader => "kill-leader",
            Nemesis::PauseLeader => "pause-leader",
            Nemesis::PauseFollower => "pause-follower",
            Nemesis::PartitionLeader => "partition-leader",
            Nemesis::PartitionFollower => "partition-follower",
            Nemesis::PartitionSplit => "partition-split",
            Nemesis::PowerCut => "power-cut",
            Nemesis::RollingRestart => "rolling-restart",
            Nemesis::SnapshotCatchup => "snapshot-catchup",
            Nemesis::RejoinStorm => "rejoin-storm",
            Nemesis::IsolateLeaderPeers => "isolate-leader-peers",
            Nemesis::SlowShutdown => "slow-shutdown",
            Nemesis::ClockSkew => "clock-skew",
            Nemesis::DiskFull => "disk-full",
        }
    }

    pub fn parse(name: &str) -> Option<Nemesis> {
        ALL.into_iter().find(|nemesis| nemesis.name() == name)
    }

    /// Node settings the cluster needs for this nemesis to do its job.
    pub fn overrides(self) -> Vec<String> {
        match self {
            // Snapshot often and keep few entries, so a follower down for a
            // few seconds falls behind the purge point.
            Nemesis::SnapshotCatchup => vec![
                "raft.snapshot_after_entries=200".into(),
                "raft.keep_entries_after_snapshot=20".into(),
            ],
            _ => Vec::new(),
        }
    }
}

/// What `--nemesis` selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    One(Nemesis),
    /// Several, comma separated: each once.
    List(Vec<Nemesis>),
    All,
    Random,
    /// No faults: a baseline.
    None,
}

impl Selection {
    pub fn parse(text: &str) -> Result<Selection, String> {
        if text.contains(',') {
            let mut list = Vec::new();
            for name in text
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
            {
                match Selection::parse(name)? {
                    Selection::One(nemesis) => list.push(nemesis),
                    _ => {
                        return Err(format!(
                            "{name:?} cannot be part of a list; list nemesis names only"
                        ))
                    }
                }
            }
            return Ok(Selection::List(list));
        }
        match text {
            "all" => Ok(Selection::All),
            "random" => Ok(Selection::Random),
            "none" => Ok(Selection::None),
            name => Nemesis::parse(name).map(Selection::One).ok_or_else(|| {
                let names: Vec<&str> = ALL.iter().map(|nemesis| nemesis.name()).collect();
                format!(
                    "unknown nemesis {name:?}; expected all, random, none or one of: {}",
                    names.join(", ")
                )
            }),
        }
    }
}
