//! Who may do what: roles granted to principals, in one namespace or
//! cluster-wide, as replicated records. The node checks every call against
//! them (floe-node's `access.rs`); apply only stores and removes grants.
//!
//! A principal is a client certificate's name (`client-<name>.floe`), or
//! `<namespace>/<name>` for a certificate confined to one namespace.

use serde::{Deserialize, Serialize};

use floe_storage::state_store::{StateTx, TxError};

use crate::answers::{CommandResponse, Rejection};
use crate::codec;
use crate::keys;

/// What a grant lets its principal do. Viewer, submitter, operator and
/// admin each include the ones before; worker stands alone (admin includes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Read flows, runs, models, limits, keys and the cluster's status.
    Viewer,
    /// Start and signal runs, ask models directly; and read.
    Submitter,
    /// Cancel and retry runs, set limits, put flows, register, deploy and
    /// undeploy models; and submit.
    Operator,
    /// Attach as a worker and answer the tasks pushed to it.
    Worker,
    /// Cluster membership, principals and grants, key-value settings; everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Submitter,
        Role::Operator,
        Role::Worker,
        Role::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Operator => "operator",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == text)
    }

    /// Whether holding this role allows what `needed` allows.
    pub fn includes(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Admin, _) => true,
            (Role::Worker, needed) => needed == Role::Worker,
            (_, Role::Worker | Role::Admin) => false,
            (held, needed) => held >= needed,
        }
    }
}

/// One role granted to one principal, in a namespace or (none) cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub principal: String,
    pub role: Role,
    pub namespace: Option<String>,
    /// The proposer's clock when it was granted.
    pub granted_at_ms: u64,
    /// The principal that granted it.
    pub granted_by: String,
}

/// An API token: who it stands for, until when, and a slow hash of its
/// secret (the secret itself is shown once, when it is made, and stored
/// nowhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public, random: names the token in lists, revocation and audit.
    pub id: String,
    pub principal: String,
    /// The secret's argon2id hash (PHC string).
    pub hash: String,
    pub created_at_ms: u64,
    /// Wall-clock ms after which it is refused.
    pub expires_at_ms: u64,
    pub created_by: String,
}

/// What is wrong with a token id, if anything: 16 lowercase hex digits.
pub fn token_id_problem(id: &str) -> Option<String> {
    let valid = id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (!valid).then(|| {
        format!(
            "token id {} is not 16 lowercase hex digits",
            floe_engine::names::quote_bounded(id)
        )
    })
}

/// Longest argon2 hash string a token record keeps.
pub const MAX_TOKEN_HASH_BYTES: usize = 256;

/// Stores a new token; an id already taken is refused.
pub(crate) fn create_token(
    tx: &dyn StateTx,
    token: &TokenRecord,
) -> Result<CommandResponse, TxError> {
    if let Some(problem) =
        token_id_problem(&token.id).or_else(|| principal_problem(&token.principal))
    {
        return refused(problem);
    }
    if token.hash.is_empty() || token.hash.len() > MAX_TOKEN_HASH_BYTES {
        return refused(format!(
            "token {}: its hash must be 1 to {MAX_TOKEN_HASH_BYTES} bytes",
            token.id
        ));
    }
    let key = keys::token(&token.id);
    if tx.get(&key)?.is_some() {
        return refused(format!("token id {} is taken", token.id));
    }
    let bytes = codec::encode(|| format!("{} token {}", tx.tree_name(), token.id), token)
        .map_err(TxError::abort)?;
    tx.insert(&key, bytes.into())?;
    Ok(CommandResponse::Applied)
}

/// Removes a token at once; whether it was there.
pub(crate) fn revoke_token(tx: &dyn StateTx, id: &str) -> Result<CommandResponse, TxError> {
    if let Some(problem) = token_id_problem(id) {
        return refused(problem);
    }
    let existed = tx.remove(&keys::token(id))?;
    Ok(CommandResponse::Delete { existed })
}

/// Longest principal and namespace name.
pub const MAX_NAME_BYTES: usize = 63;

/// What is wrong with a namespace name, if anything: letters, digits and
/// inner '-', at most 63 bytes (the form a certificate can carry).
pub fn namespace_problem(namespace: &str) -> Option<String> {
    name_problem("namespace", namespace)
}

/// What is wrong with a principal, if anything: a client name, or
/// `<namespace>/<name>`.
pub fn principal_problem(principal: &str) -> Option<String> {
    match principal.split_once('/') {
        Some((namespace, name)) => {
            namespace_problem(namespace).or_else(|| name_problem("principal name", name))
        }
        None => name_problem("principal", principal),
    }
}

fn name_problem(what: &str, name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    (!valid).then(|| {
        format!(
            "{what} {} must be 1 to {MAX_NAME_BYTES} letters, digits and inner '-'",
            floe_engine::names::quote_bounded(name)
        )
    })
}

fn refused(reason: String) -> Result<CommandResponse, TxError> {
    Ok(CommandResponse::Rejected(Rejection::Invalid(reason)))
}

/// Stores `grant`, replacing the same principal, role and namespace.
pub(crate) fn grant(tx: &dyn StateTx, grant: &Grant) -> Result<CommandResponse, TxError> {
    if let Some(problem) = principal_problem(&grant.principal) {
        return refused(problem);
    }
    if let Some(problem) = grant.namespace.as_deref().and_then(namespace_problem) {
        return refused(problem);
    }
    let key = keys::grant(
        &grant.principal,
        grant.namespace.as_deref(),
        grant.role.name(),
    );
    let bytes = codec::encode(
        || format!("{} grant of {}", tx.tree_name(), grant.principal),
        grant,
    )
    .map_err(TxError::abort)?;
    tx.insert(&key, bytes.into())?;
    Ok(CommandResponse::Applied)
}

/// Removes one grant; whether it was there.
pub(crate) fn revoke(
    tx: &dyn StateTx,
    principal: &str,
    role: Role,
    namespace: Option<&str>,
) -> Result<CommandResponse, TxError> {
    if let Some(problem) = principal_problem(principal) {
        return refused(problem);
    }
    if let Some(problem) = namespace.and_then(namespace_problem) {
        return refused(problem);
    }
    let existed = tx.remove(&keys::grant(principal, namespace, role.name()))?;
    Ok(CommandResponse::Delete { existed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below_and_worker_stands_alone() {
        use Role::*;
        assert!(Operator.includes(Submitter) && Operator.includes(Viewer));
        assert!(Submitter.includes(Viewer) && !Submitter.includes(Operator));
        assert!(!Operator.includes(Worker) && !Worker.includes(Viewer));
        assert!(Worker.includes(Worker));
        for role in Role::ALL {
            assert!(Admin.includes(role));
            assert_eq!(Role::parse(role.name()), Some(role));
            assert!(!role.includes(Admin) || role == Admin);
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(principal_problem("ops-admin"), None);
        assert_eq!(principal_problem("lab/alice"), None);
        for bad in ["", "-a", "a-", "a b", "a/b/c", "/a", "a/", "ä", "a|b"] {
            assert!(principal_problem(bad).is_some(), "{bad:?}");
        }
        assert!(principal_problem(&"a".repeat(64)).is_some());
        assert!(namespace_problem("claims-intake").is_none());
        assert!(namespace_problem("a/b").is_some());
    }
}
