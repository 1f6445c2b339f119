//! The git-backed fleet config store: the fleet's sources, processors,
//! destinations, pipelines and routes live as TOML files in a git
//! repository; this module mirrors or watches that repository, validates
//! each new commit as a whole, serves the last valid one as an immutable
//! [`Snapshot`], and renders each collector's OpenTelemetry collector config
//! from it.
//!
//! Layers, one concern each: `schema` (resource types), `parse` (files ->
//! resources, with file + key path errors), `catalogue` (known collector
//! components), `selector` (label selectors), `validate` (whole-commit
//! rules), `collector` (every distinct render checked by a real collector
//! binary, when configured), `render` + `yaml` (deterministic collector YAML), `git` (gix: read
//! a commit, fetch a mirror), `watch` (notify on a local repository),
//! `store` (the running store: reload loop, status, snapshot swap),
//! `draft` + `publish` (route drafts from the routing canvas: impact
//! preview, then a commit on a local repository or a patch).
//!
//! It must not touch storage, sessions or the network beyond the config
//! repository; the fleet module subscribes to snapshots and pushes.
//! Docs for users: docs/config-store.md.

mod catalogue;
mod collector;
mod diff;
pub mod draft;
mod git;
mod parse;
pub mod publish;
mod render;
pub mod rollout;
mod schema;
mod selector;
mod store;
mod validate;
mod watch;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use utoipa::ToSchema;

use crate::clock::Timestamp;

pub use catalogue::{Spec as CatalogueSpec, CATALOGUE};
pub use collector::{distinct_renders, CheckFailure, CollectorValidator, RenderTarget, Verdict};
pub use diff::unified as unified_diff;
pub use git::check_url;
pub use parse::{files_from_dir, SourceFile};
pub use render::Rendered;
pub use rollout::{Gates, RolloutPolicy, Wave as PolicyWave, REST_WAVE};
pub use schema::{Component, Expression, Kind, Operator, Pipeline, Resources, Route, Selector, Signal};
pub use store::{
    mirror_dir, ActiveOverride, Attempt, ConfigStoreHandle, FetchStatus, HistoryEntry, HistoryOutcome, LoadCommitError,
    OverrideStatus, StoreOptions, StoreStatus, HISTORY_LEN,
};

/// The commit a snapshot was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Revision {
    /// Full commit id (hex).
    pub commit: String,
    /// Commit (committer) time.
    pub time: Timestamp,
    /// `Name <email>` of the author.
    pub author: String,
    /// The commit message, trimmed.
    pub message: String,
}

/// One valid commit's resources: immutable, shared by `Arc`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Snapshot {
    pub revision: Revision,
    pub resources: Resources,
}

impl Snapshot {
    /// Deterministic render for a collector with these labels.
    pub fn render(&self, labels: &BTreeMap<String, String>) -> Rendered {
        render::render(&self.resources, &self.revision.commit, labels)
    }
}

/// A problem in a config commit or directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ValidationError {
    /// File relative to the config directory; empty when about the whole
    /// directory.
    pub file: String,
    /// Key path inside the file, e.g. `pipelines.app.sources[1]`; empty for
    /// the whole file.
    pub key: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(file: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            file: file.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.key.is_empty()) {
            (true, true) => write!(f, "{}", self.message),
            (true, false) => write!(f, "{}: {}", self.key, self.message),
            (false, true) => write!(f, "{}: {}", self.file, self.message),
            (false, false) => write!(f, "{}: {}: {}", self.file, self.key, self.message),
        }
    }
}

/// Errors of the running store (not of a commit's content: those are
/// [`ValidationError`]s and never stop the store).
#[derive(Debug, thiserror::Error)]
pub enum ConfigStoreError {
    #[error("config_store.url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("{0}")]
    Git(String),
    #[error("config mirror {path}: {source}")]
    Mirror { path: String, source: std::io::Error },
    #[error("config_store.credentials_file {path}: {message}")]
    Credentials { path: String, message: String },
    #[error("watching {path} for commits: {source}")]
    Watch { path: String, source: notify::Error },
    #[error("config store task: {0}")]
    Task(String),
}

/// Parse and validate a whole set of files with every rule; `Err` lists
/// every problem found.
pub fn load_files(files: &[SourceFile]) -> Result<Resources, Vec<ValidationError>> {
    let mut errors = Vec::new();
    let (resources, unparsed) = parse::parse_files(files, &mut errors);
    validate::validate(&resources, &unparsed, &mut errors);
    if errors.is_empty() {
        Ok(resources)
    } else {
        // By file; within a file, in the order found (parse, then rules).
        errors.sort_by(|a, b| a.file.cmp(&b.file));
        Err(errors)
    }
}

/// Validate a config directory (a checkout; no git needed) with the same
/// rules the server applies to a commit. Used by `linkmesh validate`.
pub fn load_dir(path: &Path) -> Result<Resources, Vec<ValidationError>> {
    let files = files_from_dir(path).map_err(|e| vec![e])?;
    load_files(&files)
}

/// A key path segment: bare when TOML would read it bare, else quoted.
pub(crate) fn key_segment(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_string()
    } else {
        serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""))
    }
}

/// Test helper: files from `(path, text)` pairs.
#[cfg(test)]
pub(crate) fn test_files(files: &[(&str, &str)]) -> Vec<SourceFile> {
    files
        .iter()
        .map(|(p, t)| SourceFile {
            path: p.to_string(),
            bytes: t.as_bytes().to_vec(),
        })
        .collect()
}
