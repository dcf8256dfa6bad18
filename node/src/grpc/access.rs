//! The access API: grants, and the caller's own identity.

use floe_state::access::{Grant, Role, TokenRecord};

use crate::access::AccessControl;
use crate::api::access_server::Access;
use tonic::{Request, Response, Status};

use crate::api;
use crate::call_context::CallContext;
use crate::error::ApiError;

pub(super) struct AccessApi {
    pub(super) access: AccessControl,
}

fn role(text: &str) -> Result<Role, ApiError> {
    Role::parse(text).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "role {} is not viewer, submitter, operator, worker or admin",
            floe_engine::names::quote_bounded(text)
        ))
    })
}

fn namespace(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn grant_info(grant: Grant) -> api::GrantInfo {
    api::GrantInfo {
        principal: grant.principal,
        role: grant.role.name().to_string(),
        namespace: grant.namespace.unwrap_or_default(),
        granted_at_ms: grant.granted_at_ms,
        granted_by: grant.granted_by,
    }
}

fn token_info(token: TokenRecord) -> api::TokenInfo {
    api::TokenInfo {
        id: token.id,
        principal: token.principal,
        created_at_ms: token.created_at_ms,
        expires_at_ms: token.expires_at_ms,
        created_by: token.created_by,
    }
}

#[tonic::async_trait]
impl Access for AccessApi {
    async fn create_token(
        &self,
        request: Request<api::CreateTokenRequest>,
    ) -> Result<Response<api::CreateTokenResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let (token, record) = self
            .access
            .create_token(&ctx, &request.principal, request.ttl_ms)
            .await?;
        Ok(Response::new(api::CreateTokenResponse {
            token,
            info: Some(token_info(record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<api::ListTokensRequest>,
    ) -> Result<Response<api::ListTokensResponse>, Status> {
        let ctx = CallContext::of(&request);
        let tokens = self.access.list_tokens(&ctx).await?;
        Ok(Response::new(api::ListTokensResponse {
            tokens: tokens.into_iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<api::RevokeTokenRequest>,
    ) -> Result<Response<api::RevokeTokenResponse>, Status> {
        let ctx = CallContext::of(&request);
        let existed = self
            .access
            .revoke_token(&ctx, &request.into_inner().id)
            .await?;
        Ok(Response::new(api::RevokeTokenResponse { existed }))
    }

    async fn grant(
        &self,
        request: Request<api::GrantRequest>,
    ) -> Result<Response<api::GrantResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let role = role(&request.role)?;
        self.access
            .grant(
                &ctx,
                &request.principal,
                role,
                namespace(&request.namespace),
            )
            .await?;
        Ok(Response::new(api::GrantResponse {}))
    }

    async fn revoke(
        &self,
        request: Request<api::RevokeRequest>,
    ) -> Result<Response<api::RevokeResponse>, Status> {
        let ctx = CallContext::of(&request);
        let request = request.into_inner();
        let role = role(&request.role)?;
        let existed = self
            .access
            .revoke(
                &ctx,
                &request.principal,
                role,
                namespace(&request.namespace),
            )
            .await?;
        Ok(Response::new(api::RevokeResponse { existed }))
    }

    async fn list(
        &self,
        request: Request<api::ListGrantsRequest>,
    ) -> Result<Response<api::ListGrantsResponse>, Status> {
        let ctx = CallContext::of(&request);
        let grants = self
            .access
            .list(&ctx, &request.into_inner().principal)
            .await?;
        Ok(Response::new(api::ListGrantsResponse {
            grants: grants.into_iter().map(grant_info).collect(),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<api::WhoAmIRequest>,
    ) -> Result<Response<api::WhoAmIResponse>, Status> {
        let ctx = CallContext::of(&request);
        let principal = self.access.principal(&ctx).await?;
        let grants = self.access.grants_of(&principal)?;
        Ok(Response::new(api::WhoAmIResponse {
            bootstrap_admin: self.access.is_bootstrap_admin(&principal),
            namespace: principal.confined_to.clone().unwrap_or_default(),
            principal: principal.name,
            grants: grants.into_iter().map(grant_info).collect(),
        }))
    }
}
