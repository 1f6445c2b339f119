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
//! or stored for that hash. Statuses are stored without bodies: the bodies
//! of a hash are stored once, with the first status that names it
//! (`super::bodies`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::bodies::{self, Recent};
use super::desired::EffectiveFiles;
use super::index::FleetIndex;
use crate::clock::Clock;
use crate::domain::{Collector, CollectorStatus};
use crate::storage::{Expect, Op, StorageError, Store, Table};
use crate::tasks::Tasks;

/// Statuses per commit (two ops each, and the bodies of the effective
/// configs they are the first to name), from the store's batch hint: bounds
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
    /// Effective-config bodies this writer stored lately, by hash.
    recent: Recent,
    clock: Arc<dyn Clock>,
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
    pub fn start(store: Store, index: Arc<FleetIndex>, clock: Arc<dyn Clock>, tasks: &Tasks) -> Self {
        let inner = Arc::new(Inner {
            pending: Mutex::new(HashMap::new()),
            recent: Recent::default(),
            clock,
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
                    let failed = write(&store, &inner, batch).await;
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
        let failed = write(store, &self.inner, self.inner.take()).await;
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
    /// the status still pending, those stored for the hash, or (written
    /// before bodies had their own table) the stored status (views show
    /// them; the session keeps only the hash).
    pub async fn effective_files(&self, store: &Store, id: &str, hash: &str) -> Option<EffectiveFiles> {
        let bodies = |s: &CollectorStatus| {
            s.effective_config
                .as_ref()
                .filter(|e| e.hash == hash && !e.files.is_empty())
                .map(|e| e.files.clone())
        };
        let pending = self.inner.pending().get(id).and_then(|p| bodies(&p.status));
        if pending.is_some() {
            return pending;
        }
        if let Some(files) = bodies::read(store, hash).await.ok()? {
            return Some(files);
        }
        bodies::inline(store, id, hash).await.ok()?
    }
}

/// Write statuses in chunks; returns those that failed to commit.
async fn write(store: &Store, inner: &Inner, mut batch: Vec<Pending>) -> Vec<Pending> {
    let mut failed = Vec::new();
    while !batch.is_empty() {
        // Moved, not cloned: a chunk of an APPLIED storm is 512 statuses
        // with their effective configs.
        let rest = batch.split_off(batch.len().min(batch_size(store)));
        if let Err(mut chunk) = write_chunk(store, inner, std::mem::replace(&mut batch, rest)).await {
            failed.append(&mut chunk);
        }
    }
    failed
}

/// The bodies a chunk stores with its statuses, by hash: each effective
/// config's that this writer did not store lately, from the status that
/// carries them, else (a status carrying only its hash) those already
/// stored for the hash, stored again (their age is what the sweep goes
/// by), or those its stored status carries (written before bodies had
/// their own table). A hash whose bodies are found nowhere is stored
/// without bodies (views then show none).
async fn bodies_to_store(store: &Store, recent: &Recent, chunk: &[Pending]) -> Result<bodies::Carried, StorageError> {
    let mut out = bodies::Carried::new();
    // Hashes whose stored bodies were looked up, once per chunk (a
    // reconnecting fleet hands over thousands of statuses naming one).
    let mut looked_up = std::collections::HashSet::new();
    for p in chunk {
        let Some(e) = p.status.effective_config.as_ref() else {
            continue;
        };
        if out.contains_key(&e.hash) || recent.is_fresh(&e.hash) {
            continue;
        }
        if !e.files.is_empty() {
            out.insert(e.hash.clone(), e.files.clone());
            continue;
        }
        let stored = if looked_up.insert(e.hash.as_str()) {
            bodies::read(store, &e.hash).await?
        } else {
            None
        };
        let files = match stored {
            Some(files) => Some(files),
            None => bodies::inline(store, &p.status.collector_id, &e.hash).await?,
        };
        if let Some(files) = files {
            out.insert(e.hash.clone(), files);
        }
    }
    Ok(out)
}

/// The put of a status, without its bodies (taken out for the encoding and
/// put back: a chunk that fails is queued again, bodies and all).
fn put_status(s: &mut CollectorStatus) -> Result<Op, StorageError> {
    let files = s.effective_config.as_mut().map(|e| std::mem::take(&mut e.files));
    let op = Op::put(&s.collector_id, &*s, Expect::Any);
    if let (Some(e), Some(files)) = (s.effective_config.as_mut(), files) {
        e.files = files;
    }
    op
}

/// Write statuses of collectors that still exist; a collector deregistered
/// meanwhile makes the commit conflict on its key, and is dropped. Any
/// other failure hands the chunk back.
async fn write_chunk(store: &Store, inner: &Inner, mut chunk: Vec<Pending>) -> Result<(), Vec<Pending>> {
    let Ok(carried) = bodies_to_store(store, &inner.recent, &chunk).await else {
        return Err(chunk);
    };
    let now = inner.clock.now();
    while !chunk.is_empty() {
        let mut ops: Vec<Result<Op, StorageError>> = carried.iter().map(|(h, f)| bodies::put(h, f, now)).collect();
        for p in chunk.iter_mut() {
            ops.push(Ok(Op::check::<Collector>(&p.status.collector_id, Expect::Present)));
            ops.push(put_status(&mut p.status));
        }
        let ops = match ops.into_iter().collect::<Result<Vec<Op>, StorageError>>() {
            Ok(ops) => ops,
            // Cannot succeed on a retry either.
            Err(e) => {
                tracing::error!(error = %e, count = chunk.len(), "Could not encode collector statuses; dropped them.");
                return Ok(());
            }
        };
        match store.commit(ops).await {
            Ok(_) => {
                inner.recent.stored(carried.keys());
                return Ok(());
            }
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
        let w = StatusWriter::start(
            store.clone(),
            Arc::default(),
            Arc::new(crate::clock::SystemClock),
            &Tasks::new(),
        );
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
    /// Statuses are stored without bodies; the bodies of a hash once.
    #[tokio::test]
    async fn statuses_name_bodies_stored_once_per_config() {
        use crate::domain::{EffectiveConfigBodies, EffectiveConfigView};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
        let id = super::super::testing::collector(&store).await.collector.key;
        let other = super::super::testing::collector(&store).await.collector.key;
        let w = StatusWriter::start(
            store.clone(),
            Arc::default(),
            Arc::new(crate::clock::SystemClock),
            &Tasks::new(),
        );
        let status = |id: &str, files: &[(&str, &str)], healthy: bool| CollectorStatus {
            collector_id: id.into(),
            connected: healthy,
            effective_config: Some(EffectiveConfigView {
                hash: "h1".into(),
                files: Arc::new(files.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            }),
            ..Default::default()
        };
        let stored = |id: &str, want_connected: bool| {
            let store = store.clone();
            let id = id.to_string();
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
        w.put(status(&id, &[("c.yaml", "body")], false));
        w.put_keeping_bodies(status(&id, &[], true));
        let s = stored(&id, true).await.effective_config.unwrap();
        assert_eq!(s.hash, "h1");
        assert!(s.files.is_empty(), "the status names its bodies by hash");
        let bodies = store.get::<EffectiveConfigBodies>("h1").await.unwrap().unwrap();
        assert_eq!(bodies.value.files["c.yaml"], "body");
        // After the write: the stored bodies stay, and a second collector
        // reporting the same config stores no second copy.
        w.put_keeping_bodies(status(&id, &[], false));
        w.put(status(&other, &[("c.yaml", "body")], true));
        stored(&id, false).await;
        stored(&other, true).await;
        let all = store.scan::<EffectiveConfigBodies>(Default::default()).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].version, bodies.version, "not stored again");
        for id in [&id, &other] {
            assert_eq!(
                w.effective_files(&store, id, "h1").await.unwrap()["c.yaml"],
                "body",
                "views read the bodies by hash"
            );
        }
        assert!(w.effective_files(&store, &id, "h2").await.is_none());
    }

    /// A status stored with its bodies inline (before bodies had their own
    /// table) still shows them, and its next write moves them there.
    #[tokio::test]
    async fn bodies_stored_inline_move_to_their_table() {
        use crate::domain::{EffectiveConfigBodies, EffectiveConfigView};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
        let id = super::super::testing::collector(&store).await.collector.key;
        let mut old = CollectorStatus {
            collector_id: id.clone(),
            effective_config: Some(EffectiveConfigView {
                hash: "h1".into(),
                files: Arc::new([("c.yaml".to_string(), "inline".to_string())].into()),
            }),
            ..Default::default()
        };
        store
            .commit(vec![Op::put(&id, &old, Expect::Any).unwrap()])
            .await
            .unwrap();
        let w = StatusWriter::start(
            store.clone(),
            Arc::default(),
            Arc::new(crate::clock::SystemClock),
            &Tasks::new(),
        );
        assert_eq!(w.effective_files(&store, &id, "h1").await.unwrap()["c.yaml"], "inline");

        old.connected = true;
        if let Some(e) = old.effective_config.as_mut() {
            e.files = Arc::default();
        }
        w.put_keeping_bodies(old);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !store
            .get::<CollectorStatus>(&id)
            .await
            .unwrap()
            .is_some_and(|s| s.value.connected)
        {
            assert!(tokio::time::Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bodies = store.get::<EffectiveConfigBodies>("h1").await.unwrap().unwrap();
        assert_eq!(bodies.value.files["c.yaml"], "inline");
        let s = store.get::<CollectorStatus>(&id).await.unwrap().unwrap().value;
        assert!(s.effective_config.unwrap().files.is_empty());
        assert_eq!(w.effective_files(&store, &id, "h1").await.unwrap()["c.yaml"], "inline");
    }
}
