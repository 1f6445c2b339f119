//! The fleet config page: the served revision, the last attempt with every
//! error (file, key path, message), and the served resources by kind.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use super::layout::{render, Layout, UiError, Viewer};
use super::overview::{config_state, ConfigState};
use crate::api::AppState;
use crate::configstore::Snapshot;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/config", get(page))
}

#[derive(askama::Template)]
#[template(path = "config.html")]
struct ConfigPage {
    layout: Layout,
    config: ConfigState,
    url: String,
    branch: String,
    snapshot: Option<Arc<Snapshot>>,
}

async fn page(State(s): State<Arc<AppState>>, v: Viewer) -> Result<Html<String>, UiError> {
    let (url, branch) = s
        .config_store
        .as_ref()
        .map(|c| {
            let st = c.status();
            (st.url, st.branch)
        })
        .unwrap_or_default();
    render(&ConfigPage {
        layout: v.layout("Config", "config"),
        config: config_state(&s),
        url,
        branch,
        snapshot: s.config_store.as_ref().and_then(|c| c.current()),
    })
}
