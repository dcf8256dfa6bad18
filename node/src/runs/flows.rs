//! Flow definitions through the API: validated here (every problem, with its
//! JSON path), stored through the Raft log as immutable versions.

use floe_state::{Command, CommandResponse, FlowRecord};

use crate::call_context::CallContext;
use crate::error::{unexpected_answer, ApiError};
use crate::runs::RunService;
use floe_engine::names::quote_bounded;

/// The outcome of storing a definition.
pub struct PutFlowOutcome {
    pub name: String,
    pub version: u64,
    pub created: bool,
    pub hash: String,
}

impl RunService {
    /// Validates `definition` (JSON) and stores it; nothing is stored on error.
    pub async fn put_flow(
        &self,
        _ctx: &CallContext,
        definition: &[u8],
    ) -> Result<PutFlowOutcome, ApiError> {
        if definition.len() > floe_engine::MAX_DEFINITION_BYTES {
            return Err(ApiError::ResourceExhausted(format!(
                "flow definition is {} bytes, more than the fixed limit of {} (1 MiB)",
                definition.len(),
                floe_engine::MAX_DEFINITION_BYTES
            )));
        }
        let flow = floe_engine::parse_new_flow(definition).map_err(|errors| {
            let lines: Vec<String> = errors
                .iter()
                .map(|error| format!("{}: {}", error.path, error.message))
                .collect();
            ApiError::InvalidArgument(format!(
                "flow definition has {} problem{}:\n{}",
                lines.len(),
                if lines.len() == 1 { "" } else { "s" },
                lines.join("\n")
            ))
        })?;
        self.cluster.read_barrier().await?;
        let missing = self.missing_subflows(&flow)?;
        if !missing.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "flow definition has {} problem{}:\n{}",
                missing.len(),
                if missing.len() == 1 { "" } else { "s" },
                missing.join("\n")
            )));
        }
        let name = flow.name.clone();
        let hash = floe_engine::content_hash(&flow);
        let command = Command::PutFlow {
            name: name.clone(),
            definition: floe_engine::canonical_bytes(&flow),
            hash: hash.clone(),
            at_ms: self.clock.now_ms(),
        };
        match self.cluster.write(command).await? {
            CommandResponse::FlowPut { version, created } => Ok(PutFlowOutcome {
                name,
                version,
                created,
                hash,
            }),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Sub-flow steps must name a stored flow version.
    fn missing_subflows(
        &self,
        flow: &floe_engine::FlowDefinition,
    ) -> Result<Vec<String>, ApiError> {
        let mut missing = Vec::new();
        for (position, step) in flow.steps.iter().enumerate() {
            let floe_engine::Step::Subflow(subflow) = step else {
                continue;
            };
            let version = u64::from(subflow.version);
            let found = self
                .cluster
                .reader()
                .flow(&subflow.flow, Some(version))
                .map_err(|err| ApiError::Internal(err.to_string()))?;
            if found.is_none() {
                missing.push(format!(
                    "$.steps[{position}].version: sub-flow {:?} version {version} does not exist",
                    subflow.flow
                ));
            }
        }
        Ok(missing)
    }

    pub async fn get_flow(
        &self,
        _ctx: &CallContext,
        name: &str,
        version: Option<u64>,
        linearizable: bool,
    ) -> Result<FlowRecord, ApiError> {
        if linearizable {
            self.cluster.read_barrier().await?;
        }
        let found = self
            .cluster
            .reader()
            .flow(name, version)
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        found.ok_or_else(|| match version {
            Some(version) => ApiError::NotFound(format!(
                "flow {} has no version {version}",
                quote_bounded(name)
            )),
            None => ApiError::NotFound(format!("no flow named {}", quote_bounded(name))),
        })
    }

    pub async fn list_flows(
        &self,
        _ctx: &CallContext,
        start_after: Option<&str>,
        limit: usize,
        linearizable: bool,
    ) -> Result<(Vec<(String, u64)>, bool), ApiError> {
        if linearizable {
            self.cluster.read_barrier().await?;
        }
        let limit = if limit == 0 {
            100
        } else {
            limit.min(crate::ops::MAX_LIST_LIMIT)
        };
        let mut flows = self
            .cluster
            .reader()
            .flows(start_after, limit + 1)
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        let more = flows.len() > limit;
        flows.truncate(limit);
        Ok((flows, more))
    }

    pub async fn flow_versions(
        &self,
        _ctx: &CallContext,
        name: &str,
        linearizable: bool,
    ) -> Result<Vec<FlowRecord>, ApiError> {
        if linearizable {
            self.cluster.read_barrier().await?;
        }
        let versions = self
            .cluster
            .reader()
            .flow_versions(name)
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        if versions.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no flow named {}",
                quote_bounded(name)
            )));
        }
        Ok(versions)
    }
}
