//! The fleet config store: the served revision, validation status and
//! errors, the served resources, and a render preview (viewer).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Auth};
use super::AppState;
use crate::configstore::{ConfigStoreHandle, Rendered, Revision, Snapshot, StoreStatus};
use crate::domain::Role;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(revision))
        .routes(routes!(status))
        .routes(routes!(resources))
        .routes(routes!(render_preview))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderPreview {
    /// The collector labels to render for.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn store(s: &AppState) -> Result<&ConfigStoreHandle, ApiError> {
    s.config_store.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "config-store-not-configured",
            "this instance has no [config_store] configured",
        )
    })
}

fn served(s: &AppState) -> Result<Arc<Snapshot>, ApiError> {
    store(s)?.current().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-valid-config",
            "no valid config commit has been loaded yet; see GET /api/v1/config/status",
        )
    })
}

/// The commit being served (viewer). 503 until a valid commit is loaded.
#[utoipa::path(get, path = "/api/v1/config/revision", tag = "config",
    responses((status = 200, body = Revision), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn revision(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<Revision>, ApiError> {
    a.require(Role::Viewer)?;
    Ok(Json(served(&s)?.revision.clone()))
}

/// Validation status (viewer): the served commit, the last commit checked
/// with every error (file, key path, message), fetch and repository errors.
#[utoipa::path(get, path = "/api/v1/config/status", tag = "config",
    responses((status = 200, body = StoreStatus), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn status(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<StoreStatus>, ApiError> {
    a.require(Role::Viewer)?;
    Ok(Json(store(&s)?.status()))
}

/// The resources of the served commit (viewer).
#[utoipa::path(get, path = "/api/v1/config/resources", tag = "config",
    responses((status = 200, body = Snapshot), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn resources(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<Snapshot>, ApiError> {
    a.require(Role::Viewer)?;
    Ok(Json(served(&s)?.as_ref().clone()))
}

/// Render the collector config a collector with these labels would get
/// from the served commit (viewer).
#[utoipa::path(post, path = "/api/v1/config/render-preview", tag = "config", request_body = RenderPreview,
    responses((status = 200, body = Rendered), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn render_preview(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiJson(req): ApiJson<RenderPreview>,
) -> Result<Json<Rendered>, ApiError> {
    a.require(Role::Viewer)?;
    Ok(Json(served(&s)?.render(&req.labels)))
}
