//! The fleet config page: the served revision, the last attempt with every
//! error (file, key path, message), the served resources by kind, how many
//! collectors each route applies to now, and a render preview for a label
//! set (the YAML a collector with those labels would get, or why none).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::collectors::parse_labels;
use super::layout::{render, Layout, UiError, Viewer};
use super::overview::{config_state, ConfigState};
use super::rollouts::{current_summary, RolloutSummary};
use crate::api::AppState;
use crate::configstore::{Rendered, Resources, Snapshot};
use crate::domain::Labels;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/config", get(page))
}

#[derive(Debug, Default, Deserialize)]
struct PreviewQuery {
    /// `k=v` pairs, one per line or comma-separated; absent: no preview.
    labels: Option<String>,
}

/// The answer of the render preview.
enum Preview {
    Rendered(Rendered),
    /// Nothing to render, and why (bad labels, no route matches).
    Refused(String),
}

#[derive(askama::Template)]
#[template(path = "config.html")]
struct ConfigPage {
    layout: Layout,
    config: ConfigState,
    url: String,
    branch: String,
    snapshot: Option<Arc<Snapshot>>,
    /// Route name -> collectors it applies to now.
    applied: BTreeMap<String, usize>,
    /// Collectors known to the live view (for "n of m").
    fleet_size: usize,
    labels: String,
    preview: Option<Preview>,
    /// The current staged rollout, linked to the Rollouts page.
    rollout: Option<RolloutSummary>,
}

/// Routes in the order the renderer applies them: priority, highest
/// first, ties by name.
fn route_order(res: &Resources) -> Vec<&String> {
    let mut names: Vec<&String> = res.routes.keys().collect();
    names.sort_by_key(|n| (std::cmp::Reverse(res.routes[*n].priority), *n));
    names
}

/// How many collectors each route applies to: a matching route applies
/// unless a higher final route matched first (the renderer's rule).
/// Counted on the live view in memory, one pass over the fleet.
fn applied_counts<'a>(res: &Resources, fleet: impl Iterator<Item = &'a Labels>) -> BTreeMap<String, usize> {
    let order = route_order(res);
    let mut counts: BTreeMap<String, usize> = order.iter().map(|n| ((*n).clone(), 0)).collect();
    for labels in fleet {
        for name in &order {
            let r = &res.routes[*name];
            if r.selector.matches(labels) {
                *counts.entry((*name).clone()).or_default() += 1;
                if r.is_final {
                    break;
                }
            }
        }
    }
    counts
}

fn preview(snapshot: Option<&Snapshot>, text: &str) -> Preview {
    let Some(snap) = snapshot else {
        return Preview::Refused("No valid commit is served, so there is nothing to render.".into());
    };
    let labels = match parse_labels(text) {
        Ok(l) => l,
        Err(e) => return Preview::Refused(format!("Labels: {e}. Write one key=value per line.")),
    };
    let r = snap.render(&labels);
    if r.pipelines.is_empty() {
        return Preview::Refused(
            "No route matches these labels: a collector with them gets no config from the repository \
             (only a pinned config or the fleet default)."
                .into(),
        );
    }
    Preview::Rendered(r)
}

async fn page(State(s): State<Arc<AppState>>, v: Viewer, Query(q): Query<PreviewQuery>) -> Result<Response, UiError> {
    let (url, branch) = s
        .config_store
        .as_ref()
        .map(|c| {
            let st = c.status();
            (st.url, st.branch)
        })
        .unwrap_or_default();
    let snapshot = s.config_store.as_ref().and_then(|c| c.current());
    let live = s.live.latest(&s.fleet).await?;
    let applied = snapshot
        .as_ref()
        .map(|snap| {
            let fleet = live.label_sets.iter().flat_map(|(l, n)| std::iter::repeat_n(&**l, *n));
            applied_counts(&snap.resources, fleet)
        })
        .unwrap_or_default();
    let preview = q.labels.as_deref().map(|t| preview(snapshot.as_deref(), t));
    let status = match preview {
        Some(Preview::Refused(_)) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    let page = ConfigPage {
        layout: v.layout("Config", "config"),
        config: config_state(&s),
        url,
        branch,
        snapshot,
        applied,
        fleet_size: live.summary.total as usize,
        labels: q.labels.unwrap_or_default(),
        preview,
        rollout: current_summary(&s, &v).await?,
    };
    Ok((status, render(&page)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_route_counts_the_collectors_it_applies_to_and_a_final_one_hides_those_below() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/fleet-config");
        let res = crate::configstore::load_dir(&dir).unwrap();
        let fleet = [
            // Canary: the final canaries route only, though it is a Linux app host.
            labels(&[("ring", "canary"), ("role", "app"), ("env", "prod"), ("os", "linux")]),
            labels(&[("role", "app"), ("env", "prod"), ("os", "linux")]),
            labels(&[("env", "dev"), ("os", "linux")]),
            labels(&[]),
        ];
        let counts = applied_counts(&res, fleet.iter());
        assert_eq!(counts["canaries"], 1);
        assert_eq!(counts["applications"], 1);
        assert_eq!(counts["linux-hosts"], 2);
        assert_eq!(counts["gateways"], 0);
        assert_eq!(counts.len(), res.routes.len(), "every route has a count");
    }

    #[test]
    fn the_preview_renders_or_says_why_not() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/fleet-config");
        let snap = Snapshot {
            revision: crate::configstore::Revision {
                commit: "0".repeat(40),
                time: crate::clock::Timestamp(0),
                author: "t".into(),
                message: "t".into(),
            },
            resources: crate::configstore::load_dir(&dir).unwrap(),
        };
        match preview(Some(&snap), "env=dev\nos=linux") {
            Preview::Rendered(r) => assert_eq!(r.routes, ["linux-hosts"]),
            Preview::Refused(e) => panic!("refused: {e}"),
        }
        assert!(matches!(preview(Some(&snap), "env=dev"), Preview::Refused(e) if e.contains("No route matches")));
        assert!(matches!(preview(Some(&snap), "oops"), Preview::Refused(e) if e.contains("\"oops\" is not key=value")));
        assert!(matches!(preview(None, "env=dev"), Preview::Refused(_)));
    }
}
