//! The register workload: a few keys, concurrent clients doing get, put
//! and compare-and-set with unique values, plus puts of fresh keys into a
//! "set" keyspace whose presence is checked at the end. Each client is
//! pinned to one node, so during a partition there are clients on both
//! sides.

use std::collections::HashMap;
use std::time::Duration;

use floe_api::client::{ClientOptions, FloeClient};
use floe_api::proto as api;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::history::{classify, error_text, Clock, History, Op, OpRecord, Outcome};
use super::{connected, pause};

/// Keys of one scenario live under `chaos/<scenario>-<seed>/`, and values
/// carry the seed too: on a cluster reused across scenarios (the external
/// target) no scenario can read another's writes.
pub fn namespace(label: &str, seed: u64) -> String {
    format!("chaos/{label}-{seed:x}/")
}

#[derive(Clone, Debug)]
pub struct RegisterOptions {
    pub keys: usize,
    pub clients: usize,
    /// Pause between a client's operations (keeps a 2-core box responsive).
    pub think_time: Duration,
    /// Upper bound on operations per client, whatever the duration.
    pub max_ops_per_client: usize,
    /// Client-side deadline of one request; past it the outcome is unknown.
    pub request_timeout: Duration,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        RegisterOptions {
            keys: 4,
            clients: 6,
            think_time: Duration::from_millis(8),
            max_ops_per_client: 50_000,
            request_timeout: Duration::from_secs(2),
        }
    }
}

pub fn register_key(namespace: &str, index: usize) -> String {
    format!("{namespace}reg/{index}")
}

pub fn set_prefix(namespace: &str) -> String {
    format!("{namespace}set/")
}

/// One client's loop; ends on `stop` or after `max_ops_per_client`.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    process: usize,
    node: u64,
    client_options: ClientOptions,
    options: RegisterOptions,
    namespace: String,
    seed: u64,
    clock: Clock,
    history: History,
    stop: CancellationToken,
) {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (process as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut client: Option<FloeClient> = None;
    // The last value this client saw per key: its next cas expects it.
    let mut last_seen: HashMap<String, Option<String>> = HashMap::new();
    for sequence in 0..options.max_ops_per_client {
        if stop.is_cancelled() {
            break;
        }
        let Some(connected) = connected(
            &mut client,
            &client_options,
            &stop,
            Duration::from_millis(100),
        )
        .await
        else {
            continue;
        };
        let key = register_key(&namespace, rng.gen_range(0..options.keys));
        let value = format!("{seed:x}-p{process}-{sequence}");
        let roll: f64 = rng.gen();
        let invoked_us = clock.now_us();
        let (op, outcome, error) = if roll < 0.4 {
            get(connected, &key, options.request_timeout).await
        } else if roll < 0.65 {
            put(connected, &key, &value, options.request_timeout).await
        } else if roll < 0.85 {
            let expected = last_seen.get(&key).cloned().flatten();
            cas(connected, &key, expected, &value, options.request_timeout).await
        } else {
            set_add(
                connected,
                &format!("{}p{process}-{sequence}", set_prefix(&namespace)),
                options.request_timeout,
            )
            .await
        };
        let completed_us = clock.now_us();
        match &op {
            Op::Get { key, observed } if outcome == Outcome::Ok => {
                last_seen.insert(key.clone(), observed.clone());
            }
            Op::Put { key, value } if outcome == Outcome::Ok => {
                last_seen.insert(key.clone(), Some(value.clone()));
            }
            Op::Cas {
                key,
                new,
                succeeded: Some(true),
                ..
            } => {
                last_seen.insert(key.clone(), Some(new.clone()));
            }
            Op::Cas {
                key,
                current,
                succeeded: Some(false),
                ..
            } => {
                last_seen.insert(key.clone(), current.clone());
            }
            _ => {}
        }
        history.push(OpRecord {
            process,
            node,
            op,
            invoked_us,
            completed_us,
            outcome,
            error,
        });
        let think = if outcome == Outcome::Ok {
            options.think_time
        } else {
            Duration::from_millis(50)
        };
        pause(&stop, think).await;
    }
}

type Result3 = (Op, Outcome, Option<String>);

fn failed(op: Op, status: &tonic::Status) -> Result3 {
    (op, classify(status), Some(error_text(status)))
}

fn timed_out(op: Op) -> Result3 {
    (op, Outcome::Unknown, Some("client-side timeout".into()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub async fn get(client: &mut FloeClient, key: &str, limit: Duration) -> Result3 {
    let request = api::GetRequest {
        key: key.into(),
        consistency: api::ReadConsistency::Linearizable as i32,
    };
    let op = Op::Get {
        key: key.into(),
        observed: None,
    };
    match tokio::time::timeout(limit, client.kv.get(request)).await {
        Err(_) => timed_out(op),
        Ok(Err(status)) => failed(op, &status),
        Ok(Ok(reply)) => {
            let reply = reply.into_inner();
            let observed = reply.found.then(|| text(&reply.value));
            (
                Op::Get {
                    key: key.into(),
                    observed,
                },
                Outcome::Ok,
                None,
            )
        }
    }
}

async fn put(client: &mut FloeClient, key: &str, value: &str, limit: Duration) -> Result3 {
    let request = api::PutRequest {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    };
    let op = Op::Put {
        key: key.into(),
        value: value.into(),
    };
    match tokio::time::timeout(limit, client.kv.put(request)).await {
        Err(_) => timed_out(op),
        Ok(Err(status)) => failed(op, &status),
        Ok(Ok(_)) => (op, Outcome::Ok, None),
    }
}

async fn cas(
    client: &mut FloeClient,
    key: &str,
    expected: Option<String>,
    new: &str,
    limit: Duration,
) -> Result3 {
    let request = api::CasRequest {
        key: key.into(),
        expected: expected.as_ref().map(|value| value.as_bytes().to_vec()),
        new_value: Some(new.as_bytes().to_vec()),
    };
    let op = |succeeded, current| Op::Cas {
        key: key.into(),
        expected: expected.clone(),
        new: new.into(),
        succeeded,
        current,
    };
    match tokio::time::timeout(limit, client.kv.cas(request)).await {
        Err(_) => timed_out(op(None, None)),
        Ok(Err(status)) => failed(op(None, None), &status),
        Ok(Ok(reply)) => {
            let reply = reply.into_inner();
            let current = (!reply.succeeded && reply.found).then(|| text(&reply.current));
            (op(Some(reply.succeeded), current), Outcome::Ok, None)
        }
    }
}

async fn set_add(client: &mut FloeClient, key: &str, limit: Duration) -> Result3 {
    let request = api::PutRequest {
        key: key.into(),
        value: b"1".to_vec(),
    };
    let op = Op::SetAdd { key: key.into() };
    match tokio::time::timeout(limit, client.kv.put(request)).await {
        Err(_) => timed_out(op),
        Ok(Err(status)) => failed(op, &status),
        Ok(Ok(_)) => (op, Outcome::Ok, None),
    }
}

/// Every key under `prefix`, read linearizably, page by page (bounded).
pub async fn list_all(client: &mut FloeClient, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut start_after = String::new();
    for _ in 0..10_000 {
        let request = api::ListRequest {
            prefix: prefix.into(),
            start_after: start_after.clone(),
            limit: 1000,
            consistency: api::ReadConsistency::Linearizable as i32,
        };
        let reply = client.kv.list(request).await?.into_inner();
        keys.extend(reply.items.iter().map(|item| item.key.clone()));
        match (reply.more, reply.items.last()) {
            (true, Some(last)) => start_after = last.key.clone(),
            _ => return Ok(keys),
        }
    }
    anyhow::bail!("listing {prefix} did not end within 10000 pages")
}
