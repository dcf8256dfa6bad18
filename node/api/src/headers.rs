//! Response headers floe nodes add, read by clients.
//!
//! A node that refuses a request as `UNAVAILABLE` names the leader it knows
//! of in [`LEADER_API_HEADER`], so a client can go there next instead of
//! trying nodes in turn; every refusal floe itself raises as `UNAVAILABLE`
//! also carries [`UNAPPLIED_HEADER`]: the node's word that nothing was
//! applied, which a transport failure cannot give.

/// Response header: the leader's gRPC API address (`host:port`).
pub const LEADER_API_HEADER: &str = "floe-leader-api";
/// Response header on floe's own `UNAVAILABLE` refusals: nothing was applied.
pub const UNAPPLIED_HEADER: &str = "floe-unapplied";

/// The leader's address a refusal names, if any.
pub fn leader_of(status: &tonic::Status) -> Option<String> {
    let value = status.metadata().get(LEADER_API_HEADER)?.to_str().ok()?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Whether the node that refused the call says nothing was applied.
pub fn proves_unapplied(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.metadata().get(UNAPPLIED_HEADER).is_some()
}
