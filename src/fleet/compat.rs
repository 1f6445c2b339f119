//! Whether a desired config can run on a collector: the component types it
//! names (`receivers`, `processors`, `exporters`, `extensions`,
//! `connectors`; `otlp/primary` is of type `otlp`) against the
//! AvailableComponents the agent reported. A config naming a type the agent
//! lacks would only fail on the agent (the Collector refuses unknown types
//! at load, used in a pipeline or not), so it is not pushed and the
//! collector shows `incompatible` with the missing components.
//!
//! Pure functions: the session (`session::AgentState::offer`) and the API
//! views (`views`) ask the same question, so what is shown is what is
//! pushed. It must not decide which config is desired (`resolve`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use yaml_rust2::{Yaml, YamlLoader};

use super::desired::Desired;
use crate::domain::AvailableComponentsView;
use crate::proto::opamp_msgs as pb;

/// The component kinds of a Collector config, as top-level keys.
const KINDS: [&str; 5] = ["receivers", "processors", "exporters", "extensions", "connectors"];

/// Distinct desired configs (by hash) seen lately and the component types
/// each names. The fleet list judges every collector on each request, and a
/// fleet has few distinct configs: parsing each once keeps a 10,000-row
/// list from parsing YAML 10,000 times. A std Mutex: the critical section is
/// a map lookup or insert, never held across an await or a parse.
static NAMED: LazyLock<Mutex<Named>> = LazyLock::new(|| Mutex::new(HashMap::new()));
/// (kind, type) pairs a config names.
type Components = BTreeSet<(String, String)>;
/// Desired config hash -> the components it names.
type Named = HashMap<Vec<u8>, Arc<Components>>;
/// Bound on `NAMED`; it is simply emptied when full (old configs drop out).
const NAMED_MAX: usize = 256;

/// What the agent reported, as stored and shown.
pub fn available_from_proto(a: &pb::AvailableComponents) -> AvailableComponentsView {
    AvailableComponentsView {
        hash: hex::encode(&a.hash),
        components: a
            .components
            .iter()
            .map(|(kind, details)| (kind.clone(), details.sub_component_map.keys().cloned().collect()))
            .collect(),
    }
}

/// The components `desired` names that `available` lacks, as `kind/type`,
/// sorted; empty when it can run (or when the agent never reported its
/// components: nothing to judge by).
pub fn missing(desired: &Desired, available: Option<&AvailableComponentsView>) -> Vec<String> {
    let Some(available) = available else { return vec![] };
    named(desired)
        .iter()
        .filter(|(kind, t)| !available.components.get(kind).is_some_and(|types| types.contains(t)))
        .map(|(kind, t)| format!("{kind}/{t}"))
        .collect()
}

/// The operator-facing sentence for a refused push.
pub fn describe(missing: &[String]) -> String {
    format!(
        "not pushed: the collector reports no component of type {} (AvailableComponents)",
        missing.join(", ")
    )
}

fn named(desired: &Desired) -> Arc<Components> {
    if let Some(hit) = lock().get(&desired.hash) {
        return hit.clone();
    }
    let parsed = Arc::new(parse(desired));
    let mut cache = lock();
    if cache.len() >= NAMED_MAX {
        cache.clear();
    }
    cache.insert(desired.hash.clone(), parsed.clone());
    parsed
}

fn lock() -> std::sync::MutexGuard<'static, Named> {
    // A panic while holding it cannot leave the map half-updated (single
    // insert or clear), so a poisoned lock is still good.
    NAMED.lock().unwrap_or_else(|p| p.into_inner())
}

/// (kind, type) of every component the YAML files of `desired` declare.
/// Files that are not YAML, or do not parse, name nothing: the agent will
/// report what it makes of them.
fn parse(desired: &Desired) -> Components {
    let mut out = BTreeSet::new();
    for (name, (body, content_type)) in &desired.files {
        let yaml_file = content_type.contains("yaml") || name.ends_with(".yaml") || name.ends_with(".yml");
        let Ok(text) = std::str::from_utf8(body) else { continue };
        if !yaml_file {
            continue;
        }
        let Ok(docs) = YamlLoader::load_from_str(text) else {
            continue;
        };
        for doc in &docs {
            for kind in KINDS {
                let Yaml::Hash(components) = &doc[kind] else { continue };
                for key in components.keys() {
                    if let Some(id) = key.as_str() {
                        let t = id.split('/').next().unwrap_or(id).trim();
                        if !t.is_empty() {
                            out.insert((kind.to_string(), t.to_string()));
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(yaml: &str) -> Desired {
        Desired::from_files(
            [(
                "collector.yaml".to_string(),
                (yaml.as_bytes().to_vec(), "application/yaml".to_string()),
            )]
            .into(),
            "test".into(),
        )
    }

    fn available(pairs: &[(&str, &[&str])]) -> AvailableComponentsView {
        AvailableComponentsView {
            hash: "h".into(),
            components: pairs
                .iter()
                .map(|(k, ts)| (k.to_string(), ts.iter().map(|t| t.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn names_the_types_the_agent_lacks() {
        let d = desired(
            "receivers:\n  otlp/in: {}\nprocessors:\n  batch:\nexporters:\n  kafka/a: {}\n  kafka/b: {}\n  debug: {}\nservice:\n  pipelines: {}\n",
        );
        let a = available(&[
            ("receivers", &["otlp"]),
            ("processors", &["batch"]),
            ("exporters", &["debug"]),
        ]);
        assert_eq!(missing(&d, Some(&a)), vec!["exporters/kafka"]);
        let all = available(&[
            ("receivers", &["otlp"]),
            ("processors", &["batch"]),
            ("exporters", &["debug", "kafka"]),
        ]);
        assert!(missing(&d, Some(&all)).is_empty());
        assert!(missing(&d, None).is_empty(), "nothing reported: nothing to judge by");
    }

    #[test]
    fn files_that_are_not_yaml_name_nothing() {
        let d = desired("receivers: [unclosed");
        assert!(missing(&d, Some(&available(&[]))).is_empty());
        let d = Desired::from_files(
            [(
                "notes.txt".to_string(),
                (b"receivers:\n  kafka: {}\n".to_vec(), "text/plain".to_string()),
            )]
            .into(),
            "test".into(),
        );
        assert!(missing(&d, Some(&available(&[]))).is_empty());
    }
}
