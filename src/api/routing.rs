//! Routing: the served commit as a graph (viewer), and route drafts —
//! impact preview, publish as a commit, download as a patch (editor,
//! audited). The work is `crate::configstore::publish`; collectors come
//! from the domain.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Auth, EditorAuth};
use super::AppState;
use crate::configstore::draft::{self, Graph, RouteChange};
use crate::configstore::publish::{Author, Draft, DraftError, Preview, PublishMode, Published};
use crate::configstore::{ConfigStoreHandle, Revision, ValidationError};
use crate::domain::{Actor, DomainError, Role};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(graph))
        .routes(routes!(preview))
        .routes(routes!(publish))
        .routes(routes!(patch))
}

/// The served commit as a routing graph.
#[derive(Serialize, ToSchema)]
pub struct RoutingView {
    pub revision: Revision,
    pub graph: Graph,
    pub publish: PublishMode,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// The commit the draft was made on: the served one, from
    /// `GET /api/v1/routing`.
    pub base_commit: String,
    pub changes: Vec<RouteChange>,
    /// The collector (id) to show the render diff for; default: the first
    /// affected one.
    #[serde(default)]
    pub focus: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub base_commit: String,
    pub changes: Vec<RouteChange>,
    /// The commit message; default: one naming the routes changed.
    #[serde(default)]
    pub message: Option<String>,
}

/// A problem with a draft: the problem details plus every validation error.
#[derive(Serialize, ToSchema)]
pub struct DraftProblem {
    #[serde(flatten)]
    pub problem: Problem,
    /// On 422: every problem, with file and key path. A body that is no
    /// draft at all is a plain problem (422 without `errors`).
    #[schema(required = false)]
    pub errors: Vec<ValidationError>,
    /// On 409: the commit the branch is at now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_commit: Option<String>,
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

fn problem(
    status: StatusCode,
    slug: &str,
    detail: String,
    errors: Vec<ValidationError>,
    current: Option<String>,
) -> Response {
    let body = DraftProblem {
        problem: Problem {
            kind: format!("urn:linkmesh:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            current_version: None,
            field: None,
        },
        errors,
        current_commit: current,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/problem+json")], json).into_response()
}

/// A draft failure as HTTP, and the audit outcome it is recorded with.
fn draft_error(e: DraftError) -> (Response, &'static str) {
    let detail = e.to_string();
    match e {
        DraftError::UnknownBase(_) => (
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-base-commit",
                detail,
                Vec::new(),
                None,
            ),
            "invalid",
        ),
        DraftError::Invalid(errors) => (
            problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-draft", detail, errors, None),
            "invalid",
        ),
        DraftError::Empty => (
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "empty-draft",
                detail,
                Vec::new(),
                None,
            ),
            "invalid",
        ),
        DraftError::Moved { current, .. } => (
            problem(StatusCode::CONFLICT, "branch-moved", detail, Vec::new(), Some(current)),
            "conflict",
        ),
        DraftError::NotAllowed(_) => (
            problem(StatusCode::FORBIDDEN, "publish-not-allowed", detail, Vec::new(), None),
            "refused",
        ),
        DraftError::Store(e) => {
            tracing::error!(error = %e, "A route draft failed in the config repository.");
            (
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "config-repository-error",
                    "the config repository could not complete the request; see the server log",
                )
                .into_response(),
                "error",
            )
        }
    }
}

/// The served commit and its routing graph over the collectors `actor`
/// may see; `None` until a valid commit is loaded or without a config
/// store. One place for what `GET /api/v1/routing` and the console's
/// routing canvas show.
pub(crate) async fn served_graph(s: &AppState, actor: &Actor) -> Result<Option<(Revision, Graph)>, DomainError> {
    let Some(snapshot) = s.config_store.as_ref().and_then(|c| c.current()) else {
        return Ok(None);
    };
    let targets = s.domain.route_targets(actor).await?;
    Ok(Some((
        snapshot.revision.clone(),
        draft::graph(&snapshot.resources, &targets),
    )))
}

impl PublishRequest {
    /// The draft, and what the audit event names whatever the outcome: the
    /// base commit and the routes changed.
    fn into_parts(self) -> (Draft, Option<String>, String, Vec<String>) {
        let routes = routes_named(&self.changes).into_iter().map(String::from).collect();
        let base = self.base_commit.clone();
        let draft = Draft {
            base_commit: self.base_commit,
            changes: self.changes,
        };
        (draft, self.message, base, routes)
    }
}

fn author(a: &Actor) -> Author {
    Author::user(a.username().unwrap_or("unknown"))
}

fn routes_named(changes: &[RouteChange]) -> Vec<&str> {
    changes.iter().map(RouteChange::name).collect()
}

/// The served commit as a graph: routes (selector, priority, matched
/// collectors) -> pipelines -> sources, processor chain, destinations
/// (viewer). 503 until a valid commit is loaded.
#[utoipa::path(get, path = "/api/v1/routing", tag = "config",
    responses((status = 200, body = RoutingView), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn graph(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<RoutingView>, ApiError> {
    a.require(Role::Viewer)?;
    let store = store(&s)?;
    let (revision, graph) = served_graph(&s, &a).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-valid-config",
            "no valid config commit has been loaded yet; see GET /api/v1/config/status",
        )
    })?;
    Ok(Json(RoutingView {
        revision,
        graph,
        publish: store.publish_mode(),
    }))
}

/// Preview a route draft (editor): validated with every rule of the config
/// store; the TOML diff of each changed file, which collectors' rendered
/// config would change, and a render diff for one of them. Changes nothing.
#[utoipa::path(post, path = "/api/v1/routing/drafts/preview", tag = "config", request_body = PreviewRequest,
    responses((status = 200, body = Preview, description = "Also for an invalid draft: `valid` is false and `errors` name file and key"),
        (status = 422, body = DraftProblem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn preview(
    State(s): State<Arc<AppState>>,
    EditorAuth(a): EditorAuth,
    ApiJson(req): ApiJson<PreviewRequest>,
) -> Result<Response, ApiError> {
    let store = store(&s)?;
    let targets = s.domain.route_targets(&a).await?;
    let draft = Draft {
        base_commit: req.base_commit,
        changes: req.changes,
    };
    Ok(match store.preview(draft, targets, req.focus).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => draft_error(e).0,
    })
}

/// Publish a route draft (editor) as a commit on the served branch, by the
/// calling user; the store then validates and serves it like any commit.
/// Only for a local repository with `config_store.allow_publish = true`
/// (else 403). A branch that moved since `base_commit` is 409: nothing is
/// written, the draft stays with the client.
#[utoipa::path(post, path = "/api/v1/routing/drafts/publish", tag = "config", request_body = PublishRequest,
    responses((status = 201, body = Published), (status = 403, body = DraftProblem), (status = 409, body = DraftProblem),
        (status = 422, body = DraftProblem), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn publish(
    State(s): State<Arc<AppState>>,
    EditorAuth(a): EditorAuth,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Response, ApiError> {
    let store = store(&s)?;
    let (draft, message, base, routes) = req.into_parts();
    let committer = Author {
        name: format!("LinkMesh ({})", s.instance),
        email: "linkmesh@linkmesh.invalid".into(),
    };
    let now = s.domain.clock().now();
    match store.publish(draft, author(&a), committer, message, now).await {
        Ok(p) => {
            let detail = serde_json::json!({ "parent": p.parent, "routes": routes, "files": p.files });
            s.domain.audit_only(&a, "config.publish", &p.commit, "ok", detail).await;
            Ok((StatusCode::CREATED, Json(p)).into_response())
        }
        Err(e) => {
            let reason = e.to_string();
            let (resp, outcome) = draft_error(e);
            let detail = serde_json::json!({ "base_commit": base, "routes": routes, "reason": reason });
            s.domain.audit_only(&a, "config.publish", &base, outcome, detail).await;
            Ok(resp)
        }
    }
}

/// A route draft as a patch (editor): one commit in `git format-patch`
/// form that `git am` applies on `base_commit`. For remote repositories,
/// or to review a change elsewhere.
#[utoipa::path(post, path = "/api/v1/routing/drafts/patch", tag = "config", request_body = PublishRequest,
    responses((status = 200, content_type = "text/x-patch", body = String), (status = 422, body = DraftProblem), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
async fn patch(
    State(s): State<Arc<AppState>>,
    EditorAuth(a): EditorAuth,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Response, ApiError> {
    let store = store(&s)?;
    let (draft, message, base, routes) = req.into_parts();
    let now = s.domain.clock().now();
    match store.patch(draft, author(&a), message, now).await {
        Ok(text) => {
            let detail = serde_json::json!({ "routes": routes });
            s.domain.audit_only(&a, "config.draft_patch", &base, "ok", detail).await;
            Ok((
                [
                    (header::CONTENT_TYPE, "text/x-patch; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"routes-draft.patch\"",
                    ),
                ],
                text,
            )
                .into_response())
        }
        Err(e) => Ok(draft_error(e).0),
    }
}
