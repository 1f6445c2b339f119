//! Login, logout and "who am I".

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{cookie_value, ApiJson, Auth, SESSION_COOKIE};
use super::ratelimit::ClientAddr;
use super::AppState;
use crate::clock::Timestamp;
use crate::domain::Role;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub username: Option<String>,
    pub role: Option<Role>,
    /// `user:<name>` or `token:<id>(user:<name>)`.
    pub actor: String,
    /// Session expiry (login only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// Log in: sets the HttpOnly, SameSite=Strict session cookie. Attempts are
/// limited per client address (`auth.login_attempts_per_minute`).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = Me), (status = 401, body = Problem),
        (status = 429, body = Problem, description = "Too many attempts; see `Retry-After`", headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn login(
    State(s): State<Arc<AppState>>,
    client: ClientAddr,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    if let Err(limited) = s.limits.login.check(client) {
        return Ok(limited.into_response());
    }
    let r = s.domain.login(&req.username, &req.password).await?;
    let cookie = session_cookie(&s, &r.cookie);
    let mut resp = Json(Me {
        username: Some(r.username.clone()),
        role: Some(r.role),
        actor: format!("user:{}", r.username),
        expires_at: Some(r.expires_at),
    })
    .into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|_| ApiError::bad_request("bad cookie"))?;
    resp.headers_mut().insert(header::SET_COOKIE, value);
    Ok(resp)
}

/// Log out: ends the session and clears the cookie.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", responses((status = 204)))]
async fn logout(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(c) = cookie_value(&headers, SESSION_COOKIE) {
        s.domain.logout(c).await?;
    }
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear_session_cookie())]).into_response())
}

/// The `Set-Cookie` value of a new login session (API and console).
pub(crate) fn session_cookie(s: &AppState, value: &str) -> String {
    let max_age = s.session_ttl.as_secs();
    let secure = if s.cookie_secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// The `Set-Cookie` value that ends the session cookie.
pub(crate) fn clear_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The authenticated caller.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", responses((status = 200, body = Me), (status = 401, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn me(Auth(actor): Auth) -> Json<Me> {
    Json(Me {
        username: actor.username().map(String::from),
        role: actor.role(),
        actor: actor.audit_name(),
        expires_at: None,
    })
}
