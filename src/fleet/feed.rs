//! Reactions to the storage change feed: whatever any instance changed
//! (labels, pinned or default configs, commands, deregistration, revoked
//! credentials) reaches the sessions held here, and collectors and
//! statuses reach the fleet index. Falling behind the feed re-reads every
//! session, or rebuilds the index.
//!
//! It must not write to the store: reactions only re-read, push or close.

use tokio::sync::broadcast;

use super::Fleet;
use crate::domain::{Collector, CollectorCredential, CollectorStatus, DEFAULT_ASSIGNMENT};
use crate::storage::{Change, ChangeFeed, Table};

impl Fleet {
    pub(super) async fn follow_changes(self, mut feed: ChangeFeed) {
        loop {
            match feed.recv().await {
                Ok(change) => self.on_change(change).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "Fell behind the change feed; re-reading every session.");
                    self.resync().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn on_change(&self, change: Change) {
        match change.table {
            Table::Collectors => {
                let Some((ctx, push)) = self.inner.sessions.get(&change.key) else {
                    return;
                };
                if change.version.is_none() {
                    return self.kick(&change.key, "the collector was deregistered");
                }
                match self.inner.domain.store().get::<Collector>(&change.key).await {
                    Ok(Some(c)) => {
                        ctx.lock().await.collector = c.value;
                        self.refresh(&ctx, &push).await;
                    }
                    Ok(None) => self.kick(&change.key, "the collector was deregistered"),
                    Err(e) => tracing::warn!(error = %e, "Could not reload a changed collector."),
                }
            }
            Table::ConfigAssignments if change.key == DEFAULT_ASSIGNMENT => {
                self.inner.resolver.invalidate_default();
                self.refresh_all().await;
            }
            Table::ConfigAssignments => {
                let Some((ctx, push)) = self.inner.sessions.get(&change.key) else {
                    return;
                };
                ctx.lock().await.pinned = change.version.is_some();
                self.refresh(&ctx, &push).await;
            }
            Table::Commands if change.version.is_some() => {
                let Some((ctx, push)) = self.inner.sessions.get(&change.key) else {
                    return;
                };
                let mut g = ctx.lock().await;
                g.commands_pending = true;
                // Streams get it now; HTTP agents on their next poll. Never
                // wait for room here: one stuck collector would stall the
                // feed for the whole fleet.
                let Some(push) = push else { return };
                let Some(out) = self.command_for(&change.key, &mut g).await else {
                    return;
                };
                match push.try_send(Box::new(out.msg)) {
                    Ok(()) => {
                        drop(g);
                        self.delivered(&change.key, &ctx, out.ids).await;
                    }
                    Err(_) => {
                        tracing::debug!(collector_id = %change.key, "Push queue full; the command is sent with the next report.");
                        Fleet::undelivered(&mut g, &out.ids);
                    }
                }
            }
            // A new credential (version 1) has never been revoked: only a
            // revocation or removal can end sessions. (Each enrollment
            // creates one; looking through every session for each made
            // enrolling a large fleet quadratic.)
            Table::CollectorCredentials if change.version == Some(1) => {}
            Table::CollectorCredentials => {
                let holders: Vec<String> = self
                    .inner
                    .sessions
                    .lock()
                    .iter()
                    .filter(|(_, e)| e.credential_id == change.key)
                    .map(|(k, _)| k.clone())
                    .collect();
                if holders.is_empty() {
                    return;
                }
                let valid = matches!(
                    self.inner.domain.store().get::<CollectorCredential>(&change.key).await,
                    Ok(Some(c)) if c.value.revoked_at.is_none()
                );
                if !valid {
                    for id in holders {
                        self.kick(&id, "its credential was revoked");
                    }
                }
            }
            Table::EnrollmentTokens => self.token_changed(&change.key).await,
            _ => {}
        }
    }

    /// Re-read everything a session depends on (after missing changes).
    async fn resync(&self) {
        self.inner.resolver.invalidate_default();
        for (id, ctx, push) in self.inner.sessions.all() {
            match self.inner.domain.store().get::<Collector>(&id).await {
                Ok(Some(c)) => {
                    let pinned = matches!(self.inner.resolver.pinned(&id).await, Ok(Some(_)));
                    {
                        let mut g = ctx.lock().await;
                        g.collector = c.value;
                        g.pinned = pinned;
                        g.commands_pending = true;
                    }
                    self.refresh(&ctx, &push).await;
                }
                Ok(None) => self.kick(&id, "the collector was deregistered"),
                Err(e) => tracing::warn!(error = %e, "Resync could not read a collector."),
            }
        }
    }
}

/// The fleet index's own subscription. Whoever holds it applies what was
/// committed but not yet applied: the follower task when a change is
/// published, and every view before it reads the index (read-your-writes
/// for this instance's own writes: an enrollment, then the list).
///
/// Nobody holds it while waiting for a change (the follower waits on a
/// subscription of its own, used only as a doorbell), so a view with
/// nothing to apply takes it at once and returns: no hand-off to another
/// task, which on a busy instance meant waiting behind thousands of
/// session tasks for the follower to run and let go.
pub(super) struct IndexFeed {
    // tokio Mutex: held while changes are applied, across the store reads
    // that apply them; never across the wait for the next change.
    feed: tokio::sync::Mutex<ChangeFeed>,
}

impl IndexFeed {
    pub fn new(feed: ChangeFeed) -> Self {
        IndexFeed {
            feed: tokio::sync::Mutex::new(feed),
        }
    }
}

impl Fleet {
    /// The task that keeps the fleet index current; owned by the instance's
    /// tasks.
    pub(super) async fn follow_index(self) {
        // Subscribed before the first catch-up: nothing published after
        // that catch-up goes unrung.
        let mut bell = self.inner.domain.store().subscribe();
        loop {
            self.catch_up_index().await;
            match bell.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Apply to the index every change already committed (see `IndexFeed`).
    pub(super) async fn catch_up_index(&self) {
        let shared = self.inner.index_feed.clone();
        let mut feed = shared.feed.lock().await;
        loop {
            match feed.try_recv() {
                Ok(change) => self.index_change(change).await,
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.index_lagged(n).await,
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => return,
            }
        }
    }

    async fn index_lagged(&self, missed: u64) {
        tracing::warn!(
            missed,
            "The fleet index fell behind the change feed; rebuilding it from the store."
        );
        self.inner.index.tables_changed();
        if let Err(e) = self.rebuild_index().await {
            tracing::warn!(error = %e, "Could not rebuild the fleet index; the next view retries.");
            self.inner.index.invalidate();
        }
    }

    async fn index_change(&self, change: Change) {
        let store = self.inner.domain.store();
        match change.table {
            Table::Collectors if change.version.is_none() => self.inner.index.remove(&change.key),
            Table::Collectors => match store.get::<Collector>(&change.key).await {
                Ok(Some(c)) => self.inner.index.put_collector(&c),
                Ok(None) => self.inner.index.remove(&change.key),
                Err(e) => {
                    tracing::warn!(error = %e, "Could not read a changed collector for the fleet index; rebuilding it.");
                    self.inner.index.invalidate();
                }
            },
            // Pinned configs, the fleet default, instances' presence: the
            // views' context reads them again (`FleetIndex::tables`).
            Table::ConfigAssignments | Table::ServerInstances => self.inner.index.tables_changed(),
            // Statuses of sessions held here reach the index through the
            // writer, fresher than the store; any other was written
            // elsewhere (or by a session that closed): read it once.
            Table::CollectorStatus if !self.inner.sessions.contains(&change.key) => {
                match store.get::<CollectorStatus>(&change.key).await {
                    Ok(s) => self.inner.index.put_status(&change.key, s.as_ref().map(|s| &s.value)),
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not read a changed collector status for the fleet index; rebuilding it.");
                        self.inner.index.invalidate();
                    }
                }
            }
            _ => {}
        }
    }
}
