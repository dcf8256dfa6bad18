//! The role table of docs/operations.md ("Security"), walked on a real
//! three-node cluster: one principal per role, one without grants, one
//! granted only in another namespace, one confined to another namespace and
//! a node certificate each call every method, and every cell must come out
//! as the table says — allowed (any answer but a refusal of access) or
//! refused (`PERMISSION_DENIED`, or `UNAUTHENTICATED` for the node).

use std::collections::BTreeMap;
use std::time::Duration;

use floe_api::client::{ClientOptions, FloeClient};
use floe_api::proto as api;
use floe_harness::{ClusterOptions, TestCluster};
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_floe");

/// Method path → the role the documentation says it needs (`None`: any identity).
fn documented_rules() -> BTreeMap<String, Option<String>> {
    let doc = include_str!("../../docs/operations.md");
    let start = doc
        .find("| action (gRPC method) | role needed |")
        .expect("the role table in docs/operations.md");
    let mut rules = BTreeMap::new();
    for line in doc[start..].lines().skip(2) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            break;
        }
        let (service, method) = cells[1].split_once('.').expect("Service.Method");
        let role = (cells[2] != "any identity").then(|| cells[2].to_string());
        rules.insert(format!("/floe.v1.{service}/{method}"), role);
    }
    rules
}

/// Whether holding `held` (none: no grant that applies) allows `needed`.
fn allows(held: Option<&str>, needed: Option<&str>) -> bool {
    let Some(needed) = needed else { return true };
    let rank = |role: &str| match role {
        "viewer" => 1,
        "submitter" => 2,
        "operator" => 3,
        _ => 0,
    };
    match held {
        None => false,
        Some("admin") => true,
        Some("worker") => needed == "worker",
        Some(held) => rank(needed) > 0 && rank(held) >= rank(needed),
    }
}

/// Calls `method` with a small request that changes nothing of the
/// cluster's (or only what it puts itself); the status code, or OK.
async fn call(client: &mut FloeClient, method: &str) -> Code {
    fn code<T>(result: Result<T, tonic::Status>) -> Code {
        result.err().map_or(Code::Ok, |status| status.code())
    }
    let none = "access-probe-none".to_string();
    match method {
        "/floe.v1.Cluster/Init" => code(client.cluster.init(api::InitRequest {}).await),
        "/floe.v1.Cluster/Join" => code(
            client
                .cluster
                .join(api::JoinRequest {
                    node_id: 99,
                    raft_addr: String::new(),
                    learner_only: true,
                })
                .await,
        ),
        "/floe.v1.Cluster/Remove" => code(
            client
                .cluster
                .remove(api::RemoveRequest { node_id: 99 })
                .await,
        ),
        "/floe.v1.Cluster/Status" => code(client.cluster.status(api::StatusRequest {}).await),
        "/floe.v1.Cluster/StateDigest" => code(
            client
                .cluster
                .state_digest(api::StateDigestRequest {})
                .await,
        ),
        "/floe.v1.Access/Grant" => code(
            client
                .access
                .grant(api::GrantRequest {
                    principal: "probe".into(),
                    role: "viewer".into(),
                    namespace: "default".into(),
                })
                .await,
        ),
        "/floe.v1.Access/Revoke" => code(
            client
                .access
                .revoke(api::RevokeRequest {
                    principal: "probe".into(),
                    role: "viewer".into(),
                    namespace: "default".into(),
                })
                .await,
        ),
        "/floe.v1.Access/List" => code(client.access.list(api::ListGrantsRequest::default()).await),
        "/floe.v1.Access/WhoAmI" => code(client.access.who_am_i(api::WhoAmIRequest {}).await),
        "/floe.v1.Access/CreateToken" => code(
            client
                .access
                .create_token(api::CreateTokenRequest {
                    principal: "probe".into(),
                    ttl_ms: 0,
                })
                .await,
        ),
        "/floe.v1.Access/ListTokens" => {
            code(client.access.list_tokens(api::ListTokensRequest {}).await)
        }
        "/floe.v1.Access/RevokeToken" => code(
            client
                .access
                .revoke_token(api::RevokeTokenRequest {
                    id: "0000000000000000".into(),
                })
                .await,
        ),
        "/floe.v1.Flows/Put" => code(
            client
                .flows
                .put(api::PutFlowRequest {
                    definition: b"{}".to_vec(),
                })
                .await,
        ),
        "/floe.v1.Flows/Get" => code(
            client
                .flows
                .get(api::GetFlowRequest {
                    name: none.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Flows/List" => code(client.flows.list(api::ListFlowsRequest::default()).await),
        "/floe.v1.Flows/Versions" => code(
            client
                .flows
                .versions(api::FlowVersionsRequest {
                    name: none.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Runs/Start" => code(
            client
                .runs
                .start(api::StartRunRequest {
                    flow: none.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Runs/Get" => code(
            client
                .runs
                .get(api::GetRunRequest {
                    run_id: none.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Runs/List" => code(client.runs.list(api::ListRunsRequest::default()).await),
        "/floe.v1.Runs/Cancel" => code(
            client
                .runs
                .cancel(api::CancelRunRequest {
                    run_id: none.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Runs/Retry" => code(
            client
                .runs
                .retry(api::RetryRunRequest {
                    run_id: none.clone(),
                })
                .await,
        ),
        "/floe.v1.Runs/Signal" => code(
            client
                .runs
                .signal(api::SignalRunRequest {
                    run_id: none.clone(),
                    signal: "go".into(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Runs/Watch" => code(
            client
                .runs
                .watch(api::WatchRunRequest {
                    run_id: none.clone(),
                })
                .await,
        ),
        "/floe.v1.Runs/SetLimit" => code(
            client
                .runs
                .set_limit(api::SetLimitRequest {
                    scope: "no-such-scope".into(),
                    name: "x".into(),
                    limit: Some(1),
                })
                .await,
        ),
        "/floe.v1.Runs/ListLimits" => code(
            client
                .runs
                .list_limits(api::ListLimitsRequest::default())
                .await,
        ),
        "/floe.v1.Workers/Attach" => {
            // An empty first message: refused by the worker hub (not a hello)
            // once past the access check.
            let messages = tokio_stream::iter(vec![api::WorkerMessage { kind: None }]);
            match client.workers.attach(messages).await {
                Ok(mut stream) => match stream.get_mut().message().await {
                    Ok(_) => Code::Ok,
                    Err(status) => status.code(),
                },
                Err(status) => status.code(),
            }
        }
        "/floe.v1.Blobs/Get" => code(
            client
                .blobs
                .get(api::GetBlobRequest {
                    address: "sha256:zz".into(),
                })
                .await,
        ),
        "/floe.v1.Models/Put" => code(client.models.put(api::PutModelRequest::default()).await),
        "/floe.v1.Models/List" => code(client.models.list(api::ListModelsRequest::default()).await),
        "/floe.v1.Models/Deploy" => code(
            client
                .models
                .deploy(api::DeployModelRequest {
                    name: none.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Models/Undeploy" => code(
            client
                .models
                .undeploy(api::UndeployModelRequest {
                    name: none.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Models/Status" => code(
            client
                .models
                .status(api::ModelStatusRequest { name: none.clone() })
                .await,
        ),
        "/floe.v1.Models/Infer" => code(client.models.infer(api::InferRequest::default()).await),
        "/floe.v1.Kv/Put" => code(
            client
                .kv
                .put(api::PutRequest {
                    key: "access-probe".into(),
                    value: b"1".to_vec(),
                })
                .await,
        ),
        "/floe.v1.Kv/Get" => code(
            client
                .kv
                .get(api::GetRequest {
                    key: "access-probe".into(),
                    ..Default::default()
                })
                .await,
        ),
        "/floe.v1.Kv/Cas" => code(
            client
                .kv
                .cas(api::CasRequest {
                    key: "access-probe".into(),
                    expected: Some(b"no".to_vec()),
                    new_value: Some(b"2".to_vec()),
                })
                .await,
        ),
        "/floe.v1.Kv/Delete" => code(
            client
                .kv
                .delete(api::DeleteRequest {
                    key: "access-probe-other".into(),
                })
                .await,
        ),
        "/floe.v1.Kv/List" => code(client.kv.list(api::ListRequest::default()).await),
        other => panic!("the test has no call for {other}; add one"),
    }
}

struct Probe {
    who: &'static str,
    options: ClientOptions,
    /// The role that applies to calls in `default` (none: no grant does).
    held: Option<&'static str>,
    /// Refused as no client at all (a node's certificate).
    node: bool,
}

async fn grant(admin: &mut FloeClient, principal: &str, role: &str, namespace: &str) {
    admin
        .access
        .grant(api::GrantRequest {
            principal: principal.into(),
            role: role.into(),
            namespace: namespace.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("granting {role} to {principal}: {status}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_of_the_role_table_holds_on_a_real_cluster() {
    let cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let mut admin = cluster.client(1).await.unwrap();
    grant(&mut admin, "viewer", "viewer", "default").await;
    grant(&mut admin, "submitter", "submitter", "default").await;
    grant(&mut admin, "operator", "operator", "").await;
    grant(&mut admin, "worker", "worker", "default").await;
    grant(&mut admin, "admin2", "admin", "").await;
    grant(&mut admin, "lab-operator", "operator", "lab").await;
    grant(&mut admin, "lab/alice", "operator", "lab").await;

    // Each principal calls a different node; grants are read where a call lands.
    let node = |i: usize| [(i % 3) as u64 + 1];
    let probes = vec![
        ("harness (auth.admins)", None, Some("admin")),
        ("viewer", None, Some("viewer")),
        ("submitter", None, Some("submitter")),
        ("operator", None, Some("operator")),
        ("worker", None, Some("worker")),
        ("admin2", None, Some("admin")),
        ("nobody", None, None),
        ("lab-operator", None, None),
        ("alice", Some("lab"), None),
    ];
    let mut all = Vec::new();
    for (i, (who, namespace, held)) in probes.into_iter().enumerate() {
        let options = if who.starts_with("harness") {
            cluster.client_options(&node(i)).unwrap()
        } else {
            cluster.client_options_as(who, namespace, &node(i)).unwrap()
        };
        all.push(Probe {
            who,
            options,
            held,
            node: false,
        });
    }
    all.push(Probe {
        who: "node 2's certificate",
        options: cluster.client_options_as_node(2, &[3]).unwrap(),
        held: None,
        node: true,
    });
    // Every node has applied the grants before the walk.
    for id in 1..=3 {
        let mut client = cluster.client(id).await.unwrap();
        let listed = client
            .access
            .list(api::ListGrantsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.grants.len(), 7, "node {id}: {:?}", listed.grants);
    }

    let rules = documented_rules();
    assert!(rules.len() > 30, "{rules:?}");
    let mut wrong = Vec::new();
    for probe in &all {
        let mut client = FloeClient::connect(&probe.options).await.unwrap();
        for (method, needed) in &rules {
            let code = call(&mut client, method).await;
            let refused = matches!(code, Code::PermissionDenied | Code::Unauthenticated);
            let expected_allowed = !probe.node && allows(probe.held, needed.as_deref());
            if refused == expected_allowed {
                wrong.push(format!(
                    "{} {method}: {code:?}, expected {}",
                    probe.who,
                    if expected_allowed {
                        "allowed"
                    } else {
                        "refused"
                    }
                ));
            }
            if probe.node && code != Code::Unauthenticated {
                wrong.push(format!(
                    "{} {method}: {code:?}, expected Unauthenticated",
                    probe.who
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cells that do not hold:\n{}",
        wrong.join("\n")
    );

    // A refusal says who, what and where.
    let viewer = cluster.client_options_as("viewer", None, &[2]).unwrap();
    let mut viewer = FloeClient::connect(&viewer).await.unwrap();
    let refusal = viewer
        .runs
        .cancel(api::CancelRunRequest {
            run_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), Code::PermissionDenied);
    for part in ["viewer", "Runs.Cancel", "namespace default", "operator"] {
        assert!(refusal.message().contains(part), "{}", refusal.message());
    }

    // Revoking takes effect on the next call, on every node.
    let existed = admin
        .access
        .revoke(api::RevokeRequest {
            principal: "viewer".into(),
            role: "viewer".into(),
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .existed;
    assert!(existed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let code = call(&mut viewer, "/floe.v1.Runs/List").await;
        if code == Code::PermissionDenied {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a revoked viewer still lists runs: {code:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // whoami names the principal and its grants, and the confined namespace.
    let alice = cluster
        .client_options_as("alice", Some("lab"), &[1])
        .unwrap();
    let mut alice = FloeClient::connect(&alice).await.unwrap();
    let me = alice
        .access
        .who_am_i(api::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.principal, "lab/alice");
    assert_eq!(me.namespace, "lab");
    assert_eq!(me.grants.len(), 1);
    assert!(!me.bootstrap_admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_survive_a_restart_of_every_node() {
    let mut cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let mut admin = cluster.client(1).await.unwrap();
    grant(&mut admin, "ops", "operator", "default").await;
    drop(admin);
    for id in 1..=3 {
        cluster.kill(id).unwrap();
    }
    for id in 1..=3 {
        cluster.restart(id).unwrap();
    }
    cluster
        .wait_ready(&[1, 2, 3], Duration::from_secs(30))
        .await
        .unwrap();
    let ops = cluster.client_options_as("ops", None, &[3]).unwrap();
    let mut ops = FloeClient::connect(&ops).await.unwrap();
    let cancel = call(&mut ops, "/floe.v1.Runs/Cancel").await;
    assert!(
        !matches!(cancel, Code::PermissionDenied | Code::Unauthenticated),
        "the operator grant is gone after the restart: {cancel:?}"
    );
    assert_eq!(
        call(&mut ops, "/floe.v1.Kv/Put").await,
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_stand_for_their_principal_until_revoked_or_expired() {
    let cluster = TestCluster::start(ClusterOptions::new(BINARY, 3))
        .await
        .unwrap();
    let mut admin = cluster.client(1).await.unwrap();
    grant(&mut admin, "scripted", "viewer", "default").await;
    let created = admin
        .access
        .create_token(api::CreateTokenRequest {
            principal: "scripted".into(),
            ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    let token = created.token.clone();
    let id = created.info.unwrap().id;
    assert!(token.starts_with(&format!("floe_{id}_")), "{token}");

    // A token alone, no client certificate, on another node.
    let token_only = |token: Option<String>, node: u64| {
        let mut options = cluster.client_options(&[node]).unwrap();
        options.cert = Default::default();
        options.key = Default::default();
        options.token = token;
        options
    };
    let mut scripted = FloeClient::connect(&token_only(Some(token.clone()), 2))
        .await
        .unwrap();
    let me = scripted
        .access
        .who_am_i(api::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.principal, "scripted");
    assert_eq!(call(&mut scripted, "/floe.v1.Runs/List").await, Code::Ok);
    assert_eq!(
        call(&mut scripted, "/floe.v1.Runs/Start").await,
        Code::PermissionDenied
    );

    // Listed without its secret.
    let listed = admin
        .access
        .list_tokens(api::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert!(!format!("{listed:?}").contains(&token[token.len() - 64..]));

    // A wrong secret, and no identity at all, are unauthenticated.
    let forged = format!("floe_{id}_{}", "0".repeat(64));
    let mut forger = FloeClient::connect(&token_only(Some(forged), 3))
        .await
        .unwrap();
    let refused = forger
        .runs
        .list(api::ListRunsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("wrong secret"),
        "{}",
        refused.message()
    );
    let mut anonymous = FloeClient::connect(&token_only(None, 3)).await.unwrap();
    assert_eq!(
        call(&mut anonymous, "/floe.v1.Runs/List").await,
        Code::Unauthenticated
    );

    // Revoked: refused on the next calls, on every node.
    let existed = admin
        .access
        .revoke_token(api::RevokeTokenRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .existed;
    assert!(existed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let code = call(&mut scripted, "/floe.v1.Runs/List").await;
        if code == Code::Unauthenticated {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "revoked token still works: {code:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Expired: refused once its time is up.
    let short = admin
        .access
        .create_token(api::CreateTokenRequest {
            principal: "scripted".into(),
            ttl_ms: 1_500,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut short_lived = FloeClient::connect(&token_only(Some(short), 1))
        .await
        .unwrap();
    assert_eq!(call(&mut short_lived, "/floe.v1.Runs/List").await, Code::Ok);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let expired = short_lived
        .runs
        .list(api::ListRunsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );
}
