//! The overview: fleet counts, the served config commit and whether the
//! last commit was refused, and which instance holds how many collectors.
//! Live through `/events/overview` (SSE).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use futures::Stream;

use super::layout::{render, Layout, UiError, Viewer};
use super::live::LiveState;
use super::view::{short_commit, TimeView};
use crate::api::AppState;
use crate::configstore::ValidationError;
use crate::fleet::views::FleetSummary;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(page))
        .route("/events/overview", get(events))
}

/// The served commit and the refused one, if the last attempt failed.
pub struct ConfigState {
    pub configured: bool,
    pub commit: String,
    pub message: String,
    pub author: String,
    pub time: Option<TimeView>,
    pub refused: Option<(String, Vec<ValidationError>)>,
    pub repository_error: Option<String>,
}

pub fn config_state(s: &AppState) -> ConfigState {
    let Some(cs) = &s.config_store else {
        return ConfigState {
            configured: false,
            commit: String::new(),
            message: String::new(),
            author: String::new(),
            time: None,
            refused: None,
            repository_error: None,
        };
    };
    let st = cs.status();
    let refused = st
        .last_attempt
        .as_ref()
        .filter(|a| !a.valid)
        .map(|a| (short_commit(&a.revision.commit), a.errors.clone()));
    let (commit, message, author, time) = match &st.serving {
        Some(r) => (
            short_commit(&r.commit),
            r.message.clone(),
            r.author.clone(),
            Some(TimeView::new(r.time)),
        ),
        None => (String::new(), String::new(), String::new(), None),
    };
    ConfigState {
        configured: true,
        commit,
        message,
        author,
        time,
        refused,
        repository_error: st.repository_error,
    }
}

/// The live values of the page, by `data-key`.
fn live_values(sum: &FleetSummary, cfg: &ConfigState) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("total".into(), sum.total.to_string());
    m.insert("connected".into(), sum.connected.to_string());
    m.insert("disconnected".into(), sum.disconnected.to_string());
    for k in HEALTH {
        m.insert(
            format!("health.{k}"),
            sum.health.get(*k).copied().unwrap_or(0).to_string(),
        );
    }
    for k in CONFIG {
        m.insert(
            format!("config.{k}"),
            sum.config.get(*k).copied().unwrap_or(0).to_string(),
        );
    }
    for (i, n) in &sum.instances {
        m.insert(format!("instance.{i}"), n.to_string());
    }
    m.insert("commit".into(), cfg.commit.clone());
    m.insert(
        "refused".into(),
        cfg.refused.as_ref().map(|(c, _)| c.clone()).unwrap_or_default(),
    );
    m
}

const HEALTH: &[&str] = &["healthy", "unhealthy", "unknown"];
const CONFIG: &[&str] = &["applied", "applying", "pending", "failed", "none"];

#[derive(askama::Template)]
#[template(path = "overview.html")]
struct Overview {
    layout: Layout,
    summary: FleetSummary,
    health: Vec<(&'static str, u64)>,
    config_counts: Vec<(&'static str, u64)>,
    config: ConfigState,
}

async fn page(State(s): State<Arc<AppState>>, v: Viewer) -> Result<Html<String>, UiError> {
    let summary = s.live.latest(&s.fleet).await?.summary.clone();
    let health = HEALTH
        .iter()
        .map(|k| (*k, summary.health.get(*k).copied().unwrap_or(0)))
        .collect();
    let config_counts = CONFIG
        .iter()
        .map(|k| (*k, summary.config.get(*k).copied().unwrap_or(0)))
        .collect();
    render(&Overview {
        layout: v.layout("Overview", "overview"),
        summary,
        health,
        config_counts,
        config: config_state(&s),
    })
}

/// Server-Sent Events for the overview: an `update` event with the changed
/// values at most once per `LIVE_PERIOD`, a `reload` event when the page's
/// shape changed (an instance appeared or left). The fleet figures come
/// from the one shared [`LiveFleet`](super::live::LiveFleet); the config
/// state is read from memory each period (a refused commit changes no
/// fleet figure).
async fn events(State(s): State<Arc<AppState>>, _v: Viewer) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.live.subscribe();
    let values = move |st: &LiveState, s: &AppState| live_values(&st.summary, &config_state(s));
    Sse::new(super::live::diff_stream(s, rx, values)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
