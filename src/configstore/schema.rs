//! The resource schema of a fleet config repository: what one TOML table
//! under `[sources.<name>]`, `[processors.<name>]`, `[destinations.<name>]`,
//! `[pipelines.<name>]` or `[routes.<name>]` may contain. Documented for
//! users in docs/config-store.md; keep the two in step.
//!
//! The same types are read from TOML (`deny_unknown_fields`, so a typo is an
//! error with its key path) and served as JSON by the API.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::yaml::Value;

/// A telemetry signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which section a component lives in; maps to the collector's receivers,
/// processors and exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Source,
    Processor,
    Destination,
}

impl Kind {
    /// The TOML section name.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Source => "sources",
            Kind::Processor => "processors",
            Kind::Destination => "destinations",
        }
    }

    /// The singular word used in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Processor => "processor",
            Kind::Destination => "destination",
        }
    }

    /// The collector config section it renders into.
    pub fn collector_section(self) -> &'static str {
        match self {
            Kind::Source => "receivers",
            Kind::Processor => "processors",
            Kind::Destination => "exporters",
        }
    }
}

/// A source (collector receiver), processor or destination (exporter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// The collector component type, e.g. `otlp`, `batch`, `otlphttp`.
    #[serde(rename = "type")]
    pub component_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Signals the component supports. Required for a type the catalogue
    /// does not know (a custom component); for a known type it may narrow
    /// the catalogue's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<Vec<Signal>>,
    /// The component's collector settings, rendered as-is. Secrets are
    /// references (`${env:NAME}`, `${file:/path}`), never literals.
    #[serde(default = "empty_map", deserialize_with = "settings_from_toml")]
    #[schema(value_type = Object)]
    pub settings: Value,
    /// The file (relative to the config directory) that defines it.
    #[serde(default, deserialize_with = "not_a_setting")]
    #[schema(read_only)]
    pub file: String,
}

/// An ordered chain: sources -> processors -> destinations, for signals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub signals: Vec<Signal>,
    pub sources: Vec<String>,
    /// Applied in this order.
    #[serde(default)]
    pub processors: Vec<String>,
    pub destinations: Vec<String>,
    #[serde(default, deserialize_with = "not_a_setting")]
    #[schema(read_only)]
    pub file: String,
}

/// Attaches pipelines to the collectors its selector matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Higher first. Matching routes apply in priority order (ties: by
    /// name); pipelines of earlier routes come first.
    #[serde(default)]
    pub priority: i64,
    /// When this route matches, routes after it (lower priority) are not
    /// applied to that collector.
    #[serde(default, rename = "final")]
    pub is_final: bool,
    /// Which collectors; an empty selector matches every collector.
    #[serde(default)]
    pub selector: Selector,
    pub pipelines: Vec<String>,
    #[serde(default, deserialize_with = "not_a_setting")]
    #[schema(read_only)]
    pub file: String,
}

/// A Kubernetes-style label selector: every condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Each label must be present with exactly this value.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Expression>,
}

/// A set-based selector condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    pub key: String,
    pub operator: Operator,
    /// Required (non-empty) for In/NotIn; must be empty for Exists/DoesNotExist.
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Operator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present (any value).
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Every resource of one commit (or directory), by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Resources {
    pub sources: BTreeMap<String, Component>,
    pub processors: BTreeMap<String, Component>,
    pub destinations: BTreeMap<String, Component>,
    pub pipelines: BTreeMap<String, Pipeline>,
    pub routes: BTreeMap<String, Route>,
    /// `rollout.toml`: how a new commit reaches the fleet (absent = all
    /// at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::rollout::RolloutPolicy>,
}

impl Resources {
    pub fn components(&self, kind: Kind) -> &BTreeMap<String, Component> {
        match kind {
            Kind::Source => &self.sources,
            Kind::Processor => &self.processors,
            Kind::Destination => &self.destinations,
        }
    }

    pub(crate) fn components_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Component> {
        match kind {
            Kind::Source => &mut self.sources,
            Kind::Processor => &mut self.processors,
            Kind::Destination => &mut self.destinations,
        }
    }

    /// How many resources of all kinds.
    pub fn len(&self) -> usize {
        self.sources.len() + self.processors.len() + self.destinations.len() + self.pipelines.len() + self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn empty_map() -> Value {
    Value::Map(BTreeMap::new())
}

fn settings_from_toml<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let table = toml::Table::deserialize(d)?;
    Ok(Value::from(toml::Value::Table(table)))
}

/// `file` is where the loader found a resource, never a setting: a key of
/// that name is refused like any unknown one. (Not `skip_deserializing`:
/// that would also leave it out of the OpenAPI schema of the API's answers,
/// which do carry it.)
fn not_a_setting<'de, D: serde::Deserializer<'de>>(_: D) -> Result<String, D::Error> {
    Err(serde::de::Error::custom(
        "unknown field `file`: it is not a setting (it names the file a resource is defined in)",
    ))
}
