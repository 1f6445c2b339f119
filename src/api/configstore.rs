//! The fleet config store: the served revision, validation status and
//! errors, the served resources, a render preview, the history of commits
//! considered and a render diff (viewer), and the emergency override
//! (admin sets and clears it).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{AdminAuth, ApiJson, Auth};
use super::AppState;
use crate::configstore::{
    ConfigStoreHandle, HistoryEntry, LoadCommitError, OverrideStatus, Rendered, Revision, Snapshot, StoreStatus,
};
use crate::domain::{ConfigOverride, DomainError, Role};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(revision))
        .routes(routes!(status))
        .routes(routes!(resources))
        .routes(routes!(render_preview))
        .routes(routes!(history))
        .routes(routes!(render_diff))
        .routes(routes!(get_override, set_override, clear_override))
}

#[derive(Serialize, ToSchema)]
pub struct History {
    /// The emergency override, when one is set.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<OverrideStatus>,
    /// The instance that answered: the history is its own (every instance
    /// considers every commit itself; see docs/config-store.md, History).
    pub instance: String,
    /// Commits this instance considered since it started, newest first
    /// (at most 200).
    pub entries: Vec<HistoryEntry>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderDiffRequest {
    /// Commit id (full, or at least 4 hex digits) to diff from.
    pub from: String,
    /// Commit id to diff to; default: the served commit.
    #[serde(default)]
    pub to: Option<String>,
    /// The collector labels to render for.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct RenderDiff {
    pub from: Revision,
    pub to: Revision,
    pub from_hash: String,
    pub to_hash: String,
    /// Whether a collector with these labels would get a new config.
    pub changed: bool,
    /// Unified diff of the rendered YAML (header lines naming the commits
    /// left out); empty when unchanged.
    pub diff: String,
}

#[derive(Serialize, ToSchema)]
pub struct OverrideView {
    /// The stored override; absent when none is set.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<ConfigOverride>,
    /// Its version (0 when none is set).
    pub version: u64,
    /// What this instance makes of it: whether it serves the commit, or why
    /// not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<OverrideStatus>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOverride {
    /// The commit every instance serves until the override is cleared
    /// (full id, or at least 4 hex digits). It must be a valid config
    /// commit of the repository.
    pub commit: String,
    /// Why (the incident).
    pub reason: String,
}

fn commit_error(field: &str, e: LoadCommitError) -> ApiError {
    match e {
        LoadCommitError::Repository(m) if m.contains("not a commit id") => DomainError::invalid(field, m).into(),
        LoadCommitError::Repository(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "config-repository", m),
        e @ (LoadCommitError::NotFound(_) | LoadCommitError::Invalid { .. }) => {
            DomainError::invalid(field, e.to_string()).into()
        }
    }
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

/// Every commit this instance considered, newest first, with its outcome:
/// served, refused (with its errors), superseded, or held back by the
/// emergency override (viewer).
#[utoipa::path(get, path = "/api/v1/config/history", tag = "config",
    responses((status = 200, body = History), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn history(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<History>, ApiError> {
    a.require(Role::Viewer)?;
    let cs = store(&s)?;
    Ok(Json(History {
        override_: cs.status().override_,
        instance: s.instance.clone(),
        entries: cs.history(),
    }))
}

/// How the config of a collector with these labels differs between two
/// commits (viewer). Both must pass the config store's own rules.
#[utoipa::path(post, path = "/api/v1/config/render-diff", tag = "config", request_body = RenderDiffRequest,
    responses((status = 200, body = RenderDiff), (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn render_diff(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiJson(req): ApiJson<RenderDiffRequest>,
) -> Result<Json<RenderDiff>, ApiError> {
    a.require(Role::Viewer)?;
    let cs = store(&s)?;
    let from = cs.load_commit(&req.from).await.map_err(|e| commit_error("from", e))?;
    let to = match &req.to {
        Some(id) => cs.load_commit(id).await.map_err(|e| commit_error("to", e))?,
        None => served(&s)?,
    };
    let (a_r, b_r) = (from.render(&req.labels), to.render(&req.labels));
    // Diff the bodies: the header line names the commit and always differs.
    let body = |y: &str| y.lines().skip(2).map(|l| format!("{l}\n")).collect::<String>();
    let diff = crate::configstore::unified_diff(
        &body(&a_r.yaml),
        &body(&b_r.yaml),
        &format!("a/{}", from.revision.commit),
        &format!("b/{}", to.revision.commit),
    );
    Ok(Json(RenderDiff {
        changed: a_r.hash != b_r.hash,
        from: from.revision.clone(),
        to: to.revision.clone(),
        from_hash: a_r.hash,
        to_hash: b_r.hash,
        diff,
    }))
}

fn override_view(cs: &ConfigStoreHandle, stored: Option<crate::storage::Versioned<ConfigOverride>>) -> OverrideView {
    OverrideView {
        version: stored.as_ref().map_or(0, |v| v.version),
        override_: stored.map(|v| v.value),
        instance: cs.status().override_,
    }
}

/// The emergency override (viewer): the stored one, and whether this
/// instance serves it.
#[utoipa::path(get, path = "/api/v1/config/override", tag = "config",
    responses((status = 200, body = OverrideView), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn get_override(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<OverrideView>, ApiError> {
    let cs = store(&s)?;
    let stored = s.domain.config_override(&a).await?;
    Ok(Json(override_view(cs, stored)))
}

/// Make the whole fleet serve an earlier commit until cleared (admin;
/// audited). Every instance follows the stored override within seconds;
/// this one before answering.
#[utoipa::path(put, path = "/api/v1/config/override", tag = "config", request_body = SetOverride,
    responses((status = 200, body = OverrideView), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn set_override(
    State(s): State<Arc<AppState>>,
    AdminAuth(a): AdminAuth,
    ApiJson(req): ApiJson<SetOverride>,
) -> Result<Json<OverrideView>, ApiError> {
    let cs = store(&s)?;
    // Only a commit this instance would serve: every rule, the collector's
    // check included.
    let snapshot = cs
        .checked_commit(&req.commit)
        .await
        .map_err(|e| commit_error("commit", e))?;
    let stored = s
        .domain
        .set_config_override(&a, snapshot.revision.commit.clone(), &req.reason)
        .await?;
    cs.apply_override(Some((&stored.value).into())).await;
    Ok(Json(override_view(cs, Some(stored))))
}

/// Clear the emergency override (admin; audited): every instance serves
/// the branch again. 404 when none is set.
#[utoipa::path(delete, path = "/api/v1/config/override", tag = "config",
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn clear_override(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<StatusCode, ApiError> {
    let cs = store(&s)?;
    if !s.domain.clear_config_override(&a).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no-config-override",
            "no config override is set",
        ));
    }
    cs.apply_override(None).await;
    Ok(StatusCode::NO_CONTENT)
}
