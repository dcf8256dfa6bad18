//! `floe access`: grant, revoke and list roles; `whoami`.

use clap::Subcommand;
use floe_api::client::Repeat;

use super::{call, connect, print_json, status_error, table, ClientArgs};
use crate::api;

#[derive(Subcommand, Debug)]
pub enum AccessCommand {
    /// Grant a role to a principal, in a namespace or cluster-wide (admin).
    Grant {
        #[command(flatten)]
        client: ClientArgs,
        /// A client certificate's name, or NAMESPACE/NAME for a namespaced one.
        #[arg(long)]
        principal: String,
        /// viewer, submitter, operator, worker or admin.
        #[arg(long)]
        role: String,
        /// The namespace it applies in; omitted: cluster-wide.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Take a grant back (admin).
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        principal: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Every grant, or one principal's (admin).
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "")]
        principal: String,
    },
    /// The principal this client's certificate names, and its roles.
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn grant_row(grant: &api::GrantInfo) -> Vec<String> {
    let namespace = if grant.namespace.is_empty() {
        "(cluster)".to_string()
    } else {
        grant.namespace.clone()
    };
    vec![
        grant.principal.clone(),
        grant.role.clone(),
        namespace,
        grant.granted_by.clone(),
    ]
}

fn grant_json(grant: &api::GrantInfo) -> serde_json::Value {
    serde_json::json!({
        "principal": grant.principal,
        "role": grant.role,
        "namespace": (!grant.namespace.is_empty()).then_some(&grant.namespace),
        "granted_at_ms": grant.granted_at_ms,
        "granted_by": grant.granted_by,
    })
}

const GRANT_HEADER: [&str; 4] = ["PRINCIPAL", "ROLE", "NAMESPACE", "GRANTED BY"];

pub async fn access(command: AccessCommand) -> anyhow::Result<()> {
    match command {
        AccessCommand::Grant {
            client,
            principal,
            role,
            namespace,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::GrantRequest {
                principal: principal.clone(),
                role: role.clone(),
                namespace: namespace.clone().unwrap_or_default(),
            };
            call!(conn, Write, access.grant(request));
            let scope = namespace.map_or("cluster-wide".to_string(), |ns| format!("in {ns}"));
            eprintln!("{principal}: {role} {scope}");
        }
        AccessCommand::Revoke {
            client,
            principal,
            role,
            namespace,
        } => {
            let mut conn = connect(&client).await?;
            let request = api::RevokeRequest {
                principal: principal.clone(),
                role: role.clone(),
                namespace: namespace.clone().unwrap_or_default(),
            };
            let reply = call!(conn, Write, access.revoke(request));
            let scope = namespace.map_or("cluster-wide".to_string(), |ns| format!("in {ns}"));
            if reply.existed {
                eprintln!("{principal}: {role} {scope} revoked");
            } else {
                eprintln!("{principal} held no {role} grant {scope}");
            }
        }
        AccessCommand::List { client, principal } => {
            let mut conn = connect(&client).await?;
            let reply = call!(
                conn,
                Read,
                access.list(api::ListGrantsRequest { principal })
            );
            if client.json {
                print_json(serde_json::Value::Array(
                    reply.grants.iter().map(grant_json).collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = reply.grants.iter().map(grant_row).collect();
                print!("{}", table(&GRANT_HEADER, &rows));
            }
        }
        AccessCommand::Whoami { client } => {
            let mut conn = connect(&client).await?;
            let reply = call!(conn, Read, access.who_am_i(api::WhoAmIRequest {}));
            if client.json {
                print_json(serde_json::json!({
                    "principal": reply.principal,
                    "namespace": (!reply.namespace.is_empty()).then_some(&reply.namespace),
                    "bootstrap_admin": reply.bootstrap_admin,
                    "grants": reply.grants.iter().map(grant_json).collect::<Vec<_>>(),
                }));
            } else {
                println!("principal: {}", reply.principal);
                if !reply.namespace.is_empty() {
                    println!("confined to namespace: {}", reply.namespace);
                }
                if reply.bootstrap_admin {
                    println!("admin by the nodes' auth.admins setting");
                }
                let rows: Vec<Vec<String>> = reply.grants.iter().map(grant_row).collect();
                print!("{}", table(&GRANT_HEADER, &rows));
            }
        }
    }
    Ok(())
}
