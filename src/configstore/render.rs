//! Rendering one collector's OpenTelemetry collector config: its labels
//! select routes, routes attach pipelines, pipelines name components.
//!
//! Deterministic by construction: routes are ordered by (priority desc,
//! name), every map is a `BTreeMap`, and the YAML emitter is our own
//! (`super::yaml`). The same commit and labels give the same bytes on every
//! instance.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::schema::{Kind, Resources};
use super::yaml::{self, Value};

/// A collector's rendered config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Rendered {
    /// The collector config YAML: a header comment naming the commit, then
    /// the config.
    pub yaml: String,
    /// sha256 (hex) of the config below the header. It does not cover the
    /// header, so a commit that leaves this collector's config unchanged
    /// leaves its hash unchanged too (no push needed).
    pub hash: String,
    /// The pipelines applied, in route priority order. Empty when no route
    /// matches: the YAML then has no service pipelines, and a collector
    /// would refuse it, so do not push it.
    pub pipelines: Vec<String>,
    /// The routes that matched, in the order applied.
    pub routes: Vec<String>,
    /// The commit rendered from.
    pub commit: String,
}

/// Render for a collector with `labels` from `res` at `commit`.
pub fn render(res: &Resources, commit: &str, labels: &BTreeMap<String, String>) -> Rendered {
    let (routes, pipelines) = select(res, labels);
    assemble(res, commit, routes, pipelines)
}

/// The config made of these pipelines (in this order), attributed to
/// `routes`.
pub(super) fn assemble(res: &Resources, commit: &str, routes: Vec<String>, pipelines: Vec<String>) -> Rendered {
    let mut sections: BTreeMap<Kind, BTreeMap<String, Value>> = BTreeMap::new();
    let mut service_pipelines = BTreeMap::new();
    for name in &pipelines {
        let Some(p) = res.pipelines.get(name) else { continue };
        let mut ids = |kind: Kind, refs: &[String]| -> Vec<Value> {
            refs.iter()
                .filter_map(|r| {
                    let c = res.components(kind).get(r)?;
                    let id = format!("{}/{r}", c.component_type);
                    sections.entry(kind).or_default().insert(id.clone(), c.settings.clone());
                    Some(Value::String(id))
                })
                .collect()
        };
        let receivers = ids(Kind::Source, &p.sources);
        let processors = ids(Kind::Processor, &p.processors);
        let exporters = ids(Kind::Destination, &p.destinations);
        let signals: BTreeSet<_> = p.signals.iter().collect();
        for s in signals {
            let mut chain = BTreeMap::new();
            chain.insert("receivers".to_string(), Value::List(receivers.clone()));
            if !processors.is_empty() {
                chain.insert("processors".to_string(), Value::List(processors.clone()));
            }
            chain.insert("exporters".to_string(), Value::List(exporters.clone()));
            service_pipelines.insert(format!("{s}/{name}"), Value::Map(chain));
        }
    }

    let mut body = String::new();
    for kind in [Kind::Source, Kind::Processor, Kind::Destination] {
        let section = sections.remove(&kind).unwrap_or_default();
        yaml::emit_entry(&mut body, 0, kind.collector_section(), &Value::Map(section));
    }
    let mut service = BTreeMap::new();
    service.insert("pipelines".to_string(), Value::Map(service_pipelines));
    yaml::emit_entry(&mut body, 0, "service", &Value::Map(service));

    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    let yaml = format!(
        "# Rendered by LinkMesh from config commit {commit}.\n\
         # Do not edit: change the fleet config repository instead.\n{body}"
    );
    Rendered {
        yaml,
        hash,
        pipelines,
        routes,
        commit: commit.to_string(),
    }
}

/// The matching routes in the order applied, and the pipelines they attach
/// (first occurrence wins).
fn select(res: &Resources, labels: &BTreeMap<String, String>) -> (Vec<String>, Vec<String>) {
    let mut ordered: Vec<_> = res.routes.iter().collect();
    ordered.sort_by(|(an, a), (bn, b)| b.priority.cmp(&a.priority).then_with(|| an.cmp(bn)));
    let mut routes = Vec::new();
    let mut pipelines = Vec::new();
    for (name, r) in ordered {
        if !r.selector.matches(labels) {
            continue;
        }
        routes.push(name.clone());
        for p in &r.pipelines {
            if !pipelines.contains(p) {
                pipelines.push(p.clone());
            }
        }
        if r.is_final {
            break;
        }
    }
    (routes, pipelines)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::configstore::{load_files, test_files, Resources};

    fn resources() -> Resources {
        load_files(&test_files(&[(
            "all.toml",
            r#"
[sources.in]
type = "otlp"
settings.protocols.grpc.endpoint = "0.0.0.0:4317"
[processors.batch]
type = "batch"
[destinations.out]
type = "debug"
[destinations.canary-out]
type = "debug"
settings.verbosity = "detailed"

[pipelines.main]
signals = ["traces", "logs"]
sources = ["in"]
processors = ["batch"]
destinations = ["out"]
[pipelines.extra]
signals = ["metrics"]
sources = ["in"]
destinations = ["out"]
[pipelines.canary]
signals = ["traces"]
sources = ["in"]
destinations = ["canary-out"]

[routes.everyone]
pipelines = ["main"]
[routes.prod]
priority = 10
pipelines = ["extra", "main"]
selector.match_labels = { env = "prod" }
[routes.canary]
priority = 100
final = true
pipelines = ["canary"]
selector.match_expressions = [{ key = "ring", operator = "In", values = ["canary"] }]
"#,
        )]))
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn routes_apply_in_priority_order_and_final_stops() {
        let res = resources();
        let r = super::render(&res, "c1", &labels(&[("env", "prod")]));
        assert_eq!(r.routes, ["prod", "everyone"]);
        assert_eq!(r.pipelines, ["extra", "main"]);
        assert!(r.yaml.contains("    traces/main:\n"), "{}", r.yaml);
        assert!(r.yaml.contains("    logs/main:\n"));
        assert!(r.yaml.contains("    metrics/extra:\n"));
        assert!(!r.yaml.contains("canary"));

        let c = super::render(&res, "c1", &labels(&[("env", "prod"), ("ring", "canary")]));
        assert_eq!(c.routes, ["canary"]);
        assert_eq!(c.pipelines, ["canary"]);
        assert!(
            c.yaml.contains("  debug/canary-out:\n    verbosity: detailed\n"),
            "{}",
            c.yaml
        );

        let none = super::render(&Resources::default(), "c1", &labels(&[]));
        assert!(none.pipelines.is_empty());
        assert!(none
            .yaml
            .ends_with("receivers: {}\nprocessors: {}\nexporters: {}\nservice:\n  pipelines: {}\n"));
    }

    #[test]
    fn the_header_names_the_commit_and_the_hash_covers_the_body() {
        let res = resources();
        let l = labels(&[("env", "prod")]);
        let a = super::render(&res, "aaaa", &l);
        let b = super::render(&res, "bbbb", &l);
        assert!(a.yaml.starts_with("# Rendered by LinkMesh from config commit aaaa.\n"));
        assert_ne!(a.yaml, b.yaml);
        assert_eq!(a.hash, b.hash, "an unchanged config keeps its hash across commits");
        assert_eq!(a.hash.len(), 64);
        let other = super::render(&res, "aaaa", &labels(&[]));
        assert_ne!(a.hash, other.hash);
    }
}
