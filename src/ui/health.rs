//! Server health (`/health`, every role): each instance sharing the store
//! from its presence row (alive, last heartbeat, collectors it holds), and
//! for the instance answering the figures only it has: the config
//! revision it serves, reloads and refused commits, request latency
//! (p50/p99 from its own metrics). The page says which figures are local;
//! another instance's are on its own `/health` page and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use super::layout::{render, Layout, UiError, Viewer};
use super::overview::{config_state, ConfigState};
use super::view::TimeView;
use crate::api::AppState;
use crate::domain::InstanceView;
use crate::fleet::PRESENCE_STALE;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/health", get(page))
}

struct Row {
    i: InstanceView,
    started: TimeView,
    heartbeat: TimeView,
    this: bool,
}

#[derive(askama::Template)]
#[template(path = "health.html")]
struct HealthPage {
    layout: Layout,
    instance: String,
    rows: Vec<Row>,
    /// Collectors whose sessions this process holds right now.
    connected_here: usize,
    config: ConfigState,
    reloads: u64,
    refused: u64,
    requests: u64,
    p50: String,
    p99: String,
}

/// `0.004` -> `≤ 4 ms` (quantiles are histogram bucket bounds).
fn bound(secs: f64) -> String {
    if secs.is_infinite() {
        return "> 8 s".into();
    }
    let ms = secs * 1000.0;
    if ms < 1.0 {
        format!("≤ {ms:.2} ms")
    } else {
        format!("≤ {ms:.0} ms")
    }
}

async fn page(State(s): State<Arc<AppState>>, v: Viewer) -> Result<Html<String>, UiError> {
    let instances = s.domain.list_instances(&v.actor, PRESENCE_STALE).await?;
    let rows = instances
        .into_iter()
        .map(|i| Row {
            started: TimeView::new(i.started_at),
            heartbeat: TimeView::new(i.heartbeat_at),
            this: i.name == s.instance,
            i,
        })
        .collect();
    let (reloads, refused) = s
        .config_store
        .as_ref()
        .map(|c| {
            let st = c.status();
            (st.reloads, st.reload_failures)
        })
        .unwrap_or_default();
    let latency = s.metrics.http_latency_summary();
    render(&HealthPage {
        layout: v.layout("Server health", "health"),
        instance: s.instance.clone(),
        rows,
        connected_here: s.fleet.connected_count(),
        config: config_state(&s),
        reloads,
        refused,
        requests: latency.map(|l| l.requests).unwrap_or(0),
        p50: latency.map(|l| bound(l.p50)).unwrap_or_else(|| "—".into()),
        p99: latency.map(|l| bound(l.p99)).unwrap_or_else(|| "—".into()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn latency_bounds_read_as_milliseconds() {
        assert_eq!(super::bound(0.00025), "≤ 0.25 ms");
        assert_eq!(super::bound(0.004), "≤ 4 ms");
        assert_eq!(super::bound(f64::INFINITY), "> 8 s");
    }
}
