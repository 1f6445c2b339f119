//! The collectors table (filters in the query string, cursor paging) and
//! one collector in full, with its labels editable under the record's
//! version: a concurrent edit is a conflict the page shows, never a silent
//! overwrite.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use futures::Stream;

use super::layout::{encode_query, render, Layout, UiError, Viewer};
use super::live::{self, LiveState};
use super::view::{short_commit, TimeView};
use crate::api::AppState;
use crate::configstore::HistoryOutcome;
use crate::domain::{AssignedFile, DomainError, HealthView, Labels, DEFAULT_ASSIGNMENT};
use crate::fleet::desired::RENDERED_FILE;
use crate::fleet::views::{CollectorDetail, FleetCollector, FleetQuery, FleetSort};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/collectors", get(list))
        .route("/collectors/{id}", get(detail))
        .route("/collectors/{id}/labels", post(save_labels))
        .route("/collectors/{id}/restart", post(restart))
        .route("/collectors/{id}/pin", post(pin))
        .route("/collectors/{id}/rotate-credential", post(rotate))
        .route("/collectors/{id}/deregister", post(deregister))
        .route("/events/collectors", get(events))
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
    /// `` (id), `name` or `last_seen`.
    #[serde(default)]
    sort: String,
    cursor: Option<String>,
    /// Set by the deregister action: the collector it removed.
    #[serde(default)]
    deregistered: String,
}

impl Filters {
    /// This list with another sort or cursor (filters kept).
    fn url(&self, sort: &str, cursor: Option<&str>) -> String {
        let mut u = format!(
            "/collectors?selector={}&connected={}&health={}&config_status={}&sort={}",
            encode_query(&self.selector),
            encode_query(&self.connected),
            encode_query(&self.health),
            encode_query(&self.config_status),
            encode_query(sort)
        );
        if let Some(c) = cursor {
            u.push_str("&cursor=");
            u.push_str(&encode_query(c));
        }
        u
    }
    fn sort_url(&self, sort: &str) -> String {
        self.url(sort, None)
    }
    fn first_url(&self) -> String {
        self.url(&self.sort, None)
    }
    /// `aria-sort` of a column header.
    fn aria_sort(&self, sort: &str) -> &'static str {
        match (self.sort.as_str() == sort, sort) {
            (true, "last_seen") => "descending",
            (true, _) => "ascending",
            _ => "none",
        }
    }
}

fn parse_sort(s: &str) -> Option<FleetSort> {
    match s {
        "" | "id" => Some(FleetSort::Id),
        "name" => Some(FleetSort::Name),
        "last_seen" => Some(FleetSort::LastSeen),
        _ => None,
    }
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
    /// The SSE URL with the visible rows' ids (live status per row).
    live: String,
    /// The id of a collector just deregistered (a notice).
    deregistered: Option<String>,
}

fn labels_text(l: &Labels, sep: &str) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(sep)
}

async fn list(State(s): State<Arc<AppState>>, v: Viewer, Query(f): Query<Filters>) -> Result<Response, UiError> {
    let layout = v.layout("Collectors", "collectors");
    let bad = |layout, f, error: String| -> Result<Response, UiError> {
        let page = ListPage {
            layout,
            f,
            error: Some(error),
            rows: vec![],
            next: None,
            live: String::new(),
            deregistered: None,
        };
        Ok((StatusCode::BAD_REQUEST, render(&page)?).into_response())
    };
    let labels = match parse_labels(&f.selector) {
        Ok(l) => l,
        Err(e) => {
            return bad(
                layout,
                f,
                format!("Label selector: {e}. Write key=value pairs separated by commas."),
            )
        }
    };
    let Some(sort) = parse_sort(&f.sort) else {
        let e = format!("sort: {:?} is not a sort; use name or last_seen.", f.sort);
        return bad(layout, f, e);
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
        sort,
    };
    let page = s.fleet.list(q).await?;
    let next = page.next_cursor.map(|c| f.url(&f.sort, Some(&c)));
    let ids: Vec<&str> = page.items.iter().map(|c| c.id.as_str()).collect();
    let live = format!("/events/collectors?ids={}", encode_query(&ids.join(",")));
    let rows = page
        .items
        .into_iter()
        .map(|c| Row {
            last_seen: c.last_seen.map(TimeView::new),
            labels: labels_text(&c.labels, ", "),
            c,
        })
        .collect();
    // Only an id is echoed, never free text from the URL.
    let deregistered = uuid::Uuid::parse_str(&f.deregistered).ok().map(|u| u.to_string());
    Ok(render(&ListPage {
        layout,
        f,
        error: None,
        rows,
        next,
        live,
        deregistered,
    })?
    .into_response())
}

#[derive(Deserialize)]
struct LiveIds {
    #[serde(default)]
    ids: String,
}

/// At most this many rows per live stream (a page shows 50).
const LIVE_ROWS: usize = 100;

/// The live status of the rows a page shows (`row.<id>.connection`,
/// `.health`, `.config`), from the shared live view. A row whose collector
/// was deregistered says so.
async fn events(
    State(s): State<Arc<AppState>>,
    _v: Viewer,
    Query(q): Query<LiveIds>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ids: Vec<String> = q
        .ids
        .split(',')
        .filter(|i| !i.is_empty())
        .take(LIVE_ROWS)
        .map(String::from)
        .collect();
    let rx = s.live.subscribe();
    let values = move |st: &LiveState, s: &AppState| row_values(&st.rows(&s.fleet, &ids), &ids);
    Sse::new(live::diff_stream(s, rx, values)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn row_values(rows: &HashMap<String, FleetCollector>, ids: &[String]) -> live::Values {
    let mut m = live::Values::new();
    for id in ids {
        let (conn, health, config) = match rows.get(id) {
            Some(c) => (
                if c.connected { "connected" } else { "disconnected" },
                c.health.as_str(),
                c.config_status.as_str(),
            ),
            None => ("deregistered", "unknown", "none"),
        };
        m.insert(format!("row.{id}.connection"), conn.into());
        m.insert(format!("row.{id}.health"), health.into());
        m.insert(format!("row.{id}.config"), config.into());
    }
    m
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
    /// Valid commits a config can be pinned from, newest first.
    commits: Vec<CommitChoice>,
    /// Whether a config is pinned to this collector.
    pinned: bool,
    /// What an action just did.
    notice: Option<String>,
    /// A new credential to show once (rotation delivered in the answer).
    secret: Option<String>,
    /// An action's refusal.
    action_error: Option<String>,
    history: Vec<HistoryRow>,
    live: String,
}

/// A commit offered by the pin form.
struct CommitChoice {
    commit: String,
    short: String,
    message: String,
}

struct HistoryRow {
    status: String,
    hash: String,
    error: String,
    at: TimeView,
}

/// Served commits, newest first: the one served now and those before it.
fn commit_choices(s: &AppState) -> Vec<CommitChoice> {
    let Some(cs) = &s.config_store else { return vec![] };
    let mut seen = std::collections::BTreeSet::new();
    cs.current()
        .map(|snap| snap.revision.clone())
        .into_iter()
        .chain(
            cs.history()
                .into_iter()
                .filter(|h| !matches!(h.outcome, HistoryOutcome::Refused))
                .map(|h| h.revision),
        )
        .filter(|r| seen.insert(r.commit.clone()))
        .map(|r| CommitChoice {
            short: short_commit(&r.commit),
            message: r.message.lines().next().unwrap_or_default().to_string(),
            commit: r.commit,
        })
        .collect()
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

/// What an action's answer adds to the detail page.
#[derive(Default)]
struct Outcome {
    labels: Option<String>,
    error: Option<String>,
    notice: Option<String>,
    secret: Option<String>,
    action_error: Option<String>,
}

fn detail_page(s: &AppState, v: &Viewer, d: CollectorDetail, o: Outcome) -> DetailPage {
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
                        // Identical files need no diff (the page says so).
                        diff: eff
                            .as_deref()
                            .filter(|e| *e != body.as_str())
                            .map(|e| line_diff(e, body))
                            .unwrap_or_default(),
                        desired: body.clone(),
                        effective: eff,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let history = d
        .status
        .iter()
        .flat_map(|s| s.config_history.iter())
        .map(|t| HistoryRow {
            status: t.status.to_string(),
            hash: t.hash.chars().take(12).collect(),
            error: t.error_message.clone(),
            at: TimeView::new(t.at),
        })
        .collect();
    DetailPage {
        layout: v.layout(format!("Collector {}", d.summary.name), "collectors"),
        last_seen: d.summary.last_seen.map(TimeView::new),
        labels: o.labels.unwrap_or_else(|| labels_text(&d.summary.labels, "\n")),
        health,
        files,
        error: o.error,
        commits: commit_choices(s),
        pinned: d.desired.as_ref().is_some_and(|x| x.source == "assignment"),
        notice: o.notice,
        secret: o.secret,
        action_error: o.action_error,
        history,
        live: format!("/events/collectors?ids={}", encode_query(&d.summary.id)),
        d,
    }
}

#[derive(Deserialize)]
struct Done {
    #[serde(default)]
    done: String,
}

/// The notice for an action that redirected back here (a fixed text per
/// action: nothing from the URL is echoed).
fn done_notice(done: &str) -> Option<String> {
    Some(
        match done {
            "restart" => "Restart requested. The instance holding the collector's connection delivers it.",
            "pinned" => "Config pinned: the collector now gets it whatever the routes say.",
            "unpinned" => "Pin cleared: the collector follows the routes again.",
            "rotated" => "Credential rotation started: the collector is offered its new credential on its connection; the old one stays valid until it reconnects with the new one or the overlap ends.",
            _ => return None,
        }
        .to_string(),
    )
}

async fn detail(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Path(id): Path<String>,
    Query(q): Query<Done>,
) -> Result<Html<String>, UiError> {
    let d = s.fleet.detail(&id).await?;
    let o = Outcome {
        notice: done_notice(&q.done),
        ..Default::default()
    };
    render(&detail_page(&s, &v, d, o))
}

fn back(id: &str, done: &str) -> Response {
    Redirect::to(&format!("/collectors/{}?done={done}", encode_query(id))).into_response()
}

/// The detail page again with an action's refusal (validation, conflict).
async fn refused(s: &AppState, v: &Viewer, id: &str, status: StatusCode, msg: String) -> Result<Response, UiError> {
    let d = s.fleet.detail(id).await?;
    let o = Outcome {
        action_error: Some(msg),
        ..Default::default()
    };
    Ok((status, render(&detail_page(s, v, d, o))?).into_response())
}

/// Ask the collector to restart: the REST API's `POST …/restart`.
async fn restart(State(s): State<Arc<AppState>>, v: Viewer, Path(id): Path<String>) -> Result<Response, UiError> {
    s.domain.queue_command(&v.actor, &id, "restart").await?;
    Ok(back(&id, "restart"))
}

#[derive(Deserialize)]
struct PinForm {
    /// A served commit's full id; empty clears the pin.
    #[serde(default)]
    commit: String,
}

/// Pin the collector to its render at a served commit (the rendered YAML
/// becomes its pinned config, as `PUT …/config` would store it), or clear
/// the pin (`DELETE …/config`).
async fn pin(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Path(id): Path<String>,
    Form(f): Form<PinForm>,
) -> Result<Response, UiError> {
    if id == DEFAULT_ASSIGNMENT {
        return Err(UiError::new(StatusCode::NOT_FOUND, "no such collector"));
    }
    let commit = f.commit.trim();
    if commit.is_empty() {
        s.domain.delete_assignment(&v.actor, &id).await?;
        return Ok(back(&id, "unpinned"));
    }
    let Some(cs) = &s.config_store else {
        let msg = "Pin: no config store is configured, so there is no commit to pin from.".to_string();
        return refused(&s, &v, &id, StatusCode::UNPROCESSABLE_ENTITY, msg).await;
    };
    let snap = match cs.checked_commit(commit).await {
        Ok(snap) => snap,
        Err(e) => {
            let msg = format!("Pin: commit {}: {e}", short_commit(commit));
            return refused(&s, &v, &id, StatusCode::UNPROCESSABLE_ENTITY, msg).await;
        }
    };
    let d = s.fleet.detail(&id).await?;
    let r = snap.render(&d.summary.labels);
    if r.pipelines.is_empty() {
        let msg = format!(
            "Pin: at commit {} no route matches this collector's labels, so there is no config to pin.",
            short_commit(commit)
        );
        return refused(&s, &v, &id, StatusCode::UNPROCESSABLE_ENTITY, msg).await;
    }
    let files = [(
        RENDERED_FILE.to_string(),
        AssignedFile {
            body: r.yaml,
            content_type: "application/yaml".into(),
        },
    )]
    .into();
    s.domain.set_assignment(&v.actor, &id, files).await?;
    Ok(back(&id, "pinned"))
}

/// Rotate the collector's credential: the REST API's
/// `POST …/rotate-credential`. A credential returned in the answer is shown
/// once, on this page (never in a URL).
async fn rotate(State(s): State<Arc<AppState>>, v: Viewer, Path(id): Path<String>) -> Result<Response, UiError> {
    let r = s.fleet.rotate_credential(&v.actor, &id).await?;
    let Some(secret) = r.credential else {
        return Ok(back(&id, "rotated"));
    };
    let d = s.fleet.detail(&id).await?;
    let o = Outcome {
        notice: Some(
            "Credential rotated: the old credentials are revoked. Install this one on the collector now; it is shown only once."
                .into(),
        ),
        secret: Some(secret),
        ..Default::default()
    };
    Ok(render(&detail_page(&s, &v, d, o))?.into_response())
}

#[derive(Deserialize)]
struct DeregisterForm {
    version: u64,
    /// The collector's name, typed to confirm (works without scripts).
    #[serde(default)]
    confirm_name: String,
}

/// Deregister the collector: the REST API's `DELETE /collectors/{id}`,
/// guarded by the version the page showed.
async fn deregister(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Path(id): Path<String>,
    Form(f): Form<DeregisterForm>,
) -> Result<Response, UiError> {
    let d = s.fleet.detail(&id).await?;
    if f.confirm_name.trim() != d.summary.name {
        let msg = format!(
            "Deregister: type the collector's name, {}, in the confirmation field.",
            d.summary.name
        );
        return refused(&s, &v, &id, StatusCode::UNPROCESSABLE_ENTITY, msg).await;
    }
    match s.domain.deregister_collector(&v.actor, &id, Some(f.version)).await {
        Ok(()) => Ok(Redirect::to(&format!("/collectors?deregistered={}", encode_query(&id))).into_response()),
        Err(DomainError::Conflict { .. }) => {
            let msg = "Deregister: the collector changed since this page was loaded. Review it below and try again."
                .to_string();
            refused(&s, &v, &id, StatusCode::CONFLICT, msg).await
        }
        Err(e) => Err(e.into()),
    }
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
    let o = Outcome {
        labels: Some(f.labels),
        error: Some(msg),
        ..Default::default()
    };
    let page = detail_page(&s, &v, d, o);
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
