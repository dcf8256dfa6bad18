//! Which node and cluster a data directory belongs to.
//!
//! Recorded on first start; a later start with another node id or cluster
//! is refused before Raft sees any of the data.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StoreError;
use crate::store::{Shared, Store, IDENTITY_TREE};
use crate::types::NodeId;

const KEY_IDENTITY: &[u8] = b"identity";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    node_id: NodeId,
    cluster_fingerprint: String,
}

impl Store {
    /// Binds this data directory to `node_id` in the cluster identified by
    /// `cluster_fingerprint` (e.g. a hash of the cluster CA).
    ///
    /// The first call records both durably; later calls succeed only with the
    /// same values, otherwise [`StoreError::WrongNode`] or
    /// [`StoreError::WrongCluster`] names the directory and both values.
    /// Blocking (one flush): call at startup.
    pub fn claim_identity(
        &self,
        node_id: NodeId,
        cluster_fingerprint: &str,
    ) -> Result<(), StoreError> {
        let shared = &self.shared;
        let stored: Option<Identity> =
            Shared::get_record(&shared.identity, IDENTITY_TREE, KEY_IDENTITY)?;
        match stored {
            Some(stored) if stored.node_id != node_id => Err(StoreError::WrongNode {
                dir: shared.dir.clone(),
                stored: stored.node_id,
                configured: node_id,
            }),
            Some(stored) if stored.cluster_fingerprint != cluster_fingerprint => {
                Err(StoreError::WrongCluster {
                    dir: shared.dir.clone(),
                    stored: stored.cluster_fingerprint,
                    configured: cluster_fingerprint.to_string(),
                })
            }
            Some(_) => Ok(()),
            None => {
                let identity = Identity {
                    node_id,
                    cluster_fingerprint: cluster_fingerprint.to_string(),
                };
                let bytes = codec::encode(|| "identity record".to_string(), &identity)?;
                shared
                    .identity
                    .insert(KEY_IDENTITY, bytes)
                    .map_err(|error| StoreError::sled("write identity record", error))?;
                shared.flush_blocking("identity record")?;
                tracing::info!(node_id, cluster_fingerprint, dir = %shared.dir.display(), "data dir identity recorded");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreError, StoreOptions};

    #[test]
    fn identity_is_recorded_and_enforced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            store.claim_identity(3, "cluster-a").unwrap();
            store.claim_identity(3, "cluster-a").unwrap();
        }
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store.claim_identity(3, "cluster-a").unwrap();

        let wrong_node = store.claim_identity(4, "cluster-a").unwrap_err();
        assert!(
            matches!(
                wrong_node,
                StoreError::WrongNode {
                    stored: 3,
                    configured: 4,
                    ..
                }
            ),
            "{wrong_node}"
        );
        let text = wrong_node.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("node 3") && text.contains("node 4"), "{text}");

        let wrong_cluster = store.claim_identity(3, "cluster-b").unwrap_err();
        assert!(
            matches!(wrong_cluster, StoreError::WrongCluster { .. }),
            "{wrong_cluster}"
        );
        let text = wrong_cluster.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains("cluster-a") && text.contains("cluster-b"),
            "{text}"
        );
    }
}
