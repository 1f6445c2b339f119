//! The checks that need the whole commit: names, references between
//! resources, signal compatibility, selectors, settings of known component
//! types, and literal secrets. Every problem is collected with the file and
//! key path of the resource it is about.

use std::collections::{BTreeMap, BTreeSet};

use super::catalogue::{self, is_secret_field};
use super::parse::Unparsed;
use super::schema::{Component, Kind, Pipeline, Resources, Route, Signal};
use super::yaml::Value;
use super::{key_segment, ValidationError};

/// Validate parsed resources; append every problem to `errors`.
pub fn validate(res: &Resources, unparsed: &Unparsed, errors: &mut Vec<ValidationError>) {
    for kind in [Kind::Source, Kind::Processor, Kind::Destination] {
        for (name, c) in res.components(kind) {
            component(kind, name, c, errors);
        }
    }
    for (name, p) in &res.pipelines {
        pipeline(res, unparsed, name, p, errors);
    }
    let per_priority = routes_per_priority(&res.routes);
    for (name, r) in &res.routes {
        route(res, unparsed, name, r, &per_priority, errors);
    }
}

/// Names become collector component ids (`type/name`) and pipeline ids.
fn check_name(section: &str, name: &str, file: &str, errors: &mut Vec<ValidationError>) {
    let ok = name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        errors.push(ValidationError::new(
            file,
            format!("{section}.{}", key_segment(name)),
            "invalid name: 1-63 characters, letters, digits, '-', '_', '.', starting with a letter or digit",
        ));
    }
}

fn component(kind: Kind, name: &str, c: &Component, errors: &mut Vec<ValidationError>) {
    let base = format!("{}.{}", kind.section(), key_segment(name));
    let err = |key: String, msg: String| ValidationError::new(&c.file, key, msg);
    check_name(kind.section(), name, &c.file, errors);
    let t = &c.component_type;
    let type_ok = !t.is_empty()
        && t.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
    if !type_ok {
        errors.push(err(
            format!("{base}.type"),
            format!("invalid component type {t:?}: lower-case letters, digits and '_'"),
        ));
    }
    if let Some(signals) = &c.signals {
        if signals.is_empty() {
            errors.push(err(format!("{base}.signals"), "must list at least one signal".into()));
        }
        duplicates(signals, &format!("{base}.signals"), &c.file, errors);
    }
    match catalogue::lookup(kind, t) {
        Some(spec) => {
            if let Some(signals) = &c.signals {
                for (i, s) in signals.iter().enumerate() {
                    if !spec.signals.contains(s) {
                        errors.push(err(
                            format!("{base}.signals[{i}]"),
                            format!("{kind} type {t:?} does not support {s}", kind = kind.noun()),
                        ));
                    }
                }
            }
            for alternatives in spec.required {
                if !alternatives.iter().any(|p| c.settings.get_path(p).is_some()) {
                    let what = match alternatives {
                        [one] => format!("settings.{one} is required"),
                        many => format!("one of settings.{} is required", many.join(", settings.")),
                    };
                    errors.push(err(
                        format!("{base}.settings"),
                        format!("{what} for {} type {t:?}", kind.noun()),
                    ));
                }
            }
        }
        None if type_ok => {
            let elsewhere = catalogue::known_elsewhere(kind, t);
            if !elsewhere.is_empty() {
                let nouns: Vec<&str> = elsewhere.iter().map(|k| k.noun()).collect();
                errors.push(err(
                    format!("{base}.type"),
                    format!("{t:?} is a {} type, not a {} type", nouns.join(" and "), kind.noun()),
                ));
            } else if c.signals.is_none() {
                errors.push(err(
                    format!("{base}.type"),
                    format!(
                        "unknown {} type {t:?}; check the spelling, or declare `signals` for a custom component",
                        kind.noun()
                    ),
                ));
            }
        }
        None => {}
    }
    let mut path = Vec::new();
    secrets(&c.settings, &mut path, &format!("{base}.settings"), &c.file, errors);
}

/// The signals a component supports: its own declaration, else the
/// catalogue's; `None` when neither says (already an error).
fn supported_signals(kind: Kind, c: &Component) -> Option<Vec<Signal>> {
    c.signals
        .clone()
        .or_else(|| catalogue::lookup(kind, &c.component_type).map(|s| s.signals.to_vec()))
}

/// A reference to a missing resource: an error, unless the resource exists
/// but had errors of its own (already reported).
fn dangling(unparsed: &Unparsed, section: &str, noun: &str, name: &str) -> Option<String> {
    if unparsed.names.contains(&(section.to_string(), name.to_string())) {
        return None;
    }
    let mut msg = format!("dangling reference: no {noun} named {name:?}");
    if !unparsed.files.is_empty() {
        msg.push_str(&format!(
            " (unless it is in {}, which could not be parsed)",
            unparsed.files.join(", ")
        ));
    }
    Some(msg)
}

fn pipeline(res: &Resources, unparsed: &Unparsed, name: &str, p: &Pipeline, errors: &mut Vec<ValidationError>) {
    let base = format!("pipelines.{}", key_segment(name));
    check_name("pipelines", name, &p.file, errors);
    if p.signals.is_empty() {
        errors.push(ValidationError::new(
            &p.file,
            format!("{base}.signals"),
            "must list at least one of traces, metrics, logs",
        ));
    }
    duplicates(&p.signals, &format!("{base}.signals"), &p.file, errors);
    for (kind, field, refs) in [
        (Kind::Source, "sources", &p.sources),
        (Kind::Processor, "processors", &p.processors),
        (Kind::Destination, "destinations", &p.destinations),
    ] {
        if refs.is_empty() && kind != Kind::Processor {
            errors.push(ValidationError::new(
                &p.file,
                format!("{base}.{field}"),
                format!("needs at least one {}", kind.noun()),
            ));
        }
        duplicates(refs, &format!("{base}.{field}"), &p.file, errors);
        for (i, r) in refs.iter().enumerate() {
            let key = format!("{base}.{field}[{i}]");
            let Some(c) = res.components(kind).get(r) else {
                if let Some(msg) = dangling(unparsed, kind.section(), kind.noun(), r) {
                    errors.push(ValidationError::new(&p.file, key, msg));
                }
                continue;
            };
            if let Some(supported) = supported_signals(kind, c) {
                for s in &p.signals {
                    if !supported.contains(s) {
                        errors.push(ValidationError::new(
                            &p.file,
                            key.clone(),
                            format!(
                                "signal mismatch: {} {r:?} (type {:?}) does not support {s}, which this pipeline carries",
                                kind.noun(),
                                c.component_type
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// A final route must not tie with another route: its priority decides
/// which routes it cuts off, and ties would fall back to name order.
fn routes_per_priority(routes: &BTreeMap<String, Route>) -> BTreeMap<i64, usize> {
    let mut count = BTreeMap::new();
    for r in routes.values() {
        *count.entry(r.priority).or_insert(0) += 1;
    }
    count
}

fn route(
    res: &Resources,
    unparsed: &Unparsed,
    name: &str,
    r: &Route,
    priorities: &BTreeMap<i64, usize>,
    errors: &mut Vec<ValidationError>,
) {
    let base = format!("routes.{}", key_segment(name));
    check_name("routes", name, &r.file, errors);
    if r.pipelines.is_empty() {
        errors.push(ValidationError::new(
            &r.file,
            format!("{base}.pipelines"),
            "needs at least one pipeline",
        ));
    }
    duplicates(&r.pipelines, &format!("{base}.pipelines"), &r.file, errors);
    for (i, p) in r.pipelines.iter().enumerate() {
        if res.pipelines.contains_key(p) {
            continue;
        }
        if let Some(msg) = dangling(unparsed, "pipelines", "pipeline", p) {
            errors.push(ValidationError::new(&r.file, format!("{base}.pipelines[{i}]"), msg));
        }
    }
    for (key, message) in r.selector.problems() {
        errors.push(ValidationError::new(
            &r.file,
            format!("{base}.selector.{key}"),
            format!("invalid selector: {message}"),
        ));
    }
    if r.is_final && priorities.get(&r.priority).copied().unwrap_or(0) > 1 {
        errors.push(ValidationError::new(
            &r.file,
            format!("{base}.priority"),
            format!(
                "a final route needs a priority no other route has; {} is shared",
                r.priority
            ),
        ));
    }
}

fn duplicates<T: Ord + std::fmt::Debug>(items: &[T], key: &str, file: &str, errors: &mut Vec<ValidationError>) {
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        if !seen.insert(item) {
            errors.push(ValidationError::new(
                file,
                format!("{key}[{i}]"),
                format!("{item:?} is listed twice"),
            ));
        }
    }
}

/// Refuse literal secrets: a known secret field must be a reference
/// (`${env:NAME}`, `${file:/path}`), optionally after an auth scheme word
/// (`Bearer ${env:TOKEN}`); and a private key never belongs in git.
fn secrets<'a>(v: &'a Value, path: &mut Vec<&'a str>, key: &str, file: &str, errors: &mut Vec<ValidationError>) {
    match v {
        Value::Map(m) => {
            for (k, child) in m {
                path.push(k);
                secrets(child, path, &format!("{key}.{}", key_segment(k)), file, errors);
                path.pop();
            }
        }
        Value::List(l) => {
            for (i, child) in l.iter().enumerate() {
                secrets(child, path, &format!("{key}[{i}]"), file, errors);
            }
        }
        Value::String(s) => {
            if s.contains("PRIVATE KEY-----") {
                errors.push(ValidationError::new(
                    file,
                    key,
                    "a private key is a secret: reference a file on the collector (${file:/path}) or use a *_file setting",
                ));
            } else if is_secret_field(path) && !is_reference(s) {
                errors.push(ValidationError::new(
                    file,
                    key,
                    "literal secret: use a reference such as \"${env:NAME}\" or \"${file:/path}\", resolved on the collector",
                ));
            }
        }
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            if is_secret_field(path) {
                errors.push(ValidationError::new(
                    file,
                    key,
                    "literal secret: use a reference such as \"${env:NAME}\"",
                ));
            }
        }
    }
}

/// Empty, or references with at most one short scheme word around them.
pub(crate) fn is_reference(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let mut rest = String::new();
    let mut refs = 0;
    let mut tail = s;
    while let Some(start) = tail.find("${") {
        rest.push_str(&tail[..start]);
        let Some(len) = tail[start..].find('}') else {
            return false;
        };
        if !valid_reference(&tail[start + 2..start + len]) {
            return false;
        }
        refs += 1;
        tail = &tail[start + len + 1..];
    }
    rest.push_str(tail);
    let rest = rest.trim();
    refs > 0 && (rest.is_empty() || (rest.len() <= 16 && rest.chars().all(|c| c.is_ascii_alphabetic())))
}

/// `env:NAME`, `NAME` (env) or `file:/path`.
fn valid_reference(inner: &str) -> bool {
    let env_name = |n: &str| {
        n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match inner.split_once(':') {
        Some(("env", n)) => env_name(n),
        Some(("file", p)) => !p.is_empty(),
        Some(_) => false,
        None => env_name(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_recognised() {
        for ok in [
            "${env:API_KEY}",
            "${file:/run/secrets/k}",
            "Bearer ${env:T}",
            "${TOKEN}",
            "",
        ] {
            assert!(is_reference(ok), "{ok}");
        }
        for bad in [
            "hunter2",
            "Bearer abc123",
            "${env:}",
            "${vault:x}",
            "${env:A",
            "x${env:A}y z",
        ] {
            assert!(!is_reference(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod rule_tests {
    use crate::configstore::{load_files, test_files, ValidationError};

    const BASE: &str = r#"
[sources.in]
type = "otlp"
settings.protocols.grpc.endpoint = "0.0.0.0:4317"

[sources.host]
type = "hostmetrics"
settings.scrapers.cpu = {}

[processors.batch]
type = "batch"

[destinations.out]
type = "otlp"
settings.endpoint = "collector.example.com:4317"
"#;

    fn errors(extra: &str) -> Vec<ValidationError> {
        load_files(&test_files(&[("base.toml", BASE), ("x.toml", extra)])).expect_err("should be invalid")
    }

    fn keys(errors: &[ValidationError]) -> Vec<String> {
        errors.iter().map(|e| format!("{}:{}", e.file, e.key)).collect()
    }

    #[test]
    fn a_valid_set_loads() {
        let ok = r#"
[pipelines.p]
signals = ["traces", "metrics"]
sources = ["in"]
processors = ["batch"]
destinations = ["out"]

[routes.all]
pipelines = ["p"]
"#;
        let res = load_files(&test_files(&[("base.toml", BASE), ("x.toml", ok)])).unwrap();
        assert_eq!(res.len(), 6);
    }

    #[test]
    fn dangling_references_and_signal_mismatches_are_reported_with_their_key() {
        let e = errors(
            r#"
[pipelines.p]
signals = ["traces", "logs"]
sources = ["in", "host", "nope"]
destinations = ["out"]

[routes.r]
pipelines = ["p", "ghost"]
"#,
        );
        let k = keys(&e);
        assert!(k.contains(&"x.toml:pipelines.p.sources[2]".to_string()), "{e:#?}");
        assert!(
            k.contains(&"x.toml:pipelines.p.sources[1]".to_string()),
            "hostmetrics carries no traces: {e:#?}"
        );
        assert!(k.contains(&"x.toml:routes.r.pipelines[1]".to_string()), "{e:#?}");
        assert!(e.iter().any(|e| e.message.contains("dangling reference")));
        assert!(e.iter().any(|e| e.message.contains("signal mismatch")));
    }

    #[test]
    fn catalogue_settings_and_types_are_checked() {
        let e = errors(
            r#"
[destinations.half]
type = "otlphttp"

[processors.limit]
type = "memory_limiter"
settings.check_interval = "1s"

[sources.typo]
type = "otlpp"

[destinations.wrong-kind]
type = "filelog"

[sources.custom]
type = "my_receiver"
signals = ["logs"]
"#,
        );
        let k = keys(&e);
        assert!(k.contains(&"x.toml:destinations.half.settings".to_string()), "{e:#?}");
        assert!(k.contains(&"x.toml:processors.limit.settings".to_string()), "{e:#?}");
        assert!(k.contains(&"x.toml:sources.typo.type".to_string()), "{e:#?}");
        assert!(k.contains(&"x.toml:destinations.wrong-kind.type".to_string()), "{e:#?}");
        assert!(
            !k.iter().any(|k| k.contains("custom")),
            "a custom type with signals is accepted: {e:#?}"
        );
        assert_eq!(e.len(), 4, "{e:#?}");
    }

    #[test]
    fn literal_secrets_are_refused_and_references_accepted() {
        let e = errors(
            r#"
[destinations.leaky]
type = "otlphttp"
settings.endpoint = "https://x.example.com"
settings.headers = { Authorization = "Bearer abc123", "x-scope-orgid" = "tenant-1" }
settings.auth.password = "hunter2"

[destinations.fine]
type = "otlphttp"
settings.endpoint = "https://x.example.com"
settings.headers = { Authorization = "Bearer ${env:TOKEN}", api-key = "${file:/run/secrets/key}" }

[destinations.pem]
type = "otlp"
settings.endpoint = "x:4317"
settings.tls.cert_pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"
"#,
        );
        assert_eq!(
            keys(&e),
            [
                "x.toml:destinations.leaky.settings.auth.password",
                "x.toml:destinations.leaky.settings.headers.Authorization",
                "x.toml:destinations.pem.settings.tls.cert_pem",
            ]
        );
    }

    #[test]
    fn names_selectors_duplicates_and_final_ties() {
        let e = errors(
            r#"
[pipelines."bad name"]
signals = ["traces", "traces"]
sources = ["in"]
destinations = ["out", "out"]

[pipelines.empty]
signals = []
sources = []
destinations = ["out"]

[routes.a]
priority = 5
final = true
pipelines = ["empty"]
selector.match_labels = { "bad key!" = "v" }
selector.match_expressions = [{ key = "env", operator = "Exists", values = ["x"] }]

[routes.b]
priority = 5
pipelines = []
"#,
        );
        let k = keys(&e);
        for want in [
            "x.toml:pipelines.\"bad name\"",
            "x.toml:pipelines.\"bad name\".signals[1]",
            "x.toml:pipelines.\"bad name\".destinations[1]",
            "x.toml:pipelines.empty.signals",
            "x.toml:pipelines.empty.sources",
            "x.toml:routes.a.selector.match_labels.\"bad key!\"",
            "x.toml:routes.a.selector.match_expressions[0].values",
            "x.toml:routes.a.priority",
            "x.toml:routes.b.pipelines",
        ] {
            assert!(k.contains(&want.to_string()), "missing {want}: {e:#?}");
        }
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let e = load_files(&[]).unwrap_err();
        assert!(e[0].message.contains("no .toml files"));
    }
}
