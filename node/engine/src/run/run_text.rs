//! The text form of a run's address: the one formatter and the one parser,
//! which task texts (`task_text`) and the store's run-keyed records and
//! indexes build on.
//!
//! A run in the default namespace and partition is its bare run id, as
//! every earlier release wrote it; another namespace or partition goes in
//! front, `namespace:partition:run-id`. Generated run ids (hex, with
//! `.step` suffixes for children) never read as such a prefix; a run id
//! that would is written with the default prefix spelled out, so the text
//! of two different addresses is never the same.

use std::fmt;
use std::str::FromStr;

use crate::names::quote_bounded;

/// The namespace of every run and task today.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The partition of every run and task today.
pub const DEFAULT_PARTITION: u32 = 0;

/// A run's full address: the namespace and partition it belongs to and its
/// id there. Only the defaults exist yet; the fields make room for more.
/// The namespace is always a name (`names::is_flow_name`), so its text
/// reads back.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunAddress {
    namespace: String,
    partition: u32,
    run_id: String,
}

/// Why parts are not a run address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunTextError {
    #[error("namespace {} is not a name (lowercase letters, digits, '_' and '-', starting with a letter)", quote_bounded(.0))]
    Namespace(String),
}

impl RunAddress {
    /// `run_id` in the default namespace and partition.
    pub fn local(run_id: impl Into<String>) -> RunAddress {
        RunAddress {
            namespace: DEFAULT_NAMESPACE.to_string(),
            partition: DEFAULT_PARTITION,
            run_id: run_id.into(),
        }
    }

    /// `run_id` in `namespace` and `partition`; the namespace must be a name.
    pub fn new(
        namespace: &str,
        partition: u32,
        run_id: impl Into<String>,
    ) -> Result<RunAddress, RunTextError> {
        if !crate::names::is_flow_name(namespace) {
            return Err(RunTextError::Namespace(namespace.to_string()));
        }
        Ok(RunAddress {
            namespace: namespace.to_string(),
            partition,
            run_id: run_id.into(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn is_default(&self) -> bool {
        is_default(&self.namespace, self.partition)
    }
}

fn is_default(namespace: &str, partition: u32) -> bool {
    namespace == DEFAULT_NAMESPACE && partition == DEFAULT_PARTITION
}

/// Writes a run's text; `task_text` writes a task's run part with it.
pub(super) fn write_run_text(
    f: &mut fmt::Formatter<'_>,
    namespace: &str,
    partition: u32,
    run_id: &str,
) -> fmt::Result {
    // A bare id that reads as a prefix would parse as another address.
    if !is_default(namespace, partition) || split_prefix(run_id).is_some() {
        write!(f, "{namespace}:{partition}:")?;
    }
    f.write_str(run_id)
}

/// Reads a run's text into (namespace, partition, run id); never fails:
/// a text without a prefix is a run id of the default namespace.
pub(super) fn split_run_text(text: &str) -> (&str, u32, &str) {
    split_prefix(text).unwrap_or((DEFAULT_NAMESPACE, DEFAULT_PARTITION, text))
}

/// `name:digits:` in front of the run id, if there is one.
fn split_prefix(text: &str) -> Option<(&str, u32, &str)> {
    let (namespace, rest) = text.split_once(':')?;
    let (partition, rest) = rest.split_once(':')?;
    if !crate::names::is_flow_name(namespace) || partition.is_empty() {
        return None;
    }
    if !partition.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some((namespace, partition.parse().ok()?, rest))
}

impl fmt::Display for RunAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_run_text(f, &self.namespace, self.partition, &self.run_id)
    }
}

/// Every text is an address (see `split_run_text`).
impl FromStr for RunAddress {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<RunAddress, Self::Err> {
        let (namespace, partition, run_id) = split_run_text(text);
        Ok(RunAddress {
            namespace: namespace.to_string(),
            partition,
            run_id: run_id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Run ids as earlier releases generated them: a default address's
    /// text must be these exact bytes, and they must read back as default.
    #[test]
    fn default_runs_keep_their_text() {
        for run_id in [
            "3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6",
            "3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6.sub",
            "3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6.sub.2",
            "site/north/r1",
            "",
        ] {
            let address = RunAddress::local(run_id);
            assert_eq!(address.to_string(), run_id);
            assert_eq!(run_id.parse::<RunAddress>().unwrap(), address);
            assert!(address.is_default() && address.run_id() == run_id);
        }
    }

    #[test]
    fn other_namespaces_go_in_front() {
        let address = RunAddress::new("billing", 7, "r1").unwrap();
        assert_eq!(address.to_string(), "billing:7:r1");
        assert_eq!("billing:7:r1".parse::<RunAddress>().unwrap(), address);
        assert!(!address.is_default());
        assert_eq!(
            (address.namespace(), address.partition(), address.run_id()),
            ("billing", 7, "r1")
        );
        // The default namespace in another partition is not the default.
        assert_eq!(
            RunAddress::new(DEFAULT_NAMESPACE, 2, "r1")
                .unwrap()
                .to_string(),
            "default:2:r1"
        );
        let error = RunAddress::new("Bad:ns", 1, "r1").unwrap_err();
        assert!(matches!(error, RunTextError::Namespace(_)));
        assert!(error.to_string().contains("\"Bad:ns\""), "{error}");
    }

    /// A default run id that looks like a prefix keeps its own text, apart
    /// from the address it looks like.
    #[test]
    fn a_default_id_that_looks_prefixed_cannot_collide() {
        let lookalike = RunAddress::local("billing:7:r1");
        let other = RunAddress::new("billing", 7, "r1").unwrap();
        assert_eq!(lookalike.to_string(), "default:0:billing:7:r1");
        assert_ne!(lookalike.to_string(), other.to_string());
        assert_eq!(
            lookalike.to_string().parse::<RunAddress>().unwrap(),
            lookalike
        );
    }

    fn namespace() -> impl Strategy<Value = String> {
        prop_oneof![Just(DEFAULT_NAMESPACE.to_string()), "[a-z][a-z0-9_-]{0,8}"]
    }

    proptest! {
        /// Every address reads back from its text, so two different
        /// addresses never share one (whatever the run id holds).
        #[test]
        fn addresses_round_trip(
            namespace in namespace(),
            partition in prop_oneof![Just(0u32), any::<u32>()],
            run_id in prop_oneof![
                "[0-9a-f]{32}(\\.[a-z_]{1,5}(\\.[0-9])?)?",
                "[a-z0-9:/.]{0,20}",
                ".{0,20}",
            ],
        ) {
            let address = RunAddress::new(&namespace, partition, run_id.clone()).unwrap();
            let text = address.to_string();
            prop_assert_eq!(text.parse::<RunAddress>().unwrap(), address.clone(), "{}", text);
            if address.is_default() && split_prefix(&run_id).is_none() {
                prop_assert_eq!(text, run_id);
            }
        }
    }
}
