//! Coalescing status writer. Sessions hand over their latest status; one
//! task writes whatever is pending in batched commits. A burst of thousands
//! of connecting collectors becomes a handful of commits instead of one
//! fsync each, and a collector reporting twice before the write only costs
//! one.
//!
//! Nothing handed over is dropped while the store is failing: a batch that
//! does not commit goes back into the pending map (behind any newer status
//! of the same collector) and is retried with backoff. Only statuses of
//! collectors deregistered meanwhile are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::index::FleetIndex;
use crate::domain::{Collector, CollectorStatus};
use crate::storage::{Expect, Op, StorageError, Store, Table};
use crate::tasks::Tasks;

/// Statuses per commit (two ops each), from the store's batch hint: bounds
/// commit size and the work redone on conflict.
fn batch_size(store: &Store) -> usize {
    (store.batch_hint() / 2).max(1)
}
/// Retry delays after a failed commit: doubling up to the maximum, so a
/// store outage costs one attempt every few seconds, not a busy loop.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(8);

#[derive(Clone)]
pub struct StatusWriter {
    inner: Arc<Inner>,
    /// Sees every status handed over, before it is stored: the fleet views
    /// are as fresh as the sessions.
    index: Arc<FleetIndex>,
}

struct Inner {
    // std Mutex: held only to insert or swap the map, never across await.
    pending: Mutex<HashMap<String, CollectorStatus>>,
    notify: Notify,
}

impl Inner {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, CollectorStatus>> {
        // Every section is a single insert or drain: a poisoned map is
        // still consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Vec<CollectorStatus> {
        self.pending().drain().map(|(_, s)| s).collect()
    }

    /// Put back statuses that failed to commit, unless a newer one of the
    /// same collector arrived meanwhile.
    fn requeue(&self, failed: Vec<CollectorStatus>) {
        let mut p = self.pending();
        for s in failed {
            p.entry(s.collector_id.clone()).or_insert(s);
        }
    }
}

impl StatusWriter {
    /// Start the writer loop on the instance's tasks. At a stop it ends
    /// after the commit in progress (never dropped half-way, so the store is
    /// not left busy); what is still pending is for `flush`.
    pub fn start(store: Store, index: Arc<FleetIndex>, tasks: &Tasks) -> Self {
        let inner = Arc::new(Inner {
            pending: Mutex::new(HashMap::new()),
            notify: Notify::new(),
        });
        let w = StatusWriter {
            inner: inner.clone(),
            index,
        };
        tasks.spawn_graceful("status writer", |stop| async move {
            let mut delay = RETRY_FIRST;
            loop {
                tokio::select! {
                    _ = inner.notify.notified() => {}
                    _ = stop.cancelled() => return,
                }
                loop {
                    if stop.is_cancelled() {
                        return;
                    }
                    let batch = inner.take();
                    if batch.is_empty() {
                        break;
                    }
                    let failed = write(&store, batch).await;
                    if failed.is_empty() {
                        delay = RETRY_FIRST;
                        continue;
                    }
                    tracing::warn!(
                        count = failed.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "Could not store collector statuses; kept for a retry."
                    );
                    inner.requeue(failed);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        });
        w
    }

    /// Write whatever is pending now, on the caller's task (shutdown).
    /// Returns how many statuses could not be stored.
    pub async fn flush(&self, store: &Store) -> usize {
        let failed = write(store, self.inner.take()).await;
        let n = failed.len();
        self.inner.requeue(failed);
        n
    }

    pub fn put(&self, status: CollectorStatus) {
        self.index.put_status(&status.collector_id, Some(&status));
        self.inner.pending().insert(status.collector_id.clone(), status);
        self.inner.notify.notify_one();
    }
}

/// Write statuses in chunks; returns those that failed to commit.
async fn write(store: &Store, batch: Vec<CollectorStatus>) -> Vec<CollectorStatus> {
    let mut failed = Vec::new();
    for chunk in batch.chunks(batch_size(store)) {
        if let Err(mut chunk) = write_chunk(store, chunk.to_vec()).await {
            failed.append(&mut chunk);
        }
    }
    failed
}

/// Write statuses of collectors that still exist; a collector deregistered
/// meanwhile makes the commit conflict on its key, and is dropped. Any
/// other failure hands the chunk back.
async fn write_chunk(store: &Store, mut chunk: Vec<CollectorStatus>) -> Result<(), Vec<CollectorStatus>> {
    while !chunk.is_empty() {
        let ops: Result<Vec<Op>, StorageError> = chunk
            .iter()
            .flat_map(|s| {
                [
                    Ok(Op::check::<Collector>(&s.collector_id, Expect::Present)),
                    Op::put(&s.collector_id, s, Expect::Any),
                ]
            })
            .collect();
        let ops = match ops {
            Ok(ops) => ops,
            // Cannot succeed on a retry either.
            Err(e) => {
                tracing::error!(error = %e, count = chunk.len(), "Could not encode collector statuses; dropped them.");
                return Ok(());
            }
        };
        match store.commit(ops).await {
            Ok(_) => return Ok(()),
            Err(StorageError::Conflict {
                table: Table::Collectors,
                key,
                ..
            }) => chunk.retain(|s| s.collector_id != key),
            Err(_) => return Err(chunk),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_status_whose_commit_failed_is_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
        let id = super::super::testing::collector(&store).await.collector.key;

        // The writer's commit fails, as a lost connection would.
        store.fail_commit_touching(Table::CollectorStatus, &id, 1);
        let w = StatusWriter::start(store.clone(), Arc::default(), &Tasks::new());
        w.put(CollectorStatus {
            collector_id: id.clone(),
            connected: true,
            ..Default::default()
        });

        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = store.get::<CollectorStatus>(&id).await.unwrap() {
                assert!(s.value.connected);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the failed status was never written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
