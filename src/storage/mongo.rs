//! The MongoDB backend: one collection per `Table`, one document per record,
//! `{ _id: key, f: format, v: version, d: data }` (`d` is the record's JSON
//! as BSON). Needs a replica set (transactions and change streams), MongoDB
//! 5.0 or newer (field names with dots, e.g. label keys, inside `d`).
//!
//! - `commit` is one multi-document transaction on a session (read concern
//!   snapshot, write concern majority), retried like the driver's
//!   `with_transaction`: the whole transaction on TransientTransactionError
//!   (WriteConflict among them), the commit alone on
//!   UnknownTransactionCommitResult; bounded in attempts and time.
//! - Reads use read concern majority, in a causally consistent session
//!   advanced to the last operation this instance committed or saw on the
//!   change stream: an instance reads its own writes, and what a change
//!   event announced, even from a lagging member.
//! - The change feed follows a change stream on the database (see
//!   `Follower`); `Store::commit` does not publish for this backend.
//!
//! Collections are created at start-up, never inside a transaction; `_id`
//! is the only index this key model needs.

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mongodb::bson::{doc, Bson, Decimal128, Document, RawBsonRef, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::{
    Error as MongoError, ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{ClientOptions, ReadConcern, Tls, TlsOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database};
use tokio::sync::broadcast;

use super::{Change, Expect, FeedEvent, Op, RawDoc, Scan, StorageError, Table};
use crate::config::DatabaseConfig;

/// Oldest server accepted: MongoDB 5.0 (wire version 13).
const MIN_WIRE_VERSION: i32 = 13;
/// Attempts of one commit (whole transactions) before giving up.
const MAX_TXN_ATTEMPTS: u32 = 12;
/// Retries of `commitTransaction` alone after UnknownTransactionCommitResult.
const MAX_COMMIT_RETRIES: u32 = 5;

// Server error codes this backend reacts to.
const WRITE_CONFLICT: i32 = 112;
const DUPLICATE_KEY: i32 = 11000;
const NAMESPACE_EXISTS: i32 = 48;
const MAX_TIME_MS_EXPIRED: i32 = 50;
const CAPPED_POSITION_LOST: i32 = 136;
const INVALID_RESUME_TOKEN: i32 = 260;
const CHANGE_STREAM_FATAL: i32 = 280;
const CHANGE_STREAM_HISTORY_LOST: i32 = 286;

pub(super) struct MongoBackend {
    client: Client,
    db: Database,
    op_timeout: Duration,
    seen: Arc<OpTime>,
    follower: tokio::task::AbortHandle,
}

impl Drop for MongoBackend {
    fn drop(&mut self) {
        // The follower holds a clone of the feed's sender; stop it with the
        // store so subscribers see the feed close.
        self.follower.abort();
    }
}

/// The latest cluster operation time this instance knows to be committed
/// (its own commits, change events). A std mutex: held for a compare and a
/// copy, never across an await.
#[derive(Default)]
struct OpTime(Mutex<Option<Timestamp>>);

impl OpTime {
    fn advance(&self, ts: Option<Timestamp>) {
        let Some(ts) = ts else { return };
        if let Ok(mut cur) = self.0.lock() {
            if cur.is_none_or(|c| c < ts) {
                *cur = Some(ts);
            }
        }
    }

    fn get(&self) -> Option<Timestamp> {
        self.0.lock().ok().and_then(|t| *t)
    }
}

/// Why one transaction attempt stopped.
enum TxnError {
    /// A final answer for the caller (conflict, injected fault, encoding).
    Storage(StorageError),
    /// A driver or server error: retried when transient.
    Mongo(MongoError),
    /// The write did not find the version the transaction read: retry.
    Raced,
}

impl From<MongoError> for TxnError {
    fn from(e: MongoError) -> Self {
        TxnError::Mongo(e)
    }
}

impl From<StorageError> for TxnError {
    fn from(e: StorageError) -> Self {
        TxnError::Storage(e)
    }
}

fn backend_err(what: &str, e: &MongoError) -> StorageError {
    StorageError::Backend(format!("MongoDB {what}: {}", describe(e)))
}

/// A short description of a driver error (its `Display` includes the raw
/// server response).
fn describe(e: &MongoError) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} ({}, code {})", c.message, c.code_name, c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => format!("{} (code {})", w.message, w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!("write concern: {} (code {})", w.message, w.code)
        }
        other => other.to_string(),
    }
}

fn code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// Worth running the whole transaction again: the server says so
/// (TransientTransactionError, which covers WriteConflict), or two
/// transactions inserted the same key (the loser re-reads and then sees the
/// winner's record, so the caller gets a proper `Conflict` or an update).
fn is_transient(e: &MongoError) -> bool {
    e.contains_label(TRANSIENT_TRANSACTION_ERROR) || matches!(code(e), Some(WRITE_CONFLICT | DUPLICATE_KEY))
}

/// The change stream cannot continue from its resume token.
fn history_lost(e: &MongoError) -> bool {
    matches!(
        code(e),
        Some(CHANGE_STREAM_HISTORY_LOST | CHANGE_STREAM_FATAL | CAPPED_POSITION_LOST | INVALID_RESUME_TOKEN)
    )
}

/// Backoff before retry `attempt` (1-based), as the driver's convenient
/// transactions do: 5 ms growing by 1.5x, at most 500 ms, with full jitter
/// so that conflicting writers spread out.
fn txn_backoff(attempt: u32) -> Duration {
    let exp = 5.0 * 1.5f64.powi(attempt.min(20) as i32);
    let jitter: f64 = rand::random_range(0.0..1.0);
    Duration::from_secs_f64(jitter * exp.min(500.0) / 1000.0)
}

/// Backoff before reopening the change stream after `failures` failures in
/// a row: 250 ms doubling, at most 30 s.
fn stream_backoff(failures: u32) -> Duration {
    let ms = 250u64.saturating_mul(1u64 << failures.saturating_sub(1).min(7));
    Duration::from_millis(ms.min(30_000))
}

fn majority(timeout: Duration) -> WriteConcern {
    let mut wc = WriteConcern::majority();
    wc.w_timeout = Some(timeout);
    wc
}

/// Remove the credentials of `uri` from a message (driver messages should
/// not contain them, but a log line is no place to find out). The password
/// alone is replaced when it is long enough not to garble the message.
fn redact(message: &str, uri: &str) -> String {
    let Some(rest) = uri.split_once("://").map(|(_, r)| r) else {
        return message.to_string();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return message.to_string();
    };
    let mut out = message.replace(&format!("{userinfo}@"), "<redacted>@");
    if let Some((_, password)) = userinfo.split_once(':') {
        if password.len() >= 4 {
            out = out.replace(password, "<redacted>");
        }
    }
    out
}

impl MongoBackend {
    pub(super) async fn open(
        config: &DatabaseConfig,
        changes: broadcast::Sender<FeedEvent>,
    ) -> Result<MongoBackend, StorageError> {
        let uri = config
            .uri
            .as_ref()
            .ok_or_else(|| StorageError::Unavailable("not set (needed by storage.backend = \"mongodb\")".into()))?;
        let uri = uri.expose();
        let unavailable = |m: String| StorageError::Unavailable(redact(&m, uri));
        let connect_timeout = config.connect_timeout;

        // Parsing may resolve DNS (mongodb+srv://).
        let mut options = tokio::time::timeout(connect_timeout, ClientOptions::parse(uri))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "resolving the connection string took longer than connect_timeout ({connect_timeout:?})"
                ))
            })?
            .map_err(|e| unavailable(format!("invalid connection string: {}", describe(&e))))?;
        let hosts = options
            .hosts
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(",");
        options.app_name = Some("linkmesh".into());
        options.connect_timeout = Some(connect_timeout);
        options.server_selection_timeout = Some(connect_timeout);
        options.retry_writes = Some(true);
        options.retry_reads = Some(true);
        options.read_concern = Some(ReadConcern::majority());
        options.write_concern = Some(majority(config.operation_timeout));
        if let Some(ca) = &config.tls_ca_file {
            // A CA file means TLS, whatever the connection string says.
            match &mut options.tls {
                Some(Tls::Enabled(tls)) => tls.ca_file_path = Some(ca.clone()),
                _ => options.tls = Some(Tls::Enabled(TlsOptions::builder().ca_file_path(ca.clone()).build())),
            }
        }
        let client = Client::with_options(options)
            .map_err(|e| unavailable(format!("cannot set up a client for {hosts}: {}", describe(&e))))?;

        // DESIGN §2: refuse what is not a replica set, before touching data.
        let hello = tokio::time::timeout(
            connect_timeout + Duration::from_secs(1),
            client.database("admin").run_command(doc! { "hello": 1 }),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "no answer from {hosts} within connect_timeout ({connect_timeout:?})"
            ))
        })?
        .map_err(|e| unavailable(format!("cannot reach MongoDB at {hosts}: {}", describe(&e))))?;
        if hello.get_str("setName").is_err() {
            return Err(unavailable(format!(
                "the MongoDB at {hosts} is not a replica set member (its hello reply has no setName); \
                 LinkMesh needs a replica set for transactions and change streams: start mongod with \
                 --replSet and initiate it (a single-member replica set is enough for one instance)"
            )));
        }
        let wire = hello.get_i32("maxWireVersion").unwrap_or(0);
        if wire < MIN_WIRE_VERSION {
            return Err(unavailable(format!(
                "the MongoDB at {hosts} is too old (wire version {wire}); LinkMesh needs MongoDB 5.0 or newer"
            )));
        }

        let db = client.database(&config.name);
        let op_timeout = config.operation_timeout;
        let existing = tokio::time::timeout(op_timeout, db.list_collection_names().into_future())
            .await
            .map_err(|_| unavailable(format!("listing the collections of {} timed out", config.name)))?
            .map_err(|e| {
                unavailable(format!(
                    "cannot list the collections of {}: {}",
                    config.name,
                    describe(&e)
                ))
            })?;
        for table in Table::ALL {
            if existing.iter().any(|c| c == table.name()) {
                continue;
            }
            match tokio::time::timeout(op_timeout, db.create_collection(table.name()).into_future()).await {
                Ok(Ok(())) => {}
                // Another instance created it meanwhile.
                Ok(Err(e)) if code(&e) == Some(NAMESPACE_EXISTS) => {}
                Ok(Err(e)) => {
                    return Err(unavailable(format!(
                        "cannot create collection {}.{}: {}",
                        config.name,
                        table.name(),
                        describe(&e)
                    )))
                }
                Err(_) => {
                    return Err(unavailable(format!(
                        "creating collection {}.{} timed out",
                        config.name,
                        table.name()
                    )))
                }
            }
        }

        // Open the change stream before returning: every change committed
        // after `open` returns is reported.
        let stream = tokio::time::timeout(op_timeout, open_stream(&db, None))
            .await
            .map_err(|_| unavailable(format!("opening a change stream on {} timed out", config.name)))?
            .map_err(|e| {
                unavailable(format!(
                    "cannot open a change stream on {}: {}",
                    config.name,
                    describe(&e)
                ))
            })?;
        let seen = Arc::new(OpTime::default());
        let follower = Follower {
            db: db.clone(),
            changes,
            seen: seen.clone(),
            op_timeout,
        };
        let follower = tokio::spawn(follower.run(stream)).abort_handle();
        tracing::info!(hosts = %hosts, set_name = hello.get_str("setName").unwrap_or(""), database = %config.name, "Connected to the MongoDB replica set.");
        Ok(MongoBackend {
            client,
            db,
            op_timeout,
            seen,
            follower,
        })
    }

    /// Records are read as raw BSON and converted to JSON directly: going
    /// through `Document` would let the BSON deserializer read objects like
    /// `{"$oid": ..}` in the data as extended JSON (and fail on them).
    fn coll(&self, table: Table) -> Collection<RawDocumentBuf> {
        self.db.collection(table.name())
    }

    /// Run one driver call with the operation timeout.
    async fn timed<T>(
        &self,
        what: &str,
        call: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(r) => r.map_err(|e| backend_err(what, &e)),
            Err(_) => Err(StorageError::Backend(format!(
                "MongoDB {what}: no answer within operation_timeout ({:?})",
                self.op_timeout
            ))),
        }
    }

    /// A session for reads: causally after everything this instance
    /// committed or saw announced.
    async fn read_session(&self) -> Result<ClientSession, StorageError> {
        let mut session = self
            .timed("start session", self.client.start_session().causal_consistency(true))
            .await?;
        if let Some(ts) = self.seen.get() {
            session.advance_operation_time(ts);
        }
        Ok(session)
    }

    pub(super) async fn get(&self, table: Table, key: &str) -> Result<Option<RawDoc>, StorageError> {
        let mut session = self.read_session().await?;
        let found = self
            .timed(
                "find",
                self.coll(table).find_one(doc! { "_id": key }).session(&mut session),
            )
            .await?;
        found.map(|d| raw_from_doc(table, key, &d)).transpose()
    }

    pub(super) async fn scan(&self, table: Table, scan: Scan) -> Result<Vec<(String, RawDoc)>, StorageError> {
        let mut session = self.read_session().await?;
        let coll = self.coll(table);
        let mut find = coll
            .find(scan_filter(&scan))
            .sort(doc! { "_id": if scan.reverse { -1 } else { 1 } });
        if scan.limit > 0 {
            find = find.limit(i64::try_from(scan.limit).unwrap_or(i64::MAX));
        }
        let read = async {
            let mut cursor = find.session(&mut session).await?;
            let mut docs = Vec::new();
            while let Some(d) = cursor.next(&mut session).await {
                docs.push(d?);
            }
            Ok::<_, MongoError>(docs)
        };
        let docs = self.timed("find", read).await?;
        docs.into_iter()
            .map(|d| {
                let key = id_of(table, &d)?;
                let raw = raw_from_doc(table, &key, &d)?;
                Ok((key, raw))
            })
            .collect()
    }

    pub(super) async fn ping(&self) -> Result<(), StorageError> {
        self.timed("ping", self.db.run_command(doc! { "ping": 1 })).await?;
        Ok(())
    }

    /// One transaction: every op's precondition read and its write, then
    /// commit; retried as a whole on transient errors (see module doc).
    pub(super) async fn commit(&self, ops: &[Op], fail_after: Option<usize>) -> Result<Vec<u64>, StorageError> {
        let deadline = Instant::now() + self.op_timeout;
        let mut session = self.timed("start session", self.client.start_session()).await?;
        let mut attempt = 0;
        'transaction: loop {
            attempt += 1;
            let may_retry = attempt < MAX_TXN_ATTEMPTS && Instant::now() < deadline;
            self.timed(
                "start transaction",
                session
                    .start_transaction()
                    .read_concern(ReadConcern::snapshot())
                    .write_concern(majority(self.op_timeout)),
            )
            .await?;
            // The fault point fires on the first attempt only: it stands for
            // a crash, not a transient error.
            let fault = if attempt == 1 { fail_after } else { None };
            let applied = tokio::time::timeout(self.op_timeout, apply(&self.db, &mut session, ops, fault)).await;
            let versions = match applied {
                Ok(Ok(versions)) => versions,
                Ok(Err(e)) => {
                    // Nothing of this attempt is kept. (Abort errors are
                    // ignored by the driver; the server aborts an abandoned
                    // transaction by itself.)
                    let _ = tokio::time::timeout(self.op_timeout, session.abort_transaction().into_future()).await;
                    match e {
                        TxnError::Storage(e) => return Err(e),
                        TxnError::Mongo(e) if is_transient(&e) && may_retry => {
                            tracing::debug!(attempt, error = %describe(&e), "Transaction conflicted; retrying.");
                        }
                        TxnError::Raced if may_retry => {
                            tracing::debug!(attempt, "A record changed under the transaction; retrying.");
                        }
                        TxnError::Mongo(e) => return Err(backend_err("transaction", &e)),
                        TxnError::Raced => {
                            return Err(StorageError::Backend(
                                "MongoDB transaction: records kept changing under it; gave up".into(),
                            ))
                        }
                    }
                    tokio::time::sleep(txn_backoff(attempt)).await;
                    continue 'transaction;
                }
                Err(_) => {
                    let _ = tokio::time::timeout(self.op_timeout, session.abort_transaction().into_future()).await;
                    return Err(StorageError::Backend(format!(
                        "MongoDB transaction: no answer within operation_timeout ({:?})",
                        self.op_timeout
                    )));
                }
            };
            let mut commit_retries = 0;
            loop {
                let result = tokio::time::timeout(self.op_timeout, session.commit_transaction().into_future()).await;
                match result {
                    Ok(Ok(())) => {
                        self.seen.advance(session.operation_time());
                        return Ok(versions);
                    }
                    Ok(Err(e))
                        if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                            && code(&e) != Some(MAX_TIME_MS_EXPIRED)
                            && commit_retries < MAX_COMMIT_RETRIES =>
                    {
                        // Committing again is safe: the server commits a
                        // transaction (same number) at most once.
                        commit_retries += 1;
                        tracing::debug!(retry = commit_retries, error = %describe(&e), "Commit outcome unknown; committing again.");
                        tokio::time::sleep(txn_backoff(commit_retries)).await;
                    }
                    Ok(Err(e)) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && may_retry => {
                        tracing::debug!(attempt, error = %describe(&e), "Commit failed transiently; retrying the transaction.");
                        tokio::time::sleep(txn_backoff(attempt)).await;
                        continue 'transaction;
                    }
                    Ok(Err(e)) => return Err(backend_err("commit", &e)),
                    Err(_) => {
                        return Err(StorageError::Backend(format!(
                            "MongoDB commit: no answer within operation_timeout ({:?}); the outcome is unknown",
                            self.op_timeout
                        )))
                    }
                }
            }
        }
    }
}

/// Apply `ops` inside the session's transaction.
///
/// Preconditions are reads inside the transaction, then plain writes, rather
/// than conditional updates: the read gives the current version the caller
/// needs in `Conflict` and the new version (current + 1) in one step, and
/// tells "absent" from "other version" without a second query; and in a
/// snapshot transaction a record another transaction changed after our read
/// makes our write fail with WriteConflict (retried, then the re-read sees
/// the new version). The writes still name the version read (`v` in the
/// filter) as a second guard.
///
/// `Check` with `Present`/`Version` also writes: it bumps a hidden counter
/// `l` on the record. Snapshot isolation only detects write-write conflicts,
/// so without that write a check would not stop a concurrent transaction
/// from deleting or changing the checked record before we commit (e.g. a
/// status written for a collector that is being deregistered). `l` never
/// changes `v`, and the change stream ignores such updates, so a check is
/// still not a change. (A check for `Absent` cannot lock a record that does
/// not exist.)
async fn apply(
    db: &Database,
    session: &mut ClientSession,
    ops: &[Op],
    fail_after: Option<usize>,
) -> Result<Vec<u64>, TxnError> {
    let mut versions = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        if fail_after == Some(i) {
            // The caller aborts the transaction: nothing applied so far is
            // committed.
            return Err(StorageError::Injected.into());
        }
        let (table, key, expect) = op.target();
        let coll: Collection<Document> = db.collection(table.name());
        let current = coll
            .find_one(doc! { "_id": key })
            .projection(doc! { "v": 1 })
            .session(&mut *session)
            .await?
            .map(|d| version_of(table, key, &d))
            .transpose()?;
        super::check(table, key, expect, current)?;
        match op {
            Op::Put { format, data, .. } => {
                let version = current.unwrap_or(0) + 1;
                let doc = doc_for(key, *format, version, data)?;
                match current {
                    None => {
                        coll.insert_one(doc).session(&mut *session).await?;
                    }
                    Some(cur) => {
                        let r = coll
                            .replace_one(doc! { "_id": key, "v": to_i64(cur)? }, doc)
                            .session(&mut *session)
                            .await?;
                        if r.matched_count != 1 {
                            return Err(TxnError::Raced);
                        }
                    }
                }
                versions.push(version);
            }
            Op::Delete { .. } => {
                if let Some(cur) = current {
                    let r = coll
                        .delete_one(doc! { "_id": key, "v": to_i64(cur)? })
                        .session(&mut *session)
                        .await?;
                    if r.deleted_count != 1 {
                        return Err(TxnError::Raced);
                    }
                }
                versions.push(0);
            }
            Op::Check { .. } => {
                if let (Some(cur), Expect::Present | Expect::Version(_)) = (current, expect) {
                    let r = coll
                        .update_one(doc! { "_id": key, "v": to_i64(cur)? }, doc! { "$inc": { "l": 1_i64 } })
                        .session(&mut *session)
                        .await?;
                    if r.matched_count != 1 {
                        return Err(TxnError::Raced);
                    }
                }
                versions.push(0);
            }
        }
    }
    Ok(versions)
}

fn to_i64(n: u64) -> Result<i64, StorageError> {
    i64::try_from(n).map_err(|_| StorageError::Encode(format!("{n} does not fit a MongoDB 64-bit integer")))
}

/// The stored document of a record.
fn doc_for(key: &str, format: u32, version: u64, data: &serde_json::Value) -> Result<Document, StorageError> {
    Ok(doc! {
        "_id": key,
        "f": i64::from(format),
        "v": to_i64(version)?,
        "d": json_to_bson(data),
    })
}

fn id_of(table: Table, d: &RawDocument) -> Result<String, StorageError> {
    match d.get("_id") {
        Ok(Some(RawBsonRef::String(s))) => Ok(s.to_string()),
        other => Err(StorageError::Decode {
            table,
            key: format!("{other:?}"),
            message: "_id is not a string".into(),
        }),
    }
}

fn raw_int_field(d: &RawDocument, field: &str) -> Option<u64> {
    match d.get(field).ok()?? {
        RawBsonRef::Int64(n) => u64::try_from(n).ok(),
        RawBsonRef::Int32(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

fn int_field(d: &Document, field: &str) -> Option<u64> {
    match d.get(field)? {
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Int32(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn version_of(table: Table, key: &str, d: &Document) -> Result<u64, StorageError> {
    int_field(d, "v").ok_or_else(|| StorageError::Decode {
        table,
        key: key.to_string(),
        message: "missing or invalid version field v".into(),
    })
}

fn raw_from_doc(table: Table, key: &str, d: &RawDocument) -> Result<RawDoc, StorageError> {
    let decode_err = |message: String| StorageError::Decode {
        table,
        key: key.to_string(),
        message,
    };
    let version = raw_int_field(d, "v").ok_or_else(|| decode_err("missing or invalid version field v".into()))?;
    let format = raw_int_field(d, "f")
        .and_then(|f| u32::try_from(f).ok())
        .ok_or_else(|| decode_err("missing or invalid format field f".into()))?;
    let data = match d.get("d").map_err(|e| decode_err(e.to_string()))? {
        Some(v) => bson_to_json(v).map_err(decode_err)?,
        None => serde_json::Value::Null,
    };
    Ok(RawDoc { format, version, data })
}

/// JSON to BSON, lossless and without extended-JSON interpretation (an
/// object `{"$oid": ..}` stays an object): integers that fit i64 become
/// Int64, larger ones (up to u64::MAX) Decimal128, other numbers Double.
pub(super) fn json_to_bson(v: &serde_json::Value) -> Bson {
    use serde_json::Value;
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Bson::Int64(i)
            } else if let Some(u) = n.as_u64() {
                match u.to_string().parse::<Decimal128>() {
                    Ok(d) => Bson::Decimal128(d),
                    Err(_) => Bson::Double(u as f64),
                }
            } else {
                Bson::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(json_to_bson).collect()),
        Value::Object(map) => Bson::Document(map.iter().map(|(k, v)| (k.clone(), json_to_bson(v))).collect()),
    }
}

/// The inverse of `json_to_bson`, from raw BSON; other BSON types are
/// refused (this backend never writes them).
pub(super) fn bson_to_json(b: RawBsonRef<'_>) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match b {
        RawBsonRef::Null => Value::Null,
        RawBsonRef::Boolean(b) => Value::Bool(b),
        RawBsonRef::Int32(i) => Value::from(i),
        RawBsonRef::Int64(i) => Value::from(i),
        RawBsonRef::Double(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a JSON number"))?,
        RawBsonRef::Decimal128(d) => {
            let s = d.to_string();
            let n: u64 = s.parse().map_err(|_| format!("decimal {s} is not a stored integer"))?;
            Value::from(n)
        }
        RawBsonRef::String(s) => Value::String(s.to_string()),
        RawBsonRef::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| bson_to_json(item.map_err(|e| e.to_string())?))
                .collect::<Result<_, _>>()?,
        ),
        RawBsonRef::Document(d) => Value::Object(
            d.into_iter()
                .map(|item| {
                    let (k, v) = item.map_err(|e| e.to_string())?;
                    Ok((k.to_string(), bson_to_json(v)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        other => return Err(format!("unexpected BSON value {other:?}")),
    })
}

/// Highest code point: `prefix + MAX` is above every key that starts with
/// `prefix` (MongoDB compares strings by UTF-8 bytes, in code point order,
/// like Rust).
const MAX_CHAR: char = '\u{10FFFF}';

/// The `_id` range of a scan: `[prefix, prefix + U+10FFFF)`, after the
/// cursor (exclusive; below it when descending).
pub(super) fn scan_filter(scan: &Scan) -> Document {
    let upper = format!("{}{MAX_CHAR}", scan.prefix);
    let mut range = doc! { "$gte": scan.prefix.as_str() };
    match (&scan.after, scan.reverse) {
        (Some(after), false) => {
            range.insert("$gt", after.as_str());
            range.insert("$lt", upper);
        }
        (Some(after), true) => {
            range.insert("$lt", std::cmp::min(after.clone(), upper));
        }
        (None, _) => {
            range.insert("$lt", upper);
        }
    }
    doc! { "_id": range }
}

/// The change stream of the database, limited to what the feed reports:
/// inserts, replacements and deletions in our collections (Check's counter
/// updates are not changes), plus the events after which the stream cannot
/// be trusted (drop, rename, dropDatabase, invalidate). The record data is
/// projected away: only `v` is needed.
async fn open_stream(
    db: &Database,
    resume: Option<ResumeToken>,
) -> mongodb::error::Result<ChangeStream<ChangeStreamEvent<Document>>> {
    let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
    let pipeline = [
        doc! { "$match": { "$or": [
            { "operationType": { "$in": ["insert", "replace", "delete"] }, "ns.coll": { "$in": names } },
            { "operationType": { "$in": ["drop", "rename", "dropDatabase", "invalidate"] } },
        ] } },
        doc! { "$project": { "fullDocument.d": 0, "fullDocument.f": 0, "fullDocument.l": 0 } },
    ];
    let watch = db.watch().pipeline(pipeline);
    match resume {
        Some(token) => watch.resume_after(token).await,
        None => watch.await,
    }
}

/// What a change event means for the feed: a change, a resync (the stream
/// saw a collection or the database dropped or renamed), or nothing.
fn feed_event(event: &ChangeStreamEvent<Document>) -> Option<FeedEvent> {
    match event.operation_type {
        OperationType::Insert | OperationType::Replace | OperationType::Delete => {}
        OperationType::Drop | OperationType::Rename | OperationType::DropDatabase | OperationType::Invalidate => {
            return Some(FeedEvent::Resync)
        }
        _ => return None,
    }
    let coll = event.ns.as_ref()?.coll.as_deref()?;
    let table = Table::ALL.into_iter().find(|t| t.name() == coll)?;
    let key = event.document_key.as_ref()?.get_str("_id").ok()?.to_string();
    let version = match event.operation_type {
        OperationType::Delete => None,
        // Inserts and replacements carry the whole new document. Without a
        // readable version the change cannot be described: let subscribers
        // re-read instead of reporting a deletion.
        _ => match event.full_document.as_ref().and_then(|d| int_field(d, "v")) {
            Some(v) => Some(v),
            None => return Some(FeedEvent::Resync),
        },
    };
    Some(FeedEvent::Change(Change { table, key, version }))
}

/// Follows the change stream and publishes on the store's feed.
///
/// The resume token of the last event is kept in memory. The driver resumes
/// by itself once after a resumable error; when the stream still fails, it
/// is reopened from the token (with backoff, for as long as it takes). When
/// the token cannot be used any more (the oplog no longer holds it:
/// ChangeStreamHistoryLost and friends) or the stream was invalidated, a
/// fresh stream is opened and a `Resync` is sent after it is open, which
/// subscribers receive as `RecvError::Lagged(0)` and answer by re-reading
/// the store: nothing committed after the new stream started is missed, and
/// what was committed before is in the store.
struct Follower {
    db: Database,
    changes: broadcast::Sender<FeedEvent>,
    seen: Arc<OpTime>,
    op_timeout: Duration,
}

impl Follower {
    async fn run(self, mut stream: ChangeStream<ChangeStreamEvent<Document>>) {
        let mut token = stream.resume_token();
        let mut failures = 0u32;
        let mut opened = Instant::now();
        loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    failures = 0;
                    self.seen.advance(event.cluster_time);
                    if let Some(e) = feed_event(&event) {
                        if matches!(e, FeedEvent::Resync) {
                            tracing::warn!(operation = ?event.operation_type, "The change stream reported a dropped or renamed collection; subscribers re-read the store.");
                        }
                        // No receiver is fine: nobody is interested yet.
                        let _ = self.changes.send(e);
                    }
                    if let Some(t) = stream.resume_token() {
                        token = Some(t);
                    }
                    continue;
                }
                Some(Err(e)) if history_lost(&e) => {
                    tracing::warn!(error = %describe(&e), "The change stream lost its history; restarting it and resynchronising.");
                    token = None;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %describe(&e), "The change stream failed; resuming it.");
                    // The latest token, including the server's post-batch
                    // token of quiet periods: resuming from it needs less
                    // oplog history than the last event's.
                    if let Some(t) = stream.resume_token() {
                        token = Some(t);
                    }
                }
                None => {
                    tracing::warn!("The change stream ended (invalidated); restarting it and resynchronising.");
                    token = None;
                }
            }
            if opened.elapsed() > Duration::from_secs(60) {
                failures = 0;
            }
            stream = self.reopen(&mut token, &mut failures).await;
            opened = Instant::now();
        }
    }

    async fn reopen(
        &self,
        token: &mut Option<ResumeToken>,
        failures: &mut u32,
    ) -> ChangeStream<ChangeStreamEvent<Document>> {
        loop {
            *failures += 1;
            tokio::time::sleep(stream_backoff(*failures)).await;
            let opened = tokio::time::timeout(self.op_timeout, open_stream(&self.db, token.clone())).await;
            match opened {
                Ok(Ok(stream)) => {
                    if token.is_none() {
                        let _ = self.changes.send(FeedEvent::Resync);
                    } else {
                        tracing::info!("Resumed the change stream.");
                    }
                    return stream;
                }
                Ok(Err(e)) if history_lost(&e) => {
                    tracing::warn!(error = %describe(&e), "The change stream cannot resume (history lost); starting a new one and resynchronising.");
                    *token = None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %describe(&e), failures = *failures, "Cannot reopen the change stream; retrying.");
                }
                Err(_) => {
                    tracing::warn!(failures = *failures, "Reopening the change stream timed out; retrying.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn roundtrip(v: serde_json::Value) -> serde_json::Value {
        // Serialized as the driver sends it, read back as the backend reads
        // what the server returns.
        let doc = doc_for("k", 3, 7, &v).unwrap();
        let bytes = mongodb::bson::to_raw_document_buf(&doc).unwrap();
        let raw = raw_from_doc(Table::Users, "k", &bytes).unwrap();
        assert_eq!((raw.format, raw.version), (3, 7));
        raw.data
    }

    #[test]
    fn documents_round_trip_through_bson() {
        let v = json!({
            "int": 42,
            "neg": -7,
            "big": 9_007_199_254_740_993_i64,
            "huge": u64::MAX,
            "float": 1.5,
            "whole_float": 2.0,
            "tiny": 1e-300,
            "bool": true,
            "null": null,
            "text": "grüße, 東京, 🚀, \u{10FFFF}",
            "nested": { "labels": { "app.kubernetes.io/name": "otel", "$dollar": "kept" }, "empty": {} },
            "array": [1, "two", [3.25], { "four": 4 }, null],
            "extjson_lookalike": { "$oid": "not interpreted" },
        });
        let back = roundtrip(v.clone());
        assert_eq!(back, v);
        // Integers stay integers and floats stay floats.
        assert!(back["int"].is_i64());
        assert!(back["huge"].is_u64());
        assert!(back["whole_float"].is_f64());
        assert_eq!(serde_json::to_string(&back["whole_float"]).unwrap(), "2.0");
        for scalar in [json!(null), json!("x"), json!([]), json!(0)] {
            assert_eq!(roundtrip(scalar.clone()), scalar);
        }
    }

    #[test]
    fn stored_document_shape() {
        let doc = doc_for("users/ana", 1, 5, &json!({"n": 1})).unwrap();
        let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
        assert_eq!(keys, ["_id", "f", "v", "d"]);
        assert_eq!(doc.get_str("_id").unwrap(), "users/ana");
        assert_eq!(doc.get_i64("v").unwrap(), 5);
        assert!(doc_for("k", 1, u64::MAX, &json!(null)).is_err());
        let no_version = mongodb::bson::to_raw_document_buf(&doc! { "_id": "k", "f": 1_i64, "d": {} }).unwrap();
        assert!(matches!(
            raw_from_doc(Table::Users, "k", &no_version),
            Err(StorageError::Decode { .. })
        ));
        let oid = mongodb::bson::oid::ObjectId::new();
        assert!(bson_to_json(RawBsonRef::ObjectId(oid)).is_err());
    }

    fn scan(prefix: &str, after: Option<&str>, reverse: bool) -> Scan {
        Scan {
            prefix: prefix.into(),
            after: after.map(String::from),
            limit: 0,
            reverse,
        }
    }

    #[test]
    fn scan_bounds() {
        let top = "a/\u{10FFFF}";
        assert_eq!(
            scan_filter(&scan("a/", None, false)),
            doc! { "_id": { "$gte": "a/", "$lt": top } }
        );
        assert_eq!(
            scan_filter(&scan("a/", None, true)),
            doc! { "_id": { "$gte": "a/", "$lt": top } }
        );
        assert_eq!(
            scan_filter(&scan("a/", Some("a/2"), false)),
            doc! { "_id": { "$gte": "a/", "$gt": "a/2", "$lt": top } }
        );
        assert_eq!(
            scan_filter(&scan("a/", Some("a/2"), true)),
            doc! { "_id": { "$gte": "a/", "$lt": "a/2" } }
        );
        // A cursor past the prefix's range keeps the range's upper bound.
        assert_eq!(
            scan_filter(&scan("a/", Some("b"), true)),
            doc! { "_id": { "$gte": "a/", "$lt": top } }
        );
        assert_eq!(
            scan_filter(&scan("", None, false)),
            doc! { "_id": { "$gte": "", "$lt": "\u{10FFFF}" } }
        );
        // The bounds order keys as the server does (UTF-8 bytes = code
        // points): every key with the prefix is inside, others outside.
        for key in ["a/", "a/1", "a/zz", "a/\u{FFFF}", "a/東京"] {
            assert!(key >= "a/" && key < top, "{key}");
        }
        for key in ["a", "a.", "a0", "b/1"] {
            assert!(!(key >= "a/" && key < top), "{key}");
        }
    }

    fn event(d: Document) -> ChangeStreamEvent<Document> {
        mongodb::bson::from_document(d).unwrap()
    }

    #[test]
    fn change_events_become_feed_changes() {
        let base = |op: &str| {
            doc! {
                "_id": { "_data": "826000" },
                "operationType": op,
                "ns": { "db": "linkmesh", "coll": "collectors" },
                "documentKey": { "_id": "c1" },
            }
        };
        let mut insert = base("replace");
        insert.insert("fullDocument", doc! { "_id": "c1", "v": 4_i64 });
        match feed_event(&event(insert)) {
            Some(FeedEvent::Change(c)) => assert_eq!(
                c,
                Change {
                    table: Table::Collectors,
                    key: "c1".into(),
                    version: Some(4)
                }
            ),
            other => panic!("{other:?}"),
        }
        match feed_event(&event(base("delete"))) {
            Some(FeedEvent::Change(c)) => assert_eq!(c.version, None),
            other => panic!("{other:?}"),
        }
        // An insert without a readable version is not reported as a delete.
        assert!(matches!(feed_event(&event(base("insert"))), Some(FeedEvent::Resync)));
        assert!(matches!(
            feed_event(&event(
                doc! { "_id": { "_data": "1" }, "operationType": "dropDatabase", "ns": { "db": "linkmesh" } }
            )),
            Some(FeedEvent::Resync)
        ));
        // Check's counter updates and foreign collections are not changes.
        assert!(feed_event(&event(base("update"))).is_none());
        let mut foreign = base("delete");
        foreign.insert("ns", doc! { "db": "linkmesh", "coll": "other" });
        assert!(feed_event(&event(foreign)).is_none());
    }

    #[test]
    fn credentials_are_redacted_from_messages() {
        let uri = "mongodb://linkmesh:s3cr%40t@db1:27017,db2/?replicaSet=rs0";
        let msg = "auth failed for linkmesh:s3cr%40t@db1 (password s3cr%40t)";
        let out = redact(msg, uri);
        assert!(!out.contains("s3cr%40t"), "{out}");
        assert!(out.contains("auth failed for <redacted>@db1"), "{out}");
        assert_eq!(redact("plain", "mongodb://db1/"), "plain");
        // A short password is not searched for in the message.
        assert_eq!(redact("a b a", "mongodb://u:a@db1/"), "a b a");
    }

    #[test]
    fn backoffs_are_bounded() {
        for attempt in 1..40 {
            assert!(txn_backoff(attempt) <= Duration::from_millis(500));
        }
        assert_eq!(stream_backoff(1), Duration::from_millis(250));
        assert_eq!(stream_backoff(100), Duration::from_secs(30));
    }
}
