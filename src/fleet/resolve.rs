//! Where a collector's desired config comes from, in one order for every
//! caller (sessions pushing, the API showing): a config pinned to the
//! collector, else the config store's render for its labels, else the fleet
//! default. Holds the caches that make that cheap: the fleet default and
//! one render per label set of the served commit.
//!
//! It must not push, store or know about sessions: callers decide what to do
//! with the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::desired::Desired;
use crate::configstore::ConfigStoreHandle;
use crate::domain::{Collector, ConfigAssignment, DomainError, Labels, DEFAULT_ASSIGNMENT};
use crate::storage::Store;

/// A source already read by the caller (`Some`), or to be read here (`None`).
pub type Known = Option<Option<Arc<Desired>>>;

pub(super) struct Resolver {
    store: Store,
    config_store: Option<ConfigStoreHandle>,
    /// The fleet default config; `None` = not loaded yet.
    default: RwLock<Option<Option<Arc<Desired>>>>,
    /// Renders of the served snapshot by label set: collectors sharing
    /// labels share one render. Cleared when the snapshot changes.
    renders: Mutex<RenderCache>,
}

#[derive(Default)]
struct RenderCache {
    commit: String,
    by_labels: HashMap<Labels, Option<Arc<Desired>>>,
}

impl Resolver {
    pub fn new(store: Store, config_store: Option<ConfigStoreHandle>) -> Self {
        Resolver {
            store,
            config_store,
            default: RwLock::new(None),
            renders: Mutex::new(RenderCache::default()),
        }
    }

    /// The order itself, written once.
    pub fn pick(
        &self,
        pinned: Option<Arc<Desired>>,
        labels: &Labels,
        default: Option<Arc<Desired>>,
    ) -> Option<Arc<Desired>> {
        pinned.or_else(|| self.rendered(labels)).or(default)
    }

    /// Resolve, reading (or taking from the cache) whatever the caller does
    /// not already know. `pinned: Some(None)` = known to have none.
    pub async fn resolve_known(
        &self,
        collector: &Collector,
        pinned: Known,
    ) -> Result<Option<Arc<Desired>>, DomainError> {
        let pinned = match pinned {
            Some(p) => p,
            None => self.pinned(&collector.id).await?,
        };
        if pinned.is_some() {
            return Ok(pinned);
        }
        let default = self.default().await?;
        Ok(self.pick(None, &collector.labels, default))
    }

    /// Resolve for a collector; `may_be_pinned = false` skips the read of a
    /// pinned config (sessions know whether one exists).
    pub async fn resolve(
        &self,
        collector: &Collector,
        may_be_pinned: bool,
    ) -> Result<Option<Arc<Desired>>, DomainError> {
        self.resolve_known(collector, (!may_be_pinned).then_some(None)).await
    }

    /// The config pinned to a collector.
    pub async fn pinned(&self, collector_id: &str) -> Result<Option<Arc<Desired>>, DomainError> {
        Ok(self
            .store
            .get::<ConfigAssignment>(collector_id)
            .await?
            .map(|a| Arc::new(Desired::from((&a.value, "assignment")))))
    }

    /// The fleet default config (cached until `invalidate_default`).
    pub async fn default(&self) -> Result<Option<Arc<Desired>>, DomainError> {
        if let Ok(guard) = self.default.read() {
            if let Some(d) = guard.as_ref() {
                return Ok(d.clone());
            }
        }
        let loaded = self
            .store
            .get::<ConfigAssignment>(DEFAULT_ASSIGNMENT)
            .await?
            .map(|a| Arc::new(Desired::from((&a.value, "default"))));
        if let Ok(mut guard) = self.default.write() {
            *guard = Some(loaded.clone());
        }
        Ok(loaded)
    }

    /// The fleet default changed (or may have): read it again next time.
    pub fn invalidate_default(&self) {
        if let Ok(mut d) = self.default.write() {
            *d = None;
        }
    }

    /// The config store's config for these labels, if it routes any
    /// pipeline to them (a config without pipelines would be refused by
    /// the collector, so it is never offered).
    fn rendered(&self, labels: &Labels) -> Option<Arc<Desired>> {
        let snapshot = self.config_store.as_ref()?.current()?;
        let mut cache = self.renders.lock().unwrap_or_else(|p| p.into_inner());
        if cache.commit != snapshot.revision.commit {
            *cache = RenderCache {
                commit: snapshot.revision.commit.clone(),
                by_labels: HashMap::new(),
            };
        }
        cache
            .by_labels
            .entry(labels.clone())
            .or_insert_with(|| {
                let r = snapshot.render(labels);
                (!r.pipelines.is_empty()).then(|| Arc::new(Desired::from_rendered(&r)))
            })
            .clone()
    }
}

impl super::Fleet {
    /// The desired config of any collector (for the API), wherever it is
    /// connected.
    pub async fn desired_for(&self, collector: &Collector) -> Result<Option<Arc<Desired>>, DomainError> {
        self.inner.resolver.resolve(collector, true).await
    }
}
