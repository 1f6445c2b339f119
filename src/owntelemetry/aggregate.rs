//! Per-collector, per-component counters and rates, in memory on the
//! instance that received the points.
//!
//! Totals and rates are computed from the points' own timestamps, not from
//! when they arrived, so a collector whose requests a load balancer spreads
//! over several instances gets correct rates on each (cumulative values are
//! absolute). Counter resets (a restarted collector: a new start time or a
//! smaller value) start a new lifetime on top of the old total, so totals
//! never go backwards. Older points than one already seen carry nothing new
//! for a cumulative counter and are ignored; for a delta they still count.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::decode::{ComponentKey, Measure, Point, Temporality};
use crate::clock::Timestamp;

/// Rates are averaged over about this much of the collector's own time
/// (and at least over its last two reports).
const RATE_WINDOW_NS: u64 = 120_000_000_000;
/// Samples kept per counter, whatever the report frequency.
const MAX_SAMPLES: usize = 64;
/// Series (component × signal × measure) kept per collector; more are
/// refused, so one collector cannot grow the server's memory without bound.
pub const MAX_SERIES_PER_COLLECTOR: usize = 1024;

/// A counter as shown: events since the collector first reported, and
/// events per second recently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CounterFigure {
    pub total: f64,
    /// Events per second; absent until two reports were received.
    pub rate: Option<f64>,
}

/// Everything known about one component of a collector, for one signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComponentFigures {
    #[serde(flatten)]
    pub component: ComponentKey,
    /// `accepted`, `refused`, `sent`, `send_failed`, … → figures.
    pub counters: BTreeMap<Measure, CounterFigure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<f64>,
}

#[derive(Debug, Default)]
struct Counter {
    start_ns: u64,
    last_ns: u64,
    last_value: f64,
    /// Sum of the earlier lifetimes (before resets).
    base: f64,
    /// (time, total) of recent reports, oldest first.
    samples: VecDeque<(u64, f64)>,
}

impl Counter {
    fn total(&self) -> f64 {
        self.base + self.last_value
    }

    fn apply(&mut self, p: &Point) {
        match p.temporality {
            Temporality::Delta => {
                self.last_value += p.value;
                if p.time_ns <= self.last_ns {
                    return;
                }
            }
            _ => {
                if p.time_ns <= self.last_ns {
                    return;
                }
                let restarted = p.start_ns != 0 && self.start_ns != 0 && p.start_ns != self.start_ns;
                if restarted || p.value < self.last_value {
                    self.base += self.last_value;
                }
                self.start_ns = p.start_ns;
                self.last_value = p.value;
            }
        }
        self.last_ns = p.time_ns;
        self.samples.push_back((p.time_ns, self.total()));
        while self.samples.len() > MAX_SAMPLES
            || (self.samples.len() > 2 && self.samples[1].0 + RATE_WINDOW_NS <= p.time_ns)
        {
            self.samples.pop_front();
        }
    }

    fn rate(&self) -> Option<f64> {
        let (t0, v0) = *self.samples.front()?;
        let (t1, v1) = *self.samples.back()?;
        (t1 > t0).then(|| (v1 - v0) / ((t1 - t0) as f64 / 1e9))
    }
}

#[derive(Debug)]
enum Series {
    Counter(Counter),
    Gauge { value: f64, time_ns: u64 },
}

#[derive(Debug)]
struct CollectorState {
    received_at: Timestamp,
    /// Changed since the last rollup was written.
    dirty: bool,
    series: BTreeMap<(ComponentKey, Measure), Series>,
}

/// What an ingest did with the points of one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub accepted: u64,
    pub rejected: u64,
}

/// The in-memory figures of every collector that reported to this instance.
#[derive(Debug, Default)]
pub struct Aggregator {
    collectors: HashMap<String, CollectorState>,
}

impl Aggregator {
    /// Apply points reported by `collector_id` (the authenticated one).
    pub fn ingest(&mut self, collector_id: &str, points: &[Point], now: Timestamp) -> Applied {
        let state = self
            .collectors
            .entry(collector_id.to_string())
            .or_insert_with(|| CollectorState {
                received_at: now,
                dirty: false,
                series: BTreeMap::new(),
            });
        state.received_at = now;
        let mut applied = Applied::default();
        for p in points {
            let key = (p.component.clone(), p.measure);
            if !state.series.contains_key(&key) && state.series.len() >= MAX_SERIES_PER_COLLECTOR {
                applied.rejected += 1;
                continue;
            }
            let series = state.series.entry(key).or_insert_with(|| match p.temporality {
                Temporality::Gauge => Series::Gauge { value: 0.0, time_ns: 0 },
                _ => Series::Counter(Counter::default()),
            });
            match series {
                Series::Counter(c) if p.temporality != Temporality::Gauge => c.apply(p),
                Series::Gauge { value, time_ns } if p.temporality == Temporality::Gauge => {
                    if p.time_ns > *time_ns {
                        (*value, *time_ns) = (p.value, p.time_ns);
                    }
                }
                // A counter name reported as a gauge or the reverse (a
                // changed collector): keep the first shape seen.
                _ => {
                    applied.rejected += 1;
                    continue;
                }
            }
            applied.accepted += 1;
        }
        state.dirty |= applied.accepted > 0;
        applied
    }

    /// The figures of one collector and when it last reported.
    pub fn figures(&self, collector_id: &str) -> Option<(Timestamp, Vec<ComponentFigures>)> {
        let state = self.collectors.get(collector_id)?;
        Some((state.received_at, figures_of(state)))
    }

    /// Collectors changed since the last call, with their figures; they
    /// are marked clean.
    pub fn take_dirty(&mut self) -> Vec<(String, Timestamp, Vec<ComponentFigures>)> {
        self.collectors
            .iter_mut()
            .filter(|(_, s)| s.dirty)
            .map(|(id, s)| {
                s.dirty = false;
                (id.clone(), s.received_at, figures_of(s))
            })
            .collect()
    }

    /// Mark a collector changed again (its rollup could not be written).
    pub fn mark_dirty(&mut self, collector_id: &str) {
        if let Some(s) = self.collectors.get_mut(collector_id) {
            s.dirty = true;
        }
    }

    /// Forget a collector (deregistered).
    pub fn remove(&mut self, collector_id: &str) {
        self.collectors.remove(collector_id);
    }

    /// Forget collectors that have not reported for `idle`; their last
    /// rollup stays in the store.
    pub fn evict_idle(&mut self, now: Timestamp, idle: Duration) {
        self.collectors.retain(|_, s| s.dirty || s.received_at.plus(idle) > now);
    }

    /// Every collector held, with its figures (fleet-wide aggregates).
    pub fn all(&self) -> Vec<(String, Timestamp, Vec<ComponentFigures>)> {
        self.collectors
            .iter()
            .map(|(id, s)| (id.clone(), s.received_at, figures_of(s)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.collectors.len()
    }
}

fn figures_of(state: &CollectorState) -> Vec<ComponentFigures> {
    let mut out: Vec<ComponentFigures> = Vec::new();
    // `series` is ordered by component first, so one component's measures
    // are adjacent.
    for ((component, measure), series) in &state.series {
        if out.last().is_none_or(|f| &f.component != component) {
            out.push(ComponentFigures {
                component: component.clone(),
                counters: BTreeMap::new(),
                queue_size: None,
                queue_capacity: None,
            });
        }
        let Some(f) = out.last_mut() else { continue };
        match (series, measure) {
            (Series::Counter(c), m) => {
                f.counters.insert(
                    *m,
                    CounterFigure {
                        total: c.total(),
                        rate: c.rate(),
                    },
                );
            }
            (Series::Gauge { value, .. }, Measure::QueueCapacity) => f.queue_capacity = Some(*value),
            (Series::Gauge { value, .. }, _) => f.queue_size = Some(*value),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::decode::{ComponentKind, Signal};
    use super::*;

    const S: u64 = 1_000_000_000;

    fn point(measure: Measure, temporality: Temporality, value: f64, start_s: u64, time_s: u64) -> Point {
        Point {
            component: ComponentKey {
                kind: ComponentKind::Exporter,
                id: "otlphttp/a".into(),
                signal: Signal::Spans,
            },
            measure,
            temporality,
            value,
            start_ns: start_s * S,
            time_ns: time_s * S,
        }
    }

    fn sent(agg: &Aggregator) -> CounterFigure {
        let (_, f) = agg.figures("c1").unwrap();
        f[0].counters[&Measure::Sent].clone()
    }

    #[test]
    fn cumulative_counters_give_totals_and_rates_across_resets_and_disorder() {
        let mut agg = Aggregator::default();
        let now = Timestamp(1);
        let c = |v, start, t| point(Measure::Sent, Temporality::Cumulative, v, start, t);
        agg.ingest("c1", &[c(100.0, 1, 10)], now);
        assert_eq!(
            sent(&agg),
            CounterFigure {
                total: 100.0,
                rate: None
            }
        );
        agg.ingest("c1", &[c(300.0, 1, 20)], now);
        assert_eq!(sent(&agg).rate, Some(20.0));
        // An older point (a retried request) changes nothing.
        agg.ingest("c1", &[c(200.0, 1, 15)], now);
        assert_eq!(sent(&agg).total, 300.0);
        // The collector restarted: a new start time, counting from zero.
        agg.ingest("c1", &[c(50.0, 25, 30)], now);
        let f = sent(&agg);
        assert_eq!(f.total, 350.0);
        assert_eq!(f.rate, Some(250.0 / 20.0));
        // A reset without a start time: the value went down.
        agg.ingest("c1", &[c(10.0, 25, 40)], now);
        assert_eq!(sent(&agg).total, 360.0);
    }

    #[test]
    fn deltas_and_gauges() {
        let mut agg = Aggregator::default();
        let now = Timestamp(1);
        let d = |v, t| point(Measure::Sent, Temporality::Delta, v, 0, t);
        let g = |m, v, t| point(m, Temporality::Gauge, v, 0, t);
        agg.ingest("c1", &[d(10.0, 10), d(30.0, 20), g(Measure::QueueSize, 7.0, 20)], now);
        agg.ingest(
            "c1",
            &[g(Measure::QueueSize, 3.0, 10), g(Measure::QueueCapacity, 100.0, 10)],
            now,
        );
        let (_, f) = agg.figures("c1").unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].counters[&Measure::Sent],
            CounterFigure {
                total: 40.0,
                rate: Some(3.0)
            }
        );
        assert_eq!((f[0].queue_size, f[0].queue_capacity), (Some(7.0), Some(100.0)));
    }

    #[test]
    fn dirty_tracking_and_series_cap() {
        let mut agg = Aggregator::default();
        let mut points = Vec::new();
        for i in 0..MAX_SERIES_PER_COLLECTOR + 5 {
            let mut p = point(Measure::Sent, Temporality::Cumulative, 1.0, 1, 2);
            p.component.id = format!("otlp/{i}");
            points.push(p);
        }
        let applied = agg.ingest("c1", &points, Timestamp(5));
        assert_eq!(applied.rejected, 5);
        assert_eq!(agg.take_dirty().len(), 1);
        assert!(agg.take_dirty().is_empty());
        agg.evict_idle(Timestamp(5 + 3_600_001), Duration::from_secs(3600));
        assert_eq!(agg.len(), 0);
    }
}
