//! The one authorization check. Every gRPC call passes it, in a tower layer
//! in front of every service (`AccessLayer`): the call's method names the
//! role it needs (`RULES`, one table, also in docs/operations.md), the
//! caller's API token (`authorization: Bearer …`) or else its client
//! certificate names the principal, and the grants in the
//! replicated state (floe-state's `access.rs`) or the `auth.admins` setting
//! say whether the principal holds that role in the namespace the call
//! acts in. Deny by default: a method missing from the table is refused.
//!
//! Until resources carry namespaces, every call acts in `default`; a
//! principal confined to another namespace can therefore do nothing yet.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use floe_state::access::{Grant, Role, TokenRecord};
use floe_state::{Command, CommandResponse};
use sha2::{Digest, Sha256};
use tonic::codegen::http;

use crate::call_context::{CallContext, Caller};
use crate::cluster::ClusterHandle;
use crate::error::{unexpected_answer, ApiError};

/// The namespace everything lives in until resources carry one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What a method needs: a role, or only an accepted identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Role(Role),
    /// Any principal (the caller asking about itself).
    Identity,
}

/// Every gRPC method and what it needs.
pub const RULES: &[(&str, Need)] = &[
    ("/floe.v1.Cluster/Init", Need::Role(Role::Admin)),
    ("/floe.v1.Cluster/Join", Need::Role(Role::Admin)),
    ("/floe.v1.Cluster/Remove", Need::Role(Role::Admin)),
    ("/floe.v1.Cluster/Status", Need::Role(Role::Viewer)),
    ("/floe.v1.Cluster/StateDigest", Need::Role(Role::Admin)),
    ("/floe.v1.Access/Grant", Need::Role(Role::Admin)),
    ("/floe.v1.Access/Revoke", Need::Role(Role::Admin)),
    ("/floe.v1.Access/List", Need::Role(Role::Admin)),
    ("/floe.v1.Access/WhoAmI", Need::Identity),
    ("/floe.v1.Access/CreateToken", Need::Role(Role::Admin)),
    ("/floe.v1.Access/ListTokens", Need::Role(Role::Admin)),
    ("/floe.v1.Access/RevokeToken", Need::Role(Role::Admin)),
    ("/floe.v1.Flows/Put", Need::Role(Role::Operator)),
    ("/floe.v1.Flows/Get", Need::Role(Role::Viewer)),
    ("/floe.v1.Flows/List", Need::Role(Role::Viewer)),
    ("/floe.v1.Flows/Versions", Need::Role(Role::Viewer)),
    ("/floe.v1.Runs/Start", Need::Role(Role::Submitter)),
    ("/floe.v1.Runs/Get", Need::Role(Role::Viewer)),
    ("/floe.v1.Runs/List", Need::Role(Role::Viewer)),
    ("/floe.v1.Runs/Cancel", Need::Role(Role::Operator)),
    ("/floe.v1.Runs/Retry", Need::Role(Role::Operator)),
    ("/floe.v1.Runs/Signal", Need::Role(Role::Submitter)),
    ("/floe.v1.Runs/Watch", Need::Role(Role::Viewer)),
    ("/floe.v1.Runs/SetLimit", Need::Role(Role::Operator)),
    ("/floe.v1.Runs/ListLimits", Need::Role(Role::Viewer)),
    ("/floe.v1.Workers/Attach", Need::Role(Role::Worker)),
    ("/floe.v1.Blobs/Get", Need::Role(Role::Viewer)),
    ("/floe.v1.Models/Put", Need::Role(Role::Operator)),
    ("/floe.v1.Models/List", Need::Role(Role::Viewer)),
    ("/floe.v1.Models/Deploy", Need::Role(Role::Operator)),
    ("/floe.v1.Models/Undeploy", Need::Role(Role::Operator)),
    ("/floe.v1.Models/Status", Need::Role(Role::Viewer)),
    ("/floe.v1.Models/Infer", Need::Role(Role::Submitter)),
    ("/floe.v1.Kv/Put", Need::Role(Role::Admin)),
    ("/floe.v1.Kv/Get", Need::Role(Role::Viewer)),
    ("/floe.v1.Kv/Cas", Need::Role(Role::Admin)),
    ("/floe.v1.Kv/Delete", Need::Role(Role::Admin)),
    ("/floe.v1.Kv/List", Need::Role(Role::Viewer)),
];

/// What `method` needs; none for a method the table does not know.
pub fn rule(method: &str) -> Option<Need> {
    RULES
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, need)| *need)
}

/// Who calls, as access control knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The name grants are keyed by: `name`, or `namespace/name` for a
    /// confined identity.
    pub name: String,
    /// The one namespace a confined identity may act in.
    pub confined_to: Option<String>,
    /// The API token it presented, by id (none: its certificate).
    pub token: Option<String>,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Principal {
    /// The principal a call's certificate names. Node certificates are
    /// node identities, not API clients.
    pub fn of(ctx: &CallContext) -> Result<Principal, ApiError> {
        match ctx.caller() {
            Caller::Client(name) => Ok(Principal {
                name,
                confined_to: None,
                token: None,
            }),
            Caller::ScopedClient { namespace, name } => Ok(Principal {
                name: format!("{namespace}/{name}"),
                confined_to: Some(namespace),
                token: None,
            }),
            Caller::Node(id) => Err(ApiError::Unauthenticated(format!(
                "the certificate of node {id} is a node identity, not an API client; use a client certificate (floe cert create-client)"
            ))),
            Caller::Unidentified(why) => Err(ApiError::Unauthenticated(format!(
                "no floe client identity: {why}"
            ))),
            // Work a node starts itself never passes the API.
            Caller::Local(part) => Err(ApiError::Unauthenticated(format!(
                "this node's {part} is not an API client"
            ))),
        }
    }
}

impl Principal {
    /// The principal an API token stands for.
    fn of_token(token: &TokenRecord) -> Principal {
        Principal {
            name: token.principal.clone(),
            confined_to: token
                .principal
                .split_once('/')
                .map(|(namespace, _)| namespace.to_string()),
            token: Some(token.id.clone()),
        }
    }
}

/// The access-control component: the check, the grants and tokens
/// (replicated through the cluster component) and the bootstrap admins;
/// cheap to clone.
#[derive(Clone)]
pub struct AccessControl {
    cluster: ClusterHandle,
    admins: Arc<BTreeSet<String>>,
    /// Tokens verified here: id → (sha256 of the secret, the stored hash it
    /// matched). A later call with the same secret skips the slow hash; a
    /// token revoked or replaced no longer matches its stored record.
    verified: Arc<Mutex<HashMap<String, Verified>>>,
}

/// A token verified on this node: the sha256 of the secret presented and
/// the stored hash it matched.
type Verified = ([u8; 32], String);

/// What an API token looks like: `floe_<16 hex id>_<64 hex secret>`.
const TOKEN_PREFIX: &str = "floe_";
/// Most tokens verified tokens remembered (one per live token, at most).
const MAX_VERIFIED_TOKENS: usize = 10_000;
/// Most tokens one list answers.
pub const MAX_LISTED_TOKENS: usize = 10_000;
/// Longest token lifetime: a year.
pub const MAX_TOKEN_TTL_MS: u64 = 366 * 24 * 3600 * 1000;

/// A token's id and secret, if `text` has a token's shape.
fn split_token(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// Most grants one list answers.
pub const MAX_LISTED_GRANTS: usize = 10_000;

impl AccessControl {
    pub fn new(cluster: ClusterHandle, admins: &[String]) -> AccessControl {
        AccessControl {
            cluster,
            admins: Arc::new(admins.iter().cloned().collect()),
            verified: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Who calls: the principal of the API token the call presents, or
    /// else of its client certificate.
    pub async fn principal(&self, ctx: &CallContext) -> Result<Principal, ApiError> {
        match ctx.bearer() {
            Some(token) => self.token_principal(token).await,
            None => Principal::of(ctx),
        }
    }

    async fn token_principal(&self, text: &str) -> Result<Principal, ApiError> {
        let refused = |why: &str| ApiError::Unauthenticated(format!("API token refused: {why}"));
        let (id, secret) =
            split_token(text).ok_or_else(|| refused("not a floe token (floe_<id>_<secret>)"))?;
        let token = self
            .cluster
            .reader()
            .token(id)
            .map_err(|error| ApiError::Internal(format!("reading token {id}: {error}")))?
            .ok_or_else(|| refused(&format!("token {id} does not exist or was revoked")))?;
        if self.cluster.clock().now_ms() > token.expires_at_ms {
            return Err(refused(&format!("token {id} expired")));
        }
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let known = self
            .verified
            .lock()
            .ok()
            .and_then(|verified| verified.get(id).cloned());
        if known.is_some_and(|(digest, hash)| digest == presented && hash == token.hash) {
            return Ok(Principal::of_token(&token));
        }
        let (hash, secret) = (token.hash.clone(), secret.to_string());
        let matches = tokio::task::spawn_blocking(move || verify_secret(&hash, &secret))
            .await
            .map_err(|error| ApiError::Internal(format!("token check: {error}")))?;
        if !matches {
            return Err(refused(&format!("wrong secret for token {id}")));
        }
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= MAX_VERIFIED_TOKENS {
                verified.clear();
            }
            verified.insert(id.to_string(), (presented, token.hash.clone()));
        }
        Ok(Principal::of_token(&token))
    }

    /// Makes an API token for `principal`, valid for `ttl_ms`: its text,
    /// shown once (only its hash is stored), and its id.
    pub async fn create_token(
        &self,
        ctx: &CallContext,
        principal: &str,
        ttl_ms: u64,
    ) -> Result<(String, TokenRecord), ApiError> {
        let by = self.principal(ctx).await?;
        check_names(principal, None)?;
        if ttl_ms == 0 || ttl_ms > MAX_TOKEN_TTL_MS {
            return Err(ApiError::InvalidArgument(format!(
                "a token lives 1 ms to {} days; {ttl_ms} ms is outside that",
                MAX_TOKEN_TTL_MS / (24 * 3600 * 1000)
            )));
        }
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let hashed = secret.clone();
        let hash = tokio::task::spawn_blocking(move || hash_secret(&hashed))
            .await
            .map_err(|error| ApiError::Internal(format!("token hash: {error}")))??;
        let now = self.cluster.clock().now_ms();
        let token = TokenRecord {
            id: id.clone(),
            principal: principal.to_string(),
            hash,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            created_by: by.name,
        };
        let command = Command::CreateToken {
            token: token.clone(),
        };
        match self.cluster.write(command).await? {
            CommandResponse::Applied => Ok((format!("{TOKEN_PREFIX}{id}_{secret}"), token)),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Every token (up to [`MAX_LISTED_TOKENS`]), without secrets.
    pub async fn list_tokens(&self, _ctx: &CallContext) -> Result<Vec<TokenRecord>, ApiError> {
        self.cluster.read_barrier().await?;
        self.cluster
            .reader()
            .tokens(MAX_LISTED_TOKENS)
            .map_err(|error| ApiError::Internal(format!("reading tokens: {error}")))
    }

    /// Revokes token `id` cluster-wide; whether it existed.
    pub async fn revoke_token(&self, _ctx: &CallContext, id: &str) -> Result<bool, ApiError> {
        if let Some(problem) = floe_state::access::token_id_problem(id) {
            return Err(ApiError::InvalidArgument(problem));
        }
        let command = Command::RevokeToken { id: id.to_string() };
        match self.cluster.write(command).await? {
            CommandResponse::Delete { existed } => Ok(existed),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Grants `role` to `principal` in `namespace` (none: cluster-wide).
    pub async fn grant(
        &self,
        ctx: &CallContext,
        principal: &str,
        role: Role,
        namespace: Option<&str>,
    ) -> Result<(), ApiError> {
        let by = self.principal(ctx).await?;
        check_names(principal, namespace)?;
        let grant = Grant {
            principal: principal.to_string(),
            role,
            namespace: namespace.map(str::to_string),
            granted_at_ms: self.cluster.clock().now_ms(),
            granted_by: by.name,
        };
        match self.cluster.write(Command::GrantRole { grant }).await? {
            CommandResponse::Applied => Ok(()),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Takes one grant back; whether it was there.
    pub async fn revoke(
        &self,
        _ctx: &CallContext,
        principal: &str,
        role: Role,
        namespace: Option<&str>,
    ) -> Result<bool, ApiError> {
        check_names(principal, namespace)?;
        let command = Command::RevokeRole {
            principal: principal.to_string(),
            role,
            namespace: namespace.map(str::to_string),
        };
        match self.cluster.write(command).await? {
            CommandResponse::Delete { existed } => Ok(existed),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Every grant (up to [`MAX_LISTED_GRANTS`]), or one principal's;
    /// linearizable, so a grant just made is listed.
    pub async fn list(&self, _ctx: &CallContext, principal: &str) -> Result<Vec<Grant>, ApiError> {
        self.cluster.read_barrier().await?;
        let reader = self.cluster.reader();
        let grants = if principal.is_empty() {
            reader.grants(MAX_LISTED_GRANTS)
        } else {
            check_names(principal, None)?;
            reader.grants_of(principal)
        };
        grants.map_err(|error| ApiError::Internal(format!("reading grants: {error}")))
    }

    /// Whether the `auth.admins` setting names `principal`.
    pub fn is_bootstrap_admin(&self, principal: &Principal) -> bool {
        principal.confined_to.is_none() && self.admins.contains(&principal.name)
    }

    /// The grants of `principal` as applied on this node.
    pub fn grants_of(&self, principal: &Principal) -> Result<Vec<Grant>, ApiError> {
        self.cluster
            .reader()
            .grants_of(&principal.name)
            .map_err(|error| ApiError::Internal(format!("reading grants: {error}")))
    }

    /// The check: the principal the call names, if its roles allow the
    /// call's method in `namespace`.
    pub async fn check(&self, ctx: &CallContext, namespace: &str) -> Result<Principal, ApiError> {
        let principal = self.principal(ctx).await?;
        let Some(need) = rule(&ctx.method) else {
            return Err(ApiError::PermissionDenied(format!(
                "{} is not a method floe knows; nothing is allowed by default",
                floe_engine::names::quote_bounded(&ctx.method)
            )));
        };
        let Need::Role(role) = need else {
            return Ok(principal);
        };
        if self.allows(&principal, role, namespace)? {
            return Ok(principal);
        }
        Err(ApiError::PermissionDenied(format!(
            "principal {principal} may not {} in namespace {namespace}: it needs the {} role there (or cluster-wide); an admin grants it with `floe access grant`",
            action_name(&ctx.method),
            role.name()
        )))
    }

    fn allows(&self, principal: &Principal, role: Role, namespace: &str) -> Result<bool, ApiError> {
        if principal
            .confined_to
            .as_deref()
            .is_some_and(|confined| confined != namespace)
        {
            return Ok(false);
        }
        if self.is_bootstrap_admin(principal) {
            return Ok(true);
        }
        Ok(self.grants_of(principal)?.iter().any(|grant| {
            let here = match &grant.namespace {
                None => principal.confined_to.is_none(),
                Some(granted) => granted == namespace,
            };
            here && grant.role.includes(role)
        }))
    }
}

fn hash_secret(secret: &str) -> Result<String, ApiError> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| ApiError::Internal(format!("hashing a token: {error}")))
}

fn verify_secret(hash: &str, secret: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok()
    })
}

fn check_names(principal: &str, namespace: Option<&str>) -> Result<(), ApiError> {
    let problem = floe_state::access::principal_problem(principal)
        .or_else(|| namespace.and_then(floe_state::access::namespace_problem));
    match problem {
        Some(problem) => Err(ApiError::InvalidArgument(problem)),
        None => Ok(()),
    }
}

/// `/floe.v1.Runs/Start` as an action: `Runs.Start`.
fn action_name(method: &str) -> String {
    let method = method.trim_start_matches('/');
    let method = method.strip_prefix("floe.v1.").unwrap_or(method);
    floe_engine::names::quote_bounded(&method.replace('/', "."))
        .trim_matches('"')
        .to_string()
}

/// Checks every call before its service sees it (`AccessControl::check`);
/// a refused call is answered with its status and never reaches a handler.
#[derive(Clone)]
pub struct AccessLayer {
    access: AccessControl,
}

impl AccessLayer {
    pub fn new(access: AccessControl) -> AccessLayer {
        AccessLayer { access }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Checked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            inner,
            access: self.access.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Checked<S> {
    inner: S,
    access: AccessControl,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for Checked<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = http::Response<ResponseBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let ctx = request
            .extensions()
            .get::<CallContext>()
            .cloned()
            .unwrap_or_else(|| CallContext::unchecked(request.uri().path()));
        // The service polled ready is the one that takes the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let access = self.access.clone();
        Box::pin(async move {
            match access.check(&ctx, DEFAULT_NAMESPACE).await {
                Ok(_) => inner.call(request).await,
                Err(refusal) => {
                    crate::warn_limited!(format!("call refused: {}", ctx.method), method = %ctx.method, caller = %ctx.caller(), error = %refusal, "call refused");
                    Ok(tonic::Status::from(refusal).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_api_has_a_rule() {
        let proto = include_str!("../api/proto/floe.proto");
        let mut service = "";
        let mut methods = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or("");
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap_or("").trim();
                methods.push(format!("/floe.v1.{service}/{name}"));
            }
        }
        assert!(methods.len() > 30, "{methods:?}");
        for method in &methods {
            assert!(rule(method).is_some(), "no rule for {method}");
        }
        for (method, _) in RULES {
            assert!(
                methods.contains(&method.to_string()),
                "{method} is not in the API"
            );
        }
    }

    #[test]
    fn the_documented_table_is_the_table_in_the_code() {
        let doc = include_str!("../../docs/operations.md");
        let start = doc
            .find("| action (gRPC method) | role needed |")
            .expect("the role table in docs/operations.md");
        let mut documented = Vec::new();
        for line in doc[start..].lines().skip(2) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 {
                break;
            }
            let method = format!("/floe.v1.{}", cells[1].replacen('.', "/", 1));
            let need = match cells[2] {
                "any identity" => Need::Identity,
                role => Need::Role(Role::parse(role).expect("a role name")),
            };
            documented.push((method, need));
        }
        let coded: Vec<(String, Need)> = RULES
            .iter()
            .map(|(method, need)| (method.to_string(), *need))
            .collect();
        assert_eq!(documented, coded);
    }

    #[test]
    fn actions_read_as_service_and_method() {
        assert_eq!(action_name("/floe.v1.Runs/Start"), "Runs.Start");
    }
}
