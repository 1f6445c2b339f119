//! The routing canvas document and the audit log.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{with_etag, ApiJson, ApiQuery, Auth, EditorAuth, IfMatch};
use super::AppState;
use crate::domain::{parse_time, AuditEvent, AuditQuery, CanvasDoc, Page};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(get_canvas, save_canvas))
        .routes(routes!(list_audit))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveCanvas {
    /// The version you read (0 for the first save); or send `If-Match`.
    pub version: Option<u64>,
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
}

/// The routing canvas (viewer). The `ETag` is its version.
#[utoipa::path(get, path = "/api/v1/canvas", tag = "canvas",
    responses((status = 200, body = CanvasDoc)), security(("session" = []), ("bearer" = [])))]
async fn get_canvas(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Response, ApiError> {
    let c = s.domain.get_canvas(&a).await?;
    Ok(with_etag(c.version, c))
}

/// Save the routing canvas (editor) on top of the version you read; a
/// stale version gets 409 with the current version, a missing one 428.
#[utoipa::path(put, path = "/api/v1/canvas", tag = "canvas", params(("If-Match" = Option<String>, Header)), request_body = SaveCanvas,
    responses((status = 200, body = CanvasDoc), (status = 409, body = Problem), (status = 428, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn save_canvas(
    State(s): State<Arc<AppState>>,
    EditorAuth(a): EditorAuth,
    if_match: IfMatch,
    ApiJson(req): ApiJson<SaveCanvas>,
) -> Result<Response, ApiError> {
    let version = if_match.or_body(req.version)?;
    let c = s.domain.save_canvas(&a, version, req.document).await?;
    Ok(with_etag(c.version, c))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only actions starting with this, e.g. `collector.` or `user.create`.
    pub action: Option<String>,
    /// Only this actor: `user:alice`, `collector:<id>`, `system`, or a user
    /// name (`alice`), which also matches that user's API tokens.
    pub actor: Option<String>,
    /// Only events at or after this time: RFC 3339 in UTC, e.g.
    /// `2026-12-01T09:15:00Z` (a time without zone is UTC).
    pub from: Option<String>,
    /// Only events before this time (same format as `from`).
    pub to: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<usize>,
}

impl AuditParams {
    /// The domain query; a bad value is a 400 naming its parameter.
    pub fn query(self) -> Result<AuditQuery, ApiError> {
        let time = |name: &str, v: Option<String>| {
            v.filter(|v| !v.trim().is_empty())
                .map(|v| parse_time(&v).map_err(|e| ApiError::bad_request(format!("query parameter `{name}`: {e}"))))
                .transpose()
        };
        let q = AuditQuery {
            from: time("from", self.from)?,
            to: time("to", self.to)?,
            cursor: self.cursor.filter(|c| !c.is_empty()),
            limit: self.limit,
            action_prefix: self.action.filter(|a| !a.is_empty()),
            actor: self.actor.filter(|a| !a.is_empty()),
        };
        q.check()
            .map_err(|(name, e)| ApiError::bad_request(format!("query parameter `{name}`: {e}")))?;
        Ok(q)
    }
}

/// The audit log, newest first (admin). Filters combine (all must hold).
/// A time range reads only the events inside it; actor and action filters
/// read at most 10,000 events per request, so a page may hold fewer than
/// `limit` events and still carry a `next_cursor`: follow it to go on.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Page<AuditEvent>), (status = 400, body = Problem), (status = 403, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn list_audit(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    Ok(Json(s.domain.list_audit(&a, p.query()?).await?))
}
