//! Staged rollouts: the current rollout with per-wave progress and gate
//! results, and the last finished ones (viewer); pause, resume, abort
//! (revert every collector to the baseline) and promote (skip the rest of
//! the current wave's bake) (editor; audited). Roles are checked in the
//! domain.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiPath, ApiQuery, Auth};
use super::AppState;
use crate::domain::rollout::{Rollout, RolloutAction, Rollouts};
use crate::domain::Actor;
use crate::storage::Versioned;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(abort))
        .routes(routes!(promote))
}

#[derive(Serialize, ToSchema)]
pub struct RolloutList {
    /// What the fleet is served now: the rollout in progress, or the last
    /// one (completed or aborted). Absent before the first commit.
    pub current: Option<Rollout>,
    /// Finished rollouts, newest first (at most 20).
    pub past: Vec<Rollout>,
    /// Version of the stored record (0 when none).
    pub version: u64,
}

impl From<Option<Versioned<Rollouts>>> for RolloutList {
    fn from(r: Option<Versioned<Rollouts>>) -> Self {
        match r {
            Some(v) => RolloutList {
                current: v.value.current,
                past: v.value.past,
                version: v.version,
            },
            None => RolloutList {
                current: None,
                past: Vec::new(),
                version: 0,
            },
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Reason {
    /// Why (kept in the audit log; shown as the reason of an abort).
    pub reason: Option<String>,
}

/// Rollouts with per-wave progress and gate results (viewer).
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts",
    responses((status = 200, body = RolloutList), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn list(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<RolloutList>, ApiError> {
    Ok(Json(s.domain.rollouts(&a).await?.into()))
}

async fn act(
    s: &AppState,
    a: &Actor,
    id: &str,
    action: RolloutAction,
    reason: Option<String>,
) -> Result<Json<RolloutList>, ApiError> {
    let r = s.domain.rollout_action(a, id, action, reason.as_deref()).await?;
    Ok(Json(Some(r).into()))
}

/// Pause the current rollout (editor): no further wave is reached.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", tag = "rollouts", params(("id" = String, Path), Reason),
    responses((status = 200, body = RolloutList), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn pause(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Reason>,
) -> Result<Json<RolloutList>, ApiError> {
    act(&s, &a, &id, RolloutAction::Pause, q.reason).await
}

/// Resume a paused rollout, or retry the wave a halted one rolled back
/// (editor).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", tag = "rollouts", params(("id" = String, Path), Reason),
    responses((status = 200, body = RolloutList), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn resume(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Reason>,
) -> Result<Json<RolloutList>, ApiError> {
    act(&s, &a, &id, RolloutAction::Resume, q.reason).await
}

/// Abort the current rollout (editor): every collector goes back to the
/// baseline commit.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", tag = "rollouts", params(("id" = String, Path), Reason),
    responses((status = 200, body = RolloutList), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn abort(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Reason>,
) -> Result<Json<RolloutList>, ApiError> {
    act(&s, &a, &id, RolloutAction::Abort, q.reason).await
}

/// Skip the rest of the current wave's bake (editor): the next wave is
/// reached as soon as this one passes its gates.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/promote", tag = "rollouts", params(("id" = String, Path), Reason),
    responses((status = 200, body = RolloutList), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn promote(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Reason>,
) -> Result<Json<RolloutList>, ApiError> {
    act(&s, &a, &id, RolloutAction::Promote, q.reason).await
}
