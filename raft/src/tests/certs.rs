use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::harness::TestCa;
use crate::certs::{create_ca, create_client, create_node, CertError};
use crate::tls::{identity_from_cert, PeerIdentity, TlsError, TlsMaterial};

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let cert: CertificateDer<'static> = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    cert.to_vec()
}

struct Parsed {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    server_auth: bool,
    client_auth: bool,
    common_name: String,
}

fn parse(der: &[u8]) -> Parsed {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut parsed = Parsed {
        dns: vec![],
        ips: vec![],
        server_auth: false,
        client_auth: false,
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string(),
    };
    for extension in cert.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(dns) => parsed.dns.push(dns.to_string()),
                        GeneralName::IPAddress(bytes) => {
                            let octets: [u8; 4] = (*bytes).try_into().unwrap();
                            parsed.ips.push(IpAddr::from(octets));
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                parsed.server_auth = eku.server_auth;
                parsed.client_auth = eku.client_auth;
            }
            _ => {}
        }
    }
    let validity = cert.validity();
    let years =
        (validity.not_after.timestamp() - validity.not_before.timestamp()) / (365 * 24 * 3600);
    assert!(
        years >= 9,
        "certificate valid for about ten years, got {years}"
    );
    parsed
}

#[test]
fn ca_node_and_client_certificates_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let ca_dir = root.path().join("ca");
    let ca = create_ca(&ca_dir, "test").unwrap();
    assert!(ca.cert.exists() && ca.key.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "CA key must be private");
    }

    let node_dir = root.path().join("node-7");
    let extra = ["10.0.0.7".to_string(), "floe-7.local".to_string()];
    let node = create_node(&ca_dir, 7, &extra, &node_dir).unwrap();
    assert!(node.cert.exists() && node.key.exists() && node.ca.exists());
    assert!(
        !node_dir.join("ca-key.pem").exists(),
        "the CA key never leaves the CA dir"
    );
    assert_eq!(
        std::fs::read(&node.ca).unwrap(),
        std::fs::read(&ca.cert).unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&node.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "node key must be private");
    }
    let parsed = parse(&pem_der(&node.cert));
    assert!(parsed.dns.contains(&"node-7.floe".to_string()));
    assert!(parsed.dns.contains(&"api.floe".to_string()));
    assert!(parsed.dns.contains(&"floe-7.local".to_string()));
    assert_eq!(parsed.ips, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
    assert!(parsed.server_auth && parsed.client_auth);
    assert_eq!(parsed.common_name, "floe node 7");

    let client = create_client(&ca_dir, "cli", &root.path().join("client")).unwrap();
    let parsed = parse(&pem_der(&client.cert));
    assert_eq!(parsed.dns, vec!["client-cli.floe".to_string()]);
    assert!(parsed.client_auth && !parsed.server_auth);

    let material = TlsMaterial::load(&node.ca, &node.cert, &node.key).unwrap();
    assert_eq!(material.identity().unwrap(), PeerIdentity::Node(7));
    assert_eq!(
        material.ca_fingerprint(),
        hex::encode(Sha256::digest(pem_der(&ca.cert)))
    );
    let client_material = TlsMaterial::load(&client.ca, &client.cert, &client.key).unwrap();
    assert_eq!(
        client_material.identity().unwrap(),
        PeerIdentity::Client("cli".to_string())
    );
    assert_eq!(client_material.ca_fingerprint(), material.ca_fingerprint());

    let scoped =
        crate::certs::create_client_in(&ca_dir, "alice", Some("lab"), &root.path().join("scoped"))
            .unwrap();
    let scoped = TlsMaterial::load(&scoped.ca, &scoped.cert, &scoped.key).unwrap();
    assert_eq!(
        scoped.identity().unwrap(),
        PeerIdentity::ScopedClient {
            namespace: "lab".to_string(),
            name: "alice".to_string()
        }
    );
    assert!(
        crate::certs::create_client_in(&ca_dir, "bob", Some("a/b"), &root.path().join("x"))
            .is_err()
    );
}

#[test]
fn existing_files_are_never_overwritten() {
    let ca = TestCa::new("test");
    let before = std::fs::read(ca.ca_dir().join("ca-key.pem")).unwrap();
    match create_ca(&ca.ca_dir(), "again") {
        Err(CertError::AlreadyExists { path }) => {
            assert!(path.ends_with("ca.pem") || path.ends_with("ca-key.pem"))
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(ca.ca_dir().join("ca-key.pem")).unwrap(),
        before
    );

    let out = ca.dir.path().join("n1");
    create_node(&ca.ca_dir(), 1, &[], &out).unwrap();
    let error = create_node(&ca.ca_dir(), 1, &[], &out).unwrap_err();
    assert!(
        error.to_string().contains("n1"),
        "error names the path: {error}"
    );
    assert!(matches!(error, CertError::AlreadyExists { .. }));
}

#[test]
fn reserved_and_invalid_names_are_rejected() {
    let ca = TestCa::new("test");
    let spoof = create_node(
        &ca.ca_dir(),
        1,
        &["node-2.floe".to_string()],
        &ca.dir.path().join("x"),
    );
    assert!(
        matches!(spoof, Err(CertError::InvalidName { .. })),
        "{spoof:?}"
    );
    let bad_client = create_client(&ca.ca_dir(), "a.b", &ca.dir.path().join("y"));
    assert!(
        matches!(bad_client, Err(CertError::InvalidName { .. })),
        "{bad_client:?}"
    );
    let missing_ca = create_node(
        &ca.dir.path().join("nope"),
        1,
        &[],
        &ca.dir.path().join("z"),
    );
    match missing_ca {
        Err(CertError::Io { path, .. }) => assert!(path.ends_with("nope/ca.pem")),
        other => panic!("expected Io naming ca.pem, got {other:?}"),
    }
}

#[test]
fn loading_bad_material_names_the_file() {
    let ca = TestCa::new("test");
    let dir = ca.dir.path();
    let paths = create_node(&ca.ca_dir(), 1, &[], &dir.join("n1")).unwrap();

    let missing = TlsMaterial::load(&dir.join("missing.pem"), &paths.cert, &paths.key).unwrap_err();
    assert!(matches!(missing, TlsError::Read { .. }));
    assert!(missing.to_string().contains("missing.pem"), "{missing}");

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let not_pem = TlsMaterial::load(&paths.ca, &garbage, &paths.key).unwrap_err();
    assert!(
        not_pem.to_string().contains("garbage.pem") && not_pem.to_string().contains("CERTIFICATE"),
        "{not_pem}"
    );

    // A certificate where a key belongs.
    let no_key = TlsMaterial::load(&paths.ca, &paths.cert, &paths.cert).unwrap_err();
    assert!(
        no_key.to_string().contains("node.pem") && no_key.to_string().contains("private key"),
        "{no_key}"
    );
}

#[test]
fn identity_is_read_only_from_canonical_floe_names() {
    let ca = TestCa::new("test");
    let material = ca.node(42);
    let der = pem_der(&ca.dir.path().join("node-42/node.pem"));
    assert_eq!(
        identity_from_cert(&CertificateDer::from(der)).unwrap(),
        PeerIdentity::Node(42)
    );
    assert_eq!(material.identity().unwrap(), PeerIdentity::Node(42));

    // A CA certificate has no floe identity.
    let ca_der = pem_der(&ca.ca_dir().join("ca.pem"));
    assert!(matches!(
        identity_from_cert(&CertificateDer::from(ca_der)),
        Err(TlsError::Identity(_))
    ));
}
