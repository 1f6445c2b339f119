//! Route drafts: a set of route changes (create, replace, remove) made
//! against a base commit, applied to that commit's TOML files as text edits
//! (comments and layout of everything else kept), then checked as a whole
//! with exactly the rules a pushed commit goes through (`load_files`).
//!
//! From the edited files it answers what a person needs before anything
//! happens: the TOML diff of each changed file, which collectors' rendered
//! config would change, and a render diff for one of them. It is pure: the
//! caller supplies the base commit's files and the collectors; turning a
//! draft into a commit or a patch is `super::publish`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, TableLike, Value};
use utoipa::ToSchema;

use super::parse::SourceFile;
use super::schema::{Resources, Route, Selector};
use super::{key_segment, load_files, ValidationError};

/// Where a draft's new routes go when the change names no file.
pub const DEFAULT_ROUTES_FILE: &str = "routes.toml";
/// At most this many affected collectors are listed (all are counted).
pub const MAX_LISTED: usize = 500;

/// One change of a draft.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteChange {
    /// Create the route `name`, or replace every field of the existing one
    /// (it stays in the file that defines it).
    Set {
        name: String,
        route: Route,
        /// For a new route: the file (relative to the config directory) to
        /// add it to; default: the file holding most routes, else
        /// `routes.toml`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    /// Remove the route `name`.
    Remove { name: String },
}

impl RouteChange {
    pub fn name(&self) -> &str {
        match self {
            RouteChange::Set { name, .. } | RouteChange::Remove { name } => name,
        }
    }
}

/// One file the draft changes, before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEdit {
    /// Relative to the config directory.
    pub path: String,
    /// `None` for a file the draft creates.
    pub before: Option<String>,
    pub after: String,
}

/// A draft applied to the base files.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Only the files that change, by path.
    pub edits: Vec<FileEdit>,
    /// The whole config after the draft: every rule's verdict.
    pub result: Result<Resources, Vec<ValidationError>>,
}

/// Apply `changes` to the base commit's `files` (whose parsed resources are
/// `base`; `None` when the base commit itself is invalid). `Err` are
/// problems of the draft itself (a route removed that does not exist, a
/// file that is not a config file), named by file and key.
pub fn apply(
    files: &[SourceFile],
    base: Option<&Resources>,
    changes: &[RouteChange],
) -> Result<Applied, Vec<ValidationError>> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut by_file: BTreeMap<String, Vec<&RouteChange>> = BTreeMap::new();
    let default_file = default_routes_file(base);
    for c in changes {
        let name = c.name();
        let key = format!("routes.{}", key_segment(name));
        if name.is_empty() {
            errors.push(ValidationError::new("", "routes", "a route needs a name"));
            continue;
        }
        if !seen.insert(name.to_string()) {
            errors.push(ValidationError::new(
                "",
                key,
                "changed twice in one draft; send one change per route",
            ));
            continue;
        }
        let existing = base.and_then(|b| b.routes.get(name));
        let file = match (c, existing) {
            (RouteChange::Remove { .. }, None) => {
                errors.push(ValidationError::new(
                    "",
                    key,
                    format!("there is no route {name:?} to remove"),
                ));
                continue;
            }
            (RouteChange::Set { file: Some(f), .. }, Some(r)) if *f != r.file => {
                errors.push(ValidationError::new(
                    f.as_str(),
                    key,
                    format!(
                        "route {name:?} is defined in {}; a draft does not move routes between files",
                        r.file
                    ),
                ));
                continue;
            }
            (_, Some(r)) => r.file.clone(),
            (RouteChange::Set { file: Some(f), .. }, None) => match check_path(f) {
                Ok(()) => f.clone(),
                Err(m) => {
                    errors.push(ValidationError::new(f.as_str(), key, m));
                    continue;
                }
            },
            (RouteChange::Set { file: None, .. }, None) => default_file.clone(),
        };
        by_file.entry(file).or_default().push(c);
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut edits = Vec::new();
    for (path, changes) in by_file {
        let before = files
            .iter()
            .find(|f| f.path == path)
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned());
        let mut doc = match before.as_deref().unwrap_or("").parse::<DocumentMut>() {
            Ok(d) => d,
            Err(e) => {
                errors.push(ValidationError::new(
                    &path,
                    "",
                    format!("TOML syntax: {}", e.message().trim_end()),
                ));
                continue;
            }
        };
        for c in changes {
            if let Err(e) = edit(&mut doc, &path, c, base) {
                errors.push(e);
            }
        }
        let after = doc.to_string();
        if before.as_deref() != Some(after.as_str()) {
            edits.push(FileEdit { path, before, after });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut all: Vec<SourceFile> = files
        .iter()
        .filter(|f| !edits.iter().any(|e| e.path == f.path))
        .cloned()
        .collect();
    all.extend(edits.iter().map(|e| SourceFile {
        path: e.path.clone(),
        bytes: e.after.clone().into_bytes(),
    }));
    all.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Applied {
        edits,
        result: load_files(&all),
    })
}

/// The file new routes go to: the one defining most routes (ties: by
/// path), else `routes.toml`.
fn default_routes_file(base: Option<&Resources>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in base.map(|b| b.routes.values()).into_iter().flatten() {
        *counts.entry(r.file.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map_or_else(|| DEFAULT_ROUTES_FILE.to_string(), |(f, _)| f.to_string())
}

/// A file a draft may create: a relative `.toml` path inside the config
/// directory, no hidden parts (the store would not read it).
fn check_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path.ends_with(".toml")
        && path.split('/').all(|p| !p.is_empty() && !p.starts_with('.'));
    if ok {
        Ok(())
    } else {
        Err("file must be a relative path ending in .toml, without hidden or `..` parts".into())
    }
}

/// Apply one change to a parsed file.
fn edit(doc: &mut DocumentMut, path: &str, c: &RouteChange, base: Option<&Resources>) -> Result<(), ValidationError> {
    let name = c.name();
    let key = format!("routes.{}", key_segment(name));
    let shape_err = || ValidationError::new(path, "routes", "expected a table of named routes");
    match c {
        RouteChange::Remove { .. } => {
            let routes = doc
                .get_mut("routes")
                .and_then(Item::as_table_like_mut)
                .ok_or_else(shape_err)?;
            routes.remove(name);
            Ok(())
        }
        RouteChange::Set { route, .. } => {
            let old = base.and_then(|b| b.routes.get(name));
            if !doc.contains_key("routes") {
                let mut t = Table::new();
                // `[routes.x]` headers only, no empty `[routes]` above them.
                t.set_implicit(true);
                doc.insert("routes", Item::Table(t));
            }
            let routes = doc
                .get_mut("routes")
                .and_then(Item::as_table_like_mut)
                .ok_or_else(shape_err)?;
            match (old, routes.get_mut(name).and_then(Item::as_table_like_mut)) {
                (Some(old), Some(table)) => {
                    update(table, old, route);
                    Ok(())
                }
                (None, None) => {
                    routes.insert(name, Item::Table(new_table(route)));
                    Ok(())
                }
                // Present in the text but not among the parsed routes (its
                // table did not parse), or the other way round.
                _ => Err(ValidationError::new(
                    path,
                    key,
                    "this route's table cannot be edited: fix the file's errors first",
                )),
            }
        }
    }
}

/// Change only the fields that differ, so the diff shows just those.
fn update(t: &mut dyn TableLike, old: &Route, new: &Route) {
    if old.description != new.description {
        match &new.description {
            Some(d) => set(t, "description", Value::from(d.as_str())),
            None => {
                t.remove("description");
            }
        }
    }
    if old.priority != new.priority {
        set(t, "priority", Value::from(new.priority));
    }
    if old.is_final != new.is_final {
        if new.is_final {
            set(t, "final", Value::from(true));
        } else {
            t.remove("final");
        }
    }
    if old.selector != new.selector {
        t.remove("selector");
        if let Some(s) = selector_item(&new.selector) {
            t.insert("selector", s);
        }
    }
    if old.pipelines != new.pipelines {
        set(t, "pipelines", Value::Array(strings(&new.pipelines)));
    }
}

/// Replace a value, keeping the key where it was.
fn set(t: &mut dyn TableLike, key: &str, value: Value) {
    match t.get_mut(key) {
        Some(item) => *item = Item::Value(value),
        None => {
            t.insert(key, Item::Value(value));
        }
    }
}

fn new_table(r: &Route) -> Table {
    let mut t = Table::new();
    if let Some(d) = &r.description {
        t.insert("description", toml_edit::value(d.as_str()));
    }
    if r.priority != 0 {
        t.insert("priority", toml_edit::value(r.priority));
    }
    if r.is_final {
        t.insert("final", toml_edit::value(true));
    }
    t.insert("pipelines", Item::Value(Value::Array(strings(&r.pipelines))));
    if let Some(s) = selector_item(&r.selector) {
        t.insert("selector", s);
    }
    t
}

fn strings(items: &[String]) -> Array {
    items.iter().map(String::as_str).collect()
}

/// `selector.match_labels = { .. }` and `selector.match_expressions = [..]`
/// as dotted keys of the route's table (one expression per line); `None`
/// for the empty selector (it matches every collector).
fn selector_item(s: &Selector) -> Option<Item> {
    if s.match_labels.is_empty() && s.match_expressions.is_empty() {
        return None;
    }
    let mut sel = InlineTable::new();
    sel.set_dotted(true);
    if !s.match_labels.is_empty() {
        let labels: InlineTable = s
            .match_labels
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(v.as_str())))
            .collect();
        sel.insert("match_labels", Value::InlineTable(labels));
    }
    if !s.match_expressions.is_empty() {
        let mut exprs = Array::new();
        for e in &s.match_expressions {
            let mut t = InlineTable::new();
            t.insert("key", Value::from(e.key.as_str()));
            t.insert("operator", Value::from(operator_name(e)));
            if !e.values.is_empty() {
                t.insert("values", Value::Array(strings(&e.values)));
            }
            let mut v = Value::InlineTable(t);
            v.decor_mut().set_prefix("\n  ");
            exprs.push_formatted(v);
        }
        exprs.set_trailing("\n");
        exprs.set_trailing_comma(true);
        sel.insert("match_expressions", Value::Array(exprs));
    }
    Some(Item::Value(Value::InlineTable(sel)))
}

fn operator_name(e: &super::Expression) -> &'static str {
    match e.operator {
        super::Operator::In => "In",
        super::Operator::NotIn => "NotIn",
        super::Operator::Exists => "Exists",
        super::Operator::DoesNotExist => "DoesNotExist",
    }
}

/// A unified diff (`a/…`, `b/…` headers; `/dev/null` for a new file).
pub fn unified_diff(path: &str, before: Option<&str>, after: &str) -> String {
    let old = before.unwrap_or("");
    let a = if before.is_some() {
        format!("a/{path}")
    } else {
        "/dev/null".to_string()
    };
    similar::TextDiff::from_lines(old, after)
        .unified_diff()
        .context_radius(3)
        .header(&a, &format!("b/{path}"))
        .to_string()
}

/// A collector the impact is computed for.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// A config pinned to it wins over routes: a draft cannot change it.
    pub pinned: bool,
}

/// A collector whose rendered config the draft changes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Affected {
    pub id: String,
    pub name: String,
    /// Hash of its rendered config now; `None` when no route matches it
    /// (it gets the fleet default).
    pub before: Option<String>,
    /// And after the draft.
    pub after: Option<String>,
    /// The routes that match it after the draft, in the order applied.
    pub routes_after: Vec<String>,
}

/// How many collectors a route matches, before and after the draft
/// (`None`: the route does not exist on that side).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteMatches {
    pub name: String,
    pub before: Option<usize>,
    pub after: Option<usize>,
}

/// The render diff of one affected collector.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RenderDiff {
    pub collector_id: String,
    pub name: String,
    /// Unified diff of its collector config YAML.
    pub diff: String,
}

/// What a valid draft would do to the fleet.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetImpact {
    /// Collectors whose rendered config would change.
    pub affected_count: usize,
    /// The first `MAX_LISTED` of them, by name.
    pub affected: Vec<Affected>,
    /// Collectors looked at (every registered one).
    pub collectors: usize,
    /// Collectors with a pinned config: routes do not reach them.
    pub pinned: usize,
    pub routes: Vec<RouteMatches>,
    /// For `focus` if it is affected, else the first affected collector.
    pub render_diff: Option<RenderDiff>,
}

/// Which collectors' config the draft changes. Renders once per distinct
/// label set (fleets share a few label sets among many collectors).
pub fn impact(
    base: &Resources,
    draft: &Resources,
    commit: &str,
    targets: &[Target],
    focus: Option<&str>,
) -> FleetImpact {
    struct Verdict {
        before: Option<String>,
        after: Option<String>,
        routes_after: Vec<String>,
    }
    let effective = |r: &super::Rendered| (!r.pipelines.is_empty()).then(|| r.hash.clone());
    let mut by_labels: HashMap<&BTreeMap<String, String>, Verdict> = HashMap::new();
    let mut affected = Vec::new();
    let mut pinned = 0;
    for t in targets {
        if t.pinned {
            pinned += 1;
            continue;
        }
        let v = by_labels.entry(&t.labels).or_insert_with(|| {
            let b = super::render::render(base, commit, &t.labels);
            let a = super::render::render(draft, commit, &t.labels);
            Verdict {
                before: effective(&b),
                after: effective(&a),
                routes_after: a.routes,
            }
        });
        if v.before != v.after {
            affected.push(Affected {
                id: t.id.clone(),
                name: t.name.clone(),
                before: v.before.clone(),
                after: v.after.clone(),
                routes_after: v.routes_after.clone(),
            });
        }
    }
    affected.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));

    let names: BTreeSet<&String> = base.routes.keys().chain(draft.routes.keys()).collect();
    let count = |res: &Resources, name: &str| {
        res.routes
            .get(name)
            .map(|r| targets.iter().filter(|t| r.selector.matches(&t.labels)).count())
    };
    let routes = names
        .into_iter()
        .map(|n| RouteMatches {
            name: n.clone(),
            before: count(base, n),
            after: count(draft, n),
        })
        .collect();

    let shown = focus
        .and_then(|f| affected.iter().find(|a| a.id == f))
        .or_else(|| affected.first());
    let render_diff = shown.and_then(|a| {
        let t = targets.iter().find(|t| t.id == a.id)?;
        let before = super::render::render(base, commit, &t.labels).yaml;
        let after = super::render::render(draft, commit, &t.labels).yaml;
        Some(RenderDiff {
            collector_id: a.id.clone(),
            name: a.name.clone(),
            diff: unified_diff(&format!("{}.yaml", a.name), Some(&before), &after),
        })
    });
    let affected_count = affected.len();
    affected.truncate(MAX_LISTED);
    FleetImpact {
        affected_count,
        affected,
        collectors: targets.len(),
        pinned,
        routes,
        render_diff,
    }
}

/// A selector as one line, Kubernetes style:
/// `ring=canary, role in (app, web), !container`; `*` matches everything.
pub fn selector_text(s: &Selector) -> String {
    let mut parts: Vec<String> = s.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for e in &s.match_expressions {
        parts.push(match e.operator {
            super::Operator::In => format!("{} in ({})", e.key, e.values.join(", ")),
            super::Operator::NotIn => format!("{} notin ({})", e.key, e.values.join(", ")),
            super::Operator::Exists => e.key.clone(),
            super::Operator::DoesNotExist => format!("!{}", e.key),
        });
    }
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(", ")
    }
}

/// A route of the graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphRoute {
    pub name: String,
    pub priority: i64,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The selector as one line (see `selector_text`).
    pub selector_text: String,
    /// The route itself, as a draft change sends it.
    pub route: Route,
    /// Registered collectors its selector matches (whether or not a
    /// higher `final` route stops it for some of them).
    pub matched: usize,
}

/// A pipeline of the graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphPipeline {
    pub name: String,
    pub signals: Vec<super::Signal>,
    pub sources: Vec<String>,
    /// In order.
    pub processors: Vec<String>,
    pub destinations: Vec<String>,
}

/// A source, processor or destination of the graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphComponent {
    pub name: String,
    #[serde(rename = "type")]
    pub component_type: String,
}

/// The served commit as a graph: routes -> pipelines -> components.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Graph {
    /// Routes in the order they apply (priority, then name).
    pub routes: Vec<GraphRoute>,
    pub pipelines: Vec<GraphPipeline>,
    pub sources: Vec<GraphComponent>,
    pub processors: Vec<GraphComponent>,
    pub destinations: Vec<GraphComponent>,
    /// Registered collectors.
    pub collectors: usize,
}

pub fn graph(res: &Resources, targets: &[Target]) -> Graph {
    let mut routes: Vec<GraphRoute> = res
        .routes
        .iter()
        .map(|(name, r)| GraphRoute {
            name: name.clone(),
            priority: r.priority,
            is_final: r.is_final,
            selector_text: selector_text(&r.selector),
            route: r.clone(),
            matched: targets.iter().filter(|t| r.selector.matches(&t.labels)).count(),
        })
        .collect();
    routes.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
    let components = |kind: super::Kind| {
        res.components(kind)
            .iter()
            .map(|(name, c)| GraphComponent {
                name: name.clone(),
                component_type: c.component_type.clone(),
            })
            .collect()
    };
    Graph {
        routes,
        pipelines: res
            .pipelines
            .iter()
            .map(|(name, p)| GraphPipeline {
                name: name.clone(),
                signals: p.signals.clone(),
                sources: p.sources.clone(),
                processors: p.processors.clone(),
                destinations: p.destinations.clone(),
            })
            .collect(),
        sources: components(super::Kind::Source),
        processors: components(super::Kind::Processor),
        destinations: components(super::Kind::Destination),
        collectors: targets.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configstore::test_files;

    const PIPES: &str = r#"
[sources.otlp]
type = "otlp"
settings.protocols.grpc.endpoint = "0.0.0.0:4317"
[destinations.out]
type = "otlphttp"
settings.endpoint = "https://example.com"
[pipelines.app]
signals = ["traces"]
sources = ["otlp"]
destinations = ["out"]
[pipelines.host]
signals = ["metrics"]
sources = ["otlp"]
destinations = ["out"]
"#;

    const ROUTES: &str = r#"# Routes of the fleet.

# Application hosts.
[routes.apps]
priority = 100
pipelines = ["app"]
selector.match_labels = { role = "app" }

# Every Linux host.
[routes.linux]
pipelines = ["host"]
[[routes.linux.selector.match_expressions]]
key = "os"
operator = "In"
values = ["linux"]
"#;

    fn files() -> Vec<SourceFile> {
        test_files(&[("pipelines.toml", PIPES), ("routes.toml", ROUTES)])
    }

    fn base() -> Resources {
        load_files(&files()).unwrap()
    }

    fn route(toml_text: &str) -> Route {
        toml::from_str(toml_text).unwrap()
    }

    fn set(name: &str, r: Route) -> RouteChange {
        RouteChange::Set {
            name: name.into(),
            route: r,
            file: None,
        }
    }

    #[test]
    fn a_changed_field_is_the_only_line_that_changes() {
        let b = base();
        let mut r = b.routes["apps"].clone();
        r.priority = 7;
        let applied = apply(&files(), Some(&b), &[set("apps", r)]).unwrap();
        assert_eq!(applied.edits.len(), 1);
        let e = &applied.edits[0];
        assert_eq!(e.path, "routes.toml");
        assert_eq!(e.after, ROUTES.replace("priority = 100", "priority = 7"));
        assert_eq!(applied.result.unwrap().routes["apps"].priority, 7);
    }

    #[test]
    fn selectors_are_rewritten_as_dotted_keys_and_comments_stay() {
        let b = base();
        let r = route(
            "pipelines = [\"host\", \"app\"]\nselector.match_labels = { os = \"linux\", env = \"prod\" }\n\
             selector.match_expressions = [{ key = \"role\", operator = \"NotIn\", values = [\"db\"] }]\n",
        );
        let applied = apply(&files(), Some(&b), &[set("linux", r.clone())]).unwrap();
        let after = &applied.edits[0].after;
        assert!(after.contains("# Every Linux host.\n[routes.linux]\n"), "{after}");
        assert!(after.contains("# Application hosts."), "{after}");
        assert!(!after.contains("[[routes.linux"), "{after}");
        let res = applied.result.unwrap();
        assert_eq!(res.routes["linux"].selector, r.selector);
        assert_eq!(res.routes["linux"].pipelines, ["host", "app"]);
        assert_eq!(res.routes["apps"], b.routes["apps"]);
    }

    #[test]
    fn new_and_removed_routes() {
        let b = base();
        let applied = apply(
            &files(),
            Some(&b),
            &[
                RouteChange::Remove { name: "apps".into() },
                set(
                    "db-hosts",
                    route("priority = 5\npipelines = [\"host\"]\nselector.match_labels = { role = \"db\" }\n"),
                ),
                RouteChange::Set {
                    name: "edge".into(),
                    route: route("pipelines = [\"app\"]\n"),
                    file: Some("more/edge.toml".into()),
                },
            ],
        )
        .unwrap();
        let res = applied.result.unwrap();
        assert_eq!(res.routes.keys().collect::<Vec<_>>(), ["db-hosts", "edge", "linux"]);
        assert_eq!(res.routes["edge"].file, "more/edge.toml");
        assert_eq!(res.routes["db-hosts"].file, "routes.toml");
        let edge = applied.edits.iter().find(|e| e.path == "more/edge.toml").unwrap();
        assert_eq!(edge.before, None);
        assert_eq!(edge.after, "[routes.edge]\npipelines = [\"app\"]\n");
        let diff = unified_diff(&edge.path, edge.before.as_deref(), &edge.after);
        assert!(diff.starts_with("--- /dev/null\n+++ b/more/edge.toml\n"), "{diff}");
    }

    #[test]
    fn invalid_drafts_name_the_file_and_key() {
        let b = base();
        // A pipeline that does not exist: the config store's own rule.
        let applied = apply(&files(), Some(&b), &[set("apps", route("pipelines = [\"nope\"]\n"))]).unwrap();
        let errors = applied.result.unwrap_err();
        assert_eq!(errors[0].file, "routes.toml");
        assert_eq!(errors[0].key, "routes.apps.pipelines[0]");
        // Problems of the draft itself.
        let errors = apply(
            &files(),
            Some(&b),
            &[
                RouteChange::Remove { name: "ghost".into() },
                set("x", route("pipelines = [\"app\"]\n")),
                RouteChange::Remove { name: "x".into() },
                RouteChange::Set {
                    name: "apps".into(),
                    route: route("pipelines = [\"app\"]\n"),
                    file: Some("other.toml".into()),
                },
                RouteChange::Set {
                    name: "y".into(),
                    route: route("pipelines = [\"app\"]\n"),
                    file: Some("../y.toml".into()),
                },
            ],
        )
        .unwrap_err();
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.file.as_str(), e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                ("", "routes.ghost"),
                ("", "routes.x"),
                ("other.toml", "routes.apps"),
                ("../y.toml", "routes.y")
            ]
        );
    }

    fn target(id: &str, labels: &[(&str, &str)], pinned: bool) -> Target {
        Target {
            id: id.into(),
            name: format!("c-{id}"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            pinned,
        }
    }

    #[test]
    fn impact_lists_exactly_the_collectors_whose_render_changes() {
        let b = base();
        let mut r = b.routes["apps"].clone();
        r.selector.match_labels.insert("role".into(), "web".into());
        let applied = apply(&files(), Some(&b), &[set("apps", r)]).unwrap();
        let draft = applied.result.unwrap();
        let targets = [
            target("1", &[("role", "app")], false),                  // loses app
            target("2", &[("role", "web")], false),                  // gains app
            target("3", &[("role", "web"), ("os", "linux")], false), // gains app
            target("4", &[("os", "linux")], false),                  // unchanged
            target("5", &[("role", "web")], true),                   // pinned
        ];
        let imp = impact(&b, &draft, "abc", &targets, Some("3"));
        let ids: Vec<&str> = imp.affected.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert_eq!(imp.affected[0].after, None, "no route matches it any more");
        assert_eq!(imp.pinned, 1);
        let apps = imp.routes.iter().find(|r| r.name == "apps").unwrap();
        assert_eq!((apps.before, apps.after), (Some(1), Some(3)));
        let d = imp.render_diff.unwrap();
        assert_eq!(d.collector_id, "3");
        let g = graph(&draft, &targets);
        assert_eq!(g.routes[0].name, "apps");
        assert_eq!(g.routes[0].selector_text, "role=web");
        assert_eq!(g.routes[1].selector_text, "os in (linux)");
        assert_eq!(g.routes[1].matched, 2);
        assert!(d.diff.contains("+    traces/app:"), "{}", d.diff);
    }
}
