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

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use utoipa::ToSchema;

use crate::config::DatabaseConfig;
use crate::telemetry::Metrics;

/// The tables (MongoDB: collections) of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    CollectorTelemetry,
    /// Fleet-wide config control: the emergency override.
    ConfigControl,
    /// Effective-config bodies by hash, named by collector statuses.
    EffectiveConfigs,
}

impl Table {
    pub const ALL: [Table; 15] = [
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
        Table::CollectorTelemetry,
        Table::ConfigControl,
        Table::EffectiveConfigs,
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
            Table::CollectorTelemetry => "collector_telemetry",
            Table::ConfigControl => "config_control",
            Table::EffectiveConfigs => "effective_configs",
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
        /// The record as JSON, serialized once from the record itself (no
        /// `Value` tree in between) and shared: a commit hands the ops to
        /// the backend's thread and keeps them for the change feed, and a
        /// batch of statuses with their effective configs is megabytes.
        data: Arc<RawValue>,
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
        let data = serde_json::value::to_raw_value(value)
            .map_err(|e| StorageError::Encode(e.to_string()))?
            .into();
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

/// A stored document as the backends see it. The record stays JSON text
/// until `decode` reads it into its type: no `Value` tree in between.
#[derive(Debug, Deserialize)]
struct RawDoc {
    #[serde(rename = "f")]
    format: u32,
    #[serde(rename = "v")]
    version: u64,
    #[serde(rename = "d")]
    data: Box<RawValue>,
}

/// A document to store, as the embedded backend writes it (the same
/// fields as `RawDoc`).
#[derive(Serialize)]
struct RawDocOut<'a> {
    #[serde(rename = "f")]
    format: u32,
    #[serde(rename = "v")]
    version: u64,
    #[serde(rename = "d")]
    data: &'a RawValue,
}

/// Only the version of a stored document: a commit checks preconditions
/// without decoding the records it replaces.
#[derive(Deserialize)]
struct StoredVersion {
    #[serde(rename = "v")]
    version: u64,
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

impl Scan {
    /// The key range of this scan, clamped to the prefix's range: a cursor
    /// outside it narrows nothing (or empties the range) instead of
    /// widening it. None when the range is empty. Both backends scan
    /// exactly this range, ordered by UTF-8 bytes (= code points).
    fn bounds(&self) -> Option<(Bound<String>, Bound<String>)> {
        let mut lower = Bound::Included(self.prefix.clone());
        let mut upper = match prefix_successor(&self.prefix) {
            Some(s) => Bound::Excluded(s),
            None => Bound::Unbounded,
        };
        if let Some(after) = &self.after {
            if self.reverse {
                if below_upper(after, &upper) {
                    upper = Bound::Excluded(after.clone());
                }
            } else if *after >= self.prefix {
                lower = Bound::Excluded(after.clone());
            }
        }
        let empty = match (&lower, &upper) {
            (Bound::Included(l), Bound::Excluded(u)) | (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
            _ => false,
        };
        (!empty).then_some((lower, upper))
    }
}

fn below_upper(key: &str, upper: &Bound<String>) -> bool {
    match upper {
        Bound::Excluded(u) => key < u.as_str(),
        _ => true,
    }
}

/// The smallest string above every string that starts with `prefix` (None:
/// there is none, `prefix` is empty or all U+10FFFF): the last character
/// that can be incremented is, and what follows it dropped. Appending
/// U+10FFFF instead is not a bound: "a\u{10FFFF}z" starts with "a" and
/// sorts above "a\u{10FFFF}".
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A committed change, as seen by every instance through the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub table: Table,
    pub key: String,
    /// The new version; `None` when the record was deleted.
    pub version: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error)]
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
    /// The commit was sent but not confirmed before the deadline (a primary
    /// failover, a lost connection, a write concern timeout): it may or may
    /// not have been applied. Re-read before deciding what to do; repeating
    /// a versioned write blindly can meet its own earlier success as a
    /// conflict.
    #[error("the outcome of the commit is unknown: {0}; re-read before retrying")]
    OutcomeUnknown(String),
    /// The backend cannot give this commit the guarantee it asks for.
    #[error("not supported by the {backend} backend: {what}")]
    Unsupported { backend: &'static str, what: String },
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
    /// Test fault point (`fail_next_commit_after`, `fail_commit_touching`).
    /// A std mutex: held to test and take, never across an await.
    fault: Mutex<Option<Fault>>,
    /// Test fault point (`fail_reads_of`): reads of this table fail. A std
    /// mutex behind an atomic flag, so unarmed reads take no lock.
    read_fault: (std::sync::atomic::AtomicBool, Mutex<Option<Table>>),
    /// Set once, by the instance that serves this store (`with_metrics`).
    metrics: std::sync::OnceLock<Arc<Metrics>>,
}

/// An armed test fault for the commit it selects.
#[derive(Debug, Clone)]
struct Fault {
    /// Only a commit with an operation on this record (None: the next
    /// commit, whatever it writes).
    target: Option<(Table, String)>,
    effect: FaultEffect,
}

#[derive(Debug, Clone, Copy)]
enum FaultEffect {
    /// Fail after this many of its operations, as a crash or a lost
    /// connection would: nothing is written.
    FailAfter(usize),
    /// Report `OutcomeUnknown`, having committed first (`true`: the answer
    /// was lost) or not (`false`: the request was).
    Unknown { applied: bool },
}

impl Fault {
    fn selects(&self, ops: &[Op]) -> bool {
        match &self.target {
            None => true,
            Some((table, key)) => ops.iter().any(|op| {
                let (t, k, _) = op.target();
                t == *table && k == key
            }),
        }
    }
}

/// How the MongoDB change stream is doing (`Store::feed_health`): a feed
/// that stopped makes caches stale on this instance without any error
/// anywhere else, so `/readyz` and the metrics report it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FeedHealth {
    /// Attempts in a row that failed to read or reopen the stream.
    pub consecutive_failures: u32,
    /// Seconds since the stream last made progress: an event, or an empty
    /// batch that advanced its resume token (every second or so when
    /// quiet). None before the first.
    pub seconds_since_progress: Option<f64>,
    /// Seconds since the last change event.
    pub seconds_since_event: Option<f64>,
    /// The last error, while failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// False when the stream has made no progress for `FEED_STALE_AFTER`.
    pub healthy: bool,
}

/// A change stream without progress for this long is reported unhealthy
/// (`/readyz` answers 503): several server-side await periods and a
/// reconnect or two, well below the time a stale cache is noticed by users.
pub const FEED_STALE_AFTER: Duration = Duration::from_secs(30);

/// The storage facade. Cheap to clone; all clones share one backend, which
/// is how several server instances in one process share one store in tests.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Set by this handle's `KillSwitch` (tests): every call through the
    /// handle and its clones fails from then on.
    killed: Arc<AtomicBool>,
}

/// Test hook (`Store::with_kill_switch`): cuts one handle off the store
/// the way a killed process is cut off.
#[doc(hidden)]
#[derive(Clone)]
pub struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    pub fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How often a commit whose outcome was unknown is sent again when a
/// re-read shows it did not apply (each send has the backend's full
/// deadline).
const SETTLE_RESENDS: usize = 2;

/// Buffer of the in-process change feed. A subscriber that falls further
/// behind gets `Lagged` and must resynchronise from the store.
const CHANGE_FEED_CAPACITY: usize = 16 * 1024;

/// Page cache of the embedded store unless configured. Small on purpose:
/// no hot path reads the store (sessions, the fleet index and the views
/// hold what they need), so the cache mostly held the pages of statuses
/// just written, in the server's RSS; the kernel's page cache keeps the
/// file just as well without counting against the process. At 10,000
/// collectors the file is ~55 MiB: a 64 MiB cache held nearly all of it
/// (8 MiB measured 1.7 KiB less RSS per collector idle, 4.1 after five
/// pushes). Half of it bounds a commit's write buffer (redb), and a batch
/// of 512 statuses with their config bodies fits in 8 MiB.
pub const DEFAULT_EMBEDDED_CACHE: usize = 16 * 1024 * 1024;

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
                fault: Mutex::new(None),
                read_fault: Default::default(),
                metrics: std::sync::OnceLock::new(),
            }),
            killed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Test hook: another handle on this store, with a switch that cuts it
    /// (and its clones) off as a killed process is: after `kill`, every
    /// read and commit through it fails as unavailable, while the other
    /// handles carry on. Two in-process instances on one embedded store
    /// use it to stand for a crash, which a graceful stop (it gives the
    /// rollout lease up, stores last statuses) is not.
    #[doc(hidden)]
    pub fn with_kill_switch(&self) -> (Store, KillSwitch) {
        let killed = Arc::new(AtomicBool::new(false));
        (
            Store {
                inner: self.inner.clone(),
                killed: killed.clone(),
            },
            KillSwitch(killed),
        )
    }

    fn alive(&self) -> Result<(), StorageError> {
        if self.killed.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable(
                "this store handle was killed (test kill switch)".into(),
            ));
        }
        Ok(())
    }

    /// Attach metrics (storage latency), for every clone of this store.
    /// The first call wins. (It used to need the only handle, and `run`
    /// clones the store first: no storage metric was ever reported.)
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Store {
        let _ = self.inner.metrics.set(metrics);
        self
    }

    /// Wait until no storage call started before this one is still running
    /// in the background (a blocking redb call whose caller was dropped).
    /// `run` calls it last, so a stopped instance has released the file.
    pub async fn idle(&self) {
        match &self.inner.backend {
            Backend::Embedded(b) => b.idle().await,
            Backend::Mongo(_) => {}
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Mongo(_) => "mongodb",
        }
    }

    /// Read one record.
    pub async fn get<T: Record>(&self, key: &str) -> Result<Option<Versioned<T>>, StorageError> {
        let raw = self.get_raw(T::TABLE, key).await?;
        raw.map(|raw| decode::<T>(key.to_string(), raw)).transpose()
    }

    async fn get_raw(&self, table: Table, key: &str) -> Result<Option<RawDoc>, StorageError> {
        self.alive()?;
        self.check_read_fault(table)?;
        let start = Instant::now();
        let raw = match &self.inner.backend {
            Backend::Embedded(b) => b.get(table, key).await?,
            Backend::Mongo(b) => b.get(table, key).await?,
        };
        self.observe("get", start);
        Ok(raw)
    }

    /// List records of one table (see `Scan`).
    pub async fn scan<T: Record>(&self, scan: Scan) -> Result<Vec<Versioned<T>>, StorageError> {
        self.alive()?;
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
    ///
    /// A commit whose outcome the backend could not learn (MongoDB: no
    /// definite answer to `commitTransaction` before the deadline) is
    /// settled here for every caller, by re-reading (`settle`): callers
    /// see `OutcomeUnknown` only when even the re-read cannot tell.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<u64>, StorageError> {
        let fault = self.take_fault(&ops);
        match self.commit_once(&ops, fault).await {
            Err(StorageError::OutcomeUnknown(why)) => self.settle(&ops, why).await,
            other => other,
        }
    }

    async fn commit_once(&self, ops: &[Op], fault: Option<FaultEffect>) -> Result<Vec<u64>, StorageError> {
        self.alive()?;
        let start = Instant::now();
        let fail_after = match fault {
            Some(FaultEffect::FailAfter(n)) => Some(n),
            Some(FaultEffect::Unknown { applied: false }) => {
                return Err(StorageError::OutcomeUnknown(
                    "injected: the commit was lost on the way".into(),
                ))
            }
            Some(FaultEffect::Unknown { applied: true }) | None => None,
        };
        let versions = match &self.inner.backend {
            Backend::Embedded(b) => {
                let versions = b.commit(ops.to_vec(), fail_after).await?;
                self.publish(ops, &versions);
                versions
            }
            // Not published here: the change stream reports it, once.
            Backend::Mongo(b) => b.commit(ops, fail_after).await?,
        };
        self.observe("commit", start);
        if let Some(FaultEffect::Unknown { applied: true }) = fault {
            return Err(StorageError::OutcomeUnknown("injected: the answer was lost".into()));
        }
        Ok(versions)
    }

    /// Settle a commit whose outcome is unknown: re-read what it writes;
    /// if it applied, that is success; if not, send it again. Sending again
    /// is safe: a commit with a version or absence precondition applies at
    /// most once (a second application meets its own first as a conflict,
    /// which the re-read then recognises), and one made only of
    /// unconditional writes is idempotent. So the caller gets the real
    /// outcome — never a failure for a write that is there, nor a conflict
    /// with its own write.
    async fn settle(&self, ops: &[Op], mut why: String) -> Result<Vec<u64>, StorageError> {
        tracing::warn!(reason = %why, ops = ops.len(), "A commit's outcome is unknown; re-reading to settle it.");
        for _ in 0..SETTLE_RESENDS {
            match self.applied(ops).await {
                Ok(Some(versions)) => return Ok(versions),
                Ok(None) => {}
                Err(_) => break,
            }
            match self.commit_once(ops, None).await {
                Err(StorageError::OutcomeUnknown(w)) => why = w,
                Err(conflict @ StorageError::Conflict { .. }) => {
                    // The first send may have applied after the re-read.
                    return match self.applied(ops).await {
                        Ok(Some(versions)) => Ok(versions),
                        Ok(None) => Err(conflict),
                        Err(_) => Err(StorageError::OutcomeUnknown(why)),
                    };
                }
                other => return other,
            }
        }
        Err(StorageError::OutcomeUnknown(why))
    }

    /// Whether `ops` are applied, judged from the store now: `Some` (with
    /// the versions) when a record it creates under a key that must have
    /// been absent holds its data (such a key is created once, and a commit
    /// is all or nothing), or when every record it writes holds its data
    /// and every record it deletes is gone; `None` otherwise. A commit that
    /// only checks is never "applied": sending it again costs nothing.
    async fn applied(&self, ops: &[Op]) -> Result<Option<Vec<u64>>, StorageError> {
        let mut stored: Vec<Option<RawDoc>> = Vec::with_capacity(ops.len());
        for op in ops {
            let (table, key, _) = op.target();
            stored.push(match op {
                Op::Check { .. } => None,
                _ => self.get_raw(table, key).await?,
            });
        }
        let holds = |op: &Op, doc: Option<&RawDoc>| match (op, doc) {
            (Op::Put { format, data, .. }, Some(d)) => d.format == *format && same_raw_json(&d.data, data),
            (Op::Put { .. }, None) => false,
            (Op::Delete { .. }, d) => d.is_none(),
            (Op::Check { .. }, _) => true,
        };
        let witnessed = ops.iter().zip(&stored).any(|(op, d)| {
            matches!(
                op,
                Op::Put {
                    expect: Expect::Absent,
                    ..
                }
            ) && holds(op, d.as_ref())
        });
        let writes = ops.iter().any(|op| !matches!(op, Op::Check { .. }));
        let all_hold = ops.iter().zip(&stored).all(|(op, d)| holds(op, d.as_ref()));
        if !(witnessed || (writes && all_hold)) {
            return Ok(None);
        }
        Ok(Some(
            ops.iter()
                .zip(&stored)
                .map(|(op, d)| match (op, d) {
                    (Op::Put { .. }, Some(d)) if holds(op, Some(d)) => d.version,
                    // Overwritten since: the version this commit gave it.
                    (
                        Op::Put {
                            expect: Expect::Version(v),
                            ..
                        },
                        _,
                    ) => v + 1,
                    (
                        Op::Put {
                            expect: Expect::Absent, ..
                        },
                        _,
                    ) => 1,
                    _ => 0,
                })
                .collect(),
        ))
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
        self.alive()?;
        match &self.inner.backend {
            Backend::Embedded(b) => b.ping().await,
            Backend::Mongo(b) => b.ping().await,
        }
    }

    /// Test fault point: make the next commit fail after applying `ops` of
    /// its operations, as a crash or a lost connection would. The
    /// conformance suite uses it to prove that commits are all-or-nothing.
    /// `ops = 0` disarms.
    #[doc(hidden)]
    pub fn fail_next_commit_after(&self, ops: usize) {
        self.arm(Fault {
            target: None,
            effect: FaultEffect::FailAfter(ops),
        });
    }

    /// Test fault point for one commit only: the next commit with an
    /// operation on `table`/`key` fails after `ops` of its operations;
    /// other commits (presence heartbeats, status writes) pass untouched.
    #[doc(hidden)]
    pub fn fail_commit_touching(&self, table: Table, key: &str, ops: usize) {
        self.arm(Fault {
            target: Some((table, key.to_string())),
            effect: FaultEffect::FailAfter(ops),
        });
    }

    /// Test fault point for an unknown outcome: the next commit with an
    /// operation on `table`/`key` gets `OutcomeUnknown` from the backend,
    /// as after a failover during `commitTransaction` — having been
    /// committed (`applied`: the answer was lost) or not (the request
    /// was). Shows what callers then see (`commit` settles it).
    #[doc(hidden)]
    pub fn lose_outcome_of_commit_touching(&self, table: Table, key: &str, applied: bool) {
        self.arm(Fault {
            target: Some((table, key.to_string())),
            effect: FaultEffect::Unknown { applied },
        });
    }

    /// Test fault point: every `get` of `table` fails as an unreachable
    /// database would, until called again with `None`.
    #[doc(hidden)]
    pub fn fail_reads_of(&self, table: Option<Table>) {
        let (armed, target) = &self.inner.read_fault;
        if let Ok(mut t) = target.lock() {
            *t = table;
        }
        armed.store(table.is_some(), std::sync::atomic::Ordering::SeqCst);
    }

    fn check_read_fault(&self, table: Table) -> Result<(), StorageError> {
        let (armed, target) = &self.inner.read_fault;
        if !armed.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        match target.lock() {
            Ok(t) if *t == Some(table) => Err(StorageError::Unavailable(format!(
                "test fault: reads of {table:?} fail"
            ))),
            _ => Ok(()),
        }
    }

    fn arm(&self, fault: Fault) {
        if let Ok(mut f) = self.inner.fault.lock() {
            *f = match fault.effect {
                FaultEffect::FailAfter(0) => None,
                _ => Some(fault),
            };
        }
    }

    /// What this commit must suffer, disarming the fault.
    fn take_fault(&self, ops: &[Op]) -> Option<FaultEffect> {
        let mut armed = self.inner.fault.lock().ok()?;
        if !armed.as_ref()?.selects(ops) {
            return None;
        }
        armed.take().map(|f| f.effect)
    }

    /// Health of the change stream (MongoDB; None for the embedded store,
    /// whose feed is in-process and cannot stall).
    pub fn feed_health(&self) -> Option<FeedHealth> {
        match &self.inner.backend {
            Backend::Embedded(_) => None,
            Backend::Mongo(b) => Some(b.feed_health()),
        }
    }

    /// How many operations a caller that batches independent writes (the
    /// status writer) should put in one commit: every MongoDB op is network
    /// work inside one transaction, and a conflict on any record redoes the
    /// whole batch, so batches are smaller there than on redb.
    pub fn batch_hint(&self) -> usize {
        match &self.inner.backend {
            Backend::Embedded(_) => 1024,
            Backend::Mongo(_) => mongo::BATCH_HINT,
        }
    }

    fn observe(&self, op: &'static str, start: Instant) {
        if let Some(m) = self.inner.metrics.get() {
            m.observe_storage(op, start.elapsed());
        }
    }
}

/// Problems of a MongoDB connection string for `check-config`: options
/// LinkMesh sets itself (see the MongoDB section of the README), refused
/// rather than silently replaced.
pub fn mongodb_uri_problems(uri: &str) -> Vec<String> {
    mongo::uri_problems(uri)
}

/// Check `database.tls_ca_file` as the MongoDB driver will read it (it
/// drops what it cannot parse without a word).
pub fn check_mongodb_ca_file(path: &Path) -> Result<(), String> {
    mongo::ca_file_problem(path).map(|_| ())
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

/// `same_json` on JSON text (both are read back as `Value`s).
fn same_raw_json(a: &RawValue, b: &RawValue) -> bool {
    let value = |r: &RawValue| serde_json::from_str::<serde_json::Value>(r.get()).ok();
    match (value(a), value(b)) {
        (Some(a), Some(b)) => same_json(&a, &b),
        _ => false,
    }
}

/// Stored JSON equals what was written, allowing for a float's last bit
/// (a decimal round trip need not give the same `f64`).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_u64(), y.as_u64(), x.as_i64(), y.as_i64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs()),
                _ => false,
            },
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
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
    let value = serde_json::from_str(raw.data.get()).map_err(|e| StorageError::Decode {
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

    #[test]
    fn prefix_successor_is_a_true_upper_bound() {
        assert_eq!(prefix_successor("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_successor("").as_deref(), None);
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}\u{10FFFF}").as_deref(), None);
        assert_eq!(prefix_successor("x\u{D7FF}").as_deref(), Some("x\u{E000}"));
        assert_eq!(prefix_successor("é").as_deref(), Some("ê"));
        let upper = prefix_successor("a/").unwrap();
        for key in ["a/", "a/1", "a/\u{FFFF}", "a/\u{10FFFF}", "a/\u{10FFFF}zz", "a/東京"] {
            assert!(key >= "a/" && key < upper.as_str(), "{key}");
        }
        for key in ["a", "a.", "a0", "b/1"] {
            assert!(!(key >= "a/" && key < upper.as_str()), "{key}");
        }
    }

    #[test]
    fn scan_bounds_clamp_the_cursor() {
        let s = |after: Option<&str>, reverse| Scan {
            prefix: "a/".into(),
            after: after.map(String::from),
            limit: 0,
            reverse,
        };
        let inc = |k: &str| Bound::Included(k.to_string());
        let exc = |k: &str| Bound::Excluded(k.to_string());
        assert_eq!(s(None, false).bounds(), Some((inc("a/"), exc("a0"))));
        assert_eq!(s(Some("a/5"), false).bounds(), Some((exc("a/5"), exc("a0"))));
        assert_eq!(s(Some("a/5"), true).bounds(), Some((inc("a/"), exc("a/5"))));
        // Outside the range: clamped, or empty.
        assert_eq!(s(Some("0"), false).bounds(), Some((inc("a/"), exc("a0"))));
        assert_eq!(s(Some("b"), true).bounds(), Some((inc("a/"), exc("a0"))));
        assert_eq!(s(Some("b"), false).bounds(), None);
        assert_eq!(s(Some("a0"), false).bounds(), None);
        assert_eq!(s(Some("0"), true).bounds(), None);
        assert_eq!(s(Some("a/"), true).bounds(), None);
        let all = Scan::default();
        assert_eq!(all.bounds(), Some((inc(""), Bound::Unbounded)));
    }

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
