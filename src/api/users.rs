//! User administration.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{with_etag, AdminAuth, ApiJson, ApiPath, ApiQuery, Auth, IfMatch, PageParams, UserEditAuth};
use super::AppState;
use crate::domain::{NewUser, Page, UserUpdate, UserView};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
}

/// List users (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(PageParams),
    responses((status = 200, body = Page<UserView>), (status = 403, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn list_users(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<UserView>>, ApiError> {
    Ok(Json(s.domain.list_users(&a, p.cursor, p.limit).await?))
}

/// Create a user (admin).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserView), (status = 409, body = Problem), (status = 422, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn create_user(
    State(s): State<Arc<AppState>>,
    AdminAuth(a): AdminAuth,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<(StatusCode, Response), ApiError> {
    let u = s.domain.create_user(&a, req).await?;
    Ok((StatusCode::CREATED, with_etag(u.version, u)))
}

/// One user (admin, or yourself). The `ETag` is its version.
#[utoipa::path(get, path = "/api/v1/users/{username}", tag = "users", params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn get_user(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let u = s.domain.get_user(&a, &name).await?;
    Ok(with_etag(u.version, u))
}

/// Edit a user with optimistic concurrency: send the version you read as
/// `If-Match: "<version>"` or in the body; a stale version gets 409 with the
/// current version.
#[utoipa::path(patch, path = "/api/v1/users/{username}", tag = "users", params(("username" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = UserUpdate,
    responses((status = 200, body = UserView), (status = 409, body = Problem), (status = 428, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn update_user(
    State(s): State<Arc<AppState>>,
    UserEditAuth(a): UserEditAuth,
    ApiPath(name): ApiPath<String>,
    if_match: IfMatch,
    ApiJson(mut upd): ApiJson<UserUpdate>,
) -> Result<Response, ApiError> {
    upd.version = if_match.or_body(upd.version)?;
    let u = s.domain.update_user(&a, &name, upd).await?;
    Ok(with_etag(u.version, u))
}

/// Delete a user (admin); `If-Match` optional.
#[utoipa::path(delete, path = "/api/v1/users/{username}", tag = "users", params(("username" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem, description = "You cannot delete yourself")), security(("session" = []), ("bearer" = [])))]
async fn delete_user(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(name): ApiPath<String>,
    if_match: IfMatch,
) -> Result<StatusCode, ApiError> {
    s.domain.delete_user(&a, &name, if_match.0).await?;
    Ok(StatusCode::NO_CONTENT)
}
