//! The routing canvas page. A stub until the canvas lands: it shows the
//! served routes as a list so the navigation entry leads somewhere real.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use super::layout::{render, Layout, UiError, Viewer};
use crate::api::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/routing", get(page))
}

#[derive(askama::Template)]
#[template(path = "canvas.html")]
struct Canvas {
    layout: Layout,
    routes: Vec<(String, String)>,
}

async fn page(State(s): State<Arc<AppState>>, v: Viewer) -> Result<Html<String>, UiError> {
    let routes = s
        .config_store
        .as_ref()
        .and_then(|c| c.current())
        .map(|snap| {
            snap.resources
                .routes
                .iter()
                .map(|(name, r)| (name.clone(), r.pipelines.join(", ")))
                .collect()
        })
        .unwrap_or_default();
    render(&Canvas {
        layout: v.layout("Routing", "routing"),
        routes,
    })
}
