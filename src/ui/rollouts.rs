//! Staged rollouts (`/rollouts`, every role): the current rollout with its
//! waves (which collectors each takes, state, counts, every gate's last
//! result, bake) and the last finished rollouts; editors and admins get
//! pause, resume, abort and promote, each asking for confirmation naming
//! the rollout's commit. The actions call the same domain function as
//! `POST /api/v1/rollouts/{id}/…` (role-checked and audited there, so a
//! viewer's forged POST is refused whatever the page shows).
//!
//! Live progress: the page's rollout section is also served alone at
//! `/rollouts/live`, and app.js re-fetches it every 2 s while the page is
//! visible (`data-refresh`). That is one read of the one rollout record per
//! open page and tick — no fleet scan — so it needs no shared watcher like
//! the fleet's live view.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::layout::{encode_query, render, Layout, UiError, Viewer};
use super::view::{short_commit, TimeView};
use crate::api::AppState;
use crate::configstore::draft::selector_text;
use crate::configstore::{HistoryEntry, RolloutPolicy, REST_WAVE};
use crate::domain::rollout::{GateResult, Rollout, RolloutAction, RolloutState, WaveCounts, WaveState};
use crate::domain::{DomainError, Role};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/rollouts", get(page))
        .route("/rollouts/live", get(live))
        .route("/rollouts/{id}/action", post(act))
}

/// A commit as the page names it: short id, and its message when this
/// instance's history knows it.
pub struct CommitView {
    pub full: String,
    pub short: String,
    pub message: Option<String>,
}

impl CommitView {
    fn new(commit: &str, history: &[HistoryEntry]) -> Self {
        CommitView {
            full: commit.to_string(),
            short: short_commit(commit),
            message: history
                .iter()
                .find(|h| h.revision.commit == commit)
                .map(|h| h.revision.message.lines().next().unwrap_or_default().to_string()),
        }
    }
    /// `abc123def456 (“Raise batch size”)`, for confirmations.
    fn named(&self) -> String {
        match &self.message {
            Some(m) => format!("{} (“{m}”)", self.short),
            None => self.short.clone(),
        }
    }
}

pub struct WaveRow {
    pub name: String,
    pub state: String,
    /// Reached at some point: its counts mean something (a pending wave's
    /// collectors are only counted once it is reached).
    pub counted: bool,
    /// The wave the rollout is at.
    pub current: bool,
    /// Which collectors it takes: `env=staging, 10%`.
    pub scope: String,
    /// `15m`, or `none`.
    pub bake: String,
    pub counts: WaveCounts,
    pub gates: Vec<GateResult>,
    pub reached: Option<TimeView>,
    pub passed: Option<TimeView>,
    /// While baking: when the bake is over (if the gates keep passing).
    pub bake_ends: Option<TimeView>,
    pub promoted: bool,
    /// (gate, message, collectors named, when).
    pub failure: Option<(String, String, Vec<String>, TimeView)>,
}

/// An action the current state allows.
pub struct ActionView {
    pub action: &'static str,
    pub label: String,
    pub confirm: String,
    pub danger: bool,
}

pub struct RolloutRow {
    pub id: String,
    pub state: &'static str,
    pub commit: CommitView,
    pub baseline: Option<CommitView>,
    pub started: TimeView,
    pub updated: TimeView,
    pub finished: Option<TimeView>,
    pub reason: Option<String>,
    pub superseded_by: Option<String>,
    /// `2 of 3`, for the current wave.
    pub position: String,
    /// `2 of 3` waves passed.
    pub passed: String,
    pub gates: String,
    pub waves: Vec<WaveRow>,
    pub actions: Vec<ActionView>,
}

/// What the live part of the page shows.
pub struct LiveData {
    pub configured: bool,
    pub can_edit: bool,
    pub current: Option<RolloutRow>,
    pub past: Vec<RolloutRow>,
}

fn wave_state(s: WaveState) -> &'static str {
    match s {
        WaveState::Pending => "pending",
        WaveState::RollingOut => "rolling out",
        WaveState::Baking => "baking",
        WaveState::Passed => "passed",
        WaveState::RolledBack => "rolled back",
    }
}

fn duration_text(d: Duration) -> String {
    if d.is_zero() {
        "none".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// The policy's gates as one sentence.
fn gates_text(p: Option<&RolloutPolicy>) -> String {
    let Some(p) = p else {
        return "no policy: every collector at once".into();
    };
    let g = &p.gates;
    let mut parts = vec![format!(
        "connected collectors apply within {}",
        duration_text(g.apply_timeout)
    )];
    if g.healthy {
        parts.push("stay healthy".into());
    }
    if let Some(m) = g.max_send_failure_increase {
        parts.push(format!("failed exporter sends rise by at most {:.1} points", m * 100.0));
    }
    parts.join("; ")
}

fn wave_rows(r: &Rollout) -> Vec<WaveRow> {
    let policy = r.policy.as_ref();
    r.waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let spec = policy.and_then(|p| p.waves.iter().find(|pw| pw.name == w.name));
            let scope = match spec {
                Some(s) => {
                    let sel = s.selector.as_ref().map_or("any collector".to_string(), selector_text);
                    match s.percent {
                        Some(p) => format!("{sel}, {p}% of those no earlier wave took"),
                        None => format!("{sel}, all no earlier wave took"),
                    }
                }
                None if w.name == REST_WAVE => "every collector no earlier wave took".into(),
                None => "—".into(),
            };
            let bake = spec.map_or(Duration::ZERO, |s| s.bake);
            // An aborted or superseded rollout leaves its last wave as it
            // was; say that it stopped there rather than show it baking.
            let stopped = !r.state.is_active()
                && r.state != RolloutState::Completed
                && matches!(w.state, WaveState::RollingOut | WaveState::Baking);
            let state = if stopped {
                format!("stopped ({})", wave_state(w.state))
            } else {
                wave_state(w.state).to_string()
            };
            let bake_ends = (w.state == WaveState::Baking && !w.promoted && !stopped)
                .then(|| w.gates_passed_at.map(|t| TimeView::new(t.plus(bake))))
                .flatten();
            WaveRow {
                name: w.name.clone(),
                state,
                counted: w.reached_at.is_some(),
                current: i == r.wave && r.state.is_active(),
                scope,
                bake: duration_text(bake),
                counts: w.counts,
                gates: w.gates.clone(),
                reached: w.reached_at.map(TimeView::new),
                passed: w.passed_at.map(TimeView::new),
                bake_ends,
                promoted: w.promoted,
                failure: w.failure.as_ref().map(|f| {
                    (
                        f.gate.clone(),
                        f.message.clone(),
                        f.collectors.clone(),
                        TimeView::new(f.at),
                    )
                }),
            }
        })
        .collect()
}

/// The actions `crate::domain::rollout` accepts in this state.
fn actions(r: &Rollout, commit: &CommitView, baseline: Option<&CommitView>) -> Vec<ActionView> {
    let wave = r.waves.get(r.wave).map(|w| w.name.as_str()).unwrap_or("?");
    let named = commit.named();
    let back_to = baseline.map_or("the config it had before".to_string(), |b| {
        format!("the baseline commit {}", b.named())
    });
    let pause = ActionView {
        action: "pause",
        label: "Pause".into(),
        confirm: format!("Pause the rollout of {named}? No further wave is reached until it is resumed."),
        danger: false,
    };
    let resume = |label: String, confirm: String| ActionView {
        action: "resume",
        label,
        confirm,
        danger: false,
    };
    let promote = ActionView {
        action: "promote",
        label: format!("Promote wave {wave}"),
        confirm: format!(
            "Promote wave “{wave}” of the rollout of {named}? The rest of its bake is skipped: the next wave is reached as soon as its gates pass."
        ),
        danger: false,
    };
    let abort = ActionView {
        action: "abort",
        label: "Abort".into(),
        confirm: format!("Abort the rollout of {named}? Every collector goes back to {back_to}."),
        danger: true,
    };
    match r.state {
        RolloutState::Running => vec![pause, promote, abort],
        RolloutState::Paused => vec![
            resume(
                "Resume".into(),
                format!("Resume the rollout of {named}? Waves are reached again as their gates pass."),
            ),
            promote,
            abort,
        ],
        RolloutState::Halted => vec![
            resume(
                format!("Retry wave {wave}"),
                format!(
                    "Retry wave “{wave}” of the rollout of {named}? Its collectors get the new config again and its gates start over."
                ),
            ),
            abort,
        ],
        RolloutState::Completed | RolloutState::Aborted | RolloutState::Superseded => Vec::new(),
    }
}

fn row(r: &Rollout, history: &[HistoryEntry]) -> RolloutRow {
    let commit = CommitView::new(&r.commit, history);
    let baseline = r.baseline.as_deref().map(|b| CommitView::new(b, history));
    let actions = actions(r, &commit, baseline.as_ref());
    RolloutRow {
        id: r.id.clone(),
        state: r.state.as_str(),
        position: if r.waves.is_empty() {
            "all at once".into()
        } else {
            format!("{} of {}", (r.wave + 1).min(r.waves.len()), r.waves.len())
        },
        passed: if r.waves.is_empty() {
            "all at once".into()
        } else {
            format!(
                "{} of {}",
                r.waves.iter().filter(|w| w.state == WaveState::Passed).count(),
                r.waves.len()
            )
        },
        gates: gates_text(r.policy.as_ref()),
        waves: wave_rows(r),
        started: TimeView::new(r.started_at),
        updated: TimeView::new(r.updated_at),
        finished: r.finished_at.map(TimeView::new),
        reason: r.reason.clone(),
        superseded_by: r.superseded_by.as_deref().map(short_commit),
        commit,
        baseline,
        actions,
    }
}

/// One line about the current rollout, for the config page.
pub struct RolloutSummary {
    pub state: &'static str,
    pub commit: String,
    /// `wave canary, 1 of 3`; empty when it finished.
    pub wave: String,
}

/// The current rollout in one line (viewer), or `None` before the first.
pub async fn current_summary(s: &AppState, v: &Viewer) -> Result<Option<RolloutSummary>, DomainError> {
    let record = s.domain.rollouts(&v.actor).await?;
    Ok(record.and_then(|r| r.value.current).map(|r| RolloutSummary {
        state: r.state.as_str(),
        commit: short_commit(&r.commit),
        wave: match r.waves.get(r.wave) {
            Some(w) if r.state.is_active() => format!("wave {}, {} of {}", w.name, r.wave + 1, r.waves.len()),
            _ => String::new(),
        },
    }))
}

async fn live_data(s: &AppState, v: &Viewer) -> Result<LiveData, UiError> {
    let record = s.domain.rollouts(&v.actor).await?;
    let history = s.config_store.as_ref().map(|c| c.history()).unwrap_or_default();
    let (current, past) = match record {
        Some(rec) => (
            rec.value.current.as_ref().map(|r| row(r, &history)),
            rec.value.past.iter().map(|r| row(r, &history)).collect(),
        ),
        None => (None, Vec::new()),
    };
    Ok(LiveData {
        configured: s.config_store.is_some(),
        can_edit: v.role >= Role::Editor,
        current,
        past,
    })
}

#[derive(askama::Template)]
#[template(path = "rollouts.html")]
struct RolloutsPage {
    layout: Layout,
    live: LiveData,
    notice: Option<String>,
    error: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "rollouts_live.html")]
struct LiveFragment {
    live: LiveData,
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    /// Set by the redirect after an action, to say it happened.
    done: Option<String>,
}

async fn page(State(s): State<Arc<AppState>>, v: Viewer, Query(q): Query<PageQuery>) -> Result<Html<String>, UiError> {
    let notice = q.done.as_deref().and_then(|d| {
        Some(match d {
            "pause" => "Rollout paused: no further wave is reached until it is resumed.",
            "resume" => "Rollout resumed.",
            "abort" => "Rollout aborted: every collector goes back to the baseline.",
            "promote" => "Wave promoted: the next wave is reached as soon as its gates pass.",
            _ => return None,
        })
    });
    render(&RolloutsPage {
        live: live_data(&s, &v).await?,
        layout: v.layout("Rollouts", "rollouts"),
        notice: notice.map(String::from),
        error: None,
    })
}

async fn live(State(s): State<Arc<AppState>>, v: Viewer) -> Result<Html<String>, UiError> {
    render(&LiveFragment {
        live: live_data(&s, &v).await?,
    })
}

#[derive(Debug, Default, Deserialize)]
struct ActionForm {
    #[serde(default)]
    action: String,
    #[serde(default)]
    reason: String,
}

async fn act(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Result<Response, UiError> {
    let action = match f.action.as_str() {
        "pause" => RolloutAction::Pause,
        "resume" => RolloutAction::Resume,
        "abort" => RolloutAction::Abort,
        "promote" => RolloutAction::Promote,
        other => {
            return Err(UiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("action: {other:?} is not pause, resume, abort or promote"),
            ))
        }
    };
    let reason = Some(f.reason.as_str()).filter(|r| !r.trim().is_empty());
    match s.domain.rollout_action(&v.actor, &id, action, reason).await {
        Ok(_) => Ok(Redirect::to(&format!("/rollouts?done={}", encode_query(&f.action))).into_response()),
        // The rollout moved on since the page was drawn (another operator,
        // or the driver): show it as it is now, with why nothing happened.
        Err(e @ (DomainError::Invalid { .. } | DomainError::NotFound { .. } | DomainError::Conflict { .. })) => {
            let error = Some(format!("Nothing was changed: {e}"));
            let status = UiError::from(e).status;
            let page = RolloutsPage {
                live: live_data(&s, &v).await?,
                layout: v.layout("Rollouts", "rollouts"),
                notice: None,
                error,
            };
            Ok((status, render(&page)?).into_response())
        }
        Err(e) => Err(e.into()),
    }
}
