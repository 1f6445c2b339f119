//! Reactions to the storage change feed: whatever any instance changed
//! (labels, pinned or default configs, commands, deregistration, revoked
//! credentials) reaches the sessions held here. Falling behind the feed
//! re-reads every session.
//!
//! It must not write to the store: reactions only re-read, push or close.

use tokio::sync::broadcast;

use super::Fleet;
use crate::domain::{Collector, CollectorCredential, DEFAULT_ASSIGNMENT};
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
                match push.try_send(out.msg) {
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
