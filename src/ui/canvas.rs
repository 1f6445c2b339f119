//! The routing canvas page: the served commit as a graph — routes
//! (selector, priority, matched collectors) -> pipelines -> sources,
//! processor chain, destinations — rendered as SVG on the server, so it is
//! readable before (and without) scripts. `canvas.js` adds pan, zoom and
//! dragging, saves the layout and notes as the canvas document (versioned:
//! a stale save opens a conflict dialog), and edits routes as a draft with
//! the impact preview, then Publish or Download patch — all through the
//! REST API (`/api/v1/canvas`, `/api/v1/routing/...`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::layout::{render, Layout, UiError, Viewer};
use super::view::short_commit;
use crate::api::AppState;
use crate::configstore::draft::Graph;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/routing", get(page))
}

/// Node size and spacing of the default layout (columns left to right).
const NODE_W: i64 = 200;
const NODE_H: i64 = 58;
const COL_GAP: i64 = 60;
const ROW_GAP: i64 = 16;
const MARGIN: i64 = 20;

/// One node as drawn.
#[derive(Debug, Clone, Serialize)]
struct Node {
    /// `route:NAME`, `pipeline:NAME`, `source:NAME`, ...
    id: String,
    kind: &'static str,
    title: String,
    /// Second line: selector, signals or component type.
    detail: String,
    /// Third line (routes: priority and matched collectors).
    extra: String,
    x: i64,
    y: i64,
}

#[derive(Debug, Clone, Serialize)]
struct Edge {
    from: String,
    to: String,
    /// Path of the default layout; the script redraws it on drag.
    d: String,
}

#[derive(askama::Template)]
#[template(path = "canvas.html")]
struct CanvasPage {
    layout: Layout,
    css_url: String,
    js_url: String,
    commit: String,
    commit_short: String,
    message: String,
    graph: Option<Graph>,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    width: i64,
    height: i64,
    notes: String,
    /// JSON for canvas.js (in a non-executable `application/json` block,
    /// which the CSP allows): graph, canvas document and version.
    data: String,
    publish_allowed: bool,
    publish_reason: String,
}

/// `(x, y)` saved for a node in the canvas document, if any.
fn saved(doc: &serde_json::Value, id: &str) -> Option<(i64, i64)> {
    let p = doc.get("nodes")?.get(id)?;
    Some((p.get("x")?.as_i64()?, p.get("y")?.as_i64()?))
}

fn layout_nodes(g: &Graph, doc: &serde_json::Value) -> Vec<Node> {
    let mut cols: Vec<Vec<Node>> = vec![Vec::new(); 5];
    let node = |kind: &'static str, name: &str, detail: String, extra: String| Node {
        id: format!("{kind}:{name}"),
        kind,
        title: name.to_string(),
        detail,
        extra,
        x: 0,
        y: 0,
    };
    for r in &g.routes {
        let fin = if r.is_final { " · final" } else { "" };
        cols[0].push(node(
            "route",
            &r.name,
            r.selector_text.clone(),
            format!("priority {}{fin} · {} matched", r.priority, r.matched),
        ));
    }
    for p in &g.pipelines {
        let signals: Vec<&str> = p.signals.iter().map(|s| s.as_str()).collect();
        let chain = if p.processors.is_empty() {
            "no processors".to_string()
        } else {
            p.processors.join(" → ")
        };
        cols[1].push(node("pipeline", &p.name, signals.join(", "), chain));
    }
    for (i, (kind, list)) in [
        ("source", &g.sources),
        ("processor", &g.processors),
        ("destination", &g.destinations),
    ]
    .into_iter()
    .enumerate()
    {
        for c in list {
            cols[i + 2].push(node(kind, &c.name, c.component_type.clone(), String::new()));
        }
    }
    let mut out = Vec::new();
    for (ci, col) in cols.into_iter().enumerate() {
        for (ri, mut n) in col.into_iter().enumerate() {
            let (x, y) = saved(doc, &n.id).unwrap_or((
                MARGIN + ci as i64 * (NODE_W + COL_GAP),
                MARGIN + ri as i64 * (NODE_H + ROW_GAP),
            ));
            n.x = x;
            n.y = y;
            out.push(n);
        }
    }
    out
}

/// A curve from the right middle of `a` to the left middle of `b`.
pub fn edge_path(a: (i64, i64), b: (i64, i64)) -> String {
    let (x1, y1) = (a.0 + NODE_W, a.1 + NODE_H / 2);
    let (x2, y2) = (b.0, b.1 + NODE_H / 2);
    let dx = ((x2 - x1) / 2).max(30);
    format!("M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}", x1 + dx, x2 - dx)
}

fn edges(g: &Graph, nodes: &[Node]) -> Vec<Edge> {
    let at: BTreeMap<&str, (i64, i64)> = nodes.iter().map(|n| (n.id.as_str(), (n.x, n.y))).collect();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for r in &g.routes {
        for p in &r.route.pipelines {
            pairs.push((format!("route:{}", r.name), format!("pipeline:{p}")));
        }
    }
    for p in &g.pipelines {
        let pid = format!("pipeline:{}", p.name);
        pairs.extend(p.sources.iter().map(|s| (pid.clone(), format!("source:{s}"))));
        pairs.extend(p.processors.iter().map(|s| (pid.clone(), format!("processor:{s}"))));
        pairs.extend(p.destinations.iter().map(|s| (pid.clone(), format!("destination:{s}"))));
    }
    pairs
        .into_iter()
        .filter_map(|(from, to)| {
            let d = edge_path(*at.get(from.as_str())?, *at.get(to.as_str())?);
            Some(Edge { from, to, d })
        })
        .collect()
}

/// JSON safe inside `<script type="application/json">`: no `</script>`.
fn script_json(v: &serde_json::Value) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c")
}

async fn page(State(s): State<Arc<AppState>>, v: Viewer) -> Result<Html<String>, UiError> {
    let canvas = s.domain.get_canvas(&v.actor).await?;
    let publish = s.config_store.as_ref().map(|c| c.publish_mode());
    let (revision, graph) = crate::api::routing::served_graph(&s, &v.actor).await?.unzip();
    let nodes = graph
        .as_ref()
        .map(|g| layout_nodes(g, &canvas.document))
        .unwrap_or_default();
    let edges = graph.as_ref().map(|g| edges(g, &nodes)).unwrap_or_default();
    let width = nodes.iter().map(|n| n.x + NODE_W).max().unwrap_or(0) + MARGIN;
    let height = nodes.iter().map(|n| n.y + NODE_H).max().unwrap_or(0) + MARGIN;
    let notes = canvas
        .document
        .get("notes")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let commit = revision.as_ref().map(|r| r.commit.clone()).unwrap_or_default();
    let data = serde_json::json!({
        "commit": commit,
        "graph": graph,
        "canvas": canvas,
        "can_edit": v.layout("", "").can_edit(),
        "publish": publish,
    });
    render(&CanvasPage {
        layout: v.layout("Routing", "routing"),
        css_url: super::assets::url("canvas.css"),
        js_url: super::assets::url("canvas.js"),
        commit_short: short_commit(&commit),
        commit,
        message: revision
            .map(|r| r.message.lines().next().unwrap_or_default().to_string())
            .unwrap_or_default(),
        graph,
        nodes,
        edges,
        width: width.max(400),
        height: height.max(200),
        notes,
        data: script_json(&data),
        publish_allowed: publish.as_ref().is_some_and(|p| p.allowed),
        publish_reason: publish.and_then(|p| p.reason).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_positions_win_over_the_default_layout() {
        let doc = serde_json::json!({"nodes": {"route:a": {"x": 500, "y": 7}}});
        assert_eq!(saved(&doc, "route:a"), Some((500, 7)));
        assert_eq!(saved(&doc, "route:b"), None);
        assert_eq!(edge_path((0, 0), (260, 0)), "M200,29 C230,29 230,29 260,29");
        assert_eq!(script_json(&serde_json::json!("</script>")), "\"\\u003c/script>\"");
    }
}
