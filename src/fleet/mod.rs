//! The fleet: every collector session this instance holds, whatever the
//! transport, and everything that follows from holding them. Transports
//! (`crate::transport`) only move bytes; the API reads views of the fleet.
//!
//! One concern per file:
//! - `registry`: the map of open sessions (open, replace, close, kick).
//! - `messages`: one AgentToServer in, the answer out (streams and polls).
//! - `auth`: which collector a bearer credential or client certificate names.
//! - `offers`: connection settings offered to agents (their own credential,
//!   where to send their own metrics).
//! - `session`: the OpAMP session rules, pure logic on in-memory state.
//! - `resolve`: where a collector's desired config comes from — the one
//!   resolver used by sessions and by the API views.
//! - `desired`: a desired config and its deterministic hash.
//! - `compat`: whether a config's component types are among those the
//!   agent reported (AvailableComponents); incompatible ones are not pushed.
//! - `push`: re-resolving sessions and pushing configs that changed.
//! - `outbound`: what a stream sends (a pushed config's bytes shared).
//! - `feed`: reactions to the storage change feed (any instance's changes).
//! - `commands`: delivering queued commands (restart).
//! - `presence`: liveness sweep and this instance's presence row.
//! - `writer`: the coalescing status writer.
//! - `index`: every stored collector and a digest of its status, in
//!   memory, for the list and summary.
//! - `views`: fleet status as the API shows it.
//!
//! This module must not know about HTTP, gRPC or the API's state: errors
//! leave as `FleetError`, mapped once at the boundary (`crate::api::error`).

mod auth;
mod bodies;
mod commands;
pub mod compat;
pub mod desired;
mod error;
mod feed;
mod index;
mod messages;
mod offers;
pub mod outbound;
mod presence;
mod push;
mod registry;
mod resolve;
pub mod session;
#[cfg(test)]
mod testing;
pub mod views;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::configstore::ConfigStoreHandle;
use crate::domain::Domain;
use crate::tasks::Tasks;
use crate::telemetry::Metrics;
use index::FleetIndex;
use registry::Registry;
use resolve::Resolver;
use writer::StatusWriter;

pub use auth::{Authenticated, Presented};
pub use error::FleetError;
pub use presence::PRESENCE_STALE;
pub use registry::Conn;

/// How a collector is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    WebSocket,
    /// OpAMP plain-HTTP polling: no connection, only requests.
    Http,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub instance: String,
    /// A collector silent for this long is marked disconnected (about three
    /// heartbeats: some clients never say goodbye).
    pub liveness_timeout: Duration,
    /// `server.public_url`: where agents are told to send their own
    /// metrics (`<public_url>/v1/metrics`) and reconnect (`/v1/opamp`).
    pub public_url: Option<String>,
}

struct Inner {
    domain: Domain,
    settings: FleetSettings,
    metrics: Arc<Metrics>,
    sessions: Registry,
    resolver: Resolver,
    writer: StatusWriter,
    index: Arc<FleetIndex>,
    index_feed: Arc<feed::IndexFeed>,
    started_at: Timestamp,
    /// The instance's task set (`crate::tasks`): the fleet's loops and the
    /// collector stream handlers run there, so `run` ends them.
    tasks: Tasks,
}

#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl Fleet {
    /// Start the fleet of this instance: change-feed listener, liveness
    /// sweeper, presence heartbeat, status writer, sweep of effective-config
    /// bodies no status names. Call it before serving
    /// collectors: it first corrects statuses an earlier run of this
    /// instance left claiming connected.
    pub async fn start(
        domain: Domain,
        settings: FleetSettings,
        config_store: Option<ConfigStoreHandle>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Fleet {
        let feed = domain.store().subscribe();
        let snapshots = config_store.as_ref().map(|c| c.subscribe());
        // Subscribed before the index is built: a change committed during
        // the build is applied again after it (every application re-reads).
        let index_feed = Arc::new(feed::IndexFeed::new(domain.store().subscribe()));
        let index = Arc::new(FleetIndex::default());
        let inner = Arc::new(Inner {
            resolver: Resolver::new(domain.store().clone(), config_store),
            writer: StatusWriter::start(domain.store().clone(), index.clone(), domain.clock().clone(), &tasks),
            index,
            index_feed,
            tasks,
            started_at: domain.clock().now(),
            domain,
            settings,
            metrics,
            sessions: Registry::default(),
        });
        let fleet = Fleet { inner };
        // Before correcting stale statuses: their corrections update it.
        if let Err(e) = fleet.rebuild_index().await {
            tracing::warn!(error = %e, "Could not load the fleet index; the first fleet view retries.");
        }
        fleet.release_stale_statuses().await;
        let tasks = &fleet.inner.tasks;
        tasks.spawn("fleet change feed", fleet.clone().follow_changes(feed));
        tasks.spawn("fleet index", fleet.clone().follow_index());
        tasks.spawn("liveness sweep", fleet.clone().sweep());
        tasks.spawn("presence heartbeat", fleet.clone().heartbeat_presence());
        tasks.spawn("effective-config sweep", fleet.clone().sweep_bodies());
        if let Some(rx) = snapshots {
            tasks.spawn("config push", fleet.clone().follow_snapshots(rx));
        }
        fleet
    }

    pub fn instance(&self) -> &str {
        &self.inner.settings.instance
    }

    pub fn domain(&self) -> &Domain {
        &self.inner.domain
    }

    /// The instance's task set: transports run collector sessions there.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// Graceful stop: every collector held here is stored as disconnected
    /// and this instance's presence row is removed, so other instances show
    /// the truth at once while the collectors reconnect through them.
    /// Call it after the instance's tasks stopped (`crate::tasks`), so the
    /// presence heartbeat cannot write the row again.
    pub async fn shutdown(&self) {
        let entries = self.inner.sessions.drain();
        let now = self.inner.domain.clock().now();
        for entry in &entries {
            let mut status = entry.ctx.lock().await.agent.status.clone();
            status.connected = false;
            status.last_seen = Some(now);
            self.inner.writer.put_keeping_bodies(status);
        }
        self.inner.metrics.connected_collectors.set(0);
        let unsaved = self.inner.writer.flush(self.inner.domain.store()).await;
        if unsaved > 0 {
            tracing::warn!(
                count = unsaved,
                "Could not store some collectors as disconnected; this instance's next start corrects them."
            );
        }
        self.remove_presence().await;
        tracing::info!(
            collectors = entries.len(),
            "Marked this instance's collectors disconnected."
        );
    }
}
