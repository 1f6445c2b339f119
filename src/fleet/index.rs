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
//! It must not decide a collector's desired config (`resolve`) or whether
//! the instance holding it is alive (`views` combines those when reading).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

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

#[derive(Default)]
pub(super) struct FleetIndex {
    // std RwLock: readers hold it for one in-memory pass (list, summary),
    // writers for one row; never across an await.
    rows: RwLock<BTreeMap<String, Row>>,
    // std Mutex: one lookup or insert.
    label_sets: Mutex<HashMap<Labels, Arc<Labels>>>,
    /// Reported component sets by their hash (std Mutex: one lookup or
    /// insert). A fleet runs few distinct collector builds.
    component_sets: Mutex<HashMap<String, Arc<AvailableComponentsView>>>,
    /// Built from the store at least once (a failed start-up build is
    /// retried by the first reader).
    ready: AtomicBool,
}

impl FleetIndex {
    pub fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Row>> {
        // Every section leaves the map consistent (one row changed).
        self.rows.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Row>> {
        self.rows.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A change could not be applied: the next reader rebuilds from the
    /// store rather than show a stale row forever.
    pub fn invalidate(&self) {
        self.ready.store(false, Ordering::Release);
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
        self.write().entry(c.key.clone()).or_default().collector = Some(d);
    }

    pub fn remove(&self, id: &str) {
        self.write().remove(id);
    }

    /// A status as this instance's sessions hand it to the writer, or as
    /// re-read from the store (`None`: there is none).
    pub fn put_status(&self, id: &str, s: Option<&CollectorStatus>) {
        let d = s.map(|s| self.status_digest(s));
        let mut rows = self.write();
        match d {
            Some(d) => rows.entry(id.to_string()).or_default().status = Some(d),
            None => {
                if let Some(row) = rows.get_mut(id) {
                    row.status = None;
                }
            }
        }
    }

    /// A message that changed nothing but the time it was seen (no status
    /// is written for it): the list shows and sorts by that time.
    pub fn seen(&self, id: &str, at: Timestamp) {
        if let Some(s) = self.write().get_mut(id).and_then(|r| r.status.as_mut()) {
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
        *self.write() = rows;
        self.ready.store(true, Ordering::Release);
    }
}
