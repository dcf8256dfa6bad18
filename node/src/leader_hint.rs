//! A node that refuses a request as `UNAVAILABLE` names the leader it knows
//! of, so a client can go there next instead of trying nodes in turn.
//!
//! The hint rides in the response headers as [`LEADER_API_HEADER`] (the
//! leader's gRPC address as recorded in the Raft membership); every refusal
//! floe itself raises as `UNAVAILABLE` also carries [`UNAPPLIED_HEADER`]: the
//! node's word that nothing was applied, which a transport failure cannot
//! give. A hint is only added to answers refused before a stream began
//! (gRPC's trailers-only answers), which is every unary refusal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;

pub use floe_api::headers::{leader_of, proves_unapplied, LEADER_API_HEADER, UNAPPLIED_HEADER};

/// The leader's API address now, if this node knows a leader other than itself.
pub type LeaderLookup = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct LeaderHintLayer {
    lookup: LeaderLookup,
}

impl LeaderHintLayer {
    pub fn new(lookup: LeaderLookup) -> Self {
        LeaderHintLayer { lookup }
    }
}

impl<S> tower::Layer<S> for LeaderHintLayer {
    type Service = LeaderHint<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LeaderHint {
            inner,
            lookup: self.lookup.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LeaderHint<S> {
    inner: S,
    lookup: LeaderLookup,
}

/// Whether the headers end the call with `UNAVAILABLE`.
fn is_unavailable(headers: &http::HeaderMap) -> bool {
    tonic::Status::from_header_map(headers)
        .is_some_and(|status| status.code() == tonic::Code::Unavailable)
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for LeaderHint<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Send + 'static,
{
    type Response = http::Response<ResponseBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let lookup = self.lookup.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if is_unavailable(response.headers()) {
                // Looked up now, not when the request came: the refusal may
                // be the end of an election that has just named a leader.
                let leader = lookup().and_then(|addr| http::HeaderValue::from_str(&addr).ok());
                if let Some(leader) = leader {
                    response.headers_mut().insert(LEADER_API_HEADER, leader);
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use floe_api::failover::Repeat;
    use tonic::Status;

    #[test]
    fn writes_repeat_only_when_provably_not_applied() {
        let refused: Status = ApiError::Unavailable("no leader known to node 1".into()).into();
        let unknown: Status = ApiError::OutcomeUnknown("write not confirmed".into()).into();
        let broken = Status::unavailable("error reading a body from connection");
        let not_connected =
            Status::unavailable("tcp connect error: Connection refused (os error 111)");
        assert!(Repeat::Write.allows(&refused) && Repeat::Write.allows(&not_connected));
        assert!(!Repeat::Write.allows(&unknown) && !Repeat::Write.allows(&broken));
        for status in [&refused, &unknown, &broken, &not_connected] {
            assert!(
                Repeat::Read.allows(status) && Repeat::Idempotent.allows(status),
                "{status:?}"
            );
        }
        let answer: Status = ApiError::NotFound("no run r1".into()).into();
        assert!(!Repeat::Read.allows(&answer) && !Repeat::Idempotent.allows(&answer));
    }

    #[test]
    fn floe_refusals_say_nothing_was_applied_and_carry_the_hint_through_headers() {
        let status: tonic::Status =
            crate::error::ApiError::Unavailable("no leader known".into()).into();
        assert!(proves_unapplied(&status));
        let mut headers = status.into_http::<()>().headers().clone();
        assert!(is_unavailable(&headers));
        headers.insert(
            LEADER_API_HEADER,
            http::HeaderValue::from_static("127.0.0.1:7102"),
        );
        let back = tonic::Status::from_header_map(&headers).expect("a status in the headers");
        assert_eq!(leader_of(&back).as_deref(), Some("127.0.0.1:7102"));
        assert!(proves_unapplied(&back));
        // A transport failure carries neither.
        let transport = tonic::Status::unavailable("tcp connect error");
        assert!(!proves_unapplied(&transport) && leader_of(&transport).is_none());
    }
}
