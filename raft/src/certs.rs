//! Offline certificate authority for a floe cluster.
//!
//! Air-gapped sites have no ACME and often no PKI team, so `floe` can mint its
//! own cluster CA, node certificates and client certificates as PEM files.
//! Identities live in DNS SANs (`node-<id>.floe`, `client-<name>.floe`); see
//! [`crate::tls::PeerIdentity`].

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::tls::{client_dns_name, node_dns_name, API_DNS_NAME};

/// How long every generated certificate is valid.
const VALIDITY_DAYS: i64 = 10 * 365;
/// Backdating tolerates clocks on freshly booted edge boxes that lag a little.
const BACKDATE: Duration = Duration::hours(1);

/// File names inside a CA, node or client directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key; only in the CA directory, never copied to nodes.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// A node's certificate.
pub const NODE_CERT_FILE: &str = "node.pem";
/// A node's private key.
pub const NODE_KEY_FILE: &str = "node-key.pem";
/// A client's certificate.
pub const CLIENT_CERT_FILE: &str = "client.pem";
/// A client's private key.
pub const CLIENT_KEY_FILE: &str = "client-key.pem";

/// Errors from certificate generation.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// We never overwrite key material: an operator must remove it on purpose.
    #[error("{path}: already exists; refusing to overwrite certificate material")]
    AlreadyExists { path: PathBuf },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file exists but could not be used (not PEM, not a CA, ...).
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// A requested name cannot go into a certificate.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// Key generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Files written by [`create_ca`].
#[derive(Clone, Debug)]
pub struct CaPaths {
    /// The CA certificate (distribute to every node and client).
    pub cert: PathBuf,
    /// The CA private key (mode 0600; keep offline).
    pub key: PathBuf,
}

/// Files written by [`create_node`] or [`create_client`].
#[derive(Clone, Debug)]
pub struct LeafPaths {
    /// A copy of the CA certificate.
    pub ca: PathBuf,
    /// The leaf certificate.
    pub cert: PathBuf,
    /// The leaf private key (mode 0600).
    pub key: PathBuf,
}

/// Creates a new cluster CA in `out_dir` (`ca.pem`, `ca-key.pem`).
pub fn create_ca(out_dir: &Path, cluster_name: &str) -> Result<CaPaths, CertError> {
    let cert_path = out_dir.join(CA_CERT_FILE);
    let key_path = out_dir.join(CA_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path])?;

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&format!("floe cluster CA {cluster_name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params);

    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;

    create_dir(out_dir)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(CaPaths {
        cert: cert_path,
        key: key_path,
    })
}

/// Creates `node.pem`, `node-key.pem` and a copy of `ca.pem` in `out_dir`,
/// signed by the CA in `ca_dir`.
///
/// `extra_sans` are the addresses clients and peers may use besides the floe
/// names (an IP literal becomes an IP SAN, anything else a DNS SAN).
pub fn create_node(
    ca_dir: &Path,
    node_id: u64,
    extra_sans: &[String],
    out_dir: &Path,
) -> Result<LeafPaths, CertError> {
    let paths = leaf_paths(out_dir, NODE_CERT_FILE, NODE_KEY_FILE);
    refuse_existing(&[&paths.ca, &paths.cert, &paths.key])?;

    let mut sans = vec![dns_san(&node_dns_name(node_id))?, dns_san(API_DNS_NAME)?];
    for extra in extra_sans {
        sans.push(extra_san(extra)?);
    }
    let mut params = leaf_params(&format!("floe node {node_id}"), sans);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    write_leaf(ca_dir, &params, &paths)?;
    Ok(paths)
}

/// Creates `client.pem`, `client-key.pem` and a copy of `ca.pem` in `out_dir`
/// for a client (CLI, SDK, worker) called `name`.
pub fn create_client(ca_dir: &Path, name: &str, out_dir: &Path) -> Result<LeafPaths, CertError> {
    create_client_in(ca_dir, name, None, out_dir)
}

/// A client certificate; with a namespace it also carries the URI
/// `floe://<namespace>/<name>`, which confines the client to that namespace.
pub fn create_client_in(
    ca_dir: &Path,
    name: &str,
    namespace: Option<&str>,
    out_dir: &Path,
) -> Result<LeafPaths, CertError> {
    validate_client_name(name)?;
    let mut sans = vec![dns_san(&client_dns_name(name))?];
    if let Some(namespace) = namespace {
        validate_client_name(namespace).map_err(|_| CertError::InvalidName {
            name: namespace.to_string(),
            reason: "namespace names use letters, digits and inner '-' (at most 63)".to_string(),
        })?;
        let uri = format!("{}{namespace}/{name}", crate::tls::SCOPE_URI_PREFIX);
        let uri = uri
            .try_into()
            .map_err(|error: rcgen::Error| CertError::InvalidName {
                name: namespace.to_string(),
                reason: error.to_string(),
            })?;
        sans.push(SanType::URI(uri));
    }
    let paths = leaf_paths(out_dir, CLIENT_CERT_FILE, CLIENT_KEY_FILE);
    refuse_existing(&[&paths.ca, &paths.cert, &paths.key])?;

    let mut params = leaf_params(&format!("floe client {name}"), sans);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    write_leaf(ca_dir, &params, &paths)?;
    Ok(paths)
}

fn leaf_paths(out_dir: &Path, cert: &str, key: &str) -> LeafPaths {
    LeafPaths {
        ca: out_dir.join(CA_CERT_FILE),
        cert: out_dir.join(cert),
        key: out_dir.join(key),
    }
}

fn leaf_params(common_name: &str, sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    params
}

/// Signs `params` with the CA in `ca_dir` and writes cert, key and CA copy.
fn write_leaf(
    ca_dir: &Path,
    params: &CertificateParams,
    paths: &LeafPaths,
) -> Result<(), CertError> {
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_cert_pem = read_text(&ca_cert_path)?;
    let ca_key_pem = read_text(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|error| CertError::Invalid {
        path: ca_key_path.clone(),
        reason: format!("not a PEM private key: {error}"),
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|error| CertError::Invalid {
            path: ca_cert_path.clone(),
            reason: format!("not a PEM CA certificate: {error}"),
        })?;

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    if let Some(out_dir) = paths.cert.parent() {
        create_dir(out_dir)?;
    }
    write_new(&paths.key, key.serialize_pem().as_bytes(), true)?;
    write_new(&paths.cert, cert.pem().as_bytes(), false)?;
    write_new(&paths.ca, ca_cert_pem.as_bytes(), false)?;
    Ok(())
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "floe");
    name
}

fn set_validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(VALIDITY_DAYS);
}

fn dns_san(name: &str) -> Result<SanType, CertError> {
    let ia5 = name
        .try_into()
        .map_err(|error: rcgen::Error| CertError::InvalidName {
            name: name.to_string(),
            reason: error.to_string(),
        })?;
    Ok(SanType::DnsName(ia5))
}

fn extra_san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // An extra name must not smuggle in a second floe identity.
    if name.ends_with(".floe") && name != API_DNS_NAME {
        return Err(CertError::InvalidName {
            name: name.to_string(),
            reason: "names under .floe are reserved for floe identities".to_string(),
        });
    }
    dns_san(name)
}

fn validate_client_name(name: &str) -> Result<(), CertError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        return Ok(());
    }
    Err(CertError::InvalidName {
        name: name.to_string(),
        reason: "client names use letters, digits and inner '-' (at most 63)".to_string(),
    })
}

fn refuse_existing(paths: &[&Path]) -> Result<(), CertError> {
    for path in paths {
        if path.exists() {
            return Err(CertError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a new file; `create_new` closes the race between the existence
/// check and the write, and private keys are 0600 from the first byte.
fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<(), CertError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => CertError::AlreadyExists {
            path: path.to_path_buf(),
        },
        _ => CertError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| CertError::Io {
            path: path.to_path_buf(),
            source,
        })
}
