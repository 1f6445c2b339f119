//! Coalescing status writer. Sessions hand over their latest status; one
//! task writes whatever is pending in batched commits. A burst of thousands
//! of connecting collectors becomes a handful of commits instead of one
//! fsync each, and a collector reporting twice before the write only costs
//! one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::domain::{Collector, CollectorStatus};
use crate::storage::{Expect, Op, StorageError, Store, Table};

/// Statuses per commit (two ops each), from the store's batch hint: bounds
/// commit size and the work redone on conflict.
fn batch_size(store: &Store) -> usize {
    (store.batch_hint() / 2).max(1)
}

#[derive(Clone)]
pub struct StatusWriter {
    inner: Arc<Inner>,
}

struct Inner {
    // std Mutex: held only to insert or swap the map, never across await.
    pending: Mutex<HashMap<String, CollectorStatus>>,
    notify: Notify,
}

impl StatusWriter {
    pub fn start(store: Store) -> Self {
        let inner = Arc::new(Inner {
            pending: Mutex::new(HashMap::new()),
            notify: Notify::new(),
        });
        let w = StatusWriter { inner: inner.clone() };
        tokio::spawn(async move {
            loop {
                inner.notify.notified().await;
                loop {
                    let batch: Vec<CollectorStatus> = match inner.pending.lock() {
                        Ok(mut p) => p.drain().map(|(_, s)| s).collect(),
                        Err(_) => return,
                    };
                    if batch.is_empty() {
                        break;
                    }
                    for chunk in batch.chunks(batch_size(&store)) {
                        write_chunk(&store, chunk.to_vec()).await;
                    }
                }
            }
        });
        w
    }

    /// Write whatever is pending now, on the caller's task (shutdown: the
    /// background task may be cancelled with the runtime).
    pub async fn flush(&self, store: &Store) {
        let batch: Vec<CollectorStatus> = match self.inner.pending.lock() {
            Ok(mut p) => p.drain().map(|(_, s)| s).collect(),
            Err(_) => return,
        };
        for chunk in batch.chunks(batch_size(store)) {
            write_chunk(store, chunk.to_vec()).await;
        }
    }

    pub fn put(&self, status: CollectorStatus) {
        if let Ok(mut p) = self.inner.pending.lock() {
            p.insert(status.collector_id.clone(), status);
        }
        self.inner.notify.notify_one();
    }
}

/// Write statuses of collectors that still exist; a collector deregistered
/// meanwhile makes the commit conflict on its key, and is dropped.
async fn write_chunk(store: &Store, mut chunk: Vec<CollectorStatus>) {
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
            Err(e) => return tracing::warn!(error = %e, "Could not encode collector statuses."),
        };
        match store.commit(ops).await {
            Ok(_) => return,
            Err(StorageError::Conflict {
                table: Table::Collectors,
                key,
                ..
            }) => chunk.retain(|s| s.collector_id != key),
            Err(e) => {
                return tracing::warn!(error = %e, count = chunk.len(), "Could not store collector statuses; they are written again on the next change.");
            }
        }
    }
}
