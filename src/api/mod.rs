//! The REST API (`/api/v1/...`), health and metrics endpoints, and the
//! OpenAPI document. Handlers are thin: extract, call `crate::domain`, map
//! the error. They never touch the store directly.

pub(crate) mod auth;
pub mod body;
mod canvas;
mod collectors;
mod configstore;
mod downloads;
pub mod error;
pub mod extract;
mod fleet;
mod health;
mod openapi;
pub mod ratelimit;
mod rollouts;
pub(crate) mod routing;
mod security;
mod tokens;
mod users;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::configstore::ConfigStoreHandle;
use crate::domain::Domain;
use crate::fleet::Fleet;
use crate::telemetry::Metrics;
use error::ApiError;

/// What handlers share.
pub struct AppState {
    pub domain: Domain,
    pub fleet: Fleet,
    pub max_request_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub metrics_enabled: bool,
    pub instance: String,
    pub cookie_secure: bool,
    /// `server.public_url`: snippets in the console, and an Origin the CSRF
    /// check accepts besides the addressed host.
    pub public_url: Option<String>,
    pub session_ttl: Duration,
    /// The fleet config store, when `[config_store]` is set.
    pub config_store: Option<ConfigStoreHandle>,
    /// Login and enrollment rate limits, and whose `X-Forwarded-For` counts.
    pub limits: ratelimit::Limits,
    /// Collectors' own metrics (`POST /v1/metrics`).
    pub own_telemetry: crate::owntelemetry::OwnTelemetry,
    /// The console's shared live fleet view (its task runs in `crate::run`).
    pub live: crate::ui::live::LiveFleet,
    /// The instance's tasks: long responses (SSE streams) end when it stops.
    pub tasks: crate::tasks::Tasks,
    /// Filled by `router()`; start with `Default::default()`.
    pub openapi_json: OnceLock<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "LinkMesh API", description = "Control plane for fleets of telemetry collectors.", license(name = "Apache-2.0")),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Login sessions"),
        (name = "users", description = "Users and roles"),
        (name = "api-tokens", description = "Tokens for automation"),
        (name = "enrollment", description = "Enrollment tokens"),
        (name = "collectors", description = "Enrollment and collector records"),
        (name = "canvas", description = "The routing canvas"),
        (name = "audit", description = "Audit log"),
        (name = "config", description = "The git-backed fleet config store"),
        (name = "rollouts", description = "Staged rollouts of config commits: waves, gates, rollback"),
        (name = "health", description = "Probes and metrics"),
        (name = "fleet", description = "Fleet status, labels, commands, pinned configs"),
        (name = "opamp", description = "OpAMP transports for collectors (protobuf)"),
        (name = "telemetry", description = "What collectors report about themselves (OTLP own metrics)"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(extract::SESSION_COOKIE))),
        );
    }
}

/// The whole HTTP application of one instance.
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::routes())
        .merge(auth::routes())
        .merge(users::routes())
        .merge(tokens::routes())
        .merge(collectors::routes())
        .merge(canvas::routes())
        .merge(fleet::routes())
        .merge(configstore::routes())
        .merge(routing::routes())
        .merge(downloads::routes())
        .merge(rollouts::routes())
        .merge(crate::transport::routes(crate::transport::OpampState {
            fleet: state.fleet.clone(),
            max_request_bytes: state.max_request_bytes,
            first_contact: crate::transport::FirstContactLimit {
                limiter: state.limits.enroll.clone(),
                trusted_proxies: state.limits.trusted_proxies.clone(),
            },
            metrics: state.metrics.clone(),
        }))
        .merge(crate::owntelemetry::routes())
        .routes(routes!(openapi_json))
        .split_for_parts();
    let json = serde_json::to_value(&doc)
        .map(|mut v| {
            openapi::add_error_responses(&mut v);
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
        })
        .unwrap_or_else(|_| "{}".into());
    let _ = state.openapi_json.set(json);
    router
        .merge(crate::ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::origin_check,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(security::headers))
        .with_state(state)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health", responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json(State(s): State<Arc<AppState>>) -> Response {
    let body = s.openapi_json.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such route")
}

/// Request span, latency and status metrics, by matched route (never by raw
/// path: ids in paths would explode the label set).
async fn observe(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let span = tracing::info_span!("http", %method, %route, status = tracing::field::Empty);
    let start = Instant::now();
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status().as_u16();
    span.record("status", status);
    s.metrics.observe_http(&method, &route, status, start.elapsed());
    if status >= 500 {
        tracing::warn!(parent: &span, status, "Request failed.");
    } else {
        tracing::debug!(parent: &span, status, elapsed_ms = start.elapsed().as_millis() as u64, "Request handled.");
    }
    resp
}
