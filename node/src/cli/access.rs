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

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make an API token for a principal; printed once, stored only as a hash (admin).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        principal: String,
        /// How long it is valid: 30d, 12h, 90m or 45s (at most 366d).
        #[arg(long, default_value = "30d")]
        expires: String,
    },
    /// Every token, without secrets (admin).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token at once, on every node (admin).
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The token's id (`floe token list`).
        id: String,
    },
}

/// `30d`, `12h`, `90m` or `45s` in ms.
fn duration_ms(text: &str) -> anyhow::Result<u64> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let scale = match unit {
        "d" => 24 * 3600 * 1000,
        "h" => 3600 * 1000,
        "m" => 60 * 1000,
        "s" => 1000,
        _ => anyhow::bail!("--expires {text:?}: give a number with d, h, m or s, like 30d"),
    };
    let number: u64 = number.parse().map_err(|_| {
        anyhow::anyhow!("--expires {text:?}: give a number with d, h, m or s, like 30d")
    })?;
    Ok(number.saturating_mul(scale))
}

pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            client,
            principal,
            expires,
        } => {
            let ttl_ms = duration_ms(&expires)?;
            let mut conn = connect(&client).await?;
            let request = api::CreateTokenRequest {
                principal: principal.clone(),
                ttl_ms,
            };
            let reply = call!(conn, Write, access.create_token(request));
            let info = reply.info.unwrap_or_default();
            if client.json {
                print_json(serde_json::json!({
                    "token": reply.token,
                    "id": info.id,
                    "principal": info.principal,
                    "expires_at_ms": info.expires_at_ms,
                }));
            } else {
                println!("{}", reply.token);
                eprintln!(
                    "token {} for {principal}, valid {expires}; shown once: present it as FLOE_TOKEN or `authorization: Bearer …`",
                    info.id
                );
            }
        }
        TokenCommand::List { client } => {
            let mut conn = connect(&client).await?;
            let reply = call!(conn, Read, access.list_tokens(api::ListTokensRequest {}));
            if client.json {
                let rows: Vec<_> = reply
                    .tokens
                    .iter()
                    .map(|t| serde_json::json!({"id": t.id, "principal": t.principal, "created_at_ms": t.created_at_ms, "expires_at_ms": t.expires_at_ms, "created_by": t.created_by}))
                    .collect();
                print_json(serde_json::Value::Array(rows));
            } else {
                let rows: Vec<Vec<String>> = reply
                    .tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.principal.clone(),
                            t.expires_at_ms.to_string(),
                            t.created_by.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["ID", "PRINCIPAL", "EXPIRES (MS)", "CREATED BY"], &rows)
                );
            }
        }
        TokenCommand::Revoke { client, id } => {
            let mut conn = connect(&client).await?;
            let reply = call!(
                conn,
                Write,
                access.revoke_token(api::RevokeTokenRequest { id: id.clone() })
            );
            if reply.existed {
                eprintln!("token {id} revoked");
            } else {
                eprintln!("no token {id}");
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_read_as_durations() {
        assert_eq!(duration_ms("30d").unwrap(), 30 * 24 * 3600 * 1000);
        assert_eq!(duration_ms("2s").unwrap(), 2000);
        assert!(duration_ms("30").is_err());
        assert!(duration_ms("d").is_err());
        assert!(duration_ms("").is_err());
        assert!(duration_ms("1w").is_err());
    }
}
