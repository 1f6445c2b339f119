//! The fleet index: every stored collector with a digest of its status, in
//! memory and in id order, so the fleet list and summary read no table of
//! the fleet's size (they were a scan of every collector and every status,
//! effective configs included, per request).
//!
//! Kept current from three sides: the status writer hands over every status
//! a session of this instance produces (so it is as fresh as the sessions);
//! the change feed reports collectors created, edited and removed, and
//! statuses written elsewhere (another instance, or a session closed here),
//! re-read once each; a lagging feed rebuilds it from a full scan.
//!
//! Beside the rows it keeps the counts the fleet summary is made of
//! (`Counts`), adjusted under the same lock whenever a row changes, so a
//! summary costs the same at 100 and 100,000 collectors: it reads a few
//! counters per label set and per instance, never the rows.
//!
//! It must not decide a collector's desired config (`resolve`) or whether
//! the instance holding it is alive (`views` combines those when reading).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::desired::Desired;
use crate::clock::Timestamp;
use crate::domain::{AvailableComponentsView, Collector, CollectorStatus, Labels};
use crate::storage::Versioned;

/// What the fleet views need of a collector record.
#[derive(Debug, Clone)]
pub(super) struct CollectorDigest {
    pub name: String,
    /// Shared by every collector with the same labels (the summary resolves
    /// each distinct set once).
    pub labels: Arc<Labels>,
    pub version: u64,
    pub enrolled_at: Timestamp,
}

/// What the fleet views need of a status (no description, no effective
/// config bodies).
#[derive(Debug, Clone, Default)]
pub(super) struct StatusDigest {
    pub connected: bool,
    pub instance: String,
    pub transport: String,
    pub last_seen: Option<Timestamp>,
    /// `None`: never reported.
    pub healthy: Option<bool>,
    /// The reported remote config status: (hash hex, status, error message).
    pub remote: Option<(String, String, String)>,
    /// The component types it can run (`compat` judges a desired config
    /// against them); shared by every collector that reported the same set.
    pub available: Option<Arc<AvailableComponentsView>>,
}

impl StatusDigest {
    /// A digest sharing nothing (one collector's detail).
    pub fn of(s: &CollectorStatus) -> Self {
        StatusDigest::with(s, s.available_components.clone().map(Arc::new))
    }

    fn with(s: &CollectorStatus, available: Option<Arc<AvailableComponentsView>>) -> Self {
        StatusDigest {
            connected: s.connected,
            instance: s.instance.clone(),
            transport: s.transport.clone(),
            last_seen: s.last_seen,
            healthy: s.health.as_ref().map(|h| h.healthy),
            remote: s
                .remote_config
                .as_ref()
                .map(|r| (r.hash.clone(), r.status.clone(), r.error_message.clone())),
            available,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Row {
    /// `None` until the collector record is known: a status can arrive
    /// before the feed reports its collector. Such rows are not shown.
    pub collector: Option<CollectorDigest>,
    pub status: Option<StatusDigest>,
}

/// Which of the three health states a status is in (the slot in
/// `Counts::health`): healthy, unhealthy, never reported.
pub(super) fn health_slot(s: Option<&StatusDigest>) -> usize {
    match s.and_then(|s| s.healthy) {
        Some(true) => 0,
        Some(false) => 1,
        None => 2,
    }
}

/// An interned value compared by identity: the index shares one `Arc` per
/// distinct component set, so comparing addresses is exact and free. The
/// key holds the `Arc`, so an address is never reused while counted.
#[derive(Debug, Clone)]
pub(super) struct Shared<T>(pub Arc<T>);

impl<T> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for Shared<T> {}

impl<T> Hash for Shared<T> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        Arc::as_ptr(&self.0).hash(h);
    }
}

/// What a status says that decides its config state once the desired
/// config is known: the reported hash and status, and the component types
/// it can run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Reported {
    /// (hash hex, status) as reported.
    pub remote: Option<(String, String)>,
    pub available: Option<Shared<AvailableComponentsView>>,
}

impl Reported {
    pub fn of(s: Option<&StatusDigest>) -> Self {
        Reported {
            remote: s
                .and_then(|s| s.remote.as_ref())
                .map(|(hash, status, _)| (hash.clone(), status.clone())),
            available: s.and_then(|s| s.available.clone()).map(Shared),
        }
    }
}

/// The fleet summary's inputs, counted over the rows that have a
/// collector (a status alone is not shown). What depends on things outside
/// the index is left to the reader, in groups small enough to judge per
/// request: whether a holding instance is alive (per instance) and the
/// desired config (per label set).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Counts {
    pub total: u64,
    /// By `health_slot`.
    pub health: [u64; 3],
    /// Rows whose status says connected, by the instance holding them.
    pub claimed: HashMap<String, u64>,
    /// By label set, then by what was reported about config.
    pub reports: HashMap<Arc<Labels>, HashMap<Reported, u64>>,
}

/// Add one to a count or take one away, dropping a count that reaches 0
/// (keys of a map must not outlive the rows they count).
fn adjust<K: Hash + Eq>(map: &mut HashMap<K, u64>, key: K, add: bool) {
    if add {
        *map.entry(key).or_default() += 1;
    } else if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl Counts {
    /// Counted from scratch (a rebuild, and the tests' reference).
    pub fn of(rows: &BTreeMap<String, Row>) -> Self {
        let mut c = Counts::default();
        for row in rows.values() {
            c.apply(row, true);
        }
        c
    }

    /// Count a row in (`add`) or out; a row without a collector counts
    /// nowhere.
    fn apply(&mut self, row: &Row, add: bool) {
        let Some(c) = &row.collector else { return };
        let s = row.status.as_ref();
        let step = |n: &mut u64| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        step(&mut self.total);
        step(&mut self.health[health_slot(s)]);
        if let Some(s) = s.filter(|s| s.connected) {
            adjust(&mut self.claimed, s.instance.clone(), add);
        }
        let by_report = self.reports.entry(c.labels.clone()).or_default();
        adjust(by_report, Reported::of(s), add);
        if by_report.is_empty() {
            self.reports.remove(&c.labels);
        }
    }
}

/// The rows and the counts kept from them, under one lock so a reader
/// never sees them disagree.
#[derive(Default)]
pub(super) struct Indexed {
    pub rows: BTreeMap<String, Row>,
    pub counts: Counts,
    /// The ids of the collectors carrying each label (key, value), in id
    /// order: a label-filtered page walks the smallest of its labels' sets
    /// from its cursor, not the whole fleet.
    pub by_label: HashMap<(String, String), BTreeSet<String>>,
}

impl Indexed {
    fn of(rows: BTreeMap<String, Row>) -> Self {
        let mut ix = Indexed {
            counts: Counts::of(&rows),
            rows: BTreeMap::new(),
            by_label: HashMap::new(),
        };
        for (id, row) in &rows {
            ix.post(id, row.collector.as_ref().map(|c| &*c.labels), true);
        }
        ix.rows = rows;
        ix
    }

    /// Change one row (created empty if absent), keeping the counts and
    /// the label sets.
    fn change(&mut self, id: &str, f: impl FnOnce(&mut Row)) {
        let row = match self.rows.get_mut(id) {
            Some(row) => row,
            None => self.rows.entry(id.to_string()).or_default(),
        };
        self.counts.apply(row, false);
        let before = row.collector.as_ref().map(|c| c.labels.clone());
        f(row);
        self.counts.apply(row, true);
        let after = row.collector.as_ref().map(|c| c.labels.clone());
        if before != after {
            self.post(id, before.as_deref(), false);
            self.post(id, after.as_deref(), true);
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(row) = self.rows.remove(id) {
            self.counts.apply(&row, false);
            self.post(id, row.collector.as_ref().map(|c| &*c.labels), false);
        }
    }

    /// Enter an id in (or take it out of) the sets of its labels.
    fn post(&mut self, id: &str, labels: Option<&Labels>, add: bool) {
        for (k, v) in labels.into_iter().flatten() {
            let key = (k.clone(), v.clone());
            if add {
                self.by_label.entry(key).or_default().insert(id.to_string());
            } else if let Some(ids) = self.by_label.get_mut(&key) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
    }

    /// The ids of the collectors carrying every label of `wanted` is a
    /// subset of this: the smallest set among its labels' (`None`: no
    /// label asked, every row).
    pub fn narrowest(&self, wanted: &Labels) -> Option<&BTreeSet<String>> {
        static EMPTY: BTreeSet<String> = BTreeSet::new();
        wanted
            .iter()
            .map(|(k, v)| self.by_label.get(&(k.clone(), v.clone())).unwrap_or(&EMPTY))
            .min_by_key(|ids| ids.len())
    }
}

/// The small tables every view reads besides the rows: pinned configs,
/// the fleet default, and when each instance last heartbeat (whether it is
/// alive is judged at the time of the view). Read from the store once and
/// kept until the index follower applies a change to one of them.
#[derive(Debug, Default)]
pub(super) struct Tables {
    pub pinned: HashMap<String, Arc<Desired>>,
    pub default: Option<Arc<Desired>>,
    pub heartbeats: HashMap<String, Timestamp>,
}

#[derive(Default)]
pub(super) struct FleetIndex {
    // std RwLock: readers hold it for one in-memory pass (list, summary),
    // writers for one row; never across an await.
    rows: RwLock<Indexed>,
    // std Mutex: one lookup or insert.
    label_sets: Mutex<HashMap<Labels, Arc<Labels>>>,
    /// Reported component sets by their hash (std Mutex: one lookup or
    /// insert). A fleet runs few distinct collector builds.
    component_sets: Mutex<HashMap<String, Arc<AvailableComponentsView>>>,
    /// Built from the store at least once (a failed start-up build is
    /// retried by the first reader).
    ready: AtomicBool,
    /// `Tables` as last read, with the generation it was read in (std
    /// Mutex: an `Arc` in or out). A read that began before a change must
    /// not be kept: `tables_generation` tells them apart.
    tables: Mutex<Option<(u64, Arc<Tables>)>>,
    tables_generation: AtomicU64,
}

impl FleetIndex {
    pub fn read(&self) -> RwLockReadGuard<'_, Indexed> {
        // Every section leaves the map consistent (one row changed).
        self.rows.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Indexed> {
        self.rows.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A change could not be applied: the next reader rebuilds from the
    /// store rather than show a stale row forever.
    pub fn invalidate(&self) {
        self.ready.store(false, Ordering::Release);
        self.tables_changed();
    }

    /// The kept `Tables`, or the generation a read of them must start from.
    pub fn tables(&self) -> Result<Arc<Tables>, u64> {
        let generation = self.tables_generation.load(Ordering::Acquire);
        match &*self.tables.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((g, t)) if *g == generation => Ok(t.clone()),
            _ => Err(generation),
        }
    }

    /// Keep `Tables` read from the store unless one of them changed since
    /// the read began.
    pub fn keep_tables(&self, generation: u64, tables: Arc<Tables>) {
        let mut kept = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if self.tables_generation.load(Ordering::Acquire) == generation {
            *kept = Some((generation, tables));
        }
    }

    /// A pinned config, the default or a presence row changed (or may have).
    pub fn tables_changed(&self) {
        self.tables_generation.fetch_add(1, Ordering::AcqRel);
    }

    fn digest(&self, c: &Versioned<Collector>) -> CollectorDigest {
        let labels = {
            let mut sets = self.label_sets.lock().unwrap_or_else(|p| p.into_inner());
            sets.entry(c.value.labels.clone())
                .or_insert_with(|| Arc::new(c.value.labels.clone()))
                .clone()
        };
        CollectorDigest {
            name: c.value.name.clone(),
            labels,
            version: c.version,
            enrolled_at: c.value.enrolled_at,
        }
    }

    fn status_digest(&self, s: &CollectorStatus) -> StatusDigest {
        let available = s.available_components.as_ref().map(|a| {
            let mut sets = self.component_sets.lock().unwrap_or_else(|p| p.into_inner());
            match sets.get(&a.hash) {
                // The agent's hash names the set; a mismatch (an agent
                // hashing differently) keeps its own copy.
                Some(hit) if hit.components == a.components => hit.clone(),
                Some(_) => Arc::new(a.clone()),
                None => sets
                    .entry(a.hash.clone())
                    .or_insert_with(|| Arc::new(a.clone()))
                    .clone(),
            }
        });
        StatusDigest::with(s, available)
    }

    pub fn put_collector(&self, c: &Versioned<Collector>) {
        let d = self.digest(c);
        self.write().change(&c.key, |row| row.collector = Some(d));
    }

    pub fn remove(&self, id: &str) {
        self.write().remove(id);
    }

    /// A status as this instance's sessions hand it to the writer, or as
    /// re-read from the store (`None`: there is none).
    pub fn put_status(&self, id: &str, s: Option<&CollectorStatus>) {
        let d = s.map(|s| self.status_digest(s));
        let mut ix = self.write();
        match d {
            Some(d) => ix.change(id, |row| row.status = Some(d)),
            None if ix.rows.contains_key(id) => ix.change(id, |row| row.status = None),
            None => {}
        }
    }

    /// A message that changed nothing but the time it was seen (no status
    /// is written for it): the list shows and sorts by that time. No count
    /// depends on it.
    pub fn seen(&self, id: &str, at: Timestamp) {
        if let Some(s) = self.write().rows.get_mut(id).and_then(|r| r.status.as_mut()) {
            s.last_seen = Some(at);
        }
    }

    /// Replace everything with what the store holds.
    pub fn rebuild(&self, collectors: Vec<Versioned<Collector>>, statuses: Vec<Versioned<CollectorStatus>>) {
        self.label_sets.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.component_sets.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut rows: BTreeMap<String, Row> = collectors
            .iter()
            .map(|c| {
                (
                    c.key.clone(),
                    Row {
                        collector: Some(self.digest(c)),
                        status: None,
                    },
                )
            })
            .collect();
        for s in statuses {
            if let Some(row) = rows.get_mut(&s.key) {
                row.status = Some(self.status_digest(&s.value));
            }
        }
        let indexed = Indexed::of(rows);
        *self.write() = indexed;
        self.ready.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::domain::{HealthView, RemoteConfigView};

    fn collector(id: &str, labels: u32, version: u64) -> Versioned<Collector> {
        Versioned {
            key: id.into(),
            version,
            value: Collector {
                id: id.into(),
                name: id.into(),
                labels: [("shard".to_string(), labels.to_string())].into(),
                enrolled_at: Timestamp(0),
                enrollment_token_id: "t".into(),
                credential_ids: vec![],
                enrolled_on_first_contact: false,
                credential_adopted_at: None,
                superseded_credential_ids: vec![],
                rotation_requested_at: None,
            },
        }
    }

    /// A status from a few bits: connected, holder, health, reported
    /// config, component set.
    fn status(id: &str, bits: u32) -> CollectorStatus {
        CollectorStatus {
            collector_id: id.into(),
            connected: bits & 1 == 1,
            instance: ["a", "b", "c"][(bits >> 1) as usize % 3].into(),
            health: match (bits >> 3) % 3 {
                0 => None,
                n => Some(HealthView {
                    healthy: n == 1,
                    ..Default::default()
                }),
            },
            remote_config: match (bits >> 5) % 4 {
                0 => None,
                n => Some(RemoteConfigView {
                    hash: format!("{:02x}", n % 2).repeat(32),
                    status: ["APPLIED", "FAILED", "APPLYING"][(bits >> 7) as usize % 3].into(),
                    error_message: String::new(),
                }),
            },
            available_components: ((bits >> 9) % 3 != 0).then(|| AvailableComponentsView {
                hash: ((bits >> 9) % 3).to_string(),
                components: BTreeMap::new(),
            }),
            ..Default::default()
        }
    }

    /// The summary's inputs counted the slow way, written apart from
    /// `Counts::apply` so a mistake there cannot hide in both.
    fn recount(rows: &BTreeMap<String, Row>) -> Counts {
        let mut c = Counts::default();
        for row in rows.values() {
            let Some(col) = &row.collector else { continue };
            let s = row.status.as_ref();
            c.total += 1;
            c.health[health_slot(s)] += 1;
            if let Some(s) = s.filter(|s| s.connected) {
                *c.claimed.entry(s.instance.clone()).or_default() += 1;
            }
            *c.reports
                .entry(col.labels.clone())
                .or_default()
                .entry(Reported::of(s))
                .or_default() += 1;
        }
        c
    }

    /// The counts (and the label sets) equal a pass over the rows after
    /// any sequence of changes.
    #[test]
    fn counts_match_a_pass_over_the_rows_after_any_sequence_of_changes() {
        for seed in 0..300 {
            let mut rng = StdRng::seed_from_u64(seed);
            let ix = FleetIndex::default();
            for step in 0..150u64 {
                let id = format!("c{}", rng.random_range(0..10));
                match rng.random_range(0..20) {
                    0..=4 => ix.put_collector(&collector(&id, rng.random_range(0..3), step)),
                    5..=6 => ix.remove(&id),
                    7..=13 => ix.put_status(&id, Some(&status(&id, rng.random()))),
                    14..=15 => ix.put_status(&id, None),
                    16..=18 => ix.seen(&id, Timestamp(step)),
                    _ => {
                        // A rebuild from what a store would hold.
                        let (collectors, statuses) = {
                            let g = ix.read();
                            let collectors = (0..10)
                                .map(|i| format!("c{i}"))
                                .filter(|id| g.rows.get(id).is_some_and(|r| r.collector.is_some()))
                                .map(|id| collector(&id, rng.random_range(0..3), step))
                                .collect::<Vec<_>>();
                            let statuses = collectors
                                .iter()
                                .map(|c| Versioned {
                                    key: c.key.clone(),
                                    version: 1,
                                    value: status(&c.key, rng.random()),
                                })
                                .collect::<Vec<_>>();
                            (collectors, statuses)
                        };
                        ix.rebuild(collectors, statuses);
                    }
                }
                let g = ix.read();
                assert_eq!(g.counts, recount(&g.rows), "seed {seed}, step {step}");
                let mut posted = HashMap::<(String, String), BTreeSet<String>>::new();
                for (id, row) in &g.rows {
                    for (k, v) in row.collector.iter().flat_map(|c| c.labels.iter()) {
                        posted.entry((k.clone(), v.clone())).or_default().insert(id.clone());
                    }
                }
                assert_eq!(g.by_label, posted, "label sets, seed {seed}, step {step}");
            }
        }
    }
}
