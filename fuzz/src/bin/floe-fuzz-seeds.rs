//! `floe-fuzz-seeds`: writes the generated part of the corpora (peer
//! frames, snapshots, certificates) into `fuzz/corpus/`, encoded by floe's
//! own encoders, so the fuzzer starts from inputs floe really reads. Each
//! seed is checked against its target's decoder before it is written.
//! Hand-written seeds (flows, expressions, tensors, configs) sit beside them.

use std::fs;

use anyhow::{bail, Context, Result};
use floe_node::peer_api::{self, LocalStatus, PeerRequest, PeerResponse, ProbeInfo};
use floe_raft::PeerIdentity;
use floe_state::{Command, CommandResponse, NodeInfo, TypeConfig};
use floe_storage::snapshot_fuzzing::{self, Record};
use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, Vote};
use serde::Serialize;

fn main() -> Result<()> {
    peer_frames()?;
    snapshots()?;
    certificates()?;
    configs()
}

/// Every key at its default: the loader's whole surface in one file.
fn configs() -> Result<()> {
    let text = toml::to_string(&floe_node::config::NodeConfig::default())?;
    write_seed("config", "defaults.toml", text.as_bytes())
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = floe_fuzz::corpus_dir(target);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(name);
    fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    println!("{} ({} bytes)", path.display(), bytes.len());
    Ok(())
}

/// The layout of a version 1 request frame (`raft/src/wire.rs`): the
/// variant index of `AppendEntries` is 0, as in `RequestBody`.
#[derive(Serialize)]
struct RequestFrame<'a> {
    from: PeerIdentity,
    cluster: &'a str,
    body: RequestBody,
}

#[derive(Serialize)]
enum RequestBody {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn node_info(id: u64) -> NodeInfo {
    NodeInfo {
        raft_addr: format!("10.0.0.{id}:7000"),
        api_addr: format!("10.0.0.{id}:7001"),
        http_addr: format!("10.0.0.{id}:7002"),
    }
}

fn membership() -> Membership<u64, NodeInfo> {
    let nodes: std::collections::BTreeMap<u64, NodeInfo> =
        (1..=3).map(|id| (id, node_info(id))).collect();
    let voters = std::collections::BTreeSet::from([1, 2, 3]);
    Membership::new(vec![voters], nodes)
}

/// An append-entries request carrying floe commands, framed as version 1.
fn append_entries_frame() -> Result<Vec<u8>> {
    let entries = vec![
        Entry::<TypeConfig> {
            log_id: log_id(3, 40),
            payload: EntryPayload::Membership(membership()),
        },
        Entry {
            log_id: log_id(3, 41),
            payload: EntryPayload::Normal(Command::KvPut {
                key: "config/region".into(),
                value: b"eu-west".to_vec(),
            }),
        },
        Entry {
            log_id: log_id(3, 42),
            payload: EntryPayload::Normal(Command::KvCas {
                key: "lock".into(),
                expected: None,
                new: Some(b"holder-1".to_vec()),
            }),
        },
        Entry {
            log_id: log_id(3, 43),
            payload: EntryPayload::Normal(Command::TombstoneNode { node_id: 4 }),
        },
    ];
    let frame = RequestFrame {
        from: PeerIdentity::Node(1),
        cluster: "ab12",
        body: RequestBody::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(3, 39)),
            leader_commit: Some(log_id(3, 39)),
            entries,
        }),
    };
    let payload = bincode::serde::encode_to_vec(&frame, bincode::config::standard())?;
    let mut bytes = u32::try_from(payload.len() + 1)?.to_be_bytes().to_vec();
    bytes.push(1);
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Seeds of the peer_frame target: its selector byte, then the input.
fn peer_frames() -> Result<()> {
    // Recorded from the release before group ids (raft/src/tests/wire.rs).
    let recorded: &[(&str, u8, &[u8])] = &[
        (
            "raft-heartbeat",
            0,
            &[
                0, 0, 0, 21, 1, 0, 1, 4, 97, 98, 49, 50, 0, 3, 1, 1, 1, 3, 1, 41, 0, 1, 3, 1, 40,
            ],
        ),
        (
            "raft-vote",
            0,
            &[
                0, 0, 0, 16, 1, 0, 2, 4, 97, 98, 49, 50, 1, 4, 2, 0, 1, 3, 1, 41,
            ],
        ),
        (
            "raft-vote-group-5",
            0,
            &[
                0, 0, 0, 17, 2, 5, 0, 2, 4, 97, 98, 49, 50, 1, 4, 2, 0, 1, 3, 1, 41,
            ],
        ),
        (
            "raft-snapshot",
            0,
            &[
                0, 0, 0, 33, 1, 0, 1, 4, 97, 98, 49, 50, 2, 3, 1, 1, 1, 3, 1, 41, 0, 0, 0, 8, 51,
                45, 49, 45, 52, 49, 45, 55, 252, 1, 0, 16, 0,
            ],
        ),
        (
            "raft-app",
            0,
            &[
                0, 0, 0, 16, 1, 1, 3, 111, 112, 115, 4, 97, 98, 49, 50, 3, 3, 1, 2, 3,
            ],
        ),
        (
            "raft-pre-vote",
            0,
            &[0, 0, 0, 14, 1, 0, 3, 4, 97, 98, 49, 50, 4, 4, 1, 3, 1, 41],
        ),
        ("raft-response-ok", 1, &[0, 0, 0, 4, 1, 0, 0, 0]),
        (
            "raft-response-refused",
            1,
            &[
                0, 0, 0, 16, 1, 1, 0, 12, 114, 97, 102, 116, 32, 103, 114, 111, 117, 112, 32, 55,
            ],
        ),
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = recorded
        .iter()
        .map(|(name, selector, bytes)| {
            let mut seed = vec![*selector];
            seed.extend_from_slice(bytes);
            (name.to_string(), seed)
        })
        .collect();
    let mut append = vec![0];
    append.extend(append_entries_frame()?);
    seeds.push(("raft-append-entries".into(), append));

    let requests = [
        ("probe", PeerRequest::Probe),
        (
            "join",
            PeerRequest::Join {
                node_id: 4,
                raft_addr: "10.0.0.4:7000".into(),
                learner_only: false,
            },
        ),
        (
            "write",
            PeerRequest::Write(Command::KvPut {
                key: "a".into(),
                value: b"1".to_vec(),
            }),
        ),
        (
            "blob-put",
            PeerRequest::BlobPut {
                hash: "9f86d081884c7d65".into(),
                bytes: serde_bytes::ByteBuf::from(b"test".to_vec()),
            },
        ),
        (
            "blob-get",
            PeerRequest::BlobGet {
                hash: "9f86d081884c7d65".into(),
            },
        ),
        ("local-status", PeerRequest::LocalStatus),
    ];
    for (name, request) in requests {
        let mut seed = vec![2];
        seed.extend(peer_api::encode(&request)?);
        seeds.push((format!("peer-request-{name}"), seed));
    }
    let responses = [
        (
            "probe",
            PeerResponse::Probe(ProbeInfo {
                node_id: 2,
                info: node_info(2),
                has_raft_state: true,
            }),
        ),
        (
            "written",
            PeerResponse::Written(CommandResponse::Put { revision: 42 }),
        ),
        (
            "local-status",
            PeerResponse::LocalStatus(LocalStatus {
                node_id: 2,
                role: "follower".into(),
                term: 3,
                last_log_index: 43,
                applied_index: 43,
                current_leader: Some(1),
            }),
        ),
        (
            "blob",
            PeerResponse::Blob(Some(serde_bytes::ByteBuf::from(b"test".to_vec()))),
        ),
    ];
    for (name, response) in responses {
        let mut seed = vec![3];
        seed.extend(peer_api::encode(&response)?);
        seeds.push((format!("peer-response-{name}"), seed));
    }
    for (name, seed) in &seeds {
        if !decodes(seed) {
            bail!("seed {name} does not decode");
        }
        write_seed("peer_frame", name, seed)?;
    }
    Ok(())
}

fn decodes(seed: &[u8]) -> bool {
    let Some((&selector, bytes)) = seed.split_first() else {
        return false;
    };
    match selector {
        0 => floe_raft::wire::reencode_request::<TypeConfig>(bytes).is_ok(),
        1 => floe_raft::wire::reencode_response(bytes).is_ok(),
        2 => peer_api::decode::<PeerRequest>(bytes).is_ok(),
        _ => peer_api::decode::<PeerResponse>(bytes).is_ok(),
    }
}

fn snapshots() -> Result<()> {
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 43)),
        last_membership: openraft::StoredMembership::new(Some(log_id(3, 40)), membership()),
        snapshot_id: "3-1-43-1".into(),
    };
    let records = vec![
        Record::Data {
            key: b"kv/config/region".to_vec(),
            value: floe_storage::codec::encode_bytes(|| "seed".into(), b"eu-west")?,
        },
        Record::Data {
            key: b"kv/lock".to_vec(),
            value: floe_storage::codec::encode_bytes(|| "seed".into(), b"holder-1")?,
        },
        Record::Tombstone { node_id: 4 },
    ];
    let snapshot = snapshot_fuzzing::write(&meta, &records)?;
    if snapshot_fuzzing::read(&snapshot)? != (meta.clone(), records) {
        bail!("the seed snapshot does not read back");
    }
    write_seed("snapshot", "three-records", &snapshot)?;
    let empty = snapshot_fuzzing::write(&SnapshotMeta::default(), &[])?;
    snapshot_fuzzing::read(&empty)?;
    write_seed("snapshot", "empty", &empty)
}

fn certificates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca_dir = dir.path().join("ca");
    let node_dir = dir.path().join("node");
    let client_dir = dir.path().join("client");
    floe_raft::certs::create_ca(&ca_dir, "fuzz")?;
    let node = floe_raft::certs::create_node(&ca_dir, 1, &["10.0.0.1".into()], &node_dir)?;
    let client = floe_raft::certs::create_client(&ca_dir, "ops", &client_dir)?;
    for (name, paths) in [("node", &node), ("client", &client)] {
        let material = floe_raft::TlsMaterial::load(&paths.ca, &paths.cert, &paths.key)?;
        material.identity()?;
        let cert_pem = fs::read(&paths.cert)?;
        let key_pem = fs::read(&paths.key)?;
        let mut bundle = cert_pem.clone();
        bundle.extend_from_slice(&key_pem);
        write_seed("cert", &format!("{name}-pem-with-key"), &bundle)?;
        let der = first_certificate_der(&cert_pem)?;
        floe_raft::tls::identity_from_cert(&der.as_slice().into())?;
        write_seed("cert", &format!("{name}-der"), &der)?;
    }
    let ca_pem = fs::read(ca_dir.join(floe_raft::certs::CA_CERT_FILE))?;
    write_seed("cert", "ca-pem", &ca_pem)?;
    write_seed("cert", "ca-der", &first_certificate_der(&ca_pem)?)
}

fn first_certificate_der(pem: &[u8]) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(pem)?;
    let body: String = text
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    decode_base64(&body).context("certificate PEM body")
}

fn decode_base64(text: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
}
