//! `PoolOptions`: how a model is deployed on one node.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::session::Device;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOptions {
    /// Names the pool in logs, errors and metrics, e.g. `ppocr-rec@3`.
    pub name: String,
    /// Sessions, each on its own OS thread (default 1).
    pub replicas: usize,
    /// ONNX Runtime intra-op threads per session (default 1). On a CPU pool,
    /// replicas × intra_threads should not exceed the cores given to inference.
    pub intra_threads: usize,
    /// Most items (sum of dim 0) merged into one run (default 8; 1 disables batching).
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch (default 5 ms).
    #[serde(rename = "max_delay_ms", with = "millis")]
    pub max_delay: Duration,
    /// Requests waiting beyond this are refused with `QueueFull` (default 256).
    pub queue_capacity: usize,
    pub device: Device,
    /// Idle intra-op threads spin rather than sleep (default false): worth it only
    /// when the pool has cores to itself.
    pub intra_op_spinning: bool,
    /// Run each session once on synthetic inputs before the pool is ready (default true).
    pub warmup: bool,
    /// Size given to dynamic dims other than dim 0 in the warm-up run (default 32,
    /// a multiple of the strides of common vision models).
    pub warmup_dim: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            name: "model".into(),
            replicas: 1,
            intra_threads: 1,
            max_batch: 8,
            max_delay: Duration::from_millis(5),
            queue_capacity: 256,
            device: Device::Cpu,
            intra_op_spinning: false,
            warmup: true,
            warmup_dim: 32,
        }
    }
}

/// Upper bound on `max_delay`: longer waits are a configuration mistake.
const MAX_DELAY_LIMIT: Duration = Duration::from_secs(10);

impl PoolOptions {
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| {
            Err(Error::InvalidOptions {
                pool: self.name.clone(),
                reason,
            })
        };
        if self.replicas == 0 {
            return invalid("replicas must be at least 1".into());
        }
        if self.intra_threads == 0 {
            return invalid("intra_threads must be at least 1".into());
        }
        if self.max_batch == 0 {
            return invalid("max_batch must be at least 1".into());
        }
        if self.queue_capacity == 0 {
            return invalid("queue_capacity must be at least 1".into());
        }
        if self.max_delay > MAX_DELAY_LIMIT {
            return invalid(format!(
                "max_delay_ms {} is above the limit of 10000",
                self.max_delay.as_millis()
            ));
        }
        if self.warmup_dim == 0 {
            return invalid("warmup_dim must be at least 1".into());
        }
        Ok(())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_from_config_with_defaults_and_refuse_unknown_keys() {
        let options: PoolOptions = serde_json::from_str(
            r#"{"name":"rec","replicas":2,"max_delay_ms":7,"device":{"kind":"cuda","device_id":1,"mem_limit_bytes":1024}}"#,
        )
        .unwrap();
        assert_eq!(options.replicas, 2);
        assert_eq!(options.max_delay, Duration::from_millis(7));
        assert_eq!(options.max_batch, 8);
        assert_eq!(
            options.device,
            Device::Cuda {
                device_id: 1,
                mem_limit_bytes: 1024
            }
        );
        let error = serde_json::from_str::<PoolOptions>(r#"{"replica":2}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `replica`"), "{error}");
    }

    #[test]
    fn validation_names_the_pool_and_the_field() {
        let options = PoolOptions {
            name: "det".into(),
            max_batch: 0,
            ..PoolOptions::default()
        };
        let error = options.validate().unwrap_err().to_string();
        assert_eq!(
            error,
            "pool det: invalid options: max_batch must be at least 1"
        );
        assert!(PoolOptions::default().validate().is_ok());
    }
}
