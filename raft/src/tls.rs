//! TLS material, rustls configurations and peer identities.
//!
//! Every connection is mutual TLS under the cluster CA. Identity is a DNS SAN
//! in the peer's certificate: `node-<id>.floe` for nodes, `client-<name>.floe`
//! for clients. The CA certificate's SHA-256 fingerprint names the cluster.
//!
//! The ring provider is passed explicitly everywhere, so nothing depends on a
//! process-wide default that another crate might install differently.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// ALPN protocol of the node-to-node QUIC transport.
pub const RAFT_ALPN: &[u8] = b"floe-raft/1";
/// The DNS name every node certificate carries for the client-facing API.
pub const API_DNS_NAME: &str = "api.floe";

/// The DNS SAN that identifies node `node_id`.
pub fn node_dns_name(node_id: u64) -> String {
    format!("node-{node_id}.floe")
}

/// The DNS SAN that identifies client `name`.
pub fn client_dns_name(name: &str) -> String {
    format!("client-{name}.floe")
}

/// Errors loading TLS material or reading identities.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// rustls refused the material.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The peer presented no certificate (impossible under our mTLS configs).
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// A certificate does not carry exactly one floe identity.
    #[error("certificate identity: {0}")]
    Identity(String),
}

/// Who is on the other end of a connection, as proven by its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerIdentity {
    /// A cluster node (`node-<id>.floe`).
    Node(u64),
    /// A client such as the CLI or a worker (`client-<name>.floe`).
    Client(String),
    /// A client confined to one namespace: `client-<name>.floe` plus the
    /// URI `floe://<namespace>/<name>`.
    ScopedClient { namespace: String, name: String },
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Node(id) => write!(f, "node {id}"),
            PeerIdentity::Client(name) => write!(f, "client {name}"),
            PeerIdentity::ScopedClient { namespace, name } => {
                write!(f, "client {namespace}/{name}")
            }
        }
    }
}

/// The CA certificate plus this process's certificate chain and key.
pub struct TlsMaterial {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_cert: CertificateDer<'static>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: String,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("TlsMaterial")
            .field("ca_fingerprint", &self.fingerprint)
            .finish()
    }
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            ca_cert: self.ca_cert.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

impl TlsMaterial {
    /// Loads PEM files: the cluster CA, our certificate and our private key.
    pub fn load(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let ca_pem = read_file(ca_path)?;
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;

        let ca_cert = parse_certs(ca_path, &ca_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                invalid(
                    ca_path,
                    "no CERTIFICATE block found (is this a PEM certificate?)",
                )
            })?;
        let cert_chain = parse_certs(cert_path, &cert_pem)?;
        if cert_chain.is_empty() {
            return Err(invalid(
                cert_path,
                "no CERTIFICATE block found (is this a PEM certificate?)",
            ));
        }
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|error| invalid(key_path, &format!("not PEM: {error}")))?
            .ok_or_else(|| invalid(key_path, "no private key found (is this a PEM key file?)"))?;

        let fingerprint = hex::encode(Sha256::digest(ca_cert.as_ref()));
        Ok(TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem,
            ca_cert,
            cert_chain,
            key,
            fingerprint,
        })
    }

    /// SHA-256 (lowercase hex) of the CA certificate's DER: the cluster identity.
    pub fn ca_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The identity our own certificate carries.
    pub fn identity(&self) -> Result<PeerIdentity, TlsError> {
        match self.cert_chain.first() {
            Some(cert) => identity_from_cert(cert),
            None => Err(TlsError::NoPeerCertificate),
        }
    }

    /// The CA certificate as PEM (for `tonic::transport::Certificate::from_pem`).
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// Our certificate as PEM (for `tonic::transport::Identity::from_pem`).
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// Our private key as PEM (for `tonic::transport::Identity::from_pem`).
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    /// A server config that requires a client certificate signed by the CA.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let provider = crypto_provider();
        let roots = Arc::new(self.root_store()?);
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(config)
    }

    /// A client config that trusts only the CA and presents our certificate.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.root_store()?)
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(config)
    }

    fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert.clone())?;
        Ok(roots)
    }
}

/// The ring provider, chosen explicitly (never the process default).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the verified peer's identity from a QUIC connection's certificate.
pub fn peer_identity(connection: &quinn::Connection) -> Result<PeerIdentity, TlsError> {
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TlsError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    identity_from_cert(leaf)
}

/// Finds the single floe identity among a certificate's DNS SANs.
pub fn identity_from_cert(cert: &CertificateDer<'_>) -> Result<PeerIdentity, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|error| TlsError::Identity(format!("unparsable certificate: {error}")))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|error| TlsError::Identity(format!("bad subjectAltName: {error}")))?
        .ok_or_else(|| TlsError::Identity("certificate has no subjectAltName".to_string()))?;

    let mut found: Option<PeerIdentity> = None;
    for name in &san.value.general_names {
        let GeneralName::DNSName(dns) = name else {
            continue;
        };
        let Some(identity) = identity_from_dns_name(dns) else {
            continue;
        };
        if let Some(previous) = &found {
            return Err(TlsError::Identity(format!(
                "certificate names two identities: {previous} and {identity}"
            )));
        }
        found = Some(identity);
    }
    let found = found.ok_or_else(|| {
        TlsError::Identity(
            "no node-<id>.floe or client-<name>.floe name in certificate".to_string(),
        )
    })?;
    let scopes: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(SCOPE_URI_PREFIX),
            _ => None,
        })
        .collect();
    match (found, scopes.as_slice()) {
        (found, []) => Ok(found),
        (PeerIdentity::Client(name), [scope]) => {
            let (namespace, scoped_name) = scope.split_once('/').ok_or_else(|| {
                TlsError::Identity(format!(
                    "{SCOPE_URI_PREFIX}{scope} is not {SCOPE_URI_PREFIX}<namespace>/<name>"
                ))
            })?;
            if scoped_name != name || namespace.is_empty() || namespace.contains('/') {
                return Err(TlsError::Identity(format!(
                    "{SCOPE_URI_PREFIX}{scope} does not name client {name} in one namespace"
                )));
            }
            Ok(PeerIdentity::ScopedClient {
                namespace: namespace.to_string(),
                name,
            })
        }
        (PeerIdentity::Client(name), _) => Err(TlsError::Identity(format!(
            "client {name}: the certificate names more than one namespace"
        ))),
        (found, _) => Err(TlsError::Identity(format!(
            "{found}: a namespace URI belongs on client certificates only"
        ))),
    }
}

/// The URI form of a namespaced client identity: `floe://<namespace>/<name>`.
pub const SCOPE_URI_PREFIX: &str = "floe://";

fn identity_from_dns_name(dns: &str) -> Option<PeerIdentity> {
    let stem = dns.strip_suffix(".floe")?;
    if let Some(id) = stem.strip_prefix("node-") {
        // Only canonical decimal ids; "node-007" would alias node 7.
        let node_id: u64 = id.parse().ok()?;
        return (node_id.to_string() == id).then_some(PeerIdentity::Node(node_id));
    }
    let name = stem.strip_prefix("client-")?;
    (!name.is_empty()).then(|| PeerIdentity::Client(name.to_string()))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        certs.push(cert.map_err(|error| invalid(path, &format!("not PEM: {error}")))?);
    }
    Ok(certs)
}

fn invalid(path: &Path, reason: &str) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
