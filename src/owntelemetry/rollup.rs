//! The stored rollup: one small record per collector, written every
//! `fleet.telemetry_rollup_interval` by one writer task, so that every
//! instance can show figures that reached another one. Never a store write
//! per request or per data point.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::aggregate::ComponentFigures;
use super::OwnTelemetry;
use crate::clock::Timestamp;
use crate::domain::Collector;
use crate::storage::{Change, Expect, Op, Record, StorageError, Table};

/// Collectors per commit: a few large commits instead of one per collector
/// (a durable commit costs an fsync on the embedded store).
const BATCH: usize = 100;
/// A collector that has not reported for this long is dropped from memory
/// (its last rollup stays stored).
const IDLE: Duration = Duration::from_secs(3600);

/// The figures of one collector as last written by an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRollup {
    pub collector_id: String,
    /// The instance that received the figures.
    pub instance: String,
    /// When that instance last received a report from the collector.
    pub updated_at: Timestamp,
    pub components: Vec<ComponentFigures>,
}

impl Record for TelemetryRollup {
    const TABLE: Table = Table::CollectorTelemetry;
}

/// Write changed figures every `interval` until `stop` turns true, then
/// once more, so a graceful stop loses nothing received.
pub async fn run_writer(tel: OwnTelemetry, interval: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // Deregistrations (on any instance) drop the figures held here; the
    // check in `write_batch` covers what this feed misses when it lags.
    let mut feed = tel.inner.domain.store().subscribe();
    let mut feed_open = true;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
            change = feed.recv(), if feed_open => {
                match change {
                    Ok(Change { table: Table::Collectors, key, version: None }) => {
                        tel.with_aggregator(|a| a.remove(&key));
                    }
                    Err(RecvError::Closed) => feed_open = false,
                    _ => {}
                }
                continue;
            }
        };
        write_dirty(&tel).await;
        if stopping {
            return;
        }
        let now = tel.inner.domain.clock().now();
        tel.with_aggregator(|a| a.evict_idle(now, IDLE));
    }
}

/// One round: every collector changed since the last one, in batches.
pub async fn write_dirty(tel: &OwnTelemetry) {
    let dirty = tel.with_aggregator(|a| a.take_dirty());
    let instance = tel.inner.instance.clone();
    let rollups: Vec<TelemetryRollup> = dirty
        .into_iter()
        .map(|(collector_id, updated_at, components)| TelemetryRollup {
            collector_id,
            instance: instance.clone(),
            updated_at,
            components,
        })
        .collect();
    for chunk in rollups.chunks(BATCH) {
        write_batch(tel, chunk.to_vec()).await;
    }
}

async fn write_batch(tel: &OwnTelemetry, mut batch: Vec<TelemetryRollup>) {
    while !batch.is_empty() {
        let ops: Result<Vec<Op>, StorageError> = batch
            .iter()
            .flat_map(|r| {
                // The collector must still exist, or a rollup written just
                // after a deregistration would outlive it.
                [
                    Ok(Op::check::<Collector>(&r.collector_id, Expect::Present)),
                    Op::put(&r.collector_id, r, Expect::Any),
                ]
            })
            .collect();
        let result = match ops {
            Ok(ops) => tel.inner.domain.store().commit(ops).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tel.inner.metrics.own_telemetry_rollups_written(batch.len() as u64);
                return;
            }
            Err(StorageError::Conflict {
                table: Table::Collectors,
                key,
                ..
            }) => {
                // Deregistered meanwhile: forget it, write the others.
                tel.with_aggregator(|a| a.remove(&key));
                batch.retain(|r| r.collector_id != key);
            }
            Err(e) => {
                tracing::warn!(error = %e, collectors = batch.len(), "Storing own-telemetry rollups failed; retrying next round.");
                tel.with_aggregator(|a| batch.iter().for_each(|r| a.mark_dirty(&r.collector_id)));
                return;
            }
        }
    }
}
