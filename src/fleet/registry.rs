//! The sessions this instance holds: one entry per collector, replaced by a
//! newer connection, removed on close, timeout or kick. Opening a session
//! marks the collector connected; removing one marks it disconnected.
//!
//! It must not interpret OpAMP messages (`messages`, `session`) nor decide
//! what a collector's config is (`resolve`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::auth::Authenticated;
use super::desired::Desired;
use super::outbound::Outbound;
use super::session::{AgentState, SessionError};
use super::{Fleet, FleetError, Transport};
use crate::domain::{Collector, CollectorStatus, DomainError};

/// Handle of one open session, held by its transport.
#[derive(Debug, Clone)]
pub struct Conn {
    pub collector_id: String,
    pub(super) epoch: u64,
}

/// Pushes to a streaming session: bounded, so a collector that stops
/// reading cannot grow server memory; what does not fit is re-offered when
/// the collector next reports.
pub(super) const PUSH_QUEUE: usize = 16;

pub(super) struct Ctx {
    pub agent: AgentState,
    pub collector: Collector,
    /// Whether a config is pinned to this collector (saves a store read per
    /// session when the fleet default changes).
    pub pinned: bool,
    pub desired: Option<Arc<Desired>>,
    /// Whether the store may hold commands for this session.
    pub commands_pending: bool,
    /// A credential was offered on this session for the token path (a
    /// rotation request offers again).
    pub credential_offered: bool,
    /// Commands sent but not yet removed from the store (`commands`).
    pub commands_in_flight: Vec<String>,
}

/// A session's state, locked per message (async: processing may read the
/// store while holding it).
pub(super) type SharedCtx = Arc<tokio::sync::Mutex<Ctx>>;
/// The push side of a streaming session (`None` for HTTP polling). Boxed
/// (`Box<Outbound>`): a tokio channel allocates its slots in blocks of 32
/// up front, and a ServerToAgent is large (every connection-settings
/// variant inline), so unboxed each session's queue cost tens of KiB
/// before anything was sent.
pub(super) type Push = Option<PushTx>;

/// The sending side of a stream's queue; takes a ServerToAgent (boxed or
/// not) or an `Outbound`.
#[derive(Clone)]
pub(super) struct PushTx(mpsc::Sender<Box<Outbound>>);

impl PushTx {
    pub fn try_send(&self, msg: impl Into<Box<Outbound>>) -> Result<(), mpsc::error::TrySendError<Box<Outbound>>> {
        self.0.try_send(msg.into())
    }

    pub async fn send(&self, msg: impl Into<Box<Outbound>>) -> Result<(), mpsc::error::SendError<Box<Outbound>>> {
        self.0.send(msg.into()).await
    }
}

pub(super) struct Entry {
    pub epoch: u64,
    pub transport: Transport,
    pub credential_id: String,
    /// On the enrollment-token path: the token (its revocation closes this).
    pub enrollment_token: Option<String>,
    pub push: Push,
    pub ctx: SharedCtx,
    pub last_seen: Instant,
}

/// The session map.
#[derive(Default)]
pub(super) struct Registry {
    // std Mutex: every critical section is a map lookup, insert or remove;
    // the per-session state has its own async mutex.
    map: Mutex<HashMap<String, Entry>>,
    next_epoch: AtomicU64,
}

impl Registry {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves a consistent map (every
        // section is a single insert/remove), so recover from poisoning.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_epoch(&self) -> u64 {
        // Epochs start at 1; only uniqueness matters.
        self.next_epoch.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn get(&self, id: &str) -> Option<(SharedCtx, Push)> {
        self.lock().get(id).map(|e| (e.ctx.clone(), e.push.clone()))
    }

    /// Every session's state and push side.
    pub fn all(&self) -> Vec<(String, SharedCtx, Push)> {
        self.lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.ctx.clone(), e.push.clone()))
            .collect()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn drain(&self) -> Vec<Entry> {
        self.lock().drain().map(|(_, e)| e).collect()
    }
}

impl Fleet {
    /// Open a streaming session (gRPC, WebSocket). The receiver carries
    /// everything the server sends; it ends when the session is closed or
    /// replaced.
    pub async fn open_stream(
        &self,
        auth: Authenticated,
        transport: Transport,
    ) -> Result<(Conn, mpsc::Receiver<Box<Outbound>>), FleetError> {
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        let conn = self.open(auth, transport, Some(PushTx(tx))).await?;
        Ok((conn, rx))
    }

    pub(super) async fn open(&self, auth: Authenticated, transport: Transport, push: Push) -> Result<Conn, FleetError> {
        let id = auth.collector.key.clone();
        let stored = self
            .inner
            .domain
            .store()
            .get::<CollectorStatus>(&id)
            .await
            .map_err(DomainError::from)?;
        let mut status = stored.map(|s| s.value).unwrap_or_default();
        let now = self.inner.domain.clock().now();
        status.collector_id = id.clone();
        status.connected = true;
        status.instance = self.inner.settings.instance.clone();
        status.transport = transport.name().into();
        status.connected_at = Some(now);
        status.last_seen = Some(now);
        let mut agent =
            AgentState::new(&id, status.clone()).ok_or(FleetError::Session(SessionError::WrongInstance {
                presented: id.clone(),
                expected: "a UUID collector id".into(),
            }))?;
        agent.uid_assigned = auth.uid_assigned;
        let collector = auth.collector.value;
        // One read of the pinned config both marks the session pinned and,
        // when there is one, is its desired config (connect is a hot path).
        let pinned = self.inner.resolver.pinned(&id).await?;
        let desired = self
            .inner
            .resolver
            .resolve_known(&collector, Some(pinned.clone()))
            .await?;
        let ctx = Ctx {
            agent,
            collector,
            pinned: pinned.is_some(),
            desired,
            commands_pending: true,
            credential_offered: false,
            commands_in_flight: Vec::new(),
        };
        let epoch = self.inner.sessions.next_epoch();
        let entry = Entry {
            epoch,
            transport,
            credential_id: auth.credential_id,
            enrollment_token: auth.enrollment_token,
            push,
            ctx: Arc::new(tokio::sync::Mutex::new(ctx)),
            last_seen: Instant::now(),
        };
        let replaced = self.inner.sessions.lock().insert(id.clone(), entry);
        if replaced.is_some() {
            tracing::info!(collector_id = %id, transport = transport.name(), "A new connection replaced the collector's previous one.");
        } else {
            self.inner.metrics.connected_collectors.inc();
        }
        self.inner.writer.put(status);
        Ok(Conn {
            collector_id: id,
            epoch,
        })
    }

    /// End a session (the transport closed, or the agent said goodbye).
    pub fn close(&self, conn: &Conn) {
        let removed = {
            let mut sessions = self.inner.sessions.lock();
            match sessions.get(&conn.collector_id) {
                Some(e) if e.epoch == conn.epoch => sessions.remove(&conn.collector_id),
                _ => None,
            }
        };
        if let Some(entry) = removed {
            self.disconnected(entry);
        }
    }

    /// Close a session from the server side.
    pub(super) fn kick(&self, collector_id: &str, why: &str) {
        let removed = self.inner.sessions.lock().remove(collector_id);
        if let Some(entry) = removed {
            tracing::info!(collector_id, why, "Closed a collector session.");
            self.disconnected(entry);
        }
    }

    pub(super) fn disconnected(&self, entry: Entry) {
        self.inner.metrics.connected_collectors.dec();
        let fleet = self.clone();
        let now = self.inner.domain.clock().now();
        // Graceful: not cut short by a stop, so the disconnect is queued
        // for the final flush.
        self.inner.tasks.spawn_graceful("disconnect", |_| async move {
            let mut status = entry.ctx.lock().await.agent.status.clone();
            if let Some(newer) = fleet.connected_elsewhere(&status).await {
                // An old session noticed late (a half-open connection, at
                // the liveness timeout): the collector connected through
                // another instance since, and storing it disconnected would
                // hide that until that instance next stores its status.
                fleet.inner.index.put_status(&status.collector_id, Some(&newer));
                return;
            }
            status.connected = false;
            status.last_seen = Some(now);
            fleet.inner.writer.put_keeping_bodies(status);
        });
    }

    /// The stored status of a collector whose session `ours` was, when it
    /// says the collector connected to another instance after `ours` began.
    async fn connected_elsewhere(&self, ours: &CollectorStatus) -> Option<CollectorStatus> {
        let stored = self
            .inner
            .domain
            .store()
            .get::<CollectorStatus>(&ours.collector_id)
            .await
            .ok()??
            .value;
        (stored.connected && stored.instance != ours.instance && stored.connected_at > ours.connected_at)
            .then_some(stored)
    }

    /// Sessions held by this instance.
    pub fn connected_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Rotate a collector's credential (`Domain::rotate_credential`),
    /// choosing the delivery by the capabilities of its session here when
    /// this instance holds one: the stored status learns them a moment
    /// after the agent reported them (the status writer), and a rotation in
    /// that moment would hand an agent that takes connection settings a
    /// credential to install by hand, revoking the one it runs with.
    pub async fn rotate_credential(
        &self,
        actor: &crate::domain::Actor,
        collector_id: &str,
    ) -> Result<crate::domain::RotatedCredential, DomainError> {
        // Before looking at the session: whether this instance holds one is
        // nobody else's business.
        crate::domain::Domain::may_rotate(actor, collector_id)?;
        let live = match self.inner.sessions.get(collector_id) {
            Some((ctx, _)) => Some(ctx.lock().await.agent.status.capabilities),
            None => None,
        };
        self.inner.domain.rotate_credential(actor, collector_id, live).await
    }

    /// The in-memory status of a collector whose session this instance holds
    /// (fresher than the stored one: it has the latest `last_seen`).
    /// The session holds only the effective config's hash: its bodies are
    /// read here, from the writer's queue or the store.
    pub async fn live_status(&self, collector_id: &str) -> Option<(CollectorStatus, Option<Arc<Desired>>)> {
        let (ctx, _) = self.inner.sessions.get(collector_id)?;
        let (mut status, desired) = {
            let ctx = ctx.lock().await;
            (ctx.agent.status.clone(), ctx.desired.clone())
        };
        if let Some(e) = status.effective_config.as_mut() {
            let store = self.inner.domain.store();
            if let Some(files) = self.inner.writer.effective_files(store, collector_id, &e.hash).await {
                e.files = files;
            }
        }
        Some((status, desired))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use crate::domain::credentials::ACCEPTS_OPAMP_CONNECTION_SETTINGS;
    use crate::domain::{Actor, Role};
    use crate::proto::opamp_msgs as pb;
    use crate::storage::Table;

    /// A rotation right after the agent reported that it takes connection
    /// settings goes by its session: its stored status does not say so yet
    /// (the status writer's commit failed and waits for a retry).
    #[tokio::test]
    async fn a_rotation_goes_by_the_capabilities_the_session_just_reported() {
        let f = testing::fleet().await;
        let auth = testing::collector(&f.store).await;
        let id = auth.collector.key.clone();
        let uid = uuid::Uuid::parse_str(&id).unwrap().as_bytes().to_vec();
        f.store.fail_commit_touching(Table::CollectorStatus, &id, 1);
        let (conn, _rx) = f.fleet.open_stream(auth, Transport::Grpc).await.unwrap();
        let hello = pb::AgentToServer {
            instance_uid: uid,
            sequence_num: 1,
            capabilities: ACCEPTS_OPAMP_CONNECTION_SETTINGS,
            ..Default::default()
        };
        f.fleet.handle_stream(&conn, hello).await.unwrap();
        let admin = Actor::User {
            name: "admin".into(),
            role: Role::Admin,
        };
        let r = f.fleet.rotate_credential(&admin, &id).await.unwrap();
        assert_eq!(r.delivery, "connection_settings");
        assert!(r.credential.is_none(), "nothing to install by hand");
    }
}
