//! How large a request each gRPC service decodes, and a clear answer when
//! one is larger still.
//!
//! Every service's transport limit is at least floe's own check for what it
//! carries (a run input, a flow definition, a key-value entry, a model), so
//! that check runs and answers `RESOURCE_EXHAUSTED` naming its setting. A
//! request past the transport limit itself never reaches floe: tonic
//! answers `OUT_OF_RANGE` with its own wording, which [`OversizeAnswerLayer`]
//! rewrites into `RESOURCE_EXHAUSTED` naming the same setting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;

use crate::config::NodeConfig;

/// Room for the message around the payload it carries.
const ENVELOPE_BYTES: usize = 1024 * 1024;
/// Requests of the services that carry no payload (status, blob reads).
const SMALL_REQUEST_BYTES: usize = 1024 * 1024;

/// The decoding limit of each service and what sets it.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    pub runs: usize,
    pub workers: usize,
    pub flows: usize,
    pub kv: usize,
    pub models: usize,
    pub small: usize,
    max_payload_bytes: u64,
    max_model_bytes: u64,
}

impl TransportLimits {
    pub fn from_config(config: &NodeConfig) -> Self {
        let payload = config.runs.max_payload_bytes as usize + ENVELOPE_BYTES;
        let model = (config.inference.max_model_bytes as usize).max(payload) + ENVELOPE_BYTES;
        // A compare-and-swap carries two values and its key.
        let kv = 2 * crate::ops::MAX_VALUE_BYTES + crate::ops::MAX_KEY_BYTES + ENVELOPE_BYTES;
        TransportLimits {
            runs: payload,
            workers: payload,
            flows: floe_engine::MAX_DEFINITION_BYTES.max(crate::ops::MAX_FLOW_BYTES)
                + ENVELOPE_BYTES,
            kv,
            models: model,
            small: SMALL_REQUEST_BYTES,
            max_payload_bytes: config.runs.max_payload_bytes,
            max_model_bytes: config.inference.max_model_bytes,
        }
    }

    /// The limit of the service serving `path` (`/floe.v1.Runs/Start`) and
    /// the sentence that says what sets it.
    fn explain(&self, path: &str) -> (usize, String) {
        let service = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let service = service.rsplit('.').next().unwrap_or_default();
        match service {
            "Runs" | "Workers" => (
                self.runs,
                format!("runs.max_payload_bytes ({}) plus 1 MiB for the message around it", self.max_payload_bytes),
            ),
            "Models" => (
                self.models,
                format!(
                    "inference.max_model_bytes ({}) or runs.max_payload_bytes ({}), plus 1 MiB",
                    self.max_model_bytes, self.max_payload_bytes
                ),
            ),
            "Flows" => (self.flows, "the fixed flow definition limit of 1 MiB, plus 1 MiB".to_string()),
            "Kv" => (self.kv, "the fixed key-value limits (1 MiB a value, two values and a key per request), plus 1 MiB".to_string()),
            _ => (self.small, format!("{} requests are small: the fixed limit is 1 MiB", if service.is_empty() { "these" } else { service })),
        }
    }

    /// The answer to a request tonic refused as too large to decode.
    pub fn oversize_status(&self, path: &str, transport_message: &str) -> tonic::Status {
        let (limit, setting) = self.explain(path);
        let found = transport_message
            .split("found ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|number| number.parse::<u64>().ok());
        let size = match found {
            Some(bytes) => format!("{bytes} bytes"),
            None => "larger".to_string(),
        };
        tonic::Status::resource_exhausted(format!(
            "request to {path} is {size}, more than the {limit} bytes this API accepts: {setting}"
        ))
    }
}

/// Whether a status is tonic's refusal of an oversize message.
fn is_transport_oversize(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
}

/// Rewrites tonic's `OUT_OF_RANGE` for an oversize request (answered in
/// the response headers, as every refused unary request is) into
/// `RESOURCE_EXHAUSTED` naming the setting. Streams see the refusal as an
/// error from their own message stream and answer it themselves (workers.rs).
#[derive(Clone)]
pub struct OversizeAnswerLayer {
    limits: Arc<TransportLimits>,
}

impl OversizeAnswerLayer {
    pub fn new(limits: TransportLimits) -> Self {
        OversizeAnswerLayer {
            limits: Arc::new(limits),
        }
    }
}

impl<S> tower::Layer<S> for OversizeAnswerLayer {
    type Service = OversizeAnswer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizeAnswer {
            inner,
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct OversizeAnswer<S> {
    inner: S,
    limits: Arc<TransportLimits>,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for OversizeAnswer<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = http::Response<ResponseBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path().to_string();
        let limits = self.limits.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            match tonic::Status::from_header_map(response.headers()) {
                Some(status) if is_transport_oversize(&status) => {
                    Ok(limits.oversize_status(&path, status.message()).into_http())
                }
                _ => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_names_what_sets_its_limit() {
        let mut config = NodeConfig::default();
        config.runs.max_payload_bytes = 16 * 1024 * 1024;
        let limits = TransportLimits::from_config(&config);
        assert!(limits.runs as u64 > config.runs.max_payload_bytes);
        assert!(limits.flows > floe_engine::MAX_DEFINITION_BYTES);
        assert!(limits.kv > 2 * crate::ops::MAX_VALUE_BYTES);
        assert!(limits.models as u64 > config.inference.max_model_bytes);

        let transport = "Error, decoded message length too large: found 20971530 bytes, the limit is: 17825792 bytes";
        let status = limits.oversize_status("/floe.v1.Runs/Start", transport);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request to /floe.v1.Runs/Start is 20971530 bytes, more than the 17825792 bytes this API accepts: \
             runs.max_payload_bytes (16777216) plus 1 MiB for the message around it"
        );
        let status =
            limits.oversize_status("/floe.v1.Flows/Put", "decoded message length too large");
        assert!(
            status.message().contains("is larger, more than")
                && status.message().contains("flow definition limit")
        );
        let status = limits.oversize_status("/floe.v1.Cluster/Status", transport);
        assert!(
            status.message().contains("Cluster requests are small"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn only_tonics_oversize_refusal_is_rewritten() {
        assert!(is_transport_oversize(&tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes"
        )));
        assert!(!is_transport_oversize(&tonic::Status::out_of_range(
            "page past the end"
        )));
        assert!(!is_transport_oversize(&tonic::Status::invalid_argument(
            "message length too large"
        )));
    }
}
