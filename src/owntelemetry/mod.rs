//! Own telemetry: what collectors report about themselves. Their internal
//! metrics (accepted / refused / sent / failed per component, queue sizes)
//! arrive over OTLP/HTTP at `POST /v1/metrics` on the web listener,
//! authenticated with the collector's own credential, and become
//! per-collector, per-component counters and rates.
//!
//! - `decode`: OTLP bodies (protobuf, JSON, gzip) → the points tracked.
//! - `auth`: the credential → the collector the figures belong to.
//! - `aggregate`: totals and rates in memory, per receiving instance.
//! - `rollup`: one stored record per collector every ~30 s (one writer
//!   task, owned by `run`), so any instance can answer.
//! - `otlp` / `api`: the receiver and the read endpoints (thin).
//!
//! This module never writes to the store outside `rollup`, and never
//! touches collector sessions (`crate::fleet`).

pub(crate) mod aggregate;
mod api;
mod auth;
pub(crate) mod decode;
mod otlp;
mod rollup;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use aggregate::{ComponentFigures, CounterFigure};
pub use decode::{ComponentKey, ComponentKind, Measure, Signal};
pub use rollup::{run_writer, write_dirty, TelemetryRollup};

use crate::api::AppState;
use crate::clock::Timestamp;
use crate::domain::{Collector, Domain, DomainError};
use crate::storage::Scan;
use crate::telemetry::Metrics;
use aggregate::Aggregator;

/// Figures older than this (no report from the collector since) are shown
/// as stale and left out of fleet-wide aggregates.
pub const STALE_AFTER: Duration = Duration::from_secs(300);

/// The own-telemetry service of one instance. Cheap to clone.
#[derive(Clone)]
pub struct OwnTelemetry {
    inner: Arc<Inner>,
}

struct Inner {
    domain: Domain,
    instance: String,
    metrics: Arc<Metrics>,
    /// A plain mutex: every critical section is a few map operations with
    /// no `.await` inside, so an async lock would only add overhead.
    aggregator: Mutex<Aggregator>,
}

/// One collector's figures, as the API shows them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CollectorTelemetry {
    pub collector_id: String,
    /// When the collector last reported; absent if it never did.
    pub updated_at: Option<Timestamp>,
    /// The instance that received that report.
    pub instance: Option<String>,
    /// No report for more than 5 minutes: the rates are old news.
    pub stale: bool,
    pub components: Vec<ComponentFigures>,
}

/// One component id summed over the collectors that run it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetComponent {
    #[serde(flatten)]
    pub component: ComponentKey,
    /// Collectors with fresh figures for it.
    pub collectors: u64,
    /// Totals and rates summed over those collectors.
    pub counters: BTreeMap<Measure, CounterFigure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<f64>,
}

/// Fleet-wide figures per component (for the canvas and rollout gates).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetComponents {
    /// Collectors whose figures are included (fresh ones).
    pub collectors: u64,
    pub components: Vec<FleetComponent>,
}

impl OwnTelemetry {
    pub fn new(domain: Domain, instance: String, metrics: Arc<Metrics>) -> Self {
        OwnTelemetry {
            inner: Arc::new(Inner {
                domain,
                instance,
                metrics,
                aggregator: Mutex::new(Aggregator::default()),
            }),
        }
    }

    fn with_aggregator<R>(&self, f: impl FnOnce(&mut Aggregator) -> R) -> R {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters (figures only), so a poisoned lock is used.
        let mut guard = self.inner.aggregator.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut guard);
        self.inner.metrics.own_telemetry_collectors.set(guard.len() as i64);
        r
    }

    /// Apply decoded points to `collector_id`'s figures; returns how many
    /// points were refused in all (by the decoder or here).
    fn ingest(&self, collector_id: &str, decoded: &decode::Decoded) -> u64 {
        let now = self.inner.domain.clock().now();
        let applied = self.with_aggregator(|a| a.ingest(collector_id, &decoded.points, now));
        let rejected = decoded.rejected + applied.rejected;
        self.inner.metrics.own_telemetry_points(applied.accepted, rejected);
        rejected
    }

    fn is_stale(&self, updated_at: Timestamp) -> bool {
        updated_at.plus(STALE_AFTER) < self.inner.domain.clock().now()
    }

    /// A collector's figures: this instance's own if it received the
    /// newest report, else the stored rollup.
    pub async fn collector(&self, collector_id: &str) -> Result<CollectorTelemetry, DomainError> {
        if self
            .inner
            .domain
            .store()
            .get::<Collector>(collector_id)
            .await?
            .is_none()
        {
            return Err(DomainError::NotFound {
                what: "collector",
                id: collector_id.into(),
            });
        }
        self.figures(collector_id).await
    }

    /// `collector` for a collector the caller knows exists (the detail
    /// view): one store read, the rollup.
    pub async fn figures(&self, collector_id: &str) -> Result<CollectorTelemetry, DomainError> {
        let store = self.inner.domain.store();
        let live = self.with_aggregator(|a| a.figures(collector_id));
        let stored = store.get::<TelemetryRollup>(collector_id).await?.map(|v| v.value);
        let (updated_at, instance, components) = match (live, stored) {
            (Some((t, _)), Some(s)) if s.updated_at > t => (Some(s.updated_at), Some(s.instance), s.components),
            (Some((t, f)), _) => (Some(t), Some(self.inner.instance.clone()), f),
            (None, Some(s)) => (Some(s.updated_at), Some(s.instance), s.components),
            (None, None) => (None, None, Vec::new()),
        };
        Ok(CollectorTelemetry {
            collector_id: collector_id.into(),
            stale: updated_at.is_some_and(|t| self.is_stale(t)),
            updated_at,
            instance,
            components,
        })
    }

    /// Every collector's freshest figures: stored rollups, overridden by
    /// newer ones held here.
    async fn latest_all(&self) -> Result<BTreeMap<String, (Timestamp, Vec<ComponentFigures>)>, DomainError> {
        let mut all = BTreeMap::new();
        let mut after = None;
        loop {
            let page = self
                .inner
                .domain
                .store()
                .scan::<TelemetryRollup>(Scan {
                    after: after.clone(),
                    limit: 1000,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for r in page {
                all.insert(r.key, (r.value.updated_at, r.value.components));
            }
        }
        for (id, t, f) in self.with_aggregator(|a| a.all()) {
            if all.get(&id).is_none_or(|(stored, _)| *stored <= t) {
                all.insert(id, (t, f));
            }
        }
        Ok(all)
    }

    /// Fleet-wide sums per component id and signal, over fresh figures.
    pub async fn components(&self) -> Result<FleetComponents, DomainError> {
        let mut out: BTreeMap<ComponentKey, FleetComponent> = BTreeMap::new();
        let mut collectors = 0;
        for (_, (t, figures)) in self.latest_all().await? {
            if self.is_stale(t) {
                continue;
            }
            collectors += 1;
            for f in figures {
                let e = out.entry(f.component.clone()).or_insert_with(|| FleetComponent {
                    component: f.component.clone(),
                    collectors: 0,
                    counters: BTreeMap::new(),
                    queue_size: None,
                    queue_capacity: None,
                });
                e.collectors += 1;
                for (m, c) in f.counters {
                    let sum = e.counters.entry(m).or_insert(CounterFigure { total: 0.0, rate: None });
                    sum.total += c.total;
                    if let Some(r) = c.rate {
                        sum.rate = Some(sum.rate.unwrap_or(0.0) + r);
                    }
                }
                let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (a, None) => a,
                    (a, Some(b)) => Some(a.unwrap_or(0.0) + b),
                };
                e.queue_size = add(e.queue_size, f.queue_size);
                e.queue_capacity = add(e.queue_capacity, f.queue_capacity);
            }
        }
        Ok(FleetComponents {
            collectors,
            components: out.into_values().collect(),
        })
    }
}

/// The receiver and the read endpoints, merged by `crate::api::router`.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(otlp::export_metrics))
        .routes(routes!(api::collector_telemetry))
        .routes(routes!(api::fleet_components))
}
