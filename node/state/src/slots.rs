//! Placement inside apply. The leader keeps each node's offer — worker
//! slots per block and a coarse load — in the replicated state
//! (`NodeSlots`, proposed when a node's report changes it), and apply
//! counts the tasks placed on each node per slot pool (a placement key; a
//! labelled task takes a slot of its block as well). A task that becomes
//! ready is then placed in the same entry that made it ready, on the
//! least-loaded node with a free slot: a step hop costs one commit instead
//! of two, and the choice is a deterministic function of the state.
//! Tasks that find no free slot wait in the queue for the leader's
//! scheduler, as before.

use std::collections::BTreeMap;

use floe_engine::run::TaskSpec;
use serde::{Deserialize, Serialize};

use crate::answers::CommandResponse;
use crate::keys;
use crate::runs::{RunTx, TxError};
use floe_storage::types::NodeId;

/// What a node offers to placement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlots {
    /// Worker (or model replica) slots per placement key: a block, or a
    /// block with worker labels (`floe_engine::placement_key`).
    pub slots: BTreeMap<String, u32>,
    /// CPU and memory load in thousandths (the report's load score).
    pub load_milli: u32,
}

/// Every node's offer, by node id.
pub type Offers = BTreeMap<NodeId, NodeSlots>;

pub(crate) fn offers(tx: &RunTx<'_>) -> Result<Offers, TxError> {
    Ok(tx
        .get_record::<Offers>(keys::NODE_SLOTS, format_args!("node slots"))?
        .unwrap_or_default())
}

/// Records `node`'s offer; an empty one withdraws the node from placement.
pub(crate) fn set_node_slots(
    tx: &RunTx<'_>,
    node: NodeId,
    offer: &NodeSlots,
) -> Result<CommandResponse, TxError> {
    let mut all = offers(tx)?;
    if offer.slots.is_empty() {
        all.remove(&node);
    } else {
        all.insert(node, offer.clone());
    }
    if all.is_empty() {
        tx.data.remove(keys::NODE_SLOTS)?;
    } else {
        tx.put_record(keys::NODE_SLOTS.to_vec(), &all, format_args!("node slots"))?;
    }
    Ok(CommandResponse::Applied)
}

/// Tasks placed on `node` in slot pool `pool`.
pub(crate) fn placed(tx: &RunTx<'_>, node: NodeId, pool: &str) -> Result<u32, TxError> {
    count_at(tx, &keys::placed_count(node, pool))
}

fn count_at(tx: &RunTx<'_>, key: &[u8]) -> Result<u32, TxError> {
    Ok(tx
        .get_record::<u32>(key, format_args!("placed count"))?
        .unwrap_or(0))
}

/// Moves the counts of `task`'s slot pools on `node` by `delta`.
pub(crate) fn move_placed(
    tx: &RunTx<'_>,
    node: NodeId,
    task: &TaskSpec,
    delta: i64,
) -> Result<(), TxError> {
    for pool in task.slot_pools() {
        let key = keys::placed_count(node, &pool);
        let next = i64::from(count_at(tx, &key)?) + delta;
        if next <= 0 {
            tx.data.remove(&key)?;
        } else {
            tx.put_record(key, &(next as u32), format_args!("placed count"))?;
        }
    }
    Ok(())
}

/// The least-loaded node with a free slot in every pool of `task` — fewest
/// placed per slot in its fullest pool plus load, ties to the lowest id —
/// or none.
pub(crate) fn choose_node(tx: &RunTx<'_>, task: &TaskSpec) -> Result<Option<NodeId>, TxError> {
    let pools: Vec<_> = task.slot_pools().collect();
    let mut best: Option<(u64, NodeId)> = None;
    'nodes: for (node, offer) in offers(tx)? {
        let mut fullest = 0;
        for pool in &pools {
            let Some(&slots) = offer.slots.get(pool.as_ref()) else {
                continue 'nodes;
            };
            let placed = placed(tx, node, pool)?;
            if placed >= slots {
                continue 'nodes;
            }
            fullest = fullest.max(u64::from(placed) * 1000 / u64::from(slots));
        }
        let score = fullest + u64::from(offer.load_milli);
        if best.is_none_or(|(best_score, _)| score < best_score) {
            best = Some((score, node));
        }
    }
    Ok(best.map(|(_, node)| node))
}
