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
use super::extract::{with_etag, ApiJson, ApiQuery, Auth, IfMatch};
use super::AppState;
use crate::domain::{AuditEvent, AuditQuery, CanvasDoc, Page};

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
    Auth(a): Auth,
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
    /// Only actions starting with this, e.g. `collector.`.
    pub action: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// The audit log, newest first (admin).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Page<AuditEvent>), (status = 403, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn list_audit(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    Ok(Json(
        s.domain
            .list_audit(
                &a,
                AuditQuery {
                    cursor: p.cursor,
                    limit: p.limit,
                    action_prefix: p.action,
                },
            )
            .await?,
    ))
}
