//! Read endpoints of own telemetry (thin).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::{CollectorTelemetry, FleetComponents};
use crate::api::error::{ApiError, Problem};
use crate::api::extract::{ApiPath, Auth};
use crate::api::AppState;
use crate::domain::Role;

/// What a collector reports about itself (viewer): per component and
/// signal, totals and rates (events/s) of accepted, refused, sent, failed …
/// points, and queue size / capacity. Empty until it first reports.
#[utoipa::path(get, path = "/api/v1/collectors/{id}/telemetry", tag = "telemetry", params(("id" = String, Path)),
    responses((status = 200, body = CollectorTelemetry), (status = 404, body = Problem)), security(("session" = []), ("bearer" = [])))]
pub async fn collector_telemetry(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CollectorTelemetry>, ApiError> {
    a.require(Role::Viewer)?;
    Ok(Json(s.own_telemetry.collector(&id).await?))
}

/// Fleet-wide figures per component id and signal (viewer): the sums over
/// every collector that reported in the last 5 minutes. Component ids are
/// those of the rendered collector config (`<type>/<name>`).
#[utoipa::path(get, path = "/api/v1/telemetry/components", tag = "telemetry",
    responses((status = 200, body = FleetComponents)), security(("session" = []), ("bearer" = [])))]
pub async fn fleet_components(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
) -> Result<Json<FleetComponents>, ApiError> {
    a.require(Role::Viewer)?;
    Ok(Json(s.own_telemetry.components().await?))
}
