//! Checking a commit with a real OpenTelemetry Collector binary
//! (`config_store.collector_validator`): our own rules know references and
//! required settings, but only the collector knows every setting of every
//! component (`send_batch_size = "lots"` passes ours). Every distinct render
//! of the commit goes through the binary's `validate --config`; a refusal
//! makes the commit invalid like any other error.
//!
//! Which renders: one per route, the config a collector selected by that
//! route's selector gets (labels made up from the selector, so the check
//! depends only on the commit and gives the same verdict on every instance
//! and in `linkmesh validate`); renders with the same hash are checked once.
//! A collector that several routes select gets the union of their
//! pipelines; components keep their ids across pipelines, so a union of
//! accepted renders is made of accepted parts.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;

use super::render::{self, Rendered};
use super::schema::{Operator, Resources, Route};
use super::ValidationError;

/// How many `validate` processes run at once: the binary is CPU-bound
/// for a few tens of milliseconds; more than the cores only queues.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4)
}

/// Stands in for `${file:…}`, `${http:…}` and `${https:…}` references while
/// validating: the files and URLs exist on collectors, not here. Unset in
/// the validator's (empty) environment, so it resolves to an empty value,
/// as every `${env:…}` reference does.
const PLACEHOLDER: &str = "${env:LINKMESH_VALIDATE_REFERENCE}";

/// A collector binary and how long one check may take.
#[derive(Debug, Clone)]
pub struct CollectorValidator {
    pub binary: PathBuf,
    pub timeout: Duration,
}

/// One distinct render and the route it stands for.
#[derive(Debug, Clone)]
pub struct RenderTarget {
    pub route: String,
    /// The route's file, for the error.
    pub file: String,
    /// The labels rendered for.
    pub labels: BTreeMap<String, String>,
    /// Rendered alone, not as a collector's config: no label set made up
    /// from the selector reaches the route (a contradiction, or a `final`
    /// route of higher priority takes those collectors).
    pub alone: bool,
    pub rendered: Rendered,
}

/// Why one check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// The collector ran and refused the config: its own words.
    Refused(String),
    /// The collector could not be run or did not answer in time.
    Unavailable(String),
}

/// Every refusal as a [`ValidationError`] on the route, plus whether any
/// check could not run at all (offline validation exits differently).
#[derive(Debug, Default)]
pub struct Verdict {
    pub errors: Vec<ValidationError>,
    pub unavailable: bool,
    /// How many distinct renders were checked.
    pub checked: usize,
}

/// Labels that satisfy `route`'s selector: its `match_labels`, the first
/// value of each `In`, any value for `Exists`; `NotIn` and `DoesNotExist`
/// keys stay absent. `None` when those do not satisfy it (contradictions).
fn labels_for(route: &Route) -> Option<BTreeMap<String, String>> {
    let sel = &route.selector;
    let mut labels = sel.match_labels.clone();
    for e in &sel.match_expressions {
        match e.operator {
            Operator::In => {
                if let Some(v) = e.values.first() {
                    labels.entry(e.key.clone()).or_insert_with(|| v.clone());
                }
            }
            Operator::Exists => {
                labels.entry(e.key.clone()).or_insert_with(|| "any".to_string());
            }
            Operator::NotIn | Operator::DoesNotExist => {}
        }
    }
    sel.matches(&labels).then_some(labels)
}

/// The distinct renders of a commit to check, in route name order.
pub fn distinct_renders(res: &Resources, commit: &str) -> Vec<RenderTarget> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (name, route) in &res.routes {
        let as_collector = labels_for(route)
            .map(|l| (render::render(res, commit, &l), l))
            .filter(|(r, _)| r.routes.contains(name));
        let (rendered, labels, alone) = match as_collector {
            Some((r, l)) => (r, l, false),
            None => (
                render::assemble(res, commit, vec![name.clone()], route.pipelines.clone()),
                BTreeMap::new(),
                true,
            ),
        };
        // A config without pipelines is never pushed (the collector would
        // refuse it), so it is not checked either.
        if rendered.pipelines.is_empty() || !seen.insert(rendered.hash.clone()) {
            continue;
        }
        out.push(RenderTarget {
            route: name.clone(),
            file: route.file.clone(),
            labels,
            alone,
            rendered,
        });
    }
    out
}

/// Replace references the validator cannot resolve here (see
/// [`PLACEHOLDER`]); `$${` escapes are left alone.
fn neutralise_references(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut rest = yaml;
    while let Some(i) = rest.find("${") {
        let escaped = i > 0 && rest.as_bytes()[i - 1] == b'$';
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else { break };
        let inner = &after[..end];
        let scheme = inner.split_once(':').map(|(s, _)| s);
        out.push_str(&rest[..i]);
        if !escaped && matches!(scheme, Some("file" | "http" | "https")) {
            out.push_str(PLACEHOLDER);
        } else {
            out.push_str(&rest[i..i + 2 + end + 1]);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The collector's message: stderr without its trailing log line that
/// repeats it, blank lines folded, bounded.
fn collector_message(stderr: &[u8], stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(if stderr.iter().all(u8::is_ascii_whitespace) {
        stdout
    } else {
        stderr
    });
    // The collector prints its error, then logs it again (with the rest of
    // the lines) after "collector server run finished with error".
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.contains("collector server run finished with error"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut msg = lines.join(" ");
    if let Some(m) = msg.strip_prefix("Error: ") {
        msg = m.to_string();
    }
    const MAX: usize = 2000;
    if msg.len() > MAX {
        let mut cut = MAX;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push('…');
    }
    if msg.is_empty() {
        "the collector refused the config without a message".to_string()
    } else {
        msg
    }
}

impl CollectorValidator {
    /// Run `validate --config FILE` on one config. The child runs with an
    /// empty environment: the server's environment (and its secrets) must
    /// not leak into configs or error messages, and every instance must
    /// reach the same verdict.
    pub async fn check(&self, yaml: &str, dir: &Path) -> Result<(), CheckFailure> {
        let path = dir.join(format!("linkmesh-validate-{}.yaml", uuid::Uuid::new_v4()));
        tokio::fs::write(&path, neutralise_references(yaml))
            .await
            .map_err(|e| CheckFailure::Unavailable(format!("cannot write {}: {e}", path.display())))?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("validate")
            .arg(format!("--config=file:{}", path.display()))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out check drops the future: the child goes with it.
            .kill_on_drop(true);
        let result = tokio::time::timeout(self.timeout, cmd.output()).await;
        let _ = tokio::fs::remove_file(&path).await;
        match result {
            Err(_) => Err(CheckFailure::Unavailable(format!(
                "{} validate did not finish within {}",
                self.binary.display(),
                humantime::format_duration(self.timeout)
            ))),
            Ok(Err(e)) => Err(CheckFailure::Unavailable(format!(
                "cannot run {}: {e}",
                self.binary.display()
            ))),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(CheckFailure::Refused(collector_message(&out.stderr, &out.stdout))),
        }
    }

    /// Check every distinct render of a commit, a few at a time. Errors
    /// come in route order.
    pub async fn check_commit(&self, res: &Resources, commit: &str) -> Verdict {
        let targets = distinct_renders(res, commit);
        let dir = std::env::temp_dir();
        let checked = targets.len();
        let mut results: Vec<(RenderTarget, Result<(), CheckFailure>)> = futures::stream::iter(targets)
            .map(|t| {
                let dir = dir.clone();
                async move {
                    let r = self.check(&t.rendered.yaml, &dir).await;
                    (t, r)
                }
            })
            .buffer_unordered(parallelism())
            .collect()
            .await;
        results.sort_by(|a, b| a.0.route.cmp(&b.0.route));
        let mut verdict = Verdict {
            checked,
            ..Verdict::default()
        };
        for (t, r) in results {
            let Err(failure) = r else { continue };
            let what = match failure {
                CheckFailure::Refused(m) => format!("the collector refused it: {m}"),
                CheckFailure::Unavailable(m) => {
                    verdict.unavailable = true;
                    format!("it could not be checked: {m}")
                }
            };
            verdict.errors.push(ValidationError::new(
                t.file.clone(),
                format!("routes.{}", super::key_segment(&t.route)),
                format!("{}; {what}", describe(&t)),
            ));
        }
        verdict
    }
}

/// Which config was refused, in words an operator can act on.
fn describe(t: &RenderTarget) -> String {
    let routes = t.rendered.routes.join(", ");
    if t.alone {
        return format!("collector validate of route {}'s pipelines alone", t.route);
    }
    if t.labels.is_empty() {
        return format!("collector validate of the config rendered for a collector without labels (routes: {routes})");
    }
    let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "collector validate of the config rendered for labels {{{}}} (routes: {routes})",
        labels.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configstore::{load_files, test_files};

    fn resources() -> Resources {
        load_files(&test_files(&[(
            "all.toml",
            r#"
[sources.app]
type = "filelog"
settings.include = ["/var/log/app/*.log"]
[processors.batch]
type = "batch"
[destinations.backend]
type = "otlphttp"
settings.endpoint = "https://otlp.example.com"
settings.headers.authorization = "Bearer ${file:/run/secrets/token}"
[destinations.canary]
type = "otlphttp"
settings.endpoint = "https://canary.example.com"

[pipelines.logs]
signals = ["logs"]
sources = ["app"]
processors = ["batch"]
destinations = ["backend"]
[pipelines.canary-logs]
signals = ["logs"]
sources = ["app"]
destinations = ["canary"]

[routes.everyone]
pipelines = ["logs"]
[routes.prod]
priority = 10
pipelines = ["logs"]
selector.match_labels = { env = "prod" }
[routes.canary]
priority = 100
final = true
pipelines = ["canary-logs"]
selector.match_expressions = [{ key = "ring", operator = "In", values = ["canary", "early"] }]
[routes.nobody]
pipelines = ["logs", "canary-logs"]
selector.match_expressions = [
  { key = "x", operator = "Exists" },
  { key = "x", operator = "DoesNotExist" },
]
"#,
        )]))
        .unwrap()
    }

    #[test]
    fn one_render_per_route_with_labels_from_its_selector_and_duplicates_once() {
        let targets = distinct_renders(&resources(), "c1");
        let by_route: BTreeMap<_, _> = targets.iter().map(|t| (t.route.as_str(), t)).collect();
        // `prod` renders the same config as `everyone`: checked once.
        assert_eq!(
            by_route.keys().copied().collect::<Vec<_>>(),
            ["canary", "everyone", "nobody"]
        );
        let canary = by_route["canary"];
        assert_eq!(
            canary.labels,
            BTreeMap::from([("ring".to_string(), "canary".to_string())])
        );
        assert_eq!(canary.rendered.routes, ["canary"]);
        assert_eq!(canary.file, "all.toml");
        // A selector nothing satisfies is still checked: the route alone.
        assert!(by_route["nobody"].alone && !canary.alone);
        assert_eq!(by_route["nobody"].rendered.pipelines, ["logs", "canary-logs"]);
    }

    #[test]
    fn file_and_url_references_are_neutralised_env_and_escapes_kept() {
        assert_eq!(
            neutralise_references("a: \"Bearer ${file:/run/x}\"\nb: ${env:B}\nc: $${file:/y}\nd: ${https://h/p}\n"),
            format!("a: \"Bearer {PLACEHOLDER}\"\nb: ${{env:B}}\nc: $${{file:/y}}\nd: {PLACEHOLDER}\n")
        );
        assert_eq!(neutralise_references("open ${file:/x"), "open ${file:/x");
    }

    #[test]
    fn the_collector_message_drops_the_repeated_log_line() {
        let stderr = b"Error: failed to get config: cannot unmarshal\n\n'send_batch_size' expected type 'uint32'\n2026/12/01 09:16:08 collector server run finished with error: failed to get config\n\n'send_batch_size' expected type 'uint32'\n";
        assert_eq!(
            collector_message(stderr, b""),
            "failed to get config: cannot unmarshal 'send_batch_size' expected type 'uint32'"
        );
        assert_eq!(
            collector_message(b"", b""),
            "the collector refused the config without a message"
        );
    }
}
