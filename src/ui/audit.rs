//! The audit log (`/audit`, admins): filters by actor, action and time
//! range in the query string (bookmarkable), newest first, cursor paging.
//! Times are typed in the browser's zone; `admin.js` sends them as UTC.
//! Without scripts the inputs are read as UTC, and the page says so.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::layout::{encode_query, render, Layout, UiError, Viewer};
use super::view::TimeView;
use crate::api::AppState;
use crate::domain::{parse_time, AuditEvent, AuditQuery, Role};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/audit", get(page))
}

/// The filters exactly as they appear in the URL.
#[derive(Debug, Default, Deserialize)]
struct Filters {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    /// UTC, `YYYY-MM-DDTHH:MM[:SS][Z]`.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    cursor: Option<String>,
}

impl Filters {
    /// This page's filters as a URL: from `cursor` on, or the newest events
    /// when `None` (the pager's two links).
    fn url(&self, cursor: Option<&str>) -> String {
        let mut url = format!(
            "/audit?actor={}&action={}&from={}&to={}",
            encode_query(&self.actor),
            encode_query(&self.action),
            encode_query(&self.from),
            encode_query(&self.to),
        );
        if let Some(c) = cursor {
            url.push_str("&cursor=");
            url.push_str(&encode_query(c));
        }
        url
    }
}

struct Row {
    e: AuditEvent,
    at: TimeView,
    detail: String,
}

#[derive(askama::Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    f: Filters,
    /// `from` / `to` as `datetime-local` values in UTC (admin.js shows them
    /// in the browser's zone).
    from_value: String,
    to_value: String,
    rows: Vec<Row>,
    next: Option<String>,
    error: Option<String>,
    script: String,
}

/// `2026-12-01T09:15:00Z` -> `2026-12-01T09:15:00` (a `datetime-local` value).
fn local_value(t: Option<crate::clock::Timestamp>) -> String {
    t.map(|t| TimeView::new(t).iso.trim_end_matches('Z').to_string())
        .unwrap_or_default()
}

async fn page(State(s): State<Arc<AppState>>, v: Viewer, Query(f): Query<Filters>) -> Result<Response, UiError> {
    if v.role < Role::Admin {
        return Err(UiError::new(
            StatusCode::FORBIDDEN,
            "the audit log is for admins; ask an admin what changed",
        ));
    }
    let time = |name: &str, text: &str| {
        let t = text.trim();
        (!t.is_empty())
            .then(|| parse_time(t).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let parsed = time("From", &f.from).and_then(|from| Ok((from, time("To", &f.to)?)));
    let mut page = AuditPage {
        layout: v.layout("Audit log", "audit"),
        from_value: String::new(),
        to_value: String::new(),
        rows: vec![],
        next: None,
        error: None,
        script: super::assets::url("admin.js"),
        f,
    };
    let (from, to) = match parsed {
        Ok(r) => r,
        Err(e) => {
            page.from_value = page.f.from.clone();
            page.to_value = page.f.to.clone();
            page.error = Some(e);
            return Ok((StatusCode::BAD_REQUEST, render(&page)?).into_response());
        }
    };
    page.from_value = local_value(from);
    page.to_value = local_value(to);
    let q = AuditQuery {
        cursor: page.f.cursor.clone().filter(|c| !c.is_empty()),
        limit: Some(50),
        action_prefix: Some(page.f.action.trim().to_string()).filter(|a| !a.is_empty()),
        actor: Some(page.f.actor.trim().to_string()).filter(|a| !a.is_empty()),
        from,
        to,
    };
    if let Err((_, e)) = q.check() {
        page.error = Some(format!("From {e}"));
        return Ok((StatusCode::BAD_REQUEST, render(&page)?).into_response());
    }
    let result = s.domain.list_audit(&v.actor, q).await?;
    page.next = result.next_cursor.map(|c| page.f.url(Some(&c)));
    page.rows = result
        .items
        .into_iter()
        .map(|e| Row {
            at: TimeView::new(e.at),
            detail: if e.detail.is_null() {
                String::new()
            } else {
                e.detail.to_string()
            },
            e,
        })
        .collect();
    Ok(render(&page)?.into_response())
}
