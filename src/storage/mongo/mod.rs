//! The MongoDB backend: one collection per `Table`, one document per record,
//! `{ _id: key, f: format, v: version, d: data }` (`d` is the record's JSON
//! as BSON). Needs a replica set (transactions and change streams), MongoDB
//! 5.0 or newer (field names with dots, e.g. label keys, inside `d`).
//!
//! - `commit` (`commit.rs`) is one multi-document transaction per commit,
//!   bounded by `database.operation_timeout`, with an explicit "outcome
//!   unknown" answer when a commit was sent but never confirmed.
//! - Reads use read concern majority, in a causally consistent session
//!   advanced to the last operation this instance committed or saw on the
//!   change stream: an instance reads its own writes, and what a change
//!   event announced, even from a lagging member.
//! - The change feed (`feed.rs`) follows a change stream on the database;
//!   `Store::commit` does not publish for this backend.
//!
//! Collections are created at start-up, never inside a transaction; `_id`
//! is the only index this key model needs. Collections that exist already
//! are checked: a collation or a capped collection would change what the
//! store means (key order and equality; silent deletion).

mod commit;
mod feed;

use std::future::IntoFuture;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Decimal128, Document, RawBsonRef, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, ReadConcern, Tls, TlsOptions, WriteConcern};
use mongodb::results::CollectionType;
use mongodb::{Client, ClientSession, Collection, Database};
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::{FeedEvent, FeedHealth, RawDoc, Scan, StorageError, Table};
use crate::config::DatabaseConfig;

/// Oldest server accepted: MongoDB 5.0 (wire version 13).
const MIN_WIRE_VERSION: i32 = 13;
/// Ops per commit for callers that batch independent writes (the status
/// writer: a check and a put per collector). Each commit is a handful of
/// round trips whatever its size, but a conflict on one record redoes the
/// whole batch.
pub(super) const BATCH_HINT: usize = 256;

const NAMESPACE_EXISTS: i32 = 48;

pub(super) struct MongoBackend {
    client: Client,
    db: Database,
    op_timeout: Duration,
    seen: Arc<OpTime>,
    progress: Arc<feed::Progress>,
    /// When the follower started (a feed that never progressed is stale
    /// from then on).
    opened: Instant,
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

fn backend_err(what: &str, e: &MongoError) -> StorageError {
    StorageError::Backend(format!("MongoDB {what}: {}", describe(e)))
}

/// `Unavailable` for "no server could be used" (nothing was done), else a
/// backend error.
fn unavailable_or_backend(what: &str, e: &MongoError) -> StorageError {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            StorageError::Unavailable(format!("MongoDB {what}: {}", describe(e)))
        }
        _ => backend_err(what, e),
    }
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

/// The server's error code, wherever the driver put it.
fn code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code)
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// Backoff before retry `attempt` (1-based), as the driver's convenient
/// transactions do: 5 ms growing by 1.5x, at most 500 ms, with full jitter
/// so that conflicting writers spread out.
fn txn_backoff(attempt: u32) -> Duration {
    let exp = 5.0 * 1.5f64.powi(attempt.min(20) as i32);
    let jitter: f64 = rand::random_range(0.0..1.0);
    Duration::from_secs_f64(jitter * exp.min(500.0) / 1000.0)
}

fn majority(timeout: Duration) -> WriteConcern {
    let mut wc = WriteConcern::majority();
    wc.w_timeout = Some(timeout);
    wc
}

/// Server selection gets at most a third of the operation timeout (and no
/// more than the connect timeout): a commit that meets "no primary" during
/// an election has time to select again, and to commit, before its
/// deadline. Never below 100 ms.
fn server_selection_timeout(config: &DatabaseConfig) -> Duration {
    (config.operation_timeout / 3)
        .min(config.connect_timeout)
        .max(Duration::from_millis(100))
}

/// Connection-string options that LinkMesh sets itself: an operator who
/// wrote one of them expects it to apply, so `check-config` and start-up
/// refuse them (naming the option and what to use instead) rather than
/// replacing them silently. Values LinkMesh would set anyway are accepted.
/// Pure string work: no DNS, so `check-config` can run it anywhere.
pub(super) fn uri_problems(uri: &str) -> Vec<String> {
    let Some((_, query)) = uri.split_once('?') else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let lower = key.to_ascii_lowercase();
        let value = value.to_ascii_lowercase();
        let why = match lower.as_str() {
            "w" if value != "majority" => "LinkMesh writes with w: majority (commits must survive a failover)",
            "journal" if value != "true" => "LinkMesh needs journaled majority writes",
            "readconcernlevel" if value != "majority" => {
                "LinkMesh reads with read concern majority (and snapshot in transactions)"
            }
            "retrywrites" | "retryreads" if value != "true" => "LinkMesh relies on retryable reads and writes",
            "wtimeoutms" | "timeoutms" => {
                "LinkMesh derives its server-side timeouts from database.operation_timeout; set that instead"
            }
            "connecttimeoutms" => "set database.connect_timeout instead",
            "serverselectiontimeoutms" => {
                "LinkMesh derives server selection from database.operation_timeout and database.connect_timeout"
            }
            _ => continue,
        };
        problems.push(format!(
            "the connection string option {key}={value} is not supported: {why}"
        ));
    }
    problems
}

/// Check a `tls_ca_file` as the driver will read it: the driver skips PEM
/// blocks and certificates it cannot parse without a word, and a bundle
/// left with no usable certificate fails every handshake later with an
/// error that does not name the file. Returns how many certificates it has.
pub(super) fn ca_file_problem(path: &std::path::Path) -> Result<usize, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in rustls_pemfile::certs(&mut pem.as_slice()).enumerate() {
        let cert = cert.map_err(|e| format!("{}: PEM block {} is unreadable: {e}", path.display(), i + 1))?;
        roots.add(cert).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    match roots.len() {
        0 => Err(format!("{} holds no PEM certificate", path.display())),
        n => Ok(n),
    }
}

/// Why an existing collection cannot hold a table, if it cannot.
fn collection_problem(spec: &mongodb::results::CollectionSpecification) -> Option<String> {
    let name = &spec.name;
    match spec.collection_type {
        CollectionType::Collection => {}
        CollectionType::View => return Some(format!("{name} is a view, not a collection")),
        _ => return Some(format!("{name} is not a plain collection ({:?})", spec.collection_type)),
    }
    if spec.options.capped == Some(true) {
        return Some(format!(
            "{name} is a capped collection (the server would delete records by itself); drop or rename it"
        ));
    }
    if let Some(c) = &spec.options.collation {
        if c.locale != "simple" {
            return Some(format!(
                "{name} has the collation {:?} (keys must compare as plain bytes for lookups and scans); \
                 drop or rename it",
                c.locale
            ));
        }
    }
    None
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
        if let Some(problem) = uri_problems(uri).into_iter().next() {
            return Err(unavailable(problem));
        }

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
        options.server_selection_timeout = Some(server_selection_timeout(config));
        options.retry_writes = Some(true);
        options.retry_reads = Some(true);
        options.read_concern = Some(ReadConcern::majority());
        // Writes outside transactions (none today) get the same bound as a
        // commit; transactions set their own, from their deadline.
        options.write_concern = Some(majority(config.operation_timeout / 2));
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
        if hello.get_str("msg") == Ok("isdbgrid") {
            return Err(unavailable(format!(
                "{hosts} is a mongos (sharded cluster router); mongos is not supported: connect to the \
                 replica set's members directly (mongodb://host1,host2,host3/?replicaSet=NAME)"
            )));
        }
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
        let listing = async { db.list_collections().await?.try_collect::<Vec<_>>().await };
        let existing = tokio::time::timeout(op_timeout, listing)
            .await
            .map_err(|_| unavailable(format!("listing the collections of {} timed out", config.name)))?
            .map_err(|e| {
                unavailable(format!(
                    "cannot list the collections of {}: {}",
                    config.name,
                    describe(&e)
                ))
            })?;
        for spec in &existing {
            if Table::ALL.iter().any(|t| t.name() == spec.name) {
                if let Some(problem) = collection_problem(spec) {
                    return Err(unavailable(format!("database {}: {problem}", config.name)));
                }
            }
        }
        let existing: Vec<&str> = existing.iter().map(|c| c.name.as_str()).collect();
        for table in Table::ALL {
            if existing.contains(&table.name()) {
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
        let stream = tokio::time::timeout(op_timeout, feed::open_stream(&db, None))
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
        let progress = Arc::new(feed::Progress::default());
        let follower = feed::Follower {
            db: db.clone(),
            changes,
            seen: seen.clone(),
            progress: progress.clone(),
            op_timeout,
        };
        let follower = tokio::spawn(follower.run(stream)).abort_handle();
        tracing::info!(hosts = %hosts, set_name = hello.get_str("setName").unwrap_or(""), database = %config.name, "Connected to the MongoDB replica set.");
        Ok(MongoBackend {
            client,
            db,
            op_timeout,
            seen,
            progress,
            opened: Instant::now(),
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
        let Some(filter) = scan_filter(&scan) else {
            return Ok(Vec::new());
        };
        let mut find = coll
            .find(filter)
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

    pub(super) fn feed_health(&self) -> FeedHealth {
        self.progress.health(self.opened, Instant::now())
    }
}

fn to_i64(n: u64) -> Result<i64, StorageError> {
    i64::try_from(n).map_err(|_| StorageError::Encode(format!("{n} does not fit a MongoDB 64-bit integer")))
}

/// The stored document of a record.
fn doc_for(key: &str, format: u32, version: u64, data: &RawValue) -> Result<Document, StorageError> {
    let data: serde_json::Value = serde_json::from_str(data.get()).map_err(|e| StorageError::Encode(e.to_string()))?;
    Ok(doc! {
        "_id": key,
        "f": i64::from(format),
        "v": to_i64(version)?,
        "d": json_to_bson(&data),
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
        RawBsonRef::Double(f) => integral(f),
        _ => None,
    }
}

fn int_field(d: &Document, field: &str) -> Option<u64> {
    match d.get(field)? {
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Double(f) => integral(*f),
        _ => None,
    }
}

/// A double that is a whole number (the mongo shell writes `v: 3` as a
/// double): the number, when exactly representable (up to 2^53).
fn integral(f: f64) -> Option<u64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    (f.fract() == 0.0 && (0.0..=EXACT).contains(&f)).then_some(f as u64)
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
    let data = serde_json::value::to_raw_value(&data).map_err(|e| decode_err(e.to_string()))?;
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

/// The `_id` filter of a scan: the range of `Scan::bounds` (None: the
/// range is empty, nothing to ask the server). MongoDB compares strings by
/// UTF-8 bytes, in code point order, like Rust and redb.
pub(super) fn scan_filter(scan: &Scan) -> Option<Document> {
    let (lower, upper) = scan.bounds()?;
    let mut range = Document::new();
    match lower {
        Bound::Included(l) => range.insert("$gte", l),
        Bound::Excluded(l) => range.insert("$gt", l),
        Bound::Unbounded => None,
    };
    match upper {
        Bound::Excluded(u) => range.insert("$lt", u),
        Bound::Included(u) => range.insert("$lte", u),
        Bound::Unbounded => None,
    };
    Some(doc! { "_id": range })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn roundtrip(v: serde_json::Value) -> serde_json::Value {
        // Serialized as the driver sends it, read back as the backend reads
        // what the server returns.
        let doc = doc_for("k", 3, 7, &serde_json::value::to_raw_value(&v).unwrap()).unwrap();
        let bytes = mongodb::bson::to_raw_document_buf(&doc).unwrap();
        let raw = raw_from_doc(Table::Users, "k", &bytes).unwrap();
        assert_eq!((raw.format, raw.version), (3, 7));
        serde_json::from_str(raw.data.get()).unwrap()
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
        let doc = doc_for(
            "users/ana",
            1,
            5,
            &serde_json::value::to_raw_value(&json!({"n": 1})).unwrap(),
        )
        .unwrap();
        let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
        assert_eq!(keys, ["_id", "f", "v", "d"]);
        assert_eq!(doc.get_str("_id").unwrap(), "users/ana");
        assert_eq!(doc.get_i64("v").unwrap(), 5);
        assert!(doc_for(
            "k",
            1,
            u64::MAX,
            &serde_json::value::to_raw_value(&json!(null)).unwrap()
        )
        .is_err());
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
        // The prefix's true successor bounds it, not prefix + U+10FFFF.
        assert_eq!(
            scan_filter(&scan("a/", None, false)),
            Some(doc! { "_id": { "$gte": "a/", "$lt": "a0" } })
        );
        assert_eq!(
            scan_filter(&scan("a/", None, true)),
            Some(doc! { "_id": { "$gte": "a/", "$lt": "a0" } })
        );
        assert_eq!(
            scan_filter(&scan("a/", Some("a/2"), false)),
            Some(doc! { "_id": { "$gt": "a/2", "$lt": "a0" } })
        );
        assert_eq!(
            scan_filter(&scan("a/", Some("a/2"), true)),
            Some(doc! { "_id": { "$gte": "a/", "$lt": "a/2" } })
        );
        // A cursor outside the prefix's range clamps: above it, descending,
        // is the whole range; below it, ascending, too; the other way
        // round nothing is left.
        assert_eq!(
            scan_filter(&scan("a/", Some("b"), true)),
            Some(doc! { "_id": { "$gte": "a/", "$lt": "a0" } })
        );
        assert_eq!(
            scan_filter(&scan("a/", Some("0"), false)),
            Some(doc! { "_id": { "$gte": "a/", "$lt": "a0" } })
        );
        assert_eq!(scan_filter(&scan("a/", Some("b"), false)), None);
        assert_eq!(scan_filter(&scan("a/", Some("0"), true)), None);
        assert_eq!(
            scan_filter(&scan("", None, false)),
            Some(doc! { "_id": { "$gte": "" } })
        );
        assert_eq!(
            scan_filter(&scan("\u{10FFFF}", None, false)),
            Some(doc! { "_id": { "$gte": "\u{10FFFF}" } })
        );
    }

    #[test]
    fn uri_options_linkmesh_sets_are_refused() {
        assert!(uri_problems("mongodb://db1,db2/?replicaSet=rs0&w=majority&retryWrites=true").is_empty());
        assert!(uri_problems("mongodb://db1/").is_empty());
        let p = uri_problems("mongodb://db1/?w=1&readConcernLevel=local&connectTimeoutMS=50&wtimeoutMS=9");
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("w=1"), "{p:?}");
        assert!(p[1].contains("readConcernLevel=local"), "{p:?}");
        assert!(p[2].contains("database.connect_timeout"), "{p:?}");
        assert!(p[3].contains("database.operation_timeout"), "{p:?}");
        assert_eq!(
            uri_problems("mongodb://db1/?serverSelectionTimeoutMS=1&retryWrites=false").len(),
            2
        );
    }

    #[test]
    fn server_selection_leaves_time_to_commit() {
        let mut c = DatabaseConfig {
            uri: None,
            uri_file: None,
            name: "x".into(),
            tls_ca_file: None,
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
        };
        assert_eq!(server_selection_timeout(&c), Duration::from_secs(10));
        c.operation_timeout = Duration::from_secs(9);
        assert_eq!(server_selection_timeout(&c), Duration::from_secs(3));
        c.operation_timeout = Duration::from_millis(30);
        assert_eq!(server_selection_timeout(&c), Duration::from_millis(100));
    }

    #[test]
    fn ca_files_are_checked_as_the_driver_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let empty = ca_file_problem(&file("empty.pem", "")).unwrap_err();
        assert!(empty.contains("holds no PEM certificate"), "{empty}");
        let junk = ca_file_problem(&file(
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        ))
        .unwrap_err();
        assert!(junk.contains("certificate 1 is not a usable CA certificate"), "{junk}");
        let missing = ca_file_problem(&dir.path().join("missing.pem")).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn whole_doubles_are_versions() {
        let d = doc! { "v": 3.0, "f": 1.0, "x": 2.5, "n": -1.0, "big": 1e300 };
        assert_eq!(int_field(&d, "v"), Some(3));
        assert_eq!(int_field(&d, "x"), None);
        assert_eq!(int_field(&d, "n"), None);
        assert_eq!(int_field(&d, "big"), None);
        let raw = mongodb::bson::to_raw_document_buf(&doc! { "_id": "k", "f": 1.0, "v": 7.0, "d": {} }).unwrap();
        let got = raw_from_doc(Table::Users, "k", &raw).unwrap();
        assert_eq!((got.format, got.version), (1, 7));
    }

    #[test]
    fn unusable_collections_are_named() {
        let spec = |options: Document| {
            mongodb::bson::from_document::<mongodb::results::CollectionSpecification>(doc! {
                "name": "users", "type": "collection", "options": options,
                "info": { "readOnly": false }, "idIndex": { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
            })
            .unwrap()
        };
        assert_eq!(collection_problem(&spec(doc! {})), None);
        assert_eq!(
            collection_problem(&spec(doc! { "collation": { "locale": "simple" } })),
            None
        );
        let capped = collection_problem(&spec(doc! { "capped": true, "size": 4096 })).unwrap();
        assert!(capped.contains("users is a capped collection"), "{capped}");
        let coll = collection_problem(&spec(doc! { "collation": { "locale": "en", "strength": 2 } })).unwrap();
        assert!(coll.contains("users has the collation \"en\""), "{coll}");
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
    }
}
