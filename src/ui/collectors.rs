//! The collectors table (filters in the query string, cursor paging) and
//! one collector in full, with its labels editable under the record's
//! version: a concurrent edit is a conflict the page shows, never a silent
//! overwrite.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::layout::{encode_query, render, Layout, UiError, Viewer};
use super::view::TimeView;
use crate::api::AppState;
use crate::domain::{DomainError, HealthView, Labels};
use crate::fleet::views::{CollectorDetail, FleetCollector, FleetQuery};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/collectors", get(list))
        .route("/collectors/{id}", get(detail))
        .route("/collectors/{id}/labels", post(save_labels))
}

/// The filters, exactly as they appear in the URL (bookmarkable).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    selector: String,
    #[serde(default)]
    connected: String,
    #[serde(default)]
    health: String,
    #[serde(default)]
    config_status: String,
    cursor: Option<String>,
}

/// `k=v,k2=v2` (or one per line): collectors carrying all of them.
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("{p:?} is not key=value")),
        })
        .collect()
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

struct Row {
    c: FleetCollector,
    last_seen: Option<TimeView>,
    labels: String,
}

#[derive(askama::Template)]
#[template(path = "collectors.html")]
struct ListPage {
    layout: Layout,
    f: Filters,
    error: Option<String>,
    rows: Vec<Row>,
    next: Option<String>,
}

fn labels_text(l: &Labels, sep: &str) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(sep)
}

async fn list(State(s): State<Arc<AppState>>, v: Viewer, Query(f): Query<Filters>) -> Result<Response, UiError> {
    let layout = v.layout("Collectors", "collectors");
    let labels = match parse_labels(&f.selector) {
        Ok(l) => l,
        Err(e) => {
            let page = ListPage {
                layout,
                f,
                error: Some(format!(
                    "Label selector: {e}. Write key=value pairs separated by commas."
                )),
                rows: vec![],
                next: None,
            };
            return Ok((StatusCode::BAD_REQUEST, render(&page)?).into_response());
        }
    };
    let q = FleetQuery {
        labels,
        connected: match f.connected.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        health: opt(&f.health),
        config_status: opt(&f.config_status),
        cursor: f.cursor.clone(),
        limit: Some(50),
    };
    let page = s.fleet.list(q).await?;
    let next = page.next_cursor.map(|c| {
        format!(
            "/collectors?selector={}&connected={}&health={}&config_status={}&cursor={}",
            encode_query(&f.selector),
            encode_query(&f.connected),
            encode_query(&f.health),
            encode_query(&f.config_status),
            encode_query(&c)
        )
    });
    let rows = page
        .items
        .into_iter()
        .map(|c| Row {
            last_seen: c.last_seen.map(TimeView::new),
            labels: labels_text(&c.labels, ", "),
            c,
        })
        .collect();
    Ok(render(&ListPage {
        layout,
        f,
        error: None,
        rows,
        next,
    })?
    .into_response())
}

/// One line of the health tree: depth for indentation by nesting lists.
struct HealthLine {
    name: String,
    depth: usize,
    healthy: bool,
    status: String,
    error: String,
}

fn flatten_health(name: &str, h: &HealthView, depth: usize, out: &mut Vec<HealthLine>) {
    out.push(HealthLine {
        name: name.to_string(),
        depth,
        healthy: h.healthy,
        status: h.status.clone(),
        error: h.last_error.clone(),
    });
    for (n, c) in &h.components {
        flatten_health(n, c, depth + 1, out);
    }
}

/// A file of the desired config next to the reported one, with a line diff.
struct FileCompare {
    name: String,
    desired: String,
    effective: Option<String>,
    diff: Vec<(char, String)>,
}

#[derive(askama::Template)]
#[template(path = "collector.html")]
struct DetailPage {
    layout: Layout,
    d: CollectorDetail,
    last_seen: Option<TimeView>,
    labels: String,
    health: Vec<HealthLine>,
    files: Vec<FileCompare>,
    error: Option<String>,
}

fn line_diff(a: &str, b: &str) -> Vec<(char, String)> {
    similar::TextDiff::from_lines(a, b)
        .iter_all_changes()
        .map(|c| {
            let tag = match c.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            (tag, c.value().trim_end_matches('\n').to_string())
        })
        .collect()
}

fn detail_page(v: &Viewer, d: CollectorDetail, labels: Option<String>, error: Option<String>) -> DetailPage {
    let mut health = Vec::new();
    if let Some(h) = d.status.as_ref().and_then(|s| s.health.as_ref()) {
        flatten_health("collector", h, 0, &mut health);
    }
    let effective = d.status.as_ref().and_then(|s| s.effective_config.as_ref());
    let files = d
        .desired
        .as_ref()
        .map(|des| {
            des.files
                .iter()
                .map(|(name, body)| {
                    let eff = effective.and_then(|e| e.files.get(name)).cloned();
                    FileCompare {
                        name: name.clone(),
                        diff: eff.as_deref().map(|e| line_diff(e, body)).unwrap_or_default(),
                        desired: body.clone(),
                        effective: eff,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    DetailPage {
        layout: v.layout(format!("Collector {}", d.summary.name), "collectors"),
        last_seen: d.summary.last_seen.map(TimeView::new),
        labels: labels.unwrap_or_else(|| labels_text(&d.summary.labels, "\n")),
        health,
        files,
        error,
        d,
    }
}

async fn detail(State(s): State<Arc<AppState>>, v: Viewer, Path(id): Path<String>) -> Result<Html<String>, UiError> {
    let d = s.fleet.detail(&id).await?;
    render(&detail_page(&v, d, None, None))
}

#[derive(Deserialize)]
struct LabelsForm {
    labels: String,
    version: u64,
}

async fn save_labels(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Path(id): Path<String>,
    Form(f): Form<LabelsForm>,
) -> Result<Response, UiError> {
    let problem = match parse_labels(&f.labels) {
        Err(e) => Some((StatusCode::UNPROCESSABLE_ENTITY, format!("Labels: {e}. Write one key=value per line."))),
        Ok(labels) => match s.domain.update_labels(&v.actor, &id, Some(f.version), labels).await {
            Ok(_) => return Ok(Redirect::to(&format!("/collectors/{}", encode_query(&id))).into_response()),
            Err(DomainError::Conflict { current, .. }) => Some((
                StatusCode::CONFLICT,
                format!(
                    "Conflict: someone else changed this collector's labels (now version {}) after you loaded version {}. \
                     Your edit is kept below; the current labels are shown above. Save again to replace them.",
                    current.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                    f.version
                ),
            )),
            Err(e) => return Err(e.into()),
        },
    };
    let d = s.fleet.detail(&id).await?;
    let (status, msg) = problem.unwrap_or((StatusCode::OK, String::new()));
    let page = detail_page(&v, d, Some(f.labels), Some(msg));
    Ok((status, render(&page)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_label_forms_name_the_bad_pair() {
        let l = parse_labels("env=prod, role = app\nos=linux").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l["role"], "app");
        assert!(parse_labels("").unwrap().is_empty());
        assert_eq!(parse_labels("env=prod,oops").unwrap_err(), "\"oops\" is not key=value");
    }
}
