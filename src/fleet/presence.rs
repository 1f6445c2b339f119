//! Liveness and presence: sessions silent past the liveness timeout are
//! closed, and this instance's presence row (refreshed every few seconds,
//! removed on a graceful stop) tells every instance whether the holder of a
//! collector's session is alive.
//!
//! It must not touch collector status directly (closing a session marks it
//! disconnected, `registry`).

use std::time::Duration;

use super::registry::Entry;
use super::Fleet;
use crate::domain::{CollectorStatus, ServerInstance};
use crate::storage::{Expect, Op, Scan};

/// Instances refresh their presence this often; a row older than
/// `PRESENCE_STALE` means the instance is gone.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
pub const PRESENCE_STALE: Duration = Duration::from_secs(20);

impl Fleet {
    pub(super) async fn sweep(self) {
        let timeout = self.inner.settings.liveness_timeout;
        // Each look walks every session under the registry's lock: with
        // 19,000 collectors, once a second was a steady share of an idle
        // instance's CPU. A twentieth of the timeout (4.5 s of the default
        // 90 s) marks a silent collector at most 5% late.
        let mut tick = tokio::time::interval((timeout / 20).clamp(Duration::from_millis(100), Duration::from_secs(5)));
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            let expired: Vec<Entry> = {
                let mut sessions = self.inner.sessions.lock();
                let ids: Vec<String> = sessions
                    .iter()
                    .filter(|(_, e)| now.saturating_duration_since(e.last_seen) > timeout)
                    .map(|(k, _)| k.clone())
                    .collect();
                ids.iter().filter_map(|id| sessions.remove(id)).collect()
            };
            for entry in expired {
                tracing::info!(
                    transport = entry.transport.name(),
                    "A collector went silent past the liveness timeout; marked disconnected."
                );
                self.disconnected(entry);
            }
        }
    }

    pub(super) async fn heartbeat_presence(self) {
        let mut tick = tokio::time::interval(PRESENCE_EVERY);
        loop {
            tick.tick().await;
            let row = ServerInstance {
                name: self.inner.settings.instance.clone(),
                started_at: self.inner.started_at,
                heartbeat_at: self.inner.domain.clock().now(),
                connected_collectors: self.connected_count() as u64,
            };
            let op = match Op::put(&row.name, &row, Expect::Any) {
                Ok(op) => op,
                Err(_) => continue,
            };
            if let Err(e) = self.inner.domain.store().commit(vec![op]).await {
                tracing::warn!(error = %e, "Could not refresh this instance's presence.");
            }
        }
    }

    /// Statuses that name this instance as connected, from before this
    /// start (a crash, or a stop whose last writes failed), would be shown
    /// connected as long as this instance is alive: store them as
    /// disconnected. Runs before any collector can connect here, so every
    /// such status is stale.
    pub(super) async fn release_stale_statuses(&self) {
        let me = &self.inner.settings.instance;
        let stale: Vec<CollectorStatus> = match self.inner.domain.store().scan::<CollectorStatus>(Scan::default()).await
        {
            Ok(all) => all
                .into_iter()
                .map(|s| s.value)
                .filter(|s| s.connected && s.instance == *me)
                .collect(),
            Err(e) => {
                return tracing::warn!(error = %e, "Could not check for statuses left connected by an earlier run.");
            }
        };
        if stale.is_empty() {
            return;
        }
        tracing::info!(
            count = stale.len(),
            "Marking collectors an earlier run of this instance left connected as disconnected."
        );
        for mut s in stale {
            s.connected = false;
            self.inner.writer.put(s);
        }
    }

    /// Sweep effective-config bodies no status names (`bodies`), every
    /// `bodies::SWEEP_EVERY`; each instance does, and the sweeps are safe
    /// to overlap.
    pub(super) async fn sweep_bodies(self) {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + super::bodies::SWEEP_EVERY,
            super::bodies::SWEEP_EVERY,
        );
        loop {
            tick.tick().await;
            let store = self.inner.domain.store();
            match super::bodies::sweep(store, self.inner.domain.clock().now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    count = n,
                    "Removed the bodies of effective configs no collector reports any more."
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "Could not sweep effective-config bodies; the next sweep retries.")
                }
            }
        }
    }

    /// Remove this instance's presence row (graceful stop).
    pub(super) async fn remove_presence(&self) {
        let gone = Op::delete::<ServerInstance>(&self.inner.settings.instance, Expect::Any);
        if let Err(e) = self.inner.domain.store().commit(vec![gone]).await {
            tracing::warn!(error = %e, "Could not remove this instance's presence row.");
        }
    }
}
