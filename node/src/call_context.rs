//! Who makes each API call: one `CallContext` per request, from the client
//! certificate its TLS handshake proved, built in one place (a tower layer
//! on the gRPC server) and carried in the request's extensions, where every
//! handler finds it with [`CallContext::of`]. Every log line written while
//! the call runs names the caller and the method.
//!
//! Nothing is refused on it yet; the authorization check that comes with
//! roles and namespaces reads it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use floe_raft::PeerIdentity;
use rustls::pki_types::CertificateDer;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::Instrument;

/// Who is calling, as the client certificate proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A client certificate (`client-<name>.floe`): the CLI, a worker, a program.
    Client(String),
    /// A client certificate confined to one namespace (`floe://<namespace>/<name>`).
    ScopedClient { namespace: String, name: String },
    /// A node certificate (`node-<id>.floe`) presented as a client.
    Node(u64),
    /// No certificate, or one without a floe identity; says why.
    Unidentified(String),
    /// Work this node does on its own (the scheduler, the dispatcher), named.
    Local(&'static str),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Client(name) => write!(f, "client {name}"),
            Caller::ScopedClient { namespace, name } => write!(f, "client {namespace}/{name}"),
            Caller::Node(id) => write!(f, "node {id}"),
            Caller::Unidentified(why) => write!(f, "unidentified ({why})"),
            Caller::Local(part) => write!(f, "this node's {part}"),
        }
    }
}

/// One call's context: who calls and the gRPC method (`/floe.v1.Runs/Start`).
/// It holds the connection's verified certificate chain (shared, not
/// copied) and reads the caller from it only when asked, so a call whose
/// caller nobody reads pays no certificate parsing.
#[derive(Clone, Debug)]
pub struct CallContext {
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// Set for work the node starts itself; then there is no certificate.
    local: Option<&'static str>,
    /// An API token presented as `authorization: Bearer <token>`.
    bearer: Option<Arc<str>>,
    pub method: String,
}

impl CallContext {
    /// The context the layer attached to `request`. A request that did not
    /// pass the layer (a handler called directly) has an unidentified caller.
    pub fn of<T>(request: &tonic::Request<T>) -> CallContext {
        request
            .extensions()
            .get::<CallContext>()
            .cloned()
            .unwrap_or_else(|| CallContext::unchecked(""))
    }

    /// The context of a request that did not pass the layer: no caller.
    pub fn unchecked(method: &str) -> CallContext {
        CallContext {
            certs: None,
            local: None,
            bearer: None,
            method: method.to_string(),
        }
    }

    /// The context of work this node does on its own: `part` names the
    /// component (`scheduler`, `dispatcher`) in logs and, later, in audit.
    pub fn local(part: &'static str) -> CallContext {
        CallContext {
            certs: None,
            local: Some(part),
            bearer: None,
            method: String::new(),
        }
    }

    /// The API token the call presents, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }

    /// Who calls, from the leaf of the connection's verified chain.
    pub fn caller(&self) -> Caller {
        if let Some(part) = self.local {
            return Caller::Local(part);
        }
        Self::caller_from_certs(self.certs.as_deref().map(|chain| chain.as_slice()))
    }

    /// The caller named by the leaf of a verified certificate chain.
    pub fn caller_from_certs(certs: Option<&[CertificateDer<'_>]>) -> Caller {
        let Some(leaf) = certs.and_then(|chain| chain.first()) else {
            return Caller::Unidentified("no client certificate".into());
        };
        match floe_raft::tls::identity_from_cert(leaf) {
            Ok(PeerIdentity::Client(name)) => Caller::Client(name),
            Ok(PeerIdentity::ScopedClient { namespace, name }) => {
                Caller::ScopedClient { namespace, name }
            }
            Ok(PeerIdentity::Node(id)) => Caller::Node(id),
            Err(error) => Caller::Unidentified(error.to_string()),
        }
    }

    fn from_http<B>(request: &http::Request<B>) -> CallContext {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        let bearer = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| Arc::from(token.trim()));
        CallContext {
            certs,
            local: None,
            bearer,
            method: request.uri().path().to_string(),
        }
    }
}

/// Attaches a [`CallContext`] to every request and runs the call in a
/// tracing span that names it.
#[derive(Clone, Default)]
pub struct CallContextLayer;

impl<S> tower::Layer<S> for CallContextLayer {
    type Service = WithCallContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithCallContext { inner }
    }
}

#[derive(Clone)]
pub struct WithCallContext<S> {
    inner: S,
}

impl<S, RequestBody> tower::Service<http::Request<RequestBody>> for WithCallContext<S>
where
    S: tower::Service<http::Request<RequestBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let call = CallContext::from_http(&request);
        // The fields are only evaluated when the span is enabled (debug).
        let span = tracing::debug_span!("call", method = %call.method, caller = %call.caller());
        request.extensions_mut().insert(call);
        Box::pin(self.inner.call(request).instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(path: &std::path::Path) -> CertificateDer<'static> {
        let pem = std::fs::read(path).unwrap();
        let mut reader = pem.as_slice();
        let cert = rustls_pemfile::certs(&mut reader).next().unwrap().unwrap();
        cert
    }

    #[test]
    fn the_caller_is_the_identity_its_certificate_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = floe_raft::certs::create_ca(&ca_dir, "test").unwrap();
        let client =
            floe_raft::certs::create_client(&ca_dir, "ops-admin", &dir.path().join("c")).unwrap();
        let node = floe_raft::certs::create_node(&ca_dir, 7, &[], &dir.path().join("n")).unwrap();

        let client_cert = der(&client.cert);
        assert_eq!(
            CallContext::caller_from_certs(Some(&[client_cert])),
            Caller::Client("ops-admin".into())
        );
        let node_cert = der(&node.cert);
        assert_eq!(
            CallContext::caller_from_certs(Some(&[node_cert])),
            Caller::Node(7)
        );
        // The CA's own certificate names no floe identity.
        let caller = CallContext::caller_from_certs(Some(&[der(&ca.cert)]));
        assert!(
            matches!(&caller, Caller::Unidentified(why) if why.contains("subjectAltName") || why.contains("no node")),
            "{caller}"
        );
        assert_eq!(
            CallContext::caller_from_certs(None),
            Caller::Unidentified("no client certificate".into())
        );
    }

    #[test]
    fn work_the_node_starts_itself_names_the_part() {
        let ctx = CallContext::local("scheduler");
        assert_eq!(ctx.caller(), Caller::Local("scheduler"));
        assert_eq!(ctx.caller().to_string(), "this node's scheduler");
    }

    #[test]
    fn a_handler_called_without_the_layer_sees_an_unidentified_caller() {
        let request = tonic::Request::new(());
        assert!(matches!(
            CallContext::of(&request).caller(),
            Caller::Unidentified(_)
        ));
    }
}
