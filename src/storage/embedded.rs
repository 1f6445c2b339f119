//! The embedded backend: one redb file. redb gives serialisable write
//! transactions (one writer at a time) with durable commits, and MVCC reads
//! that never block the writer; its file lock refuses a second process.
//!
//! Every call runs on the blocking pool: a commit waits for fsync, and a
//! write transaction may wait for another writer, neither of which may stall
//! the async runtime.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio_util::task::TaskTracker;

use super::{check, Op, RawDoc, RawDocOut, Scan, StorageError, StoredVersion, Table};

pub(super) struct EmbeddedBackend {
    db: Arc<Database>,
    /// Blocking calls still running (see `blocking`).
    in_flight: TaskTracker,
}

fn def(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

fn backend_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl EmbeddedBackend {
    pub(super) fn open(path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Locked {
                    path: path.display().to_string(),
                },
                other => StorageError::Backend(format!("cannot open {}: {other}", path.display())),
            })?;
        // Create every table up front so readers never meet a missing one.
        let txn = db.begin_write().map_err(backend_err)?;
        for t in Table::ALL {
            txn.open_table(def(t)).map_err(backend_err)?;
        }
        txn.commit().map_err(backend_err)?;
        Ok(EmbeddedBackend {
            db: Arc::new(db),
            in_flight: TaskTracker::new(),
        })
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StorageError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let db = self.db.clone();
        // A blocking call runs to its end even when its caller was dropped
        // (a task cancelled at shutdown), holding the database: the token
        // lets `idle` wait for it, so the file lock is really released.
        let token = self.in_flight.token();
        tokio::task::spawn_blocking(move || {
            let r = f(&db);
            drop(db);
            drop(token);
            r
        })
        .await
        .map_err(backend_err)?
    }

    /// Wait until no call started before is still running.
    pub(super) async fn idle(&self) {
        self.in_flight.close();
        self.in_flight.wait().await;
        self.in_flight.reopen();
    }

    pub(super) async fn get(&self, table: Table, key: &str) -> Result<Option<RawDoc>, StorageError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend_err)?;
            let t = txn.open_table(def(table)).map_err(backend_err)?;
            let got = t.get(key.as_str()).map_err(backend_err)?;
            got.map(|v| decode_raw(table, &key, v.value())).transpose()
        })
        .await
    }

    pub(super) async fn scan(&self, table: Table, scan: Scan) -> Result<Vec<(String, RawDoc)>, StorageError> {
        self.blocking(move |db| {
            let Some((lower, upper)) = scan.bounds() else {
                return Ok(Vec::new());
            };
            let txn = db.begin_read().map_err(backend_err)?;
            let t = txn.open_table(def(table)).map_err(backend_err)?;
            let limit = if scan.limit == 0 { usize::MAX } else { scan.limit };
            let range = (as_str(&lower), as_str(&upper));
            let rows = t.range::<&str>(range).map_err(backend_err)?;
            let rows: Box<dyn Iterator<Item = _>> = if scan.reverse {
                Box::new(rows.rev())
            } else {
                Box::new(rows)
            };
            let mut out = Vec::new();
            for item in rows.take(limit) {
                let (k, v) = item.map_err(backend_err)?;
                out.push((k.value().to_string(), decode_raw(table, k.value(), v.value())?));
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn commit(&self, ops: Vec<Op>, fail_after: Option<usize>) -> Result<Vec<u64>, StorageError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend_err)?;
            let mut versions = Vec::with_capacity(ops.len());
            for (i, op) in ops.into_iter().enumerate() {
                if fail_after == Some(i) {
                    // Dropping `txn` without commit aborts it: nothing of the
                    // ops applied so far reaches the file.
                    return Err(StorageError::Injected);
                }
                let (table, key, expect) = op.target();
                let mut t = txn.open_table(def(table)).map_err(backend_err)?;
                let current = t
                    .get(key)
                    .map_err(backend_err)?
                    .map(|v| decode_version(table, key, v.value()))
                    .transpose()?;
                check(table, key, expect, current)?;
                match op {
                    Op::Put { key, format, data, .. } => {
                        let version = current.unwrap_or(0) + 1;
                        let doc = RawDocOut {
                            format,
                            version,
                            data: &data,
                        };
                        let bytes = serde_json::to_vec(&doc).map_err(|e| StorageError::Encode(e.to_string()))?;
                        t.insert(key.as_str(), bytes.as_slice()).map_err(backend_err)?;
                        versions.push(version);
                    }
                    Op::Delete { key, .. } => {
                        t.remove(key.as_str()).map_err(backend_err)?;
                        versions.push(0);
                    }
                    Op::Check { .. } => versions.push(0),
                }
            }
            txn.commit().map_err(backend_err)?;
            Ok(versions)
        })
        .await
    }

    pub(super) async fn ping(&self) -> Result<(), StorageError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(backend_err)?;
            txn.open_table(def(Table::Users)).map_err(backend_err)?;
            Ok(())
        })
        .await
    }
}

fn as_str(b: &Bound<String>) -> Bound<&str> {
    match b {
        Bound::Included(s) => Bound::Included(s.as_str()),
        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn decode_raw(table: Table, key: &str, bytes: &[u8]) -> Result<RawDoc, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| decode_error(table, key, e))
}

/// The stored version alone (the record is skipped, not decoded).
fn decode_version(table: Table, key: &str, bytes: &[u8]) -> Result<u64, StorageError> {
    serde_json::from_slice::<StoredVersion>(bytes)
        .map(|d| d.version)
        .map_err(|e| decode_error(table, key, e))
}

fn decode_error(table: Table, key: &str, e: serde_json::Error) -> StorageError {
    StorageError::Decode {
        table,
        key: key.to_string(),
        message: e.to_string(),
    }
}
