//! Elections with a pre-vote round, so that a node which merely has not
//! heard from the leader yet cannot depose it.
//!
//! openraft 0.9 has no pre-vote: a follower whose election timer fires
//! raises its term at once, and the healthy leader steps down when it next
//! reaches that node. floe therefore switches openraft's own election timer
//! off (`runtime_config().elect(false)`) and decides here when to campaign:
//! after a randomized timeout without leader contact, this node asks every
//! voter whether it *would* vote for it. A voter says no while it hears from
//! a leader, or when its log is newer; only with a majority of yeses does the
//! node call `trigger().elect()`. Asking changes no state anywhere, so a
//! restarted or reconnected node can ask as often as it likes.
//!
//! A pre-vote that reaches the leader also tells it the asker is back: the
//! leader drops its redial backoff to that node and sends a heartbeat at
//! once, so the rejoining node learns the leader within a round trip.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_state::{LogStore, Raft};
use floe_storage::{LogId, NodeId};
use openraft::storage::RaftLogStorage;
use openraft::ServerState;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::peers::{Peers, TransportError};
use crate::wire::{FrameError, RequestBody, ResponseBody};

/// "Would you vote for me?" — asked before a real election.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The asker's current term (its election would use a higher one).
    pub term: u64,
    /// The asker's last log id; a voter with a newer log says no.
    pub last_log_id: Option<LogId>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// The voter's current term.
    pub term: u64,
    /// The leader the voter knows of, if any: a hint for the asker.
    pub leader: Option<NodeId>,
    /// Why the vote would be refused (empty when granted).
    pub reason: String,
}

/// Timing of elections. See [`ElectionOptions::from_timeouts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionOptions {
    pub heartbeat: Duration,
    /// A follower that has heard nothing from a leader for a random time in
    /// `[timeout_min, timeout_max]` asks for pre-votes.
    pub timeout_min: Duration,
    pub timeout_max: Duration,
}

impl ElectionOptions {
    pub fn from_timeouts(heartbeat_ms: u64, timeout_min_ms: u64, timeout_max_ms: u64) -> Self {
        ElectionOptions {
            heartbeat: Duration::from_millis(heartbeat_ms),
            timeout_min: Duration::from_millis(timeout_min_ms),
            timeout_max: Duration::from_millis(timeout_max_ms.max(timeout_min_ms)),
        }
    }

    /// A voter that heard from a leader within this long refuses votes and
    /// pre-votes. Two heartbeats below `timeout_min`: a candidate's own
    /// silence is at least `timeout_min`, and a voter may have heard the
    /// dead leader up to one heartbeat (plus delivery) later than it did, so
    /// every voter's lease has run out by the time a candidate asks.
    pub fn lease(&self) -> Duration {
        self.timeout_min
            .saturating_sub(self.heartbeat * 2)
            .max(self.heartbeat + Duration::from_millis(1))
    }

    /// openraft's `(election_timeout_min, election_timeout_max)` in ms.
    /// Its own election timer is off, so these only set its vote lease
    /// (= its max) and the vote RPC's time limit (= its min).
    pub fn openraft_timeouts(&self) -> (u64, u64) {
        let lease = self.lease().as_millis() as u64;
        (
            lease
                .saturating_sub(1)
                .max(self.heartbeat.as_millis() as u64 + 1),
            lease.max(self.heartbeat.as_millis() as u64 + 2),
        )
    }

    /// A leader that has had no quorum acknowledgement for this long knows it
    /// is cut off: the rest of the cluster may already be electing.
    pub fn isolation_after(&self) -> Duration {
        self.timeout_min
    }

    fn random_timeout(&self) -> Duration {
        let min = self.timeout_min.as_millis() as u64;
        let max = self.timeout_max.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(min..=max))
    }
}

/// What a voter knows when it answers a pre-vote.
#[derive(Clone, Debug)]
pub(crate) struct LocalView {
    pub is_leader: bool,
    /// For a leader: time since a quorum last acknowledged it.
    pub quorum_ack_age: Option<Duration>,
    /// Time since this node's vote was last confirmed: by a leader's append
    /// or snapshot, or by granting a vote (openraft's own lease clock).
    pub contact_age: Option<Duration>,
    pub last_log_id: Option<LogId>,
    pub term: u64,
    pub leader: Option<NodeId>,
}

/// The pre-vote rule: no while a leader is heard from, or the asker's log is behind.
pub(crate) fn decide(
    request: &PreVoteRequest,
    view: &LocalView,
    lease: Duration,
) -> PreVoteResponse {
    let refuse = |reason: String| PreVoteResponse {
        granted: false,
        term: view.term,
        leader: view.leader,
        reason,
    };
    if view.is_leader && view.quorum_ack_age.is_none_or(|age| age < lease) {
        return refuse("this node is the leader and a quorum acknowledges it".into());
    }
    if let Some(age) = view.contact_age.filter(|age| *age < lease) {
        let leader = view
            .leader
            .map_or("a leader".to_string(), |id| format!("leader {id}"));
        return refuse(format!("heard from {leader} {} ms ago", age.as_millis()));
    }
    if request.last_log_id < view.last_log_id {
        return refuse(format!(
            "log is behind: {:?} < {:?}",
            request.last_log_id, view.last_log_id
        ));
    }
    PreVoteResponse {
        granted: true,
        term: view.term,
        leader: view.leader,
        reason: String::new(),
    }
}

/// This node's elections: answers pre-votes, tracks leader contact, and
/// (in [`Elections::run`]) decides when to campaign.
#[derive(Clone)]
pub struct Elections {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    log: LogStore,
    peers: Peers,
    our_id: NodeId,
    options: ElectionOptions,
    /// A leader named by a voter's pre-vote answer, and when.
    hint: Mutex<Option<(NodeId, Instant)>>,
    stopped: AtomicBool,
}

impl Elections {
    pub fn new(
        raft: Raft,
        log: LogStore,
        peers: Peers,
        our_id: NodeId,
        options: ElectionOptions,
    ) -> Self {
        Elections {
            inner: Arc::new(Inner {
                raft,
                log,
                peers,
                our_id,
                options,
                hint: Mutex::new(None),
                stopped: AtomicBool::new(false),
            }),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn options(&self) -> ElectionOptions {
        self.inner.options
    }

    /// Time since this node's vote was last confirmed (`Ok(None)`: not since
    /// it started). `Err` when the Raft core did not answer within a heartbeat.
    async fn contact_age(&self) -> Result<Option<Duration>, CoreBusy> {
        let asked = self
            .inner
            .raft
            .with_raft_state(|state| state.vote_last_modified());
        match tokio::time::timeout(self.inner.options.heartbeat, asked).await {
            Ok(Ok(modified)) => Ok(modified.map(|at| at.elapsed())),
            _ => Err(CoreBusy),
        }
    }

    async fn last_log_id(&self) -> Option<LogId> {
        let mut log = self.inner.log.clone();
        log.get_log_state().await.ok()?.last_log_id
    }

    /// The leader this node knows of: openraft's, else a recent pre-vote hint.
    pub fn leader_hint(&self) -> Option<NodeId> {
        if let Some(leader) = self.inner.raft.metrics().borrow().current_leader {
            return Some(leader);
        }
        let valid_for = self.inner.options.timeout_max * 2;
        lock(&self.inner.hint)
            .filter(|(_, at)| at.elapsed() < valid_for)
            .map(|(leader, _)| leader)
    }

    /// For a leader: how long it has gone without a quorum acknowledging it,
    /// once that is past [`ElectionOptions::isolation_after`].
    pub fn quorum_lost_for(&self) -> Option<Duration> {
        // Asked on every write: read the two fields, do not clone the metrics.
        let (state, acked) = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state, metrics.millis_since_quorum_ack)
        };
        if state != ServerState::Leader {
            return None;
        }
        let age = Duration::from_millis(acked?);
        (age >= self.inner.options.isolation_after()).then_some(age)
    }

    /// Answers a pre-vote from node `from`.
    pub(crate) async fn answer_pre_vote(
        &self,
        from: NodeId,
        request: &PreVoteRequest,
    ) -> PreVoteResponse {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let is_leader = metrics.state == ServerState::Leader;
        let view = LocalView {
            is_leader,
            quorum_ack_age: metrics.millis_since_quorum_ack.map(Duration::from_millis),
            // A core too busy to say counts as having heard from a leader.
            contact_age: if is_leader {
                None
            } else {
                self.contact_age().await.unwrap_or(Some(Duration::ZERO))
            },
            last_log_id: self.last_log_id().await,
            term: metrics.current_term,
            leader: metrics.current_leader,
        };
        let response = decide(request, &view, self.inner.options.lease());
        if is_leader && !response.granted {
            self.welcome_back(from);
        }
        debug!(from, granted = response.granted, reason = %response.reason, "pre-vote answered");
        response
    }

    /// The asker is up: reach it now rather than after the redial backoff.
    fn welcome_back(&self, node: NodeId) {
        let this = self.clone();
        tokio::spawn(async move {
            this.inner.peers.forget_failures(node).await;
            let _ = this.inner.raft.trigger().heartbeat().await;
        });
    }

    /// No more campaigns from this node (it is stopping).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
    }

    /// Campaigns when a majority agrees there is no leader, until `cancel`.
    /// `may_campaign` can hold elections back (a node that cannot write its
    /// vote must not start one).
    pub async fn run(self, may_campaign: impl Fn() -> bool + Send, cancel: CancellationToken) {
        let raft = &self.inner.raft;
        raft.runtime_config().elect(false);
        // Tell the others we are here (every one of them: no early stop);
        // the leader answers by reaching us.
        self.pre_vote_round(usize::MAX).await;
        let mut waited_since = Instant::now();
        let mut timeout = self.inner.options.random_timeout();
        let tick = self.inner.options.heartbeat;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
            if self.inner.stopped.load(Ordering::SeqCst) {
                break;
            }
            let metrics = raft.metrics().borrow().clone();
            if metrics.state == ServerState::Leader || metrics.state == ServerState::Shutdown {
                waited_since = Instant::now();
                continue;
            }
            let voters: BTreeSet<NodeId> =
                metrics.membership_config.membership().voter_ids().collect();
            if !voters.contains(&self.inner.our_id) {
                continue;
            }
            let Ok(contact) = self.contact_age().await else {
                continue;
            };
            let silent = contact.map_or(waited_since.elapsed(), |age| {
                age.min(waited_since.elapsed())
            });
            if silent < timeout || !may_campaign() {
                continue;
            }
            let (granted, asked) = self.pre_vote_round(voters.len()).await;
            // A node that stopped while asking must not campaign.
            if cancel.is_cancelled() || self.inner.stopped.load(Ordering::SeqCst) {
                break;
            }
            // Nor one that voted for, or heard from, a leader meanwhile.
            let now = raft.metrics().borrow().clone();
            let changed = now.current_term != metrics.current_term
                || now.current_leader != metrics.current_leader;
            let heard = matches!(self.contact_age().await, Ok(Some(age)) if age < timeout);
            if granted * 2 > voters.len() && !changed && !heard {
                info!(
                    node = self.inner.our_id,
                    silent_ms = silent.as_millis() as u64,
                    granted,
                    voters = voters.len(),
                    "no leader heard from and a majority agrees: starting an election"
                );
                if raft.trigger().elect().await.is_err() {
                    break;
                }
            } else {
                debug!(
                    node = self.inner.our_id,
                    granted, asked, changed, heard, "not campaigning"
                );
            }
            waited_since = Instant::now();
            timeout = self.inner.options.random_timeout();
        }
    }

    /// Asks every other voter until `voters` has a majority of yeses (ours
    /// included) or every answer is in; returns (yes votes, voters asked).
    async fn pre_vote_round(&self, voters: usize) -> (usize, usize) {
        use futures::StreamExt;
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let request = PreVoteRequest {
            term: metrics.current_term,
            last_log_id: self.last_log_id().await,
        };
        let ttl = self.inner.options.lease().max(Duration::from_millis(100));
        let mut answers: futures::stream::FuturesUnordered<_> = membership
            .voter_ids()
            .filter(|id| *id != self.inner.our_id)
            .filter_map(|id| {
                let addr = membership.get_node(&id)?.raft_addr.clone();
                let peers = self.inner.peers.clone();
                let request = request.clone();
                Some(async move { (id, ask(&peers, id, &addr, request, ttl).await) })
            })
            .collect();
        let asked = answers.len();
        let mut granted = usize::from(membership.voter_ids().any(|id| id == self.inner.our_id));
        while granted * 2 <= voters {
            let Some((id, answer)) = answers.next().await else {
                break;
            };
            match answer {
                Some(response) if response.granted => granted += 1,
                Some(response) => {
                    if let Some(leader) = response.leader {
                        *lock(&self.inner.hint) = Some((leader, Instant::now()));
                    }
                    debug!(voter = id, reason = %response.reason, "pre-vote refused");
                }
                None => debug!(voter = id, "no pre-vote answer"),
            }
        }
        (granted, asked)
    }
}

/// One pre-vote call. A peer of the previous release does not know the
/// request and resets the stream: it runs classic elections itself, so its
/// answer counts as a yes (its real vote still checks logs and leases).
async fn ask(
    peers: &Peers,
    target: NodeId,
    addr: &str,
    request: PreVoteRequest,
    ttl: Duration,
) -> Option<PreVoteResponse> {
    match peers
        .call(target, addr, RequestBody::PreVote(request), ttl)
        .await
    {
        Ok(ResponseBody::PreVote(response)) => Some(response),
        Ok(_) => None,
        Err(TransportError::Stream {
            source: FrameError::Io(error),
            ..
        }) if error.kind() == std::io::ErrorKind::ConnectionReset => Some(PreVoteResponse {
            granted: true,
            term: 0,
            leader: None,
            reason: String::new(),
        }),
        Err(_) => None,
    }
}

struct CoreBusy;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    fn follower(contact_ms: Option<u64>, last: Option<LogId>) -> LocalView {
        LocalView {
            is_leader: false,
            quorum_ack_age: None,
            contact_age: contact_ms.map(Duration::from_millis),
            last_log_id: last,
            term: 3,
            leader: Some(1),
        }
    }

    const LEASE: Duration = Duration::from_millis(200);

    #[test]
    fn a_voter_that_hears_a_leader_refuses_and_names_it() {
        let request = PreVoteRequest {
            term: 3,
            last_log_id: log_id(3, 10),
        };
        let answer = decide(&request, &follower(Some(40), log_id(3, 10)), LEASE);
        assert!(!answer.granted);
        assert_eq!(answer.leader, Some(1));
        assert!(
            answer.reason.contains("heard from leader"),
            "{}",
            answer.reason
        );
    }

    #[test]
    fn a_silent_voter_grants_an_asker_whose_log_is_as_new() {
        let request = PreVoteRequest {
            term: 3,
            last_log_id: log_id(3, 10),
        };
        assert!(decide(&request, &follower(Some(250), log_id(3, 10)), LEASE).granted);
        assert!(
            decide(&request, &follower(None, log_id(2, 12)), LEASE).granted,
            "a higher term wins over a longer log"
        );
    }

    #[test]
    fn a_silent_voter_refuses_an_asker_whose_log_is_behind() {
        let request = PreVoteRequest {
            term: 5,
            last_log_id: log_id(3, 9),
        };
        let answer = decide(&request, &follower(None, log_id(3, 10)), LEASE);
        assert!(!answer.granted);
        assert!(answer.reason.contains("behind"), "{}", answer.reason);
    }

    #[test]
    fn a_leader_refuses_while_a_quorum_acknowledges_it_and_grants_once_cut_off() {
        let request = PreVoteRequest {
            term: 3,
            last_log_id: log_id(3, 10),
        };
        let mut leader = follower(None, log_id(3, 10));
        leader.is_leader = true;
        leader.quorum_ack_age = Some(Duration::from_millis(30));
        assert!(!decide(&request, &leader, LEASE).granted);
        leader.quorum_ack_age = None;
        assert!(
            !decide(&request, &leader, LEASE).granted,
            "a new leader has no acks yet"
        );
        leader.quorum_ack_age = Some(Duration::from_millis(900));
        assert!(decide(&request, &leader, LEASE).granted);
    }

    #[test]
    fn the_lease_runs_out_before_any_candidate_asks() {
        let options = ElectionOptions::from_timeouts(50, 300, 500);
        assert_eq!(options.lease(), Duration::from_millis(200));
        let (min, max) = options.openraft_timeouts();
        assert!(50 < min && min < max && max == 200, "{min} {max}");
        // A candidate is silent at least timeout_min; a voter at most one
        // heartbeat less; the lease must have run out for it.
        assert!(options.timeout_min - options.heartbeat > options.lease());
        for _ in 0..100 {
            let timeout = options.random_timeout();
            assert!(timeout >= options.timeout_min && timeout <= options.timeout_max);
        }
    }

    #[test]
    fn tight_settings_still_give_openraft_a_valid_config() {
        let options = ElectionOptions::from_timeouts(50, 160, 170);
        let (min, max) = options.openraft_timeouts();
        assert!(50 < min && min < max, "{min} {max}");
    }
}
