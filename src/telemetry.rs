//! Observability: the tracing subscriber (pretty or JSON logs, optional OTLP
//! trace export) and the Prometheus metrics of one instance.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(LATENCY_START, 2.0, LATENCY_BUCKETS as u16))
}

/// The metrics of one instance. Each instance owns its registry, so tests
/// can run several instances in one process.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<Labels, Counter>,
    http_latency: Family<Labels, Histogram, fn() -> Histogram>,
    storage_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Collectors connected to this instance (set by the fleet module).
    pub connected_collectors: Gauge,
    config_revision: Family<Labels, Gauge>,
    config_reloads: Counter,
    config_reload_failures: Counter,
    config_head_valid: Gauge,
    change_feed_failures: Gauge,
    change_feed_progress_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    own_telemetry_points: Family<Labels, Counter>,
    own_telemetry_rollups: Counter,
    collector_bodies: Family<Labels, Counter>,
    /// Collectors whose own telemetry this instance holds in memory.
    pub own_telemetry_collectors: Gauge,
    config_override: Family<Labels, Gauge>,
    rollout_state: Family<Labels, Gauge>,
    rollout_wave: Gauge,
    rollout_gate_failures: Family<Labels, Counter>,
    rollout_lease_held: Gauge,
    /// Every request's latency in the Prometheus buckets, summed over
    /// routes, so the console can show this instance's p50/p99 without
    /// parsing its own exposition text.
    http_latency_all: LatencyBuckets,
}

/// Bounds of the latency histograms: 0.25 ms doubling, 16 buckets (+Inf).
const LATENCY_START: f64 = 0.00025;
const LATENCY_BUCKETS: usize = 16;

#[derive(Default)]
struct LatencyBuckets([std::sync::atomic::AtomicU64; LATENCY_BUCKETS + 1]);

/// Request latency quantiles of this instance since it started, as the
/// upper bound of the histogram bucket each quantile falls in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub requests: u64,
    /// Seconds; `f64::INFINITY` when above the largest bucket.
    pub p50: f64,
    pub p99: f64,
}

impl LatencyBuckets {
    fn observe(&self, secs: f64) {
        let i = (0..LATENCY_BUCKETS)
            .find(|&i| secs <= LATENCY_START * 2f64.powi(i as i32))
            .unwrap_or(LATENCY_BUCKETS);
        self.0[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn summary(&self) -> Option<LatencySummary> {
        let counts: Vec<u64> = self
            .0
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let quantile = |q: f64| {
            let rank = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return if i < LATENCY_BUCKETS {
                        LATENCY_START * 2f64.powi(i as i32)
                    } else {
                        f64::INFINITY
                    };
                }
            }
            f64::INFINITY
        };
        Some(LatencySummary {
            requests: total,
            p50: quantile(0.5),
            p99: quantile(0.99),
        })
    }
}

impl Metrics {
    pub fn new(instance: &str) -> Self {
        let mut registry = Registry::with_prefix("linkmesh");
        let http_requests = Family::<Labels, Counter>::default();
        let http_latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let storage_latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let connected_collectors = Gauge::default();
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("instance", instance.to_string()),
            ])
            .set(1);
        registry.register("build_info", "Version and instance name of this server", build_info);
        registry.register(
            "http_requests",
            "HTTP requests handled, by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_latency.clone(),
        );
        registry.register(
            "storage_operation_duration_seconds",
            "Storage operation latency by operation",
            storage_latency.clone(),
        );
        registry.register(
            "connected_collectors",
            "Collectors connected to this instance",
            connected_collectors.clone(),
        );
        let config_revision = Family::<Labels, Gauge>::default();
        registry.register(
            "config_revision_info",
            "The config commit this instance serves (value 1)",
            config_revision.clone(),
        );
        let config_reloads = Counter::default();
        registry.register("config_reloads", "Valid config commits applied", config_reloads.clone());
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Invalid config commits refused (the last valid one kept serving)",
            config_reload_failures.clone(),
        );
        let config_head_valid = Gauge::default();
        registry.register(
            "config_head_valid",
            "1 when the newest commit of the config branch is valid and served, 0 when it was refused",
            config_head_valid.clone(),
        );
        let change_feed_failures = Gauge::default();
        registry.register(
            "change_feed_consecutive_failures",
            "MongoDB change stream: attempts in a row that failed to read or reopen it",
            change_feed_failures.clone(),
        );
        let change_feed_progress_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "change_feed_seconds_since_progress",
            "MongoDB change stream: seconds since it last delivered an event or advanced its resume token",
            change_feed_progress_age.clone(),
        );
        // Own telemetry of collectors: totals only, never a series per
        // collector or component (bounded cardinality).
        let own_telemetry_points = Family::<Labels, Counter>::default();
        registry.register(
            "own_telemetry_points",
            "Collector own-metrics data points received on POST /v1/metrics, by outcome (accepted, rejected)",
            own_telemetry_points.clone(),
        );
        // Bodies collectors sent that the server decompressed and decoded:
        // only authenticated requests get that far, so a rise here without
        // a rise in collectors is worth a look.
        let collector_bodies = Family::<Labels, Counter>::default();
        registry.register(
            "collector_bodies_decoded",
            "Collector request bodies (OpAMP HTTP, OTLP) the server decompressed and decoded, by endpoint and outcome (ok, refused)",
            collector_bodies.clone(),
        );
        let own_telemetry_rollups = Counter::default();
        registry.register(
            "own_telemetry_rollups_written",
            "Per-collector own-telemetry rollup records stored",
            own_telemetry_rollups.clone(),
        );
        let own_telemetry_collectors = Gauge::default();
        registry.register(
            "own_telemetry_collectors",
            "Collectors whose own telemetry this instance holds in memory",
            own_telemetry_collectors.clone(),
        );
        let config_override = Family::<Labels, Gauge>::default();
        registry.register(
            "config_override_active",
            "1 while an emergency override makes this instance serve an earlier config commit (label: that commit)",
            config_override.clone(),
        );
        let rollout_state = Family::<Labels, Gauge>::default();
        registry.register(
            "rollout_state",
            "1 for the state of the current staged rollout (label state: running, paused, halted, completed, aborted)",
            rollout_state.clone(),
        );
        let rollout_wave = Gauge::default();
        registry.register(
            "rollout_wave",
            "Index (from 0) of the wave the current rollout is at",
            rollout_wave.clone(),
        );
        let rollout_gate_failures = Family::<Labels, Counter>::default();
        registry.register(
            "rollout_gate_failures",
            "Waves halted and rolled back by a failed gate (label gate: applied, healthy, send_failures)",
            rollout_gate_failures.clone(),
        );
        let rollout_lease_held = Gauge::default();
        registry.register(
            "rollout_lease_held",
            "1 while this instance holds the rollout lease (advances rollouts)",
            rollout_lease_held.clone(),
        );
        Metrics {
            rollout_state,
            rollout_wave,
            rollout_gate_failures,
            rollout_lease_held,
            registry,
            change_feed_failures,
            change_feed_progress_age,
            http_requests,
            http_latency,
            storage_latency,
            connected_collectors,
            config_revision,
            config_reloads,
            config_reload_failures,
            config_head_valid,
            own_telemetry_points,
            own_telemetry_rollups,
            collector_bodies,
            own_telemetry_collectors,
            config_override,
            http_latency_all: LatencyBuckets::default(),
        }
    }

    /// This instance's request latency since start (None before any request).
    pub fn http_latency_summary(&self) -> Option<LatencySummary> {
        self.http_latency_all.summary()
    }

    /// Own-metrics points of one request: kept and refused.
    pub fn own_telemetry_points(&self, accepted: u64, rejected: u64) {
        for (outcome, n) in [("accepted", accepted), ("rejected", rejected)] {
            if n > 0 {
                self.own_telemetry_points
                    .get_or_create(&vec![("outcome", outcome.to_string())])
                    .inc_by(n);
            }
        }
    }

    /// A collector's body was decoded (`endpoint`: `opamp_http` or
    /// `otlp_metrics`), successfully or not.
    pub fn collector_body_decoded(&self, endpoint: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "refused" };
        self.collector_bodies
            .get_or_create(&vec![
                ("endpoint", endpoint.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    pub fn own_telemetry_rollups_written(&self, n: u64) {
        self.own_telemetry_rollups.inc_by(n);
    }

    /// The current rollout's state and wave, as every instance sees it.
    pub fn rollout(&self, state: &'static str, wave: usize) {
        self.rollout_state.clear();
        self.rollout_state
            .get_or_create(&vec![("state", state.to_string())])
            .set(1);
        self.rollout_wave.set(wave as i64);
    }

    /// A gate failed (counted by the instance that advanced the rollout).
    pub fn rollout_gate_failed(&self, gate: &'static str) {
        self.rollout_gate_failures
            .get_or_create(&vec![("gate", gate.to_string())])
            .inc();
    }

    pub fn rollout_lease(&self, held: bool) {
        self.rollout_lease_held.set(i64::from(held));
    }

    /// A valid config commit is now served.
    pub fn config_serving(&self, commit: &str) {
        self.config_revision.clear();
        self.config_revision
            .get_or_create(&vec![("commit", commit.to_string())])
            .set(1);
        self.config_reloads.inc();
        self.config_head_valid.set(1);
    }

    /// The commit served changed because an emergency override was set
    /// (`Some(commit)`) or cleared (`None`, serving `tip`); not a reload.
    pub fn config_override(&self, commit: Option<&str>, serving: Option<&str>) {
        self.config_override.clear();
        if let Some(c) = commit {
            self.config_override
                .get_or_create(&vec![("commit", c.to_string())])
                .set(1);
        }
        self.config_revision.clear();
        if let Some(c) = serving {
            self.config_revision
                .get_or_create(&vec![("commit", c.to_string())])
                .set(1);
        }
    }

    /// A config commit was refused as invalid.
    pub fn config_reload_failed(&self) {
        self.config_reload_failures.inc();
        self.config_head_valid.set(0);
    }

    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        self.http_latency
            .get_or_create(&vec![("route", route.to_string())])
            .observe(elapsed.as_secs_f64());
        self.http_latency_all.observe(elapsed.as_secs_f64());
    }

    pub fn observe_storage(&self, op: &'static str, elapsed: Duration) {
        self.storage_latency
            .get_or_create(&vec![("op", op.to_string())])
            .observe(elapsed.as_secs_f64());
    }

    /// The change stream's health, set when the metrics are scraped.
    pub fn change_feed(&self, health: &crate::storage::FeedHealth) {
        self.change_feed_failures.set(i64::from(health.consecutive_failures));
        self.change_feed_progress_age
            .set(health.seconds_since_progress.unwrap_or(f64::INFINITY));
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Keeps the OTLP pipeline alive; flushes pending spans when dropped.
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Install the process-wide tracing subscriber. Called once, by `main`.
pub fn init_tracing(cfg: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&cfg.log_level)?;
    let fmt = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_current_span(true).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
    };
    let mut provider = None;
    let otel = match &cfg.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(cfg.service_name.clone())
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(p.tracer("linkmesh"));
            provider = Some(p);
            Some(layer)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn quantiles_are_the_bucket_bounds_they_fall_in() {
        let b = LatencyBuckets::default();
        assert_eq!(b.summary(), None);
        for _ in 0..98 {
            b.observe(0.0002); // first bucket, <= 0.25 ms
        }
        b.observe(0.003); // <= 4 ms
        b.observe(100.0); // above every bucket
        let s = b.summary().unwrap();
        assert_eq!(s.requests, 100);
        assert_eq!(s.p50, 0.00025);
        assert_eq!(s.p99, 0.004);
    }
}
