//! The catalogue of common OpenTelemetry collector components (core and
//! contrib distributions): which section each type belongs to, the signals
//! it supports and the settings it cannot start without. Validation checks
//! known types against it; a type it does not know must declare its
//! `signals` (a custom component) and its settings pass unchecked.
//!
//! Also here: which settings keys hold secrets, so that a literal secret in
//! git is refused.

use super::schema::{Kind, Signal};

/// What the catalogue knows about one component type.
#[derive(Debug)]
pub struct Spec {
    pub kind: Kind,
    pub component_type: &'static str,
    pub signals: &'static [Signal],
    /// Each entry: at least one of these dotted settings paths must be set.
    pub required: &'static [&'static [&'static str]],
}

use Kind::{Destination as D, Processor as P, Source as S};
use Signal::{Logs, Metrics, Traces};

const ALL: &[Signal] = &[Traces, Metrics, Logs];
const T: &[Signal] = &[Traces];
const M: &[Signal] = &[Metrics];
const L: &[Signal] = &[Logs];
const TL: &[Signal] = &[Traces, Logs];
const ML: &[Signal] = &[Metrics, Logs];

const fn spec(
    kind: Kind,
    component_type: &'static str,
    signals: &'static [Signal],
    required: &'static [&'static [&'static str]],
) -> Spec {
    Spec {
        kind,
        component_type,
        signals,
        required,
    }
}

/// Sorted by kind, then type.
pub static CATALOGUE: &[Spec] = &[
    // Receivers.
    spec(S, "docker_stats", M, &[]),
    spec(S, "filelog", L, &[&["include"]]),
    spec(S, "fluentforward", L, &[&["endpoint"]]),
    spec(S, "hostmetrics", M, &[&["scrapers"]]),
    spec(S, "jaeger", T, &[&["protocols"]]),
    spec(S, "journald", L, &[]),
    spec(S, "k8s_cluster", ML, &[]),
    spec(S, "k8sobjects", L, &[&["objects"]]),
    spec(S, "kafka", ALL, &[]),
    spec(S, "kubeletstats", M, &[]),
    spec(S, "otlp", ALL, &[&["protocols.grpc", "protocols.http"]]),
    spec(
        S,
        "prometheus",
        M,
        &[&[
            "config.scrape_configs",
            "config.scrape_config_files",
            "target_allocator",
        ]],
    ),
    spec(S, "statsd", M, &[]),
    spec(S, "syslog", L, &[&["protocol"], &["tcp", "udp"]]),
    spec(S, "tcplog", L, &[&["listen_address"]]),
    spec(S, "udplog", L, &[&["listen_address"]]),
    spec(S, "windowseventlog", L, &[&["channel"]]),
    spec(S, "zipkin", T, &[]),
    // Processors.
    spec(P, "attributes", ALL, &[&["actions"]]),
    spec(P, "batch", ALL, &[]),
    spec(P, "cumulativetodelta", M, &[]),
    spec(P, "deltatocumulative", M, &[]),
    spec(P, "filter", ALL, &[]),
    spec(P, "groupbyattrs", ALL, &[]),
    spec(P, "k8sattributes", ALL, &[]),
    spec(
        P,
        "memory_limiter",
        ALL,
        &[&["check_interval"], &["limit_mib", "limit_percentage"]],
    ),
    spec(P, "metricstransform", M, &[&["transforms"]]),
    spec(P, "probabilistic_sampler", TL, &[]),
    spec(P, "redaction", ALL, &[]),
    spec(P, "resource", ALL, &[&["attributes"]]),
    spec(P, "resourcedetection", ALL, &[]),
    spec(P, "span", T, &[]),
    spec(P, "tail_sampling", T, &[&["policies"]]),
    spec(P, "transform", ALL, &[]),
    // Exporters.
    spec(D, "awss3", ALL, &[&["s3uploader.s3_bucket"]]),
    spec(D, "clickhouse", ALL, &[&["endpoint"]]),
    spec(D, "datadog", ALL, &[&["api.key"]]),
    spec(D, "debug", ALL, &[]),
    spec(D, "elasticsearch", ALL, &[&["endpoint", "endpoints", "cloudid"]]),
    spec(D, "file", ALL, &[&["path"]]),
    spec(D, "kafka", ALL, &[]),
    spec(D, "loadbalancing", ALL, &[&["protocol"], &["resolver"]]),
    spec(D, "nop", ALL, &[]),
    spec(D, "otlp", ALL, &[&["endpoint"]]),
    spec(
        D,
        "otlphttp",
        ALL,
        &[&["endpoint", "traces_endpoint", "metrics_endpoint", "logs_endpoint"]],
    ),
    spec(D, "prometheus", M, &[&["endpoint"]]),
    spec(D, "prometheusremotewrite", M, &[&["endpoint"]]),
    spec(D, "splunk_hec", ALL, &[&["endpoint"], &["token"]]),
    spec(D, "zipkin", T, &[&["endpoint"]]),
];

/// The catalogue entry for `component_type` in `kind`'s section.
pub fn lookup(kind: Kind, component_type: &str) -> Option<&'static Spec> {
    CATALOGUE
        .iter()
        .find(|s| s.kind == kind && s.component_type == component_type)
}

/// The other sections a type is known in (for "X is a source type" hints).
pub fn known_elsewhere(kind: Kind, component_type: &str) -> Vec<Kind> {
    CATALOGUE
        .iter()
        .filter(|s| s.kind != kind && s.component_type == component_type)
        .map(|s| s.kind)
        .collect()
}

/// Settings keys (lower case, `-` read as `_`) whose value is a secret
/// wherever they appear in a component's settings.
const SECRET_KEYS: &[&str] = &[
    "access_key",
    "access_token",
    "api_key",
    "api_token",
    "apikey",
    "auth_token",
    "bearer_token",
    "client_secret",
    "connection_string",
    "key_pem",
    "passphrase",
    "password",
    "passwd",
    "private_key",
    "sas_token",
    "secret",
    "secret_access_key",
    "secret_key",
    "token",
];

/// Whether the settings value at `path` (the keys from the settings root)
/// is a secret: a known secret key anywhere, `api.key` (datadog style), or
/// a header whose name speaks of credentials.
pub fn is_secret_field(path: &[&str]) -> bool {
    let Some(last) = path.last() else {
        return false;
    };
    let key = last.to_ascii_lowercase().replace('-', "_");
    if SECRET_KEYS.contains(&key.as_str()) {
        return true;
    }
    let parent = path.len().checked_sub(2).map(|i| path[i].to_ascii_lowercase());
    match parent.as_deref() {
        Some("api") if key == "key" => true,
        Some("headers") => ["auth", "token", "key", "secret", "password", "x_honeycomb_team"]
            .iter()
            .any(|w| key.contains(w)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_sorted_and_unique() {
        for w in CATALOGUE.windows(2) {
            assert!(
                (w[0].kind, w[0].component_type) < (w[1].kind, w[1].component_type),
                "{} / {} out of order",
                w[0].component_type,
                w[1].component_type
            );
        }
    }

    #[test]
    fn secret_fields() {
        assert!(is_secret_field(&["auth", "password"]));
        assert!(is_secret_field(&["headers", "Authorization"]));
        assert!(is_secret_field(&["headers", "x-api-key"]));
        assert!(is_secret_field(&["api", "key"]));
        assert!(is_secret_field(&["token"]));
        assert!(!is_secret_field(&["actions", "key"]));
        assert!(!is_secret_field(&["headers", "x-scope-orgid"]));
        assert!(!is_secret_field(&["tls", "key_file"]));
    }
}
