//! The web console: server-rendered HTML pages (askama templates, checked
//! at compile time) and the embedded CSS/JS they use, mounted at `/` next
//! to the REST API. Pages work before any script loads; the small vanilla
//! JS module only adds live updates (SSE), local times, copy buttons and
//! confirmations.
//!
//! Pages are thin like the REST handlers: they authenticate with
//! [`layout::Viewer`], call `crate::domain` / `crate::fleet` / the config
//! store exactly as `crate::api` does, and render a template. They never
//! touch the store. Mutations are HTML form POSTs (Origin-checked by
//! `api::security`) that call the same domain functions; the domain checks
//! roles, so a viewer's forged POST is refused whatever the page shows.
//!
//! # How to add a page
//! 1. Write `src/ui/templates/<page>.html` starting with
//!    `{% extends "base.html" %}` and filling `{% block content %}`.
//! 2. In a module here, define `#[derive(Template)] #[template(path =
//!    "<page>.html")] struct MyPage { layout: Layout, .. }` and a handler
//!    `async fn page(State(s): State<Arc<AppState>>, v: Viewer) ->
//!    Result<Html<String>, UiError>` that builds it with
//!    `v.layout("Title", "nav-key")` and returns `render(&page)`.
//! 3. Add its route to `routes()` below and, if it belongs in the
//!    navigation, a line to `layout::NAV`.
//! 4. Scripts and styles go in `src/ui/static/` and are listed in
//!    `assets::FILES`; no inline `<script>` or `style=` (the CSP forbids it).

mod addcollector;
pub mod assets;
mod audit;
mod canvas;
mod collectors;
mod config;
mod health;
pub mod layout;
pub mod live;
mod overview;
mod rollouts;
mod session;
mod tokens;
mod users;
mod view;

use std::sync::Arc;

use axum::Router;

use crate::api::AppState;

/// Every console route.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .merge(session::routes())
        .merge(assets::routes())
        .merge(overview::routes())
        .merge(collectors::routes())
        .merge(config::routes())
        .merge(canvas::routes())
        .merge(rollouts::routes())
        .merge(addcollector::routes())
        .merge(tokens::routes())
        .merge(users::routes())
        .merge(audit::routes())
        .merge(health::routes())
}
