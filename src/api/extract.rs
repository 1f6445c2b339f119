//! Request extractors shared by the handlers: JSON/query with problem+json
//! rejections, the authenticated actor, and `If-Match` versions.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::error::ApiError;
use super::AppState;
use crate::domain::{Actor, Role};
use crate::transport::bearer_token;

/// Name of the UI session cookie.
pub const SESSION_COOKIE: &str = "linkmesh_session";

/// `axum::Json` whose rejections are problem+json.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Pagination parameters of every list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<usize>,
}

/// The caller: an API token (`Authorization: Bearer lma_…`) or a UI session
/// cookie. Routes without this extractor are public.
pub struct Auth(pub Actor);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        if let Some(bearer) = bearer_token(&parts.headers) {
            return Ok(Auth(state.domain.authenticate_api_token(bearer).await?));
        }
        if let Some(cookie) = cookie_value(&parts.headers, SESSION_COOKIE) {
            return Ok(Auth(state.domain.authenticate_session(cookie).await?));
        }
        Err(ApiError::unauthenticated(
            "log in, or send an API token as `Authorization: Bearer <token>`",
        ))
    }
}

/// Callers who may not call a route are told so (401, 403) before its body
/// is read: whoever sends no body, or a wrong media type, gets the same
/// refusal as with a valid one, and a refused caller's body is never
/// parsed. These extractors are `Auth` plus the route's role; the domain
/// checks the role again (it is the rule; this is the order).
macro_rules! auth_with_role {
    ($(#[$m:meta])* $name:ident, $role:expr) => {
        $(#[$m])*
        pub struct $name(pub Actor);

        impl FromRequestParts<Arc<AppState>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
                let Auth(a) = Auth::from_request_parts(parts, state).await?;
                a.require($role)?;
                Ok($name(a))
            }
        }
    };
}

auth_with_role!(
    /// An authenticated caller with at least the editor role.
    EditorAuth,
    Role::Editor
);
auth_with_role!(
    /// An authenticated caller with the admin role.
    AdminAuth,
    Role::Admin
);

/// A caller who may edit the user named in the path: an admin, or that
/// user (their own password only; the domain decides what else).
pub struct UserEditAuth(pub Actor);

impl FromRequestParts<Arc<AppState>> for UserEditAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let Auth(a) = Auth::from_request_parts(parts, state).await?;
        let ApiPath(name) = ApiPath::<String>::from_request_parts(parts, state).await?;
        if a.username() != Some(name.as_str()) {
            a.require(Role::Admin)?;
        }
        Ok(UserEditAuth(a))
    }
}

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The version a read-modify-write is based on: `If-Match: "<version>"`.
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let s = v.to_str().unwrap_or("").trim();
        let s = s.strip_prefix("W/").unwrap_or(s).trim_matches('"');
        s.parse::<u64>()
            .map(|v| IfMatch(Some(v)))
            .map_err(|_| ApiError::bad_request("If-Match must be the quoted version of the record, e.g. \"3\""))
    }
}

impl IfMatch {
    /// Combine with a `version` field of the body; both given must agree.
    pub fn or_body(self, body: Option<u64>) -> Result<Option<u64>, ApiError> {
        match (self.0, body) {
            (Some(h), Some(b)) if h != b => Err(ApiError::bad_request("If-Match and the body's version disagree")),
            (h, b) => Ok(h.or(b)),
        }
    }
}

/// A JSON response carrying the record's version as its `ETag`.
pub fn with_etag<T: Serialize>(version: u64, body: T) -> Response {
    let mut resp = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}
