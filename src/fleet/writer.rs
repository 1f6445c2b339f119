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
//!
//! Sessions keep only the hash of a collector's effective config, not its
//! bodies (`session::Processed::effective_files`): a status handed over
//! without bodies (`put_keeping_bodies`) keeps the bodies already pending
//! or stored for that hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::desired::EffectiveFiles;
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
/// After this many statuses (an APPLIED storm, a reconnecting fleet) and
/// this long without another, freed memory is handed back
/// (`malloc::release_free_memory`).
const TRIM_AFTER: usize = 1024;
const TRIM_QUIET: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct StatusWriter {
    inner: Arc<Inner>,
    /// Sees every status handed over, before it is stored: the fleet views
    /// are as fresh as the sessions.
    index: Arc<FleetIndex>,
}

struct Inner {
    // std Mutex: held only to insert or swap the map, never across await.
    pending: Mutex<HashMap<String, Pending>>,
    notify: Notify,
}

/// A status waiting to be written.
#[derive(Clone)]
struct Pending {
    status: CollectorStatus,
    /// Its effective config carries the hash only: the bodies are those
    /// stored for that hash.
    keep_bodies: bool,
}

impl Pending {
    /// `self` replaces `older` in the queue: bodies `self` lacks come from
    /// `older` when they belong to the same effective config.
    fn after(mut self, older: &Pending) -> Pending {
        if self.keep_bodies && !older.keep_bodies {
            if let (Some(new), Some(old)) = (
                self.status.effective_config.as_mut(),
                older.status.effective_config.as_ref(),
            ) {
                if new.hash == old.hash {
                    new.files = old.files.clone();
                    self.keep_bodies = false;
                }
            }
        }
        self
    }
}

impl Inner {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        // Every section is a single insert or drain: a poisoned map is
        // still consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Vec<Pending> {
        self.pending().drain().map(|(_, s)| s).collect()
    }

    fn insert(&self, new: Pending) {
        let mut p = self.pending();
        let new = match p.get(&new.status.collector_id) {
            Some(older) => new.after(older),
            None => new,
        };
        p.insert(new.status.collector_id.clone(), new);
    }

    /// Put back statuses that failed to commit, unless a newer one of the
    /// same collector arrived meanwhile (which may still need their bodies).
    fn requeue(&self, failed: Vec<Pending>) {
        let mut p = self.pending();
        for s in failed {
            match p.get_mut(&s.status.collector_id) {
                Some(newer) => *newer = newer.clone().after(&s),
                None => {
                    p.insert(s.status.collector_id.clone(), s);
                }
            }
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
            // Statuses written since malloc last gave freed memory back.
            let mut written = 0;
            loop {
                tokio::select! {
                    _ = inner.notify.notified() => {}
                    // Quiet after a storm: the queued statuses are freed.
                    _ = tokio::time::sleep(TRIM_QUIET), if written >= TRIM_AFTER => {
                        written = 0;
                        let _ = tokio::task::spawn_blocking(crate::malloc::release_free_memory).await;
                        continue;
                    }
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
                    let count = batch.len();
                    let failed = write(&store, batch).await;
                    written += count - failed.len();
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

    /// Hand over a status whose effective config (if any) carries its
    /// bodies.
    pub fn put(&self, status: CollectorStatus) {
        self.hand_over(status, false);
    }

    /// Hand over a status whose effective config carries only its hash
    /// (a session's): the bodies pending or stored for it stay.
    pub fn put_keeping_bodies(&self, status: CollectorStatus) {
        let keep = status.effective_config.is_some();
        self.hand_over(status, keep);
    }

    fn hand_over(&self, status: CollectorStatus, keep_bodies: bool) {
        // The index is told at once: the summary counts what the writer
        // accepted, which it stores (or retries) and never drops, except
        // for a collector deregistered meanwhile.
        self.index.put_status(&status.collector_id, Some(&status));
        self.inner.insert(Pending { status, keep_bodies });
        self.inner.notify.notify_one();
    }

    /// The bodies of a collector's effective config with this hash, from
    /// the status still pending or the stored one (views show them; the
    /// session keeps only the hash).
    pub async fn effective_files(&self, store: &Store, id: &str, hash: &str) -> Option<EffectiveFiles> {
        let bodies = |s: &CollectorStatus| {
            s.effective_config
                .as_ref()
                .filter(|e| e.hash == hash)
                .map(|e| e.files.clone())
        };
        let pending = self.inner.pending().get(id).filter(|p| !p.keep_bodies).cloned();
        if let Some(files) = pending.and_then(|p| bodies(&p.status)) {
            return Some(files);
        }
        let stored = store.get::<CollectorStatus>(id).await.ok()??;
        bodies(&stored.value)
    }
}

/// Write statuses in chunks; returns those that failed to commit.
async fn write(store: &Store, mut batch: Vec<Pending>) -> Vec<Pending> {
    let mut failed = Vec::new();
    while !batch.is_empty() {
        // Moved, not cloned: a chunk of an APPLIED storm is 512 statuses
        // with their effective configs.
        let rest = batch.split_off(batch.len().min(batch_size(store)));
        if let Err(mut chunk) = write_chunk(store, std::mem::replace(&mut batch, rest)).await {
            failed.append(&mut chunk);
        }
    }
    failed
}

/// Fill in the bodies a status kept from the stored one (same hash); a
/// status whose stored bodies are for another config is written without
/// bodies (its hash is still right).
async fn fill_bodies(store: &Store, chunk: &mut [Pending]) -> Result<(), StorageError> {
    for p in chunk.iter_mut().filter(|p| p.keep_bodies) {
        let stored = store.get::<CollectorStatus>(&p.status.collector_id).await?;
        if let (Some(new), Some(old)) = (
            p.status.effective_config.as_mut(),
            stored.and_then(|s| s.value.effective_config),
        ) {
            if new.hash == old.hash {
                new.files = old.files;
            }
        }
        p.keep_bodies = false;
    }
    Ok(())
}

/// Write statuses of collectors that still exist; a collector deregistered
/// meanwhile makes the commit conflict on its key, and is dropped. Any
/// other failure hands the chunk back.
async fn write_chunk(store: &Store, mut chunk: Vec<Pending>) -> Result<(), Vec<Pending>> {
    if fill_bodies(store, &mut chunk).await.is_err() {
        return Err(chunk);
    }
    while !chunk.is_empty() {
        let ops: Result<Vec<Op>, StorageError> = chunk
            .iter()
            .map(|p| &p.status)
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
            }) => chunk.retain(|p| p.status.collector_id != key),
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

    /// A status carrying only the effective config's hash (a session's)
    /// keeps the bodies handed over before it: still pending, or stored.
    #[tokio::test]
    async fn a_status_without_bodies_keeps_those_pending_or_stored() {
        use crate::domain::EffectiveConfigView;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
        let id = super::super::testing::collector(&store).await.collector.key;
        let w = StatusWriter::start(store.clone(), Arc::default(), &Tasks::new());
        let status = |files: &[(&str, &str)], healthy: bool| CollectorStatus {
            collector_id: id.clone(),
            connected: healthy,
            effective_config: Some(EffectiveConfigView {
                hash: "h1".into(),
                files: Arc::new(files.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            }),
            ..Default::default()
        };
        let stored = |want_connected: bool| {
            let store = store.clone();
            let id = id.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let s = store.get::<CollectorStatus>(&id).await.unwrap();
                    if let Some(s) = s.filter(|s| s.value.connected == want_connected) {
                        return s.value;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "never written");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        // Both handed over before a write: the second takes the first's bodies.
        w.put(status(&[("c.yaml", "body")], false));
        w.put_keeping_bodies(status(&[], true));
        let s = stored(true).await;
        assert_eq!(s.effective_config.unwrap().files["c.yaml"], "body");
        // After the write: the stored bodies stay.
        w.put_keeping_bodies(status(&[], false));
        let s = stored(false).await;
        assert_eq!(s.effective_config.unwrap().files["c.yaml"], "body");
        assert_eq!(
            w.effective_files(&store, &id, "h1").await.unwrap()["c.yaml"],
            "body",
            "views read the bodies by hash"
        );
        assert!(w.effective_files(&store, &id, "h2").await.is_none());
    }
}
