//! Pushing desired configs: a session is re-resolved when something it
//! depends on changed (a new config-store commit, its labels, its pinned
//! config, the fleet default), and only a changed hash is offered.
//!
//! It must not decide the resolution order (`resolve`) nor react to the
//! change feed itself (`feed`).

use std::sync::Arc;

use tokio::time::Instant;

use super::registry::{Push, SharedCtx};
use super::session;
use super::Fleet;
use crate::proto::opamp_msgs as pb;

impl Fleet {
    /// A new valid commit is served: re-resolve every session; only those
    /// whose config hash changed get a push.
    pub(super) async fn follow_snapshots(
        self,
        mut rx: tokio::sync::watch::Receiver<Option<Arc<crate::configstore::Snapshot>>>,
    ) {
        while rx.changed().await.is_ok() {
            let commit = rx.borrow_and_update().as_ref().map(|s| s.revision.commit.clone());
            let started = Instant::now();
            let all = self.inner.sessions.all();
            let mut pushed = 0usize;
            for (_, ctx, push) in &all {
                if self.refresh(ctx, push).await {
                    pushed += 1;
                }
            }
            tracing::info!(
                commit = commit.as_deref().unwrap_or(""),
                sessions = all.len(),
                pushed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Applied a new config revision to the fleet."
            );
        }
    }

    /// Re-resolve every session (the fleet default changed).
    pub(super) async fn refresh_all(&self) {
        for (_, ctx, push) in self.inner.sessions.all() {
            self.refresh(&ctx, &push).await;
        }
    }

    /// Re-resolve a session's desired config and push it if it changed;
    /// returns whether it changed.
    pub(super) async fn refresh(&self, ctx: &SharedCtx, push: &Push) -> bool {
        let mut ctx = ctx.lock().await;
        let desired = match self.inner.resolver.resolve(&ctx.collector, ctx.pinned).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(collector_id = %ctx.collector.id, error = %e, "Could not resolve the desired config.");
                return false;
            }
        };
        if desired.as_ref().map(|d| &d.hash) == ctx.desired.as_ref().map(|d| &d.hash) {
            return false;
        }
        ctx.desired = desired;
        // HTTP sessions get the offer on their next poll.
        let Some(push) = push else { return true };
        let desired = ctx.desired.clone();
        if let Some(offer) = ctx.agent.offer(desired.as_deref()) {
            let msg = pb::ServerToAgent {
                instance_uid: ctx.agent.uid.to_vec(),
                capabilities: session::SERVER_CAPABILITIES,
                remote_config: Some(offer),
                ..Default::default()
            };
            if push.try_send(Box::new(msg)).is_err() {
                tracing::debug!(collector_id = %ctx.collector.id, "Push queue full; the config is offered again on the next report.");
            }
        }
        true
    }
}
