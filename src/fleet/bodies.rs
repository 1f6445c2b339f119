//! Effective-config bodies, stored once per distinct config (keyed by its
//! hash) instead of inside every collector's status. A fleet-wide push makes
//! every collector report the same new effective config: with the bodies in
//! each status, 5,000 collectors and a 32 KiB config grew the embedded file
//! from 17 to 544 MiB and every APPLIED status write carried the whole
//! config. A status now names the hash; the status writer stores the bodies
//! of a hash with the first status naming it (`StatusWriter`), and views
//! read them here.
//!
//! Bodies no status names any more are swept, as the store is shared by
//! every instance and nothing counts references. The race the sweep must not
//! lose: a writer skips storing bodies it stored itself within
//! [`FRESH_FOR`] (a push makes thousands of statuses name one hash), and the
//! sweep deletes only bodies whose `stored_at` is older than
//! [`SWEEP_GRACE`] (well past `FRESH_FOR`, clocks apart by minutes
//! included), with their read version as precondition: a status committed
//! after the sweep looked names bodies stored recently, or rewritten
//! meanwhile, and neither is deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::desired::EffectiveFiles;
use crate::clock::Timestamp;
use crate::domain::{CollectorStatus, EffectiveConfigBodies};
use crate::storage::{Expect, Op, Record, Scan, StorageError, Store, Table};

/// A writer does not store again, for this long, the bodies of a hash it
/// stored itself.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(10 * 60);
/// Bodies stored longer ago than this, and named by no status, are swept.
pub(super) const SWEEP_GRACE: Duration = Duration::from_secs(60 * 60);
/// How often an instance sweeps.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(60 * 60);

/// Hashes whose bodies this instance stored, and when.
#[derive(Default)]
pub(super) struct Recent(Mutex<HashMap<String, Instant>>);

impl Recent {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // Single inserts and lookups: a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_fresh(&self, hash: &str) -> bool {
        self.map().get(hash).is_some_and(|at| at.elapsed() < FRESH_FOR)
    }

    /// Note hashes whose bodies were just committed.
    pub fn stored<'a>(&self, hashes: impl Iterator<Item = &'a String>) {
        let now = Instant::now();
        let mut map = self.map();
        for h in hashes {
            map.insert(h.clone(), now);
        }
        // Bounded by the configs in use over `FRESH_FOR`: forget the rest.
        if map.len() > 1024 {
            map.retain(|_, at| at.elapsed() < FRESH_FOR);
        }
    }
}

/// The put of one config's bodies.
pub(super) fn put(hash: &str, files: &EffectiveFiles, now: Timestamp) -> Result<Op, StorageError> {
    let bodies = EffectiveConfigBodies {
        files: files.clone(),
        stored_at: now,
    };
    Op::put(hash, &bodies, Expect::Any)
}

/// The stored bodies of the config with this hash.
pub(super) async fn read(store: &Store, hash: &str) -> Result<Option<EffectiveFiles>, StorageError> {
    Ok(store.get::<EffectiveConfigBodies>(hash).await?.map(|b| b.value.files))
}

/// The bodies collector `id`'s stored status carries inline for `hash`
/// (a status written before bodies had their own table).
pub(super) async fn inline(store: &Store, id: &str, hash: &str) -> Result<Option<EffectiveFiles>, StorageError> {
    Ok(store
        .get::<CollectorStatus>(id)
        .await?
        .and_then(|s| s.value.effective_config)
        .filter(|e| e.hash == hash && !e.files.is_empty())
        .map(|e| e.files))
}

/// The bodies of a status's effective config: carried by the status itself
/// (one written before bodies had their own table, or not yet stored), else
/// those stored for its hash.
pub(super) async fn fill(store: &Store, status: &mut CollectorStatus) -> Result<(), StorageError> {
    if let Some(e) = status.effective_config.as_mut().filter(|e| e.files.is_empty()) {
        if let Some(files) = read(store, &e.hash).await? {
            e.files = files;
        }
    }
    Ok(())
}

/// Only the effective config's hash of a stored status: the sweep reads
/// every status, and skips decoding the rest.
#[derive(Serialize, Deserialize)]
struct StatusHash {
    #[serde(default)]
    effective_config: Option<HashOnly>,
}
#[derive(Serialize, Deserialize)]
struct HashOnly {
    hash: String,
}
impl Record for StatusHash {
    const TABLE: Table = Table::CollectorStatus;
    const FORMAT: u32 = CollectorStatus::FORMAT;
}

/// Only when stored bodies were stored.
#[derive(Serialize, Deserialize)]
struct StoredAt {
    stored_at: Timestamp,
}
impl Record for StoredAt {
    const TABLE: Table = Table::EffectiveConfigs;
    const FORMAT: u32 = EffectiveConfigBodies::FORMAT;
}

/// Delete the bodies no status names that were stored before
/// `now - SWEEP_GRACE`; returns how many went.
pub(super) async fn sweep(store: &Store, now: Timestamp) -> Result<usize, StorageError> {
    let named: HashSet<String> = store
        .scan::<StatusHash>(Scan::default())
        .await?
        .into_iter()
        .filter_map(|s| s.value.effective_config.map(|e| e.hash))
        .collect();
    let cutoff = now.0.saturating_sub(SWEEP_GRACE.as_millis() as u64);
    let mut swept = 0;
    for b in store.scan::<StoredAt>(Scan::default()).await? {
        if named.contains(&b.key) || b.value.stored_at.0 >= cutoff {
            continue;
        }
        // At the version read: bodies stored again meanwhile stay.
        let gone = Op::delete::<EffectiveConfigBodies>(&b.key, Expect::Version(b.version));
        match store.commit(vec![gone]).await {
            Ok(_) => swept += 1,
            Err(StorageError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(swept)
}

/// Bodies carried by statuses, by hash (the map a chunk of statuses stores).
pub(super) type Carried = BTreeMap<String, EffectiveFiles>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::EffectiveConfigView;

    /// Bodies no status names go once older than the grace; bodies a
    /// status names, or stored lately, stay.
    #[tokio::test]
    async fn the_sweep_removes_only_old_bodies_no_status_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
        let files: EffectiveFiles = Arc::new([("c.yaml".to_string(), "b".to_string())].into());
        let long_ago = Timestamp(1_000);
        let now = long_ago.plus(SWEEP_GRACE * 2);
        let recent = Timestamp(now.0 - 60_000);
        let status = |id: &str, hash: &str| CollectorStatus {
            collector_id: id.into(),
            effective_config: Some(EffectiveConfigView {
                hash: hash.into(),
                files: Arc::default(),
            }),
            ..Default::default()
        };
        store
            .commit(vec![
                put("named", &files, long_ago).unwrap(),
                put("orphan", &files, long_ago).unwrap(),
                put("fresh", &files, recent).unwrap(),
                Op::put("c1", &status("c1", "named"), Expect::Any).unwrap(),
            ])
            .await
            .unwrap();
        assert_eq!(sweep(&store, now).await.unwrap(), 1);
        assert!(read(&store, "orphan").await.unwrap().is_none());
        assert!(read(&store, "named").await.unwrap().is_some());
        assert!(read(&store, "fresh").await.unwrap().is_some());
        // Nothing left to sweep.
        assert_eq!(sweep(&store, now).await.unwrap(), 0);
    }
}
