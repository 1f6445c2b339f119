//! Where a collector's desired config comes from, in one order for every
//! caller (sessions pushing, the API showing): a config pinned to the
//! collector, else the config store's render for its labels, else the fleet
//! default. While a staged rollout runs, "the config store's render" is the
//! new commit's for a collector whose wave was reached and the baseline
//! commit's for any other (`crate::rollout`). Holds the caches that make
//! that cheap: the fleet default and one render per commit and label set.
//!
//! It must not push, store or know about sessions: callers decide what to do
//! with the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::desired::Desired;
use crate::configstore::{ConfigStoreHandle, Snapshot};
use crate::domain::{Collector, ConfigAssignment, DomainError, Labels, DEFAULT_ASSIGNMENT};
use crate::rollout::RolloutView;
use crate::storage::Store;

/// A source already read by the caller (`Some`), or to be read here (`None`).
pub type Known = Option<Option<Arc<Desired>>>;

pub(super) struct Resolver {
    store: Store,
    config_store: Option<ConfigStoreHandle>,
    /// The fleet default config, as last loaded.
    default: RwLock<DefaultCache>,
    /// Renders by commit and label set: collectors sharing labels share
    /// one render. Only the commits in use are kept (served, rollout
    /// target, baseline).
    renders: Mutex<RenderCache>,
    /// The stored rollout as this instance knows it (set by the driver).
    rollouts: RolloutView,
}

/// A load that started before an invalidation must not fill the cache: it
/// may have read the old default. The generation tells them apart.
#[derive(Default)]
struct DefaultCache {
    generation: u64,
    /// `None` = not loaded since the last invalidation.
    value: Option<Option<Arc<Desired>>>,
}

#[derive(Default)]
struct RenderCache {
    by_commit: HashMap<String, HashMap<Labels, Option<Arc<Desired>>>>,
}

impl Resolver {
    pub fn new(store: Store, config_store: Option<ConfigStoreHandle>) -> Self {
        Resolver {
            store,
            config_store,
            default: RwLock::new(DefaultCache::default()),
            renders: Mutex::new(RenderCache::default()),
            rollouts: RolloutView::default(),
        }
    }

    pub fn rollouts(&self) -> &RolloutView {
        &self.rollouts
    }

    /// The order itself, written once.
    pub fn pick(
        &self,
        pinned: Option<Arc<Desired>>,
        collector: &Collector,
        default: Option<Arc<Desired>>,
    ) -> Option<Arc<Desired>> {
        self.pick_by(pinned, &collector.id, &collector.labels, default)
    }

    /// `pick` on a collector's id and labels only (the fleet views hold
    /// those, not whole records).
    pub fn pick_by(
        &self,
        pinned: Option<Arc<Desired>>,
        id: &str,
        labels: &Labels,
        default: Option<Arc<Desired>>,
    ) -> Option<Arc<Desired>> {
        pinned.or_else(|| self.rendered(id, labels)).or(default)
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
        Ok(self.pick(None, collector, default))
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
        let generation = match self.cached_default() {
            Ok(hit) => return Ok(hit),
            Err(generation) => generation,
        };
        let loaded = self.read_default().await?;
        self.fill_default(generation, loaded.clone());
        Ok(loaded)
    }

    async fn read_default(&self) -> Result<Option<Arc<Desired>>, DomainError> {
        Ok(self
            .store
            .get::<ConfigAssignment>(DEFAULT_ASSIGNMENT)
            .await?
            .map(|a| Arc::new(Desired::from((&a.value, "default")))))
    }

    /// The cached default, or the generation a load must start from.
    fn cached_default(&self) -> Result<Option<Arc<Desired>>, u64> {
        let cache = self.default.read().unwrap_or_else(|p| p.into_inner());
        match &cache.value {
            Some(d) => Ok(d.clone()),
            None => Err(cache.generation),
        }
    }

    /// Cache a loaded default unless it was invalidated since the load began.
    fn fill_default(&self, generation: u64, loaded: Option<Arc<Desired>>) {
        let mut cache = self.default.write().unwrap_or_else(|p| p.into_inner());
        if cache.generation == generation {
            cache.value = Some(loaded);
        }
    }

    /// The fleet default changed (or may have): read it again next time,
    /// and let no load already under way cache what it read.
    pub fn invalidate_default(&self) {
        let mut cache = self.default.write().unwrap_or_else(|p| p.into_inner());
        cache.generation += 1;
        cache.value = None;
    }

    /// The config store's config for this collector, if it routes any
    /// pipeline to it (a config without pipelines would be refused by the
    /// collector, so it is never offered).
    fn rendered(&self, id: &str, labels: &Labels) -> Option<Arc<Desired>> {
        let cs = self.config_store.as_ref()?;
        let served = cs.current()?;
        let active = self.rollouts.get();
        // No policy in the served commit = today's behaviour (all at once);
        // an emergency override beats any rollout.
        let snapshot: Arc<Snapshot> = match &active {
            Some(a) if served.resources.rollout.is_some() && !cs.override_applied() => {
                a.snapshot_for(id, labels)?.clone()
            }
            _ => served.clone(),
        };
        let mut cache = self.renders.lock().unwrap_or_else(|p| p.into_inner());
        // The common case, without cloning a key (the fleet views ask for
        // every collector).
        if let Some(hit) = cache
            .by_commit
            .get(&snapshot.revision.commit)
            .and_then(|m| m.get(labels))
        {
            return hit.clone();
        }
        if !cache.by_commit.contains_key(&snapshot.revision.commit) {
            let keep = |c: &String| {
                *c == served.revision.commit
                    || active.as_ref().is_some_and(|a| {
                        *c == a.target.revision.commit || a.baseline.as_ref().is_some_and(|b| *c == b.revision.commit)
                    })
            };
            cache.by_commit.retain(|c, _| keep(c));
        }
        cache
            .by_commit
            .entry(snapshot.revision.commit.clone())
            .or_default()
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

    /// The stored rollout as this instance knows it.
    pub fn rollout_view(&self) -> RolloutView {
        self.inner.resolver.rollouts().clone()
    }

    /// The rollout changed (a wave reached or rolled back, a new rollout):
    /// re-resolve every session; only those whose config changed get a push.
    pub async fn rollout_changed(&self) {
        self.refresh_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AssignedFile, ConfigAssignment};
    use crate::storage::{Expect, Op};

    async fn put_default(store: &Store, body: &str) {
        let a = ConfigAssignment {
            files: [(
                "c.yaml".to_string(),
                AssignedFile {
                    body: body.into(),
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
            updated_at: crate::clock::Timestamp(0),
            updated_by: "test".into(),
        };
        store
            .commit(vec![Op::put(DEFAULT_ASSIGNMENT, &a, Expect::Any).unwrap()])
            .await
            .unwrap();
    }

    /// A load that read the old default while another task saw the change
    /// and invalidated must not leave the old default cached.
    #[tokio::test]
    async fn a_load_racing_an_invalidation_does_not_cache_the_old_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
        put_default(&store, "old").await;
        let r = Resolver::new(store.clone(), None);

        // A load begins and reads the old default ...
        let generation = r.cached_default().unwrap_err();
        let old = r.read_default().await.unwrap();
        // ... the default changes and the change is seen (invalidate) ...
        put_default(&store, "new").await;
        r.invalidate_default();
        // ... then the slow load finishes with what it read.
        r.fill_default(generation, old.clone());

        let now = r.default().await.unwrap().unwrap();
        assert_ne!(
            Some(&now.hash),
            old.as_ref().map(|d| &d.hash),
            "the old default stayed cached"
        );
        assert_eq!(now.files["c.yaml"].0, b"new");
    }
}
