//! Pushing desired configs: a session is re-resolved when something it
//! depends on changed (a new config-store commit, its labels, its pinned
//! config, the fleet default), and only a changed hash is offered.
//!
//! A fleet-wide change (a commit, the fleet default, a rollout step) walks
//! every session once without awaiting any of them: the resolver answers
//! from its caches (one render per commit and label set, the default read
//! at most once), a session with a pinned config is skipped (nothing
//! fleet-wide changes it), and a session busy with a message of its own is
//! handed to a task of its own instead of holding up the rest.
//!
//! It must not decide the resolution order (`resolve`) nor react to the
//! change feed itself (`feed`).

use std::sync::Arc;

use tokio::time::Instant;

use super::desired::Desired;
use super::outbound::Outbound;
use super::registry::{Ctx, Push, SharedCtx};
use super::session;
use super::Fleet;

/// What one fleet-wide pass did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Pass {
    pub sessions: usize,
    /// Sessions whose desired config changed (streams were sent it).
    pub changed: usize,
    /// Sessions busy with a message of their own, refreshed on their own.
    pub deferred: usize,
}

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
            let pass = self.refresh_all().await;
            tracing::info!(
                commit = commit.as_deref().unwrap_or(""),
                sessions = pass.sessions,
                pushed = pass.changed,
                deferred = pass.deferred,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "Applied a new config revision to the fleet."
            );
        }
    }

    /// Re-resolve every session after a fleet-wide change (the fleet
    /// default, a commit, a rollout step).
    pub(super) async fn refresh_all(&self) -> Pass {
        let all = self.inner.sessions.all();
        let mut pass = Pass {
            sessions: all.len(),
            ..Pass::default()
        };
        // At most one store read for the whole pass.
        let default = match self.inner.resolver.default().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the fleet default config; the fleet keeps its configs.");
                return pass;
            }
        };
        for (_, ctx, push) in all {
            let Ok(mut g) = ctx.try_lock() else {
                // Processing a message (it may be waiting on the store):
                // it resolves on its own, after it.
                pass.deferred += 1;
                let fleet = self.clone();
                self.inner.tasks.spawn("config push", async move {
                    fleet.refresh(&ctx, &push).await;
                });
                continue;
            };
            if g.pinned {
                continue;
            }
            let desired = self.inner.resolver.pick(None, &g.collector, default.clone());
            if self.apply(&mut g, &push, desired) {
                pass.changed += 1;
            }
        }
        pass
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
        self.apply(&mut ctx, push, desired)
    }

    /// Make `desired` the session's desired config and offer it on its
    /// stream if its hash changed; returns whether it changed.
    fn apply(&self, ctx: &mut Ctx, push: &Push, desired: Option<Arc<Desired>>) -> bool {
        if desired.as_ref().map(|d| &d.hash) == ctx.desired.as_ref().map(|d| &d.hash) {
            return false;
        }
        ctx.desired = desired;
        // HTTP sessions get the offer on their next poll.
        let Some(push) = push else { return true };
        let desired = ctx.desired.clone();
        if let Some(desired) = desired.filter(|d| ctx.agent.should_offer(d)) {
            // The config's bytes are shared by every session it goes to.
            let msg = Outbound::Config {
                instance_uid: ctx.agent.uid,
                capabilities: session::SERVER_CAPABILITIES,
                desired,
            };
            if push.try_send(Box::new(msg)).is_err() {
                tracing::debug!(collector_id = %ctx.collector.id, "Push queue full; the config is offered again on the next report.");
            }
        }
        true
    }
}
