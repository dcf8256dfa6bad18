//! The text form of a task's address: the one formatter and the one parser.
//!
//! `run/step/item` (item `-` for none), as index keys and the worker API
//! have always carried it, where `run` is the run's address text
//! (`run_text`): a namespace and a partition other than the defaults go in
//! front, `namespace:partition:run/step/item`; the defaults are never
//! written, so the keys of earlier releases read unchanged and a default
//! key's text is the same bytes as before. Step ids hold no `/` (a run id
//! may), so the run part is everything before the last two `/`.

use std::fmt;
use std::str::FromStr;

use super::run_text::{split_run_text, write_run_text, DEFAULT_NAMESPACE, DEFAULT_PARTITION};
use super::TaskKey;
use crate::names::quote_bounded;

/// A task slot's full address: its key, and the namespace and partition it
/// belongs to (only the defaults exist yet; the fields make room for more).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskAddress {
    pub namespace: String,
    pub partition: u32,
    pub key: TaskKey,
}

impl TaskAddress {
    /// `key` in the default namespace and partition.
    pub fn local(key: TaskKey) -> TaskAddress {
        TaskAddress {
            namespace: DEFAULT_NAMESPACE.to_string(),
            partition: DEFAULT_PARTITION,
            key,
        }
    }

    pub fn is_default(&self) -> bool {
        self.namespace == DEFAULT_NAMESPACE && self.partition == DEFAULT_PARTITION
    }
}

/// Why a text is not a task address. The messages are the API's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskTextError {
    #[error("task {} is not RUN/STEP/ITEM", quote_bounded(.0))]
    Shape(String),
    #[error("task {} has a bad item", quote_bounded(.0))]
    Item(String),
    #[error("task {} is in namespace {} partition {}; this node serves only namespace \"default\" partition 0", quote_bounded(.text), quote_bounded(.namespace), .partition)]
    NotDefault {
        text: String,
        namespace: String,
        partition: u32,
    },
}

fn write_task_text(
    f: &mut fmt::Formatter<'_>,
    namespace: &str,
    partition: u32,
    key: &TaskKey,
) -> fmt::Result {
    write_run_text(f, namespace, partition, &key.run_id)?;
    match key.item {
        Some(item) => write!(f, "/{}/{item}", key.step_id),
        None => write!(f, "/{}/-", key.step_id),
    }
}

impl fmt::Display for TaskAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_task_text(f, &self.namespace, self.partition, &self.key)
    }
}

/// A bare key is in the default namespace and partition.
impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_task_text(f, DEFAULT_NAMESPACE, DEFAULT_PARTITION, self)
    }
}

impl FromStr for TaskAddress {
    type Err = TaskTextError;

    fn from_str(text: &str) -> Result<TaskAddress, TaskTextError> {
        let mut parts = text.rsplitn(3, '/');
        let (Some(item), Some(step_id), Some(run_text)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TaskTextError::Shape(text.to_string()));
        };
        let (namespace, partition, run_id) = split_run_text(run_text);
        let item = match item {
            "-" => None,
            number => Some(
                number
                    .parse()
                    .map_err(|_| TaskTextError::Item(text.to_string()))?,
            ),
        };
        Ok(TaskAddress {
            namespace: namespace.to_string(),
            partition,
            key: TaskKey {
                run_id: run_id.to_string(),
                step_id: step_id.to_string(),
                item,
            },
        })
    }
}

/// Parses a task in the default namespace and partition (the only ones
/// served yet); another is refused, naming it.
impl FromStr for TaskKey {
    type Err = TaskTextError;

    fn from_str(text: &str) -> Result<TaskKey, TaskTextError> {
        let address: TaskAddress = text.parse()?;
        if !address.is_default() {
            return Err(TaskTextError::NotDefault {
                text: text.to_string(),
                namespace: address.namespace,
                partition: address.partition,
            });
        }
        Ok(address.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(run_id: &str, step_id: &str, item: Option<u32>) -> TaskKey {
        TaskKey {
            run_id: run_id.into(),
            step_id: step_id.into(),
            item,
        }
    }

    /// Keys as earlier releases wrote them: the text of a default key must
    /// stay these exact bytes, and these texts must keep parsing.
    #[test]
    fn default_keys_keep_their_text() {
        let fixed = [
            (
                key("3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6", "ocr", Some(12)),
                "3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6/ocr/12",
            ),
            (
                key("3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6.sub.2", "a", None),
                "3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6.sub.2/a/-",
            ),
            (key("site/north/r1", "ocr", Some(0)), "site/north/r1/ocr/0"),
        ];
        for (key, text) in fixed {
            assert_eq!(key.to_string(), text);
            assert_eq!(TaskAddress::local(key.clone()).to_string(), text);
            assert_eq!(text.parse::<TaskKey>().unwrap(), key);
            assert_eq!(
                text.parse::<TaskAddress>().unwrap(),
                TaskAddress::local(key)
            );
        }
    }

    #[test]
    fn addresses_round_trip() {
        let addresses = [
            TaskAddress::local(key("r1", "a", None)),
            TaskAddress {
                namespace: "billing".into(),
                partition: 7,
                key: key("site/north/r1", "ocr", Some(3)),
            },
            TaskAddress {
                namespace: DEFAULT_NAMESPACE.into(),
                partition: 2,
                key: key("r1", "a", Some(0)),
            },
        ];
        for address in addresses {
            let text = address.to_string();
            assert_eq!(text.parse::<TaskAddress>().unwrap(), address, "{text}");
        }
        assert_eq!(
            TaskAddress {
                namespace: "billing".into(),
                partition: 7,
                key: key("r1", "a", None),
            }
            .to_string(),
            "billing:7:r1/a/-"
        );
    }

    /// A default task whose run id reads as a prefix keeps its address.
    #[test]
    fn a_lookalike_run_id_keeps_its_task_apart() {
        let lookalike = TaskAddress::local(key("billing:7:r1", "a", None));
        let other = TaskAddress {
            namespace: "billing".into(),
            partition: 7,
            key: key("r1", "a", None),
        };
        assert_eq!(lookalike.to_string(), "default:0:billing:7:r1/a/-");
        assert_ne!(lookalike.to_string(), other.to_string());
        assert_eq!(
            lookalike.to_string().parse::<TaskAddress>().unwrap(),
            lookalike
        );
        assert_eq!(
            lookalike.to_string().parse::<TaskKey>().unwrap(),
            lookalike.key
        );
    }

    #[test]
    fn malformed_texts_are_refused_with_the_api_message() {
        assert_eq!(
            "r1/a".parse::<TaskKey>().unwrap_err().to_string(),
            "task \"r1/a\" is not RUN/STEP/ITEM"
        );
        assert_eq!(
            "r1/a/x".parse::<TaskKey>().unwrap_err().to_string(),
            "task \"r1/a/x\" has a bad item"
        );
        assert!(matches!(
            "billing:7:r1/a/-".parse::<TaskKey>(),
            Err(TaskTextError::NotDefault { partition: 7, .. })
        ));
    }
}
