//! Storage: the `Store` facade over the private backends (embedded redb,
//! MongoDB replica set). Records are versioned JSON documents in named tables.
//!
//! Writes go through `Store::commit`: a batch of operations, each with a
//! precondition on the version it read (`Expect`), applied all-or-nothing.
//! That one primitive gives both transactions (multi-document writes) and
//! optimistic concurrency (a stale precondition is a `Conflict`), and maps
//! onto redb write transactions and MongoDB session transactions alike.
//!
//! Committed changes reach every instance through the change feed
//! (`Store::subscribe`): the embedded backend publishes them in `commit`
//! (one process is the only writer); the MongoDB backend publishes what its
//! change stream reports, so a change made by another instance arrives the
//! same way as one made here, and exactly once.
//!
//! This module knows nothing of users, tokens or collectors: the rules live
//! in `crate::domain`; the record types are declared there.

pub mod conformance;
mod embedded;
mod mongo;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::config::DatabaseConfig;
use crate::telemetry::Metrics;

/// The tables (MongoDB: collections) of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Collectors,
    CollectorCredentials,
    CollectorStatus,
    Commands,
    EnrollmentTokens,
    Users,
    ApiTokens,
    Sessions,
    Canvas,
    AuditEvents,
    ServerInstances,
    ConfigAssignments,
}

impl Table {
    pub const ALL: [Table; 12] = [
        Table::Collectors,
        Table::CollectorCredentials,
        Table::CollectorStatus,
        Table::Commands,
        Table::EnrollmentTokens,
        Table::Users,
        Table::ApiTokens,
        Table::Sessions,
        Table::Canvas,
        Table::AuditEvents,
        Table::ServerInstances,
        Table::ConfigAssignments,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Collectors => "collectors",
            Table::CollectorCredentials => "collector_credentials",
            Table::CollectorStatus => "collector_status",
            Table::Commands => "commands",
            Table::EnrollmentTokens => "enrollment_tokens",
            Table::Users => "users",
            Table::ApiTokens => "api_tokens",
            Table::Sessions => "sessions",
            Table::Canvas => "canvas",
            Table::AuditEvents => "audit_events",
            Table::ServerInstances => "server_instances",
            Table::ConfigAssignments => "config_assignments",
        }
    }
}

/// A record type stored in one table.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    const TABLE: Table;
    /// Format version of the stored value; bump it (and add a migration in
    /// `decode`) when the shape changes incompatibly.
    const FORMAT: u32 = 1;
}

/// A record with its key and the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub key: String,
    pub version: u64,
    pub value: T,
}

/// What a write requires of the stored record, checked at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No precondition.
    Any,
    /// The key must not exist.
    Absent,
    /// The record must exist, at any version.
    Present,
    /// The record must exist at exactly this version.
    Version(u64),
}

/// One operation of a commit.
#[derive(Debug, Clone)]
pub enum Op {
    /// Write a value; its version becomes the stored version + 1 (1 if new).
    Put {
        table: Table,
        key: String,
        format: u32,
        data: serde_json::Value,
        expect: Expect,
    },
    /// Remove a record (a no-op if absent and `expect` allows it).
    Delete { table: Table, key: String, expect: Expect },
    /// Only check the precondition: makes a commit depend on a record it
    /// does not change.
    Check { table: Table, key: String, expect: Expect },
}

impl Op {
    pub fn put<T: Record>(key: impl Into<String>, value: &T, expect: Expect) -> Result<Op, StorageError> {
        let data = serde_json::to_value(value).map_err(|e| StorageError::Encode(e.to_string()))?;
        Ok(Op::Put {
            table: T::TABLE,
            key: key.into(),
            format: T::FORMAT,
            data,
            expect,
        })
    }

    pub fn delete<T: Record>(key: impl Into<String>, expect: Expect) -> Op {
        Op::Delete {
            table: T::TABLE,
            key: key.into(),
            expect,
        }
    }

    pub fn check<T: Record>(key: impl Into<String>, expect: Expect) -> Op {
        Op::Check {
            table: T::TABLE,
            key: key.into(),
            expect,
        }
    }

    fn target(&self) -> (Table, &str, Expect) {
        match self {
            Op::Put { table, key, expect, .. }
            | Op::Delete { table, key, expect }
            | Op::Check { table, key, expect } => (*table, key, *expect),
        }
    }
}

/// A stored document as the backends see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawDoc {
    #[serde(rename = "f")]
    format: u32,
    #[serde(rename = "v")]
    version: u64,
    #[serde(rename = "d")]
    data: serde_json::Value,
}

/// A range of keys to list: those starting with `prefix`, after the cursor
/// `after` (exclusive), ascending or descending, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
    pub reverse: bool,
}

/// A committed change, as seen by every instance through the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub table: Table,
    pub key: String,
    /// The new version; `None` when the record was deleted.
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A precondition did not hold: someone else changed the record.
    #[error("{table:?}/{key} changed concurrently (current version: {current:?})")]
    Conflict {
        table: Table,
        key: String,
        current: Option<u64>,
    },
    #[error("the store file {path} is in use by another process (one embedded store per process; run several instances on MongoDB)")]
    Locked { path: String },
    #[error(
        "stored {table:?}/{key} has format {format}, newer than this server understands ({known}); upgrade the server"
    )]
    FutureFormat {
        table: Table,
        key: String,
        format: u32,
        known: u32,
    },
    #[error("cannot decode {table:?}/{key}: {message}")]
    Decode { table: Table, key: String, message: String },
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error("injected failure (test fault point)")]
    Injected,
    /// The database cannot be used (unreachable, not a replica set, too
    /// old, refused our credentials).
    #[error("{0}")]
    Unavailable(String),
    #[error("storage backend error: {0}")]
    Backend(String),
}

enum Backend {
    Embedded(embedded::EmbeddedBackend),
    Mongo(mongo::MongoBackend),
}

/// What travels on the change feed's channel.
#[derive(Debug, Clone)]
enum FeedEvent {
    Change(Change),
    /// Changes may have been missed (the MongoDB change stream lost its
    /// history and was restarted): subscribers must re-read from the store.
    Resync,
}

/// A subscription to the change feed (`Store::subscribe`).
///
/// `recv` returns `Err(RecvError::Lagged(n))` when changes were missed and
/// the subscriber must re-read what it cares about from the store: either it
/// fell more than the buffer behind (n = how many it missed), or the MongoDB
/// change stream could not be resumed and was restarted (n = 0: unknown).
/// One error kind for both, because the remedy is the same.
pub struct ChangeFeed {
    rx: broadcast::Receiver<FeedEvent>,
}

impl ChangeFeed {
    /// The next committed change.
    pub async fn recv(&mut self) -> Result<Change, broadcast::error::RecvError> {
        match self.rx.recv().await? {
            FeedEvent::Change(c) => Ok(c),
            FeedEvent::Resync => Err(broadcast::error::RecvError::Lagged(0)),
        }
    }

    /// The next committed change if one is waiting.
    pub fn try_recv(&mut self) -> Result<Change, broadcast::error::TryRecvError> {
        match self.rx.try_recv()? {
            FeedEvent::Change(c) => Ok(c),
            FeedEvent::Resync => Err(broadcast::error::TryRecvError::Lagged(0)),
        }
    }
}

struct Inner {
    backend: Backend,
    changes: broadcast::Sender<FeedEvent>,
    /// Test fault point: fail the next commit after this many ops (0 = off).
    fail_after: AtomicUsize,
    metrics: Option<Arc<Metrics>>,
}

/// The storage facade. Cheap to clone; all clones share one backend, which
/// is how several server instances in one process share one store in tests.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Buffer of the in-process change feed. A subscriber that falls further
/// behind gets `Lagged` and must resynchronise from the store.
const CHANGE_FEED_CAPACITY: usize = 16 * 1024;

/// Page cache of the embedded store unless configured.
pub const DEFAULT_EMBEDDED_CACHE: usize = 64 * 1024 * 1024;

impl Store {
    /// Open (or create) the embedded store at `path`, holding an exclusive
    /// lock on the file for the life of the returned store.
    pub async fn open_embedded(path: &Path) -> Result<Store, StorageError> {
        Store::open_embedded_with_cache(path, DEFAULT_EMBEDDED_CACHE).await
    }

    /// `open_embedded` with a page cache of `cache_bytes` (redb's own default
    /// is 1 GiB, far more than the control plane's data needs).
    pub async fn open_embedded_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, StorageError> {
        let path = path.to_path_buf();
        let backend = tokio::task::spawn_blocking(move || embedded::EmbeddedBackend::open(&path, cache_bytes))
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))??;
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        Ok(Store::from_backend(Backend::Embedded(backend), changes))
    }

    /// Connect to the MongoDB replica set of `[database]`: refuse a server
    /// that is not a replica set, create the collections, and start following
    /// its change stream before returning (so a subscriber sees every change
    /// committed after `open_mongodb` returned, by any instance).
    pub async fn open_mongodb(config: &DatabaseConfig) -> Result<Store, StorageError> {
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        let backend = mongo::MongoBackend::open(config, changes.clone()).await?;
        Ok(Store::from_backend(Backend::Mongo(backend), changes))
    }

    fn from_backend(backend: Backend, changes: broadcast::Sender<FeedEvent>) -> Store {
        Store {
            inner: Arc::new(Inner {
                backend,
                changes,
                fail_after: AtomicUsize::new(0),
                metrics: None,
            }),
        }
    }

    /// Attach metrics (storage latency). Call before cloning the store.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Store {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some(metrics);
        }
        self
    }

    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Mongo(_) => "mongodb",
        }
    }

    /// Read one record.
    pub async fn get<T: Record>(&self, key: &str) -> Result<Option<Versioned<T>>, StorageError> {
        let start = Instant::now();
        let raw = match &self.inner.backend {
            Backend::Embedded(b) => b.get(T::TABLE, key).await?,
            Backend::Mongo(b) => b.get(T::TABLE, key).await?,
        };
        self.observe("get", start);
        raw.map(|raw| decode::<T>(key.to_string(), raw)).transpose()
    }

    /// List records of one table (see `Scan`).
    pub async fn scan<T: Record>(&self, scan: Scan) -> Result<Vec<Versioned<T>>, StorageError> {
        let start = Instant::now();
        let rows = match &self.inner.backend {
            Backend::Embedded(b) => b.scan(T::TABLE, scan).await?,
            Backend::Mongo(b) => b.scan(T::TABLE, scan).await?,
        };
        self.observe("scan", start);
        rows.into_iter().map(|(k, raw)| decode::<T>(k, raw)).collect()
    }

    /// Apply all `ops` atomically, or none of them. On success, returns the
    /// new version of each op's record (0 for deletes and checks); the
    /// changes reach the change feed (embedded: published here; MongoDB:
    /// through the change stream, like changes made by other instances).
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<u64>, StorageError> {
        let start = Instant::now();
        let fail_after = match self.inner.fail_after.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        };
        let versions = match &self.inner.backend {
            Backend::Embedded(b) => {
                let versions = b.commit(ops.clone(), fail_after).await?;
                self.publish(&ops, &versions);
                versions
            }
            // Not published here: the change stream reports it, once.
            Backend::Mongo(b) => b.commit(&ops, fail_after).await?,
        };
        self.observe("commit", start);
        Ok(versions)
    }

    /// Publish the changes of a successful commit (embedded backend only).
    fn publish(&self, ops: &[Op], versions: &[u64]) {
        for (op, version) in ops.iter().zip(versions) {
            let (table, key, _) = op.target();
            let version = match op {
                Op::Put { .. } => Some(*version),
                Op::Delete { .. } => None,
                Op::Check { .. } => continue,
            };
            let change = Change {
                table,
                key: key.to_string(),
                version,
            };
            // No receiver is fine: nobody is interested yet.
            let _ = self.inner.changes.send(FeedEvent::Change(change));
        }
    }

    /// Subscribe to changes committed after this call.
    pub fn subscribe(&self) -> ChangeFeed {
        ChangeFeed {
            rx: self.inner.changes.subscribe(),
        }
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        match &self.inner.backend {
            Backend::Embedded(b) => b.ping().await,
            Backend::Mongo(b) => b.ping().await,
        }
    }

    /// Test fault point: make the next commit fail after applying `ops` of
    /// its operations, as a crash or a lost connection would. The
    /// conformance suite uses it to prove that commits are all-or-nothing.
    #[doc(hidden)]
    pub fn fail_next_commit_after(&self, ops: usize) {
        self.inner.fail_after.store(ops, Ordering::SeqCst);
    }

    fn observe(&self, op: &'static str, start: Instant) {
        if let Some(m) = &self.inner.metrics {
            m.observe_storage(op, start.elapsed());
        }
    }
}

/// Whether `expect` holds for a record at `current` (None = absent); the
/// `Conflict` names the current version. Shared by the backends.
fn check(table: Table, key: &str, expect: Expect, current: Option<u64>) -> Result<(), StorageError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Present => current.is_some(),
        Expect::Version(v) => current == Some(v),
    };
    if ok {
        Ok(())
    } else {
        Err(StorageError::Conflict {
            table,
            key: key.to_string(),
            current,
        })
    }
}

fn decode<T: Record>(key: String, raw: RawDoc) -> Result<Versioned<T>, StorageError> {
    if raw.format > T::FORMAT {
        return Err(StorageError::FutureFormat {
            table: T::TABLE,
            key,
            format: raw.format,
            known: T::FORMAT,
        });
    }
    // Older formats would be migrated here, one step per format version.
    let value = serde_json::from_value(raw.data).map_err(|e| StorageError::Decode {
        table: T::TABLE,
        key: key.clone(),
        message: e.to_string(),
    })?;
    Ok(Versioned {
        key,
        version: raw.version,
        value,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn a_resync_reaches_subscribers_as_lagged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
        let mut feed = store.subscribe();
        let change = Change {
            table: Table::Users,
            key: "u".into(),
            version: Some(1),
        };
        store.inner.changes.send(FeedEvent::Change(change.clone())).unwrap();
        store.inner.changes.send(FeedEvent::Resync).unwrap();
        assert_eq!(feed.recv().await.unwrap(), change);
        assert!(matches!(feed.recv().await, Err(broadcast::error::RecvError::Lagged(0))));
        assert!(matches!(feed.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
    }
}
