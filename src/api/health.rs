//! Liveness, readiness and Prometheus metrics (unauthenticated, as probes
//! and scrapers expect; they reveal no fleet data).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub instance: String,
    pub version: String,
    /// Why the instance is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The MongoDB change stream that keeps this instance's caches fresh
    /// (absent with the embedded store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_feed: Option<crate::storage::FeedHealth>,
    /// The commit an emergency config override makes this instance serve
    /// (ready, but not serving the branch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_override: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz(State(s): State<Arc<AppState>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        instance: s.instance.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        reason: None,
        change_feed: None,
        config_override: None,
    })
}

/// The instance can serve: the store answers (within 2 s) and, when a
/// config store is configured, a valid config commit is loaded.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(s): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    let mut reason = match tokio::time::timeout(Duration::from_secs(2), s.domain.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("store: {e}")),
        Err(_) => Some("store: no answer within 2 s".into()),
    };
    // A stalled change feed leaves this instance serving stale caches.
    let change_feed = s.domain.store().feed_health();
    if let (None, Some(feed)) = (&reason, &change_feed) {
        if !feed.healthy {
            reason = Some(format!(
                "store: the change stream made no progress for {}s ({} failures in a row{})",
                feed.seconds_since_progress.map_or("ever".into(), |t| format!("{t:.0}")),
                feed.consecutive_failures,
                feed.last_error
                    .as_ref()
                    .map(|e| format!(", last: {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    // With a config store, an instance without a valid snapshot has nothing
    // to render for collectors: keep it out of the load balancer.
    if let (None, Some(cs)) = (&reason, &s.config_store) {
        if cs.current().is_none() {
            let st = cs.status();
            let why = st
                .repository_error
                .or_else(|| {
                    st.last_attempt
                        .filter(|a| !a.valid)
                        .map(|a| format!("commit {} is invalid", a.revision.commit))
                })
                .unwrap_or_else(|| "not loaded yet".into());
            reason = Some(format!("config store: no valid config commit ({why})"));
        }
    }
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let config_override = s
        .config_store
        .as_ref()
        .and_then(|cs| cs.status().override_)
        .filter(|o| o.applied)
        .map(|o| o.active.commit);
    let body = Health {
        status: if reason.is_none() { "ready" } else { "not ready" }.into(),
        instance: s.instance.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        reason,
        change_feed,
        config_override,
    };
    (status, Json(body))
}

/// Prometheus text exposition (404 when `telemetry.metrics = false`).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "application/openmetrics-text", body = String), (status = 404, content_type = "text/plain", description = "`telemetry.metrics = false`")))]
async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    if !s.metrics_enabled {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        {
            if let Some(feed) = s.domain.store().feed_health() {
                s.metrics.change_feed(&feed);
            }
            s.metrics.render()
        },
    )
}
