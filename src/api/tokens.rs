//! Enrollment tokens and API tokens (the secrets are shown once, at creation).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Auth, EditorAuth, PageParams};
use super::AppState;
use crate::domain::{
    ApiTokenCreated, ApiTokenView, EnrollmentTokenCreated, EnrollmentTokenView, NewApiToken, NewEnrollmentToken, Page,
};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_enrollment_tokens, create_enrollment_token))
        .routes(routes!(revoke_enrollment_token))
        .routes(routes!(list_api_tokens, create_api_token))
        .routes(routes!(revoke_api_token))
}

/// List enrollment tokens (viewer).
#[utoipa::path(get, path = "/api/v1/enrollment-tokens", tag = "enrollment", params(PageParams),
    responses((status = 200, body = Page<EnrollmentTokenView>)), security(("session" = []), ("bearer" = [])))]
async fn list_enrollment_tokens(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<EnrollmentTokenView>>, ApiError> {
    Ok(Json(s.domain.list_enrollment_tokens(&a, p.cursor, p.limit).await?))
}

/// Create an enrollment token (editor). The `token` field is shown only here.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", tag = "enrollment", request_body = NewEnrollmentToken,
    responses((status = 201, body = EnrollmentTokenCreated), (status = 422, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn create_enrollment_token(
    State(s): State<Arc<AppState>>,
    EditorAuth(a): EditorAuth,
    ApiJson(req): ApiJson<NewEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentTokenCreated>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.domain.create_enrollment_token(&a, req).await?),
    ))
}

/// Revoke an enrollment token (editor). Collectors already enrolled keep
/// their own credentials.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens/{id}/revoke", tag = "enrollment", params(("id" = String, Path)),
    responses((status = 200, body = EnrollmentTokenView), (status = 404, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn revoke_enrollment_token(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EnrollmentTokenView>, ApiError> {
    Ok(Json(s.domain.revoke_enrollment_token(&a, &id).await?))
}

/// List API tokens: yours, or all for an admin.
#[utoipa::path(get, path = "/api/v1/api-tokens", tag = "api-tokens", params(PageParams),
    responses((status = 200, body = Page<ApiTokenView>)), security(("session" = []), ("bearer" = [])))]
async fn list_api_tokens(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<ApiTokenView>>, ApiError> {
    Ok(Json(s.domain.list_api_tokens(&a, p.cursor, p.limit).await?))
}

/// Create an API token acting as you with `role` (at most yours; default
/// yours), never above your current role. A higher role is a 403.
#[utoipa::path(post, path = "/api/v1/api-tokens", tag = "api-tokens", request_body = NewApiToken,
    responses((status = 201, body = ApiTokenCreated), (status = 403, body = Problem), (status = 422, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn create_api_token(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiJson(req): ApiJson<NewApiToken>,
) -> Result<(StatusCode, Json<ApiTokenCreated>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.domain.create_api_token(&a, req).await?)))
}

/// Revoke an API token (its owner or an admin).
#[utoipa::path(delete, path = "/api/v1/api-tokens/{id}", tag = "api-tokens", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn revoke_api_token(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    s.domain.revoke_api_token(&a, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
