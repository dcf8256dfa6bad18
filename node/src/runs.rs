//! Runs through the API: everything non-deterministic (run ids, the pinned
//! version, the clock) is decided here, on the proposing node, and carried
//! in the command; the state machine and the run engine do the rest.

use floe_engine::run::{RunEvent, RunRecord, TaskFailure, TaskKey};
use floe_storage::{Command, CommandResponse, RunFilter, RunPage};

use crate::error::ApiError;
use crate::service::Node;

/// Largest run input, signal payload or task output accepted inline.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

pub struct StartedRun {
    pub run_id: String,
    pub created: bool,
    pub version: u64,
}

fn parse_json(bytes: &[u8], what: &str) -> Result<serde_json::Value, ApiError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "{what} is {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|err| ApiError::InvalidArgument(format!("{what} is not JSON: {err}")))
}

fn new_run_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl Node {
    pub async fn start_run(
        &self,
        flow: &str,
        version: Option<u64>,
        input: &[u8],
        correlation_id: &str,
        idempotency_key: &str,
    ) -> Result<StartedRun, ApiError> {
        let input_value = parse_json(input, "run input")?;
        let flow_record = self.get_flow(flow, version, true).await?;
        let command = Command::StartRun {
            run_id: new_run_id(),
            flow: flow.to_string(),
            version: flow_record.version,
            input: serde_json::to_vec(&input_value).map_err(|err| ApiError::Internal(err.to_string()))?,
            correlation_id: correlation_id.to_string(),
            idempotency_key: idempotency_key.to_string(),
            at_ms: now_ms(),
        };
        match self.write(command).await? {
            CommandResponse::RunStarted { run_id, created } => {
                Ok(StartedRun { run_id, created, version: flow_record.version })
            }
            CommandResponse::RunRejected { reason } => Err(ApiError::InvalidArgument(reason)),
            other => Err(ApiError::Internal(format!("unexpected apply result {other:?}"))),
        }
    }

    pub async fn get_run(&self, run_id: &str, linearizable: bool) -> Result<RunRecord, ApiError> {
        if linearizable {
            self.read_barrier().await?;
        }
        self.reader
            .run(run_id)
            .map_err(|err| ApiError::Internal(err.to_string()))?
            .ok_or_else(|| ApiError::NotFound(format!("no run {run_id}")))
    }

    pub async fn list_runs(
        &self,
        filter: &RunFilter,
        page_token: &str,
        limit: usize,
        linearizable: bool,
    ) -> Result<RunPage, ApiError> {
        if linearizable {
            self.read_barrier().await?;
        }
        let page_after = if page_token.is_empty() {
            None
        } else {
            Some(hex::decode(page_token).map_err(|_| ApiError::InvalidArgument(format!("page token {page_token:?} is not valid")))?)
        };
        let limit = if limit == 0 { 50 } else { limit.min(crate::ops::MAX_LIST_LIMIT) };
        self.reader.runs(filter, page_after.as_deref(), limit).map_err(|err| ApiError::Internal(err.to_string()))
    }

    /// Proposes one event for a run; a refusal names its reason.
    pub async fn run_event(&self, run_id: &str, event: RunEvent) -> Result<(), ApiError> {
        let event = serde_json::to_vec(&event).map_err(|err| ApiError::Internal(err.to_string()))?;
        let command = Command::RunEvent { run_id: run_id.to_string(), event, at_ms: now_ms() };
        match self.write(command).await? {
            CommandResponse::RunUpdated => Ok(()),
            CommandResponse::RunRejected { reason } => Err(ApiError::FailedPrecondition(reason)),
            other => Err(ApiError::Internal(format!("unexpected apply result {other:?}"))),
        }
    }

    pub async fn cancel_run(&self, run_id: &str, reason: &str) -> Result<(), ApiError> {
        let reason = if reason.is_empty() { "cancelled by request".to_string() } else { reason.to_string() };
        self.run_event(run_id, RunEvent::Cancel { reason }).await
    }

    pub async fn retry_run(&self, run_id: &str) -> Result<(), ApiError> {
        self.run_event(run_id, RunEvent::Retry).await
    }

    pub async fn signal_run(&self, run_id: &str, name: &str, payload: &[u8]) -> Result<(), ApiError> {
        let payload = parse_json(payload, "signal payload")?;
        self.run_event(run_id, RunEvent::Signal { name: name.to_string(), payload }).await
    }

    /// A worker's result for one attempt; a stale attempt is refused.
    pub async fn task_result(
        &self,
        key: TaskKey,
        attempt: u32,
        outcome: Result<&[u8], TaskFailure>,
    ) -> Result<(), ApiError> {
        let run_id = key.run_id.clone();
        let event = match outcome {
            Ok(output) => RunEvent::TaskCompleted { key, attempt, output: parse_json(output, "task output")? },
            Err(failure) => RunEvent::TaskFailed { key, attempt, failure },
        };
        self.run_event(&run_id, event).await
    }
}

impl Node {
    /// An attempt lost with its worker or node: re-delivered as a new attempt.
    pub async fn task_lost(&self, key: TaskKey, attempt: u32, reason: String) -> Result<(), ApiError> {
        let run_id = key.run_id.clone();
        self.run_event(&run_id, RunEvent::TaskLost { key, attempt, reason }).await
    }
}

/// `run/step/item` (item `-` for none) back into a task key.
pub fn parse_task_key(text: &str) -> Result<TaskKey, ApiError> {
    let mut parts = text.rsplitn(3, '/');
    let (Some(item), Some(step_id), Some(run_id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ApiError::InvalidArgument(format!("task {text:?} is not RUN/STEP/ITEM")));
    };
    let item = match item {
        "-" => None,
        number => Some(number.parse().map_err(|_| ApiError::InvalidArgument(format!("task {text:?} has a bad item")))?),
    };
    Ok(TaskKey { run_id: run_id.to_string(), step_id: step_id.to_string(), item })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_keys_round_trip() {
        let key = TaskKey { run_id: "abc.child".into(), step_id: "ocr".into(), item: Some(7) };
        assert_eq!(parse_task_key(&floe_storage::runs::task_key_text(&key)).unwrap(), key);
        let key = TaskKey { run_id: "abc".into(), step_id: "a".into(), item: None };
        assert_eq!(parse_task_key(&floe_storage::runs::task_key_text(&key)).unwrap(), key);
        assert!(parse_task_key("nothing").is_err());
    }

    #[test]
    fn payloads_are_limited_and_checked() {
        assert_eq!(parse_json(b"", "x").unwrap(), serde_json::Value::Null);
        assert!(parse_json(b"{", "run input").unwrap_err().to_string().contains("run input is not JSON"));
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(parse_json(&big, "run input").unwrap_err().to_string().contains("limit"));
    }
}
