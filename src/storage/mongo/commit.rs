//! `commit` on MongoDB: one multi-document transaction per commit, bounded
//! by one deadline (`database.operation_timeout`), with one read per table
//! and one write command per table and kind.
//!
//! What a failover or a slow link may do to a commit, and the answer:
//! - the transaction aborted (TransientTransactionError, WriteConflict, a
//!   duplicate key from a concurrent insert): run it again, re-reading
//!   every precondition, while time is left;
//! - `commitTransaction` got no definite answer (UnknownTransactionCommitResult:
//!   network error, no primary, write concern timeout 64, MaxTimeMSExpired
//!   50, ShutdownInProgress 91): send it again, which the server applies at
//!   most once, while time is left; when the deadline passes first the
//!   caller gets `StorageError::OutcomeUnknown`, never a plain failure,
//!   because the write may well be there;
//! - the deadline passes before `commitTransaction` was sent: nothing was
//!   committed (the server aborts the abandoned transaction), a definite
//!   failure.
//!
//! Every driver call gets the time left until the deadline, not a fresh
//! timeout of its own, and the write concern's `wtimeout` and the commit's
//! `maxTimeMS` are half of what is left when the attempt starts, so the
//! server's own timeout fires (a labelled, retryable error) before ours.

use std::collections::{BTreeMap, HashMap};
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{ReadConcern, ReadPreference, SelectionCriteria};
use mongodb::{ClientSession, Collection, Database};

use super::{code, describe, doc_for, int_field, majority, to_i64, MongoBackend};
use crate::storage::{check, Expect, Op, StorageError, Table};

/// Whole-transaction attempts of one commit (conflict storms): the
/// deadline usually ends a commit first.
const MAX_TXN_ATTEMPTS: u32 = 20;
/// Statements per write command: well below the server's limits (100,000
/// statements, 16 MiB + 16 KiB per command) for the records stored here.
const MAX_STATEMENTS: usize = 500;
/// Bytes of documents per write command, against the 16 MiB limit.
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

// Server error codes the classification reacts to.
pub(super) const WRITE_CONFLICT: i32 = 112;
pub(super) const DUPLICATE_KEY: i32 = 11000;

/// The time one commit may take, from its start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: Instant,
}

impl Deadline {
    pub(super) fn after(limit: Duration, now: Instant) -> Deadline {
        Deadline { at: now + limit }
    }

    /// Time left at `now`; None once the deadline has passed.
    pub(super) fn remaining(&self, now: Instant) -> Option<Duration> {
        self.at.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// The server-side limits of an attempt starting at `now` (write
    /// concern `wtimeout`, commit `maxTimeMS`): half of the time left, so
    /// that the server answers "timed out" (retryable) before the client
    /// gives up, at least 1 ms (0 would mean "no limit" to the server).
    pub(super) fn server_limit(&self, now: Instant) -> Duration {
        let half = self.remaining(now).unwrap_or_default() / 2;
        half.max(Duration::from_millis(1))
    }

    /// How long to sleep before retry `attempt`: the backoff, unless that
    /// would leave no time for the retry itself (None: give up now).
    pub(super) fn sleep_before_retry(&self, backoff: Duration, now: Instant) -> Option<Duration> {
        let left = self.remaining(now)?;
        (backoff < left).then_some(backoff)
    }

    /// Run `call`, bounded by the time left; Err(()) when it was cut off
    /// (or the deadline had already passed).
    async fn bound<T>(&self, call: impl IntoFuture<Output = T>) -> Result<T, ()> {
        let left = self.remaining(Instant::now()).ok_or(())?;
        tokio::time::timeout(left, call).await.map_err(|_| ())
    }
}

/// Where in a transaction an error happened: the same error means
/// different things before and at `commitTransaction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Reads and writes inside the transaction (nothing is committed yet).
    Apply,
    /// `commitTransaction`.
    Commit,
}

/// What to do about a driver or server error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// The transaction was aborted for a transient reason: run it again.
    Retry,
    /// Another transaction wrote one of our records first (a concurrent
    /// insert of the same key): run it again, whose re-read then reports
    /// the precondition's proper `Conflict`, or succeeds.
    Conflict,
    /// `commitTransaction` may or may not have been applied: send it again.
    Unknown,
    /// No usable server right now (no primary, network): retry while time
    /// is left; a definite failure (nothing committed) before the commit.
    Unavailable,
    /// Anything else: a definite failure, reported as it is.
    Fatal,
}

/// The parts of a driver error the classification looks at (a plain
/// struct, so the rules are tested without constructing driver errors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Facts {
    pub transient_label: bool,
    pub unknown_commit_label: bool,
    pub code: Option<i32>,
    pub network: bool,
    pub server_selection: bool,
}

impl Facts {
    pub(super) fn of(e: &MongoError) -> Facts {
        Facts {
            transient_label: e.contains_label(TRANSIENT_TRANSACTION_ERROR),
            unknown_commit_label: e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT),
            code: code(e),
            network: matches!(
                e.kind.as_ref(),
                ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
            ),
            server_selection: matches!(e.kind.as_ref(), ErrorKind::ServerSelection { .. }),
        }
    }
}

pub(super) fn classify(f: Facts, stage: Stage) -> Class {
    match stage {
        Stage::Commit => {
            // The driver labels what may have committed; MaxTimeMSExpired
            // (50) among them, which its own `with_transaction` does not
            // retry: here the deadline bounds the retries instead.
            if f.unknown_commit_label || f.network || f.server_selection {
                Class::Unknown
            } else if f.transient_label || f.code == Some(WRITE_CONFLICT) {
                // The server aborted the transaction: nothing committed.
                Class::Retry
            } else {
                Class::Fatal
            }
        }
        Stage::Apply => {
            if f.code == Some(DUPLICATE_KEY) {
                Class::Conflict
            } else if f.transient_label || f.code == Some(WRITE_CONFLICT) {
                Class::Retry
            } else if f.network || f.server_selection {
                Class::Unavailable
            } else {
                Class::Fatal
            }
        }
    }
}

/// `Expect::Absent` on `Check` and `Delete` promises that no concurrent
/// commit creates the key before ours commits. Snapshot isolation cannot
/// keep that promise (there is no document to conflict on: two commits
/// that each check the other's key absent would both commit), so MongoDB
/// refuses it rather than break it. Nothing uses it; `Put` with `Absent`
/// is protected (the insert itself conflicts).
pub(super) fn refuse_unprotected(ops: &[Op]) -> Result<(), StorageError> {
    for op in ops {
        if let Op::Check {
            table,
            key,
            expect: Expect::Absent,
        }
        | Op::Delete {
            table,
            key,
            expect: Expect::Absent,
        } = op
        {
            return Err(StorageError::Unsupported {
                backend: "mongodb",
                what: format!(
                    "{}/{key}: a check that a record is absent cannot be protected against a concurrent insert \
                     under snapshot isolation",
                    table.name()
                ),
            });
        }
    }
    Ok(())
}

/// What a commit does to one record, once all its ops are applied in order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    /// Written: the new document (with its new version).
    Write(Document),
    /// Removed.
    Remove,
    /// Checked, unchanged. `bump`: the check needs protection against a
    /// concurrent change of the record (see `plan`).
    Keep { bump: bool },
}

/// One record a commit touches: the version it had when read, and what
/// happens to it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Touch {
    pub before: Option<u64>,
    pub effect: Effect,
}

/// The write commands of one table.
#[derive(Debug, Default, PartialEq)]
pub(super) struct TableWrites {
    pub inserts: Vec<Document>,
    /// `update` statements (`q`, `u`): replacements and counter bumps.
    pub updates: Vec<Document>,
    /// `delete` statements (`q`, `limit`).
    pub deletes: Vec<Document>,
}

/// The records of a commit, read once: table -> key -> version.
pub(super) type Versions = HashMap<Table, HashMap<String, u64>>;

/// Every record a commit touches, in a stable order.
pub(super) type Touched = BTreeMap<(Table, String), Touch>;

/// Apply `ops` in order to the versions read, as the embedded store does
/// record by record: check each precondition against the version the
/// earlier ops of this commit left, and compute the new versions and each
/// record's net effect. Pure: the server is only asked for `current` and
/// then given the writes.
///
/// A `Check` must hold until the commit commits, but snapshot isolation
/// only detects write-write conflicts: a check alone would not stop a
/// concurrent transaction from changing or deleting the checked record
/// before we commit. Where that matters the checked record gets a hidden
/// counter bump (`l`, which never changes `v`; the change stream ignores
/// such updates, so a check is still not a change), and the bump makes
/// the two commits conflict:
///
/// - `Check(Version)`: the commit depends on the record's content, so it
///   is always bumped.
/// - `Check(Present)`: the commit depends only on the record still
///   existing, i.e. on it not being deleted. Every delete of a record that
///   others check (the collector deregistration cascade) also deletes, in
///   the same commit, the records that depend on it (status, own
///   telemetry, commands, assignment), so when our commit updates or
///   deletes existing records the deleter writes the same documents and
///   the commits conflict there. Only an insert has no document to
///   conflict on, so the checked records are bumped only when the commit
///   inserts. The status writer's and the rollup writer's batches, which
///   update existing records in steady state, then no longer write 512
///   collector documents each — which made every concurrent write of any
///   of those collectors (a label edit, the other writer) conflict with
///   the whole batch.
pub(super) fn plan(ops: &[Op], current: &Versions) -> Result<(Vec<u64>, Touched), StorageError> {
    let mut touched = Touched::new();
    // The version each record has after the ops so far (None: absent).
    let mut now: HashMap<(Table, &str), Option<u64>> = HashMap::new();
    let mut versions = Vec::with_capacity(ops.len());
    // Records checked only for being present (bumped only with an insert).
    let mut present: Vec<(Table, String)> = Vec::new();
    for op in ops {
        let (table, key, expect) = op.target();
        let stored = current.get(&table).and_then(|t| t.get(key)).copied();
        let cur = *now.entry((table, key)).or_insert(stored);
        check(table, key, expect, cur)?;
        let touch = touched.entry((table, key.to_string())).or_insert(Touch {
            before: stored,
            effect: Effect::Keep { bump: false },
        });
        match op {
            Op::Put { format, data, .. } => {
                let version = cur.unwrap_or(0) + 1;
                touch.effect = Effect::Write(doc_for(key, *format, version, data)?);
                now.insert((table, key), Some(version));
                versions.push(version);
            }
            Op::Delete { .. } => {
                if cur.is_some() {
                    touch.effect = Effect::Remove;
                    now.insert((table, key), None);
                }
                versions.push(0);
            }
            Op::Check { .. } => {
                if cur.is_some() {
                    match expect {
                        Expect::Version(_) => {
                            if let Effect::Keep { bump } = &mut touch.effect {
                                *bump = true;
                            }
                        }
                        Expect::Present => present.push((table, key.to_string())),
                        Expect::Any | Expect::Absent => {}
                    }
                }
                versions.push(0);
            }
        }
    }
    let inserts = touched
        .values()
        .any(|t| t.before.is_none() && matches!(t.effect, Effect::Write(_)));
    if inserts {
        for k in present {
            if let Some(Touch {
                effect: Effect::Keep { bump },
                ..
            }) = touched.get_mut(&k)
            {
                *bump = true;
            }
        }
    }
    Ok((versions, touched))
}

/// The write commands for the planned effects, per table. Every update
/// and delete names the version read (`v` in the filter): if the record
/// changed meanwhile it matches nothing and the attempt is retried.
pub(super) fn writes(touched: &Touched) -> Result<BTreeMap<Table, TableWrites>, StorageError> {
    let mut out: BTreeMap<Table, TableWrites> = BTreeMap::new();
    for ((table, key), touch) in touched {
        let w = out.entry(*table).or_default();
        match (&touch.effect, touch.before) {
            (Effect::Write(d), None) => w.inserts.push(d.clone()),
            (Effect::Write(d), Some(v)) => w.updates.push(doc! {
                "q": { "_id": key.as_str(), "v": to_i64(v)? },
                "u": d.clone(),
            }),
            (Effect::Remove, Some(v)) => w.deletes.push(doc! {
                "q": { "_id": key.as_str(), "v": to_i64(v)? },
                "limit": 1,
            }),
            (Effect::Keep { bump: true }, Some(v)) => w.updates.push(doc! {
                "q": { "_id": key.as_str(), "v": to_i64(v)? },
                "u": { "$inc": { "l": 1_i64 } },
            }),
            // Created and removed again, or only checked: nothing to write.
            (Effect::Remove | Effect::Keep { .. }, _) => {}
        }
    }
    out.retain(|_, w| !(w.inserts.is_empty() && w.updates.is_empty() && w.deletes.is_empty()));
    Ok(out)
}

/// Split statements into commands below the size limits.
fn chunks(statements: &[Document]) -> Vec<&[Document]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, s) in statements.iter().enumerate() {
        // An estimate that errs high; the server's limit is far above.
        let size = mongodb::bson::to_vec(s).map(|v| v.len()).unwrap_or(MAX_COMMAND_BYTES);
        if i > start && (i - start >= MAX_STATEMENTS || bytes + size > MAX_COMMAND_BYTES) {
            out.push(&statements[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < statements.len() {
        out.push(&statements[start..]);
    }
    out
}

/// Why one transaction attempt stopped.
#[derive(Debug)]
enum TxnError {
    /// A final answer for the caller (conflict, injected fault, encoding).
    Storage(StorageError),
    /// A driver or server error, classified by `classify`.
    Mongo(MongoError),
    /// A write reported an error of its own (`writeErrors`).
    Write { code: i32, message: String },
    /// A write did not find the version the transaction read: retry.
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

impl MongoBackend {
    /// One transaction for `ops` (see the module doc for the retry rules).
    pub(in crate::storage) async fn commit(
        &self,
        ops: &[Op],
        fail_after: Option<usize>,
    ) -> Result<Vec<u64>, StorageError> {
        refuse_unprotected(ops)?;
        let deadline = Deadline::after(self.op_timeout, Instant::now());
        let timed_out = |what: &str| {
            StorageError::Unavailable(format!(
                "MongoDB {what}: no answer within database.operation_timeout ({:?}); nothing was committed",
                self.op_timeout
            ))
        };
        let mut session = match deadline.bound(self.client.start_session()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(super::unavailable_or_backend("start session", &e)),
            Err(()) => return Err(timed_out("start session")),
        };
        let mut attempt = 0;
        // Why the previous attempt was given up, for the final message.
        let mut last: String;
        loop {
            attempt += 1;
            let start = Instant::now();
            let limit = deadline.server_limit(start);
            // Transactions run on the primary whatever readPreference the
            // connection string gives the reads.
            let begin = session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(majority(limit))
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .max_commit_time(limit);
            match deadline.bound(begin).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(super::unavailable_or_backend("start transaction", &e)),
                Err(()) => return Err(timed_out("start transaction")),
            }
            // The fault point fires on the first attempt only: it stands for
            // a crash, not a transient error.
            let fault = if attempt == 1 { fail_after } else { None };
            let versions = match deadline.bound(apply(&self.db, &mut session, ops, fault)).await {
                Ok(Ok(versions)) => versions,
                Ok(Err(e)) => {
                    // Nothing of this attempt is kept. (The server also
                    // aborts an abandoned transaction by itself.)
                    let _ = deadline.bound(session.abort_transaction()).await;
                    let class = match &e {
                        TxnError::Storage(_) => None,
                        TxnError::Mongo(m) => Some(classify(Facts::of(m), Stage::Apply)),
                        TxnError::Write { code, .. } => Some(classify(
                            Facts {
                                code: Some(*code),
                                ..Facts::default()
                            },
                            Stage::Apply,
                        )),
                        TxnError::Raced => Some(Class::Conflict),
                    };
                    last = match &e {
                        TxnError::Storage(_) => String::new(),
                        TxnError::Mongo(m) => describe(m),
                        TxnError::Write { code, message } => format!("{message} (code {code})"),
                        TxnError::Raced => "a record changed under the transaction".into(),
                    };
                    match (e, class) {
                        (TxnError::Storage(e), _) => return Err(e),
                        (_, Some(Class::Retry | Class::Conflict | Class::Unavailable)) => {
                            tracing::debug!(attempt, error = %last, "Transaction attempt failed; retrying.");
                        }
                        (TxnError::Mongo(m), _) => return Err(super::backend_err("transaction", &m)),
                        (_, _) => return Err(StorageError::Backend(format!("MongoDB transaction: {last}"))),
                    }
                    if !self.pause_before_retry(&deadline, attempt).await {
                        return Err(StorageError::Unavailable(format!(
                            "MongoDB transaction gave up after {attempt} attempts within \
                             database.operation_timeout ({:?}): {last}; nothing was committed",
                            self.op_timeout
                        )));
                    }
                    continue;
                }
                Err(()) => {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), session.abort_transaction().into_future()).await;
                    return Err(timed_out("transaction"));
                }
            };
            // Set once a commitTransaction was sent without a definite
            // answer: from then on, giving up means "outcome unknown".
            let mut unknown: Option<String> = None;
            let mut commit_try = 0;
            loop {
                commit_try += 1;
                let answer = match deadline.bound(session.commit_transaction()).await {
                    Ok(answer) => answer,
                    Err(()) => {
                        return Err(StorageError::OutcomeUnknown(format!(
                            "MongoDB did not confirm commitTransaction within database.operation_timeout ({:?}){}",
                            self.op_timeout,
                            unknown.map(|u| format!(" (last answer: {u})")).unwrap_or_default()
                        )))
                    }
                };
                let e = match answer {
                    Ok(()) => {
                        self.seen.advance(session.operation_time());
                        return Ok(versions);
                    }
                    Err(e) => e,
                };
                let class = classify(Facts::of(&e), Stage::Commit);
                match class {
                    Class::Unknown => {
                        // Committing again is safe: the server commits a
                        // transaction (same number) at most once.
                        let u = describe(&e);
                        tracing::debug!(retry = commit_try, error = %u, "Commit outcome unknown; committing again.");
                        unknown = Some(u);
                        if !self.pause_before_retry(&deadline, commit_try).await {
                            return Err(StorageError::OutcomeUnknown(format!(
                                "MongoDB gave no definite answer to commitTransaction within \
                                 database.operation_timeout ({:?}): {}",
                                self.op_timeout,
                                unknown.unwrap_or_default()
                            )));
                        }
                    }
                    Class::Retry | Class::Conflict => {
                        // The server says the transaction aborted: nothing
                        // of it committed, even after an unknown answer.
                        last = describe(&e);
                        tracing::debug!(attempt, error = %last, "Commit failed transiently; retrying the transaction.");
                        break;
                    }
                    Class::Unavailable | Class::Fatal => {
                        return Err(match unknown {
                            Some(u) => StorageError::OutcomeUnknown(format!(
                                "MongoDB commitTransaction: {} after an earlier answer without outcome ({u})",
                                describe(&e)
                            )),
                            None => super::backend_err("commit", &e),
                        })
                    }
                }
            }
            if attempt >= MAX_TXN_ATTEMPTS || !self.pause_before_retry(&deadline, attempt).await {
                return Err(StorageError::Unavailable(format!(
                    "MongoDB transaction gave up after {attempt} attempts within database.operation_timeout \
                     ({:?}): {last}; nothing was committed",
                    self.op_timeout
                )));
            }
        }
    }

    /// Sleep the backoff before retry `attempt`; false when no time is left
    /// for another try (or too many attempts were made).
    async fn pause_before_retry(&self, deadline: &Deadline, attempt: u32) -> bool {
        if attempt >= MAX_TXN_ATTEMPTS * 5 {
            return false;
        }
        match deadline.sleep_before_retry(super::txn_backoff(attempt), Instant::now()) {
            Some(pause) => {
                tokio::time::sleep(pause).await;
                true
            }
            None => false,
        }
    }
}

/// Apply `ops` inside the session's transaction: one `find` per table for
/// the versions, `plan`, then per table at most one `insert`, one `update`
/// and one `delete` command (split only at the size limits). A 512-status
/// batch is about six round trips, not two per op.
async fn apply(
    db: &Database,
    session: &mut ClientSession,
    ops: &[Op],
    fail_after: Option<usize>,
) -> Result<Vec<u64>, TxnError> {
    // With the fault point, only the ops before it are applied, then the
    // attempt fails (the caller aborts): nothing of them may be committed.
    let planned = match fail_after {
        Some(n) if n < ops.len() => &ops[..n],
        _ => ops,
    };
    let mut keys: BTreeMap<Table, Vec<&str>> = BTreeMap::new();
    for op in planned {
        let (table, key, _) = op.target();
        let k = keys.entry(table).or_default();
        if !k.contains(&key) {
            k.push(key);
        }
    }
    let mut current: Versions = HashMap::new();
    for (table, keys) in &keys {
        let coll: Collection<Document> = db.collection(table.name());
        let mut cursor = coll
            .find(doc! { "_id": { "$in": keys } })
            .projection(doc! { "v": 1 })
            // All of them in the first batch: one round trip.
            .batch_size(u32::try_from(keys.len()).unwrap_or(u32::MAX).max(1))
            .session(&mut *session)
            .await?;
        let found = current.entry(*table).or_default();
        while let Some(d) = cursor.next(&mut *session).await {
            let d = d?;
            let key = d.get_str("_id").map_err(|_| StorageError::Decode {
                table: *table,
                key: format!("{:?}", d.get("_id")),
                message: "_id is not a string".into(),
            })?;
            let version = int_field(&d, "v").ok_or_else(|| StorageError::Decode {
                table: *table,
                key: key.to_string(),
                message: "missing or invalid version field v".into(),
            })?;
            found.insert(key.to_string(), version);
        }
    }
    let (versions, touched) = plan(planned, &current)?;
    for (table, w) in writes(&touched)? {
        let name = table.name();
        let commands = [
            ("insert", "documents", &w.inserts),
            ("update", "updates", &w.updates),
            ("delete", "deletes", &w.deletes),
        ];
        for (command, field, statements) in commands {
            for part in chunks(statements) {
                let mut cmd = Document::new();
                cmd.insert(command, name);
                cmd.insert(field, part.to_vec());
                cmd.insert("ordered", true);
                let reply = db.run_command(cmd).session(&mut *session).await?;
                expect_count(&reply, part.len())?;
            }
        }
    }
    if planned.len() < ops.len() {
        return Err(StorageError::Injected.into());
    }
    Ok(versions)
}

/// A write command's reply: the first write error, or every statement
/// matched (`n`; for updates, documents matched), or `Raced`.
fn expect_count(reply: &Document, statements: usize) -> Result<(), TxnError> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            let code = match first.get("code") {
                Some(Bson::Int32(c)) => *c,
                Some(Bson::Int64(c)) => i32::try_from(*c).unwrap_or(i32::MAX),
                _ => 0,
            };
            let message = first.get_str("errmsg").unwrap_or("write error").to_string();
            return Err(TxnError::Write { code, message });
        }
    }
    let n = int_field(reply, "n").unwrap_or(0);
    if usize::try_from(n).ok() == Some(statements) {
        Ok(())
    } else {
        Err(TxnError::Raced)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;
    use crate::storage::conformance::Probe;

    fn put(key: &str, expect: Expect) -> Op {
        Op::Put {
            table: Table::Canvas,
            key: key.into(),
            format: 1,
            data: serde_json::value::to_raw_value(&json!({ "k": key })).unwrap().into(),
            expect,
        }
    }

    fn versions(pairs: &[(&str, u64)]) -> Versions {
        let mut v = Versions::new();
        v.insert(Table::Canvas, pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect());
        v
    }

    #[test]
    fn classification() {
        let f = |transient, unknown, code: Option<i32>| Facts {
            transient_label: transient,
            unknown_commit_label: unknown,
            code,
            ..Facts::default()
        };
        // Inside the transaction.
        assert_eq!(classify(f(true, false, Some(112)), Stage::Apply), Class::Retry);
        assert_eq!(classify(f(false, false, Some(112)), Stage::Apply), Class::Retry);
        assert_eq!(classify(f(true, false, Some(251)), Stage::Apply), Class::Retry);
        assert_eq!(classify(f(false, false, Some(11000)), Stage::Apply), Class::Conflict);
        let network = Facts {
            network: true,
            ..Facts::default()
        };
        let selection = Facts {
            server_selection: true,
            ..Facts::default()
        };
        assert_eq!(classify(network, Stage::Apply), Class::Unavailable);
        assert_eq!(classify(selection, Stage::Apply), Class::Unavailable);
        assert_eq!(classify(f(false, false, Some(2)), Stage::Apply), Class::Fatal);
        // At commitTransaction: write concern timeout 64, ShutdownInProgress
        // 91 and MaxTimeMSExpired 50 come labelled by the driver; all of
        // them, and unlabelled network or selection errors, may have
        // committed.
        for code in [50, 64, 91] {
            assert_eq!(
                classify(f(false, true, Some(code)), Stage::Commit),
                Class::Unknown,
                "{code}"
            );
        }
        assert_eq!(classify(network, Stage::Commit), Class::Unknown);
        assert_eq!(classify(selection, Stage::Commit), Class::Unknown);
        // Aborted by the server: nothing committed, run it all again.
        assert_eq!(classify(f(true, false, Some(251)), Stage::Commit), Class::Retry);
        assert_eq!(classify(f(true, false, Some(112)), Stage::Commit), Class::Retry);
        // The unknown label wins over anything else.
        assert_eq!(classify(f(true, true, Some(91)), Stage::Commit), Class::Unknown);
        assert_eq!(classify(f(false, false, Some(8000)), Stage::Commit), Class::Fatal);
    }

    #[test]
    fn deadline_arithmetic() {
        let t0 = Instant::now();
        let d = Deadline::after(Duration::from_secs(10), t0);
        assert_eq!(d.remaining(t0), Some(Duration::from_secs(10)));
        assert_eq!(d.remaining(t0 + Duration::from_secs(4)), Some(Duration::from_secs(6)));
        assert_eq!(d.remaining(t0 + Duration::from_secs(10)), None);
        assert_eq!(d.remaining(t0 + Duration::from_secs(11)), None);
        // The server's limits are half of what is left: below the client's.
        assert_eq!(d.server_limit(t0), Duration::from_secs(5));
        assert_eq!(d.server_limit(t0 + Duration::from_secs(8)), Duration::from_secs(1));
        assert_eq!(d.server_limit(t0 + Duration::from_secs(12)), Duration::from_millis(1));
        // A backoff that leaves time for the retry is slept; one that does
        // not ends the commit now rather than after the deadline.
        let ms = Duration::from_millis;
        assert_eq!(d.sleep_before_retry(ms(300), t0 + ms(9_000)), Some(ms(300)));
        assert_eq!(d.sleep_before_retry(ms(300), t0 + ms(9_800)), None);
        assert_eq!(d.sleep_before_retry(ms(0), t0 + ms(10_000)), None);
    }

    #[test]
    fn absent_checks_are_refused() {
        let refused = refuse_unprotected(&[put("a", Expect::Absent), Op::check::<Probe>("b", Expect::Absent)]);
        assert!(
            matches!(refused, Err(StorageError::Unsupported { backend: "mongodb", .. })),
            "{refused:?}"
        );
        assert!(refuse_unprotected(&[Op::Delete {
            table: Table::Canvas,
            key: "x".into(),
            expect: Expect::Absent
        }])
        .is_err());
        refuse_unprotected(&[
            put("a", Expect::Absent),
            Op::check::<Probe>("b", Expect::Present),
            Op::delete::<Probe>("c", Expect::Any),
        ])
        .unwrap();
    }

    #[test]
    fn plan_applies_ops_in_order() {
        let current = versions(&[("x", 1), ("c", 4)]);
        // Delete then put of one key: the put sees it absent.
        let (v, touched) = plan(
            &[
                Op::delete::<Probe>("x", Expect::Version(1)),
                put("x", Expect::Absent),
                put("n", Expect::Absent),
                put("n", Expect::Version(1)),
                Op::check::<Probe>("c", Expect::Version(4)),
            ],
            &current,
        )
        .unwrap();
        assert_eq!(v, [0, 1, 1, 2, 0]);
        let x = &touched[&(Table::Canvas, "x".to_string())];
        assert_eq!(x.before, Some(1));
        assert!(matches!(&x.effect, Effect::Write(d) if d.get_i64("v").unwrap() == 1));
        let n = &touched[&(Table::Canvas, "n".to_string())];
        assert!(matches!(&n.effect, Effect::Write(d) if d.get_i64("v").unwrap() == 2));
        assert_eq!(
            touched[&(Table::Canvas, "c".to_string())].effect,
            Effect::Keep { bump: true }
        );
        let w = writes(&touched).unwrap();
        let users = &w[&Table::Canvas];
        // n is new: one insert of its final document; x is replaced and c
        // bumped, both guarded by the version read.
        assert_eq!(users.inserts.len(), 1);
        assert_eq!(users.inserts[0].get_i64("v").unwrap(), 2);
        assert_eq!(users.updates.len(), 2);
        assert_eq!(
            users.updates[0].get_document("q").unwrap(),
            &doc! { "_id": "c", "v": 4_i64 }
        );
        assert_eq!(
            users.updates[0].get_document("u").unwrap(),
            &doc! { "$inc": { "l": 1_i64 } }
        );
        assert_eq!(
            users.updates[1].get_document("q").unwrap(),
            &doc! { "_id": "x", "v": 1_i64 }
        );
        assert!(users.deletes.is_empty());
    }

    #[test]
    fn plan_checks_preconditions_against_earlier_ops() {
        let current = versions(&[("x", 1)]);
        // The all-or-nothing case of the conformance suite.
        let r = plan(
            &[
                put("y", Expect::Absent),
                Op::delete::<Probe>("x", Expect::Version(1)),
                put("x", Expect::Version(1)),
            ],
            &current,
        );
        assert!(matches!(r, Err(StorageError::Conflict { current: None, .. })), "{r:?}");
        // A check of a record the commit writes needs no bump; a checked
        // absent record and a created-then-deleted one write nothing.
        let (_, touched) = plan(
            &[
                Op::check::<Probe>("x", Expect::Present),
                put("x", Expect::Version(1)),
                put("t", Expect::Absent),
                Op::delete::<Probe>("t", Expect::Version(1)),
                Op::check::<Probe>("gone", Expect::Any),
                Op::delete::<Probe>("gone", Expect::Any),
            ],
            &current,
        )
        .unwrap();
        let w = writes(&touched).unwrap();
        let users = &w[&Table::Canvas];
        assert_eq!(
            (users.inserts.len(), users.updates.len(), users.deletes.len()),
            (0, 1, 0)
        );
        assert!(users.updates[0].get_document("u").unwrap().contains_key("d"));
        // Deletes name the version read.
        let (_, touched) = plan(&[Op::delete::<Probe>("x", Expect::Any)], &current).unwrap();
        assert_eq!(
            writes(&touched).unwrap()[&Table::Canvas].deletes,
            [doc! { "q": { "_id": "x", "v": 1_i64 }, "limit": 1 }]
        );
    }

    #[test]
    fn presence_checks_bump_only_when_the_commit_inserts() {
        // The status writer's batch: each collector must exist, its status
        // is written. Statuses that exist: updates only, no collector is
        // written (a deregistration deletes those statuses and conflicts
        // there).
        let mut current = versions(&[("s1", 3), ("s2", 7)]);
        current.insert(Table::Collectors, HashMap::from([("c1".into(), 2), ("c2".into(), 5)]));
        let batch = |keys: &[(&str, &str)]| -> Vec<Op> {
            keys.iter()
                .flat_map(|(c, s)| {
                    [
                        Op::Check {
                            table: Table::Collectors,
                            key: c.to_string(),
                            expect: Expect::Present,
                        },
                        put(s, Expect::Any),
                    ]
                })
                .collect()
        };
        let (_, touched) = plan(&batch(&[("c1", "s1"), ("c2", "s2")]), &current).unwrap();
        let w = writes(&touched).unwrap();
        assert!(!w.contains_key(&Table::Collectors), "{w:?}");
        assert_eq!(w[&Table::Canvas].updates.len(), 2);
        // A first status has no document a deregistration would write: the
        // checked collectors are bumped, guarded by the version read.
        let (_, touched) = plan(&batch(&[("c1", "s1"), ("c2", "new")]), &current).unwrap();
        let w = writes(&touched).unwrap();
        let bumps = &w[&Table::Collectors].updates;
        assert_eq!(bumps.len(), 2);
        assert_eq!(
            bumps[0],
            doc! { "q": { "_id": "c1", "v": 2_i64 }, "u": { "$inc": { "l": 1_i64 } } }
        );
        // A version check is bumped whatever else the commit does.
        let (_, touched) = plan(
            &[
                Op::check::<Probe>("s1", Expect::Version(3)),
                put("s2", Expect::Version(7)),
            ],
            &current,
        )
        .unwrap();
        assert_eq!(writes(&touched).unwrap()[&Table::Canvas].updates.len(), 2);
    }

    #[test]
    fn write_commands_split_at_the_limits() {
        let small: Vec<Document> = (0..1_200).map(|i| doc! { "_id": i }).collect();
        let parts = chunks(&small);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [500, 500, 200]);
        let big = "x".repeat(3 * 1024 * 1024);
        let large: Vec<Document> = (0..5).map(|_| doc! { "d": big.as_str() }).collect();
        let parts = chunks(&large);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 2, 1]);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn write_replies() {
        expect_count(&doc! { "n": 3, "ok": 1.0 }, 3).unwrap();
        assert!(matches!(
            expect_count(&doc! { "n": 2, "ok": 1.0 }, 3),
            Err(TxnError::Raced)
        ));
        let dup = doc! { "n": 0, "writeErrors": [ { "index": 0, "code": 11000, "errmsg": "E11000 duplicate key" } ] };
        assert!(matches!(
            expect_count(&dup, 1),
            Err(TxnError::Write { code: 11000, .. })
        ));
    }
}
