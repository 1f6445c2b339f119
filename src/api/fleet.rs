//! Fleet status and control: the collector list with filters, one collector
//! in full, the fleet summary, labels, restart, pinned and default configs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{with_etag, ApiJson, ApiPath, ApiQuery, Auth, EditorAuth, IfMatch};
use super::AppState;
use crate::domain::{AssignedFile, CollectorView, Labels, Page, Role, DEFAULT_ASSIGNMENT};
use crate::domain::{ConfigState, HealthState};
use crate::fleet::views::{CollectorDetail, FleetCollector, FleetQuery, FleetSort, FleetSummary};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_collectors))
        .routes(routes!(get_collector))
        .routes(routes!(update_labels))
        .routes(routes!(restart))
        .routes(routes!(pin_config, unpin_config))
        .routes(routes!(set_default_config, delete_default_config))
        .routes(routes!(summary))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetListParams {
    /// Label selector `k=v,k2=v2`: collectors carrying all of them.
    pub selector: Option<String>,
    /// `true` or `false`.
    pub connected: Option<bool>,
    #[param(inline)]
    pub health: Option<HealthState>,
    #[param(inline)]
    pub config_status: Option<ConfigState>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    /// `id` (default), `name` or `last_seen` (newest first); a cursor is
    /// only valid with the sort it came from.
    #[param(inline)]
    pub sort: Option<FleetSort>,
}

fn parse_selector(sel: &str) -> Result<Labels, ApiError> {
    sel.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| ApiError::bad_request(format!("selector: {p:?} is not key=value")))
        })
        .collect()
}

/// List collectors with their connection, health and config status (viewer).
#[utoipa::path(get, path = "/api/v1/collectors", tag = "fleet", params(FleetListParams),
    responses((status = 200, body = Page<FleetCollector>)), security(("session" = []), ("bearer" = [])))]
async fn list_collectors(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(p): ApiQuery<FleetListParams>,
) -> Result<Json<Page<FleetCollector>>, ApiError> {
    a.require(Role::Viewer)?;
    let labels = parse_selector(p.selector.as_deref().unwrap_or(""))?;
    let q = FleetQuery {
        labels,
        connected: p.connected,
        health: p.health.map(|h| h.to_string()),
        config_status: p.config_status.map(|c| c.to_string()),
        cursor: p.cursor,
        limit: p.limit,
        sort: p.sort.unwrap_or_default(),
    };
    Ok(Json(s.fleet.list(q).await?))
}

/// One collector in full: labels, description, health, effective and
/// desired config, status, holding instance, own telemetry (viewer).
/// `ETag`: its version.
#[utoipa::path(get, path = "/api/v1/collectors/{id}", tag = "fleet", params(("id" = String, Path)),
    responses((status = 200, body = CollectorDetail), (status = 404, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn get_collector(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    a.require(Role::Viewer)?;
    let mut d = s.fleet.detail(&id).await?;
    d.telemetry = Some(s.own_telemetry.figures(&id).await?);
    Ok(with_etag(d.summary.version, d))
}

/// Counts by connection, health and config status (viewer).
#[utoipa::path(get, path = "/api/v1/fleet/summary", tag = "fleet",
    responses((status = 200, body = FleetSummary)), security(("session" = []), ("bearer" = [])))]
async fn summary(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<FleetSummary>, ApiError> {
    a.require(Role::Viewer)?;
    Ok(Json(s.fleet.summary().await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsUpdate {
    pub labels: Labels,
    /// The collector version you read; or send `If-Match`.
    pub version: Option<u64>,
}

/// Replace a collector's labels (editor), with optimistic concurrency. The
/// collector's config is re-rendered and pushed wherever it is connected.
#[utoipa::path(patch, path = "/api/v1/collectors/{id}/labels", tag = "fleet", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = LabelsUpdate,
    responses((status = 200, body = CollectorView), (status = 409, body = Problem), (status = 428, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn update_labels(
    State(s): State<Arc<AppState>>,
    EditorAuth(a): EditorAuth,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
    ApiJson(req): ApiJson<LabelsUpdate>,
) -> Result<Response, ApiError> {
    let version = if_match.or_body(req.version)?;
    let c = s.domain.update_labels(&a, &id, version, req.labels).await?;
    Ok(with_etag(c.version, c))
}

/// Ask a collector to restart (editor). Delivered by whichever instance
/// holds its connection, if it accepts restart commands.
#[utoipa::path(post, path = "/api/v1/collectors/{id}/restart", tag = "fleet", params(("id" = String, Path)),
    responses((status = 202), (status = 404, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn restart(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    s.domain.queue_command(&a, &id, "restart").await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFiles {
    /// File name -> file.
    pub files: BTreeMap<String, AssignedFile>,
}

/// Pin a config to one collector (editor); it overrides everything else.
#[utoipa::path(put, path = "/api/v1/collectors/{id}/config", tag = "fleet", params(("id" = String, Path)), request_body = ConfigFiles,
    responses((status = 204), (status = 404, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn pin_config(
    State(s): State<Arc<AppState>>,
    EditorAuth(a): EditorAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ConfigFiles>,
) -> Result<StatusCode, ApiError> {
    if id == DEFAULT_ASSIGNMENT {
        return Err(ApiError::bad_request("not a collector id"));
    }
    s.domain.set_assignment(&a, &id, req.files).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a collector's pinned config (editor).
#[utoipa::path(delete, path = "/api/v1/collectors/{id}/config", tag = "fleet", params(("id" = String, Path)),
    responses((status = 204)), security(("session" = []), ("bearer" = [])))]
async fn unpin_config(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if id == DEFAULT_ASSIGNMENT {
        return Err(ApiError::bad_request("not a collector id"));
    }
    s.domain.delete_assignment(&a, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set the fleet default config (editor): for collectors nothing else configures.
#[utoipa::path(put, path = "/api/v1/fleet/default-config", tag = "fleet", request_body = ConfigFiles,
    responses((status = 204), (status = 422, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn set_default_config(
    State(s): State<Arc<AppState>>,
    EditorAuth(a): EditorAuth,
    ApiJson(req): ApiJson<ConfigFiles>,
) -> Result<StatusCode, ApiError> {
    s.domain.set_assignment(&a, DEFAULT_ASSIGNMENT, req.files).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove the fleet default config (editor).
#[utoipa::path(delete, path = "/api/v1/fleet/default-config", tag = "fleet",
    responses((status = 204)), security(("session" = []), ("bearer" = [])))]
async fn delete_default_config(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<StatusCode, ApiError> {
    s.domain.delete_assignment(&a, DEFAULT_ASSIGNMENT).await?;
    Ok(StatusCode::NO_CONTENT)
}
