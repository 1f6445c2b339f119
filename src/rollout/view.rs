//! This instance's copy of the stored rollout, ready for the resolver: the
//! record plus the snapshots of its commit and baseline, swapped in only
//! once both are loaded, so a collector is never resolved against a
//! rollout whose commits this instance cannot render yet.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::configstore::Snapshot;
use crate::domain::rollout::{Rollout, RolloutState, WaveState};

/// Shared by the resolver (reads, per collector) and the driver (swaps).
/// A std `RwLock` holding an `Arc`: readers clone the `Arc` and let go at
/// once, never across an await.
#[derive(Clone, Default)]
pub struct RolloutView(Arc<RwLock<Option<Arc<Active>>>>);

/// The current rollout with its commits loaded.
#[derive(Debug)]
pub struct Active {
    /// Version of the record it came from.
    pub version: u64,
    pub rollout: Rollout,
    pub target: Arc<Snapshot>,
    pub baseline: Option<Arc<Snapshot>>,
}

impl RolloutView {
    pub fn get(&self) -> Option<Arc<Active>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, active: Option<Arc<Active>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = active;
    }
}

impl Active {
    /// Which wave of the rollout a collector is in.
    pub fn wave_of(&self, collector_id: &str, labels: &BTreeMap<String, String>) -> usize {
        self.rollout
            .policy
            .as_ref()
            .map_or(0, |p| p.wave_of(collector_id, labels))
    }

    /// Whether a collector in `wave` gets the rollout's commit: its wave was
    /// reached and not rolled back.
    pub fn reached(&self, wave: usize) -> bool {
        let r = &self.rollout;
        match r.state {
            RolloutState::Completed => true,
            RolloutState::Aborted | RolloutState::Superseded => false,
            RolloutState::Running | RolloutState::Paused | RolloutState::Halted => {
                wave < r.wave || (wave == r.wave && r.waves.get(wave).is_some_and(|w| w.state != WaveState::RolledBack))
            }
        }
    }

    /// The snapshot a collector is served from under this rollout (`None`:
    /// not reached and there is no baseline, i.e. nothing from the store).
    pub fn snapshot_for(&self, collector_id: &str, labels: &BTreeMap<String, String>) -> Option<&Arc<Snapshot>> {
        if self.reached(self.wave_of(collector_id, labels)) {
            Some(&self.target)
        } else {
            self.baseline.as_ref()
        }
    }
}
