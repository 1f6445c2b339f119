//! The fleet: every collector session this instance holds, whatever the
//! transport. It applies the OpAMP session rules (`session`), stores status
//! (`writer`), resolves and pushes desired configs (`desired`), delivers
//! commands, and reacts to changes made by any instance through the
//! storage change feed. Transports (`crate::transport`) only move bytes.

pub mod desired;
pub mod session;
pub mod views;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::clock::Timestamp;
use crate::configstore::ConfigStoreHandle;
use crate::domain::secrets::{self, SecretKind};
use crate::domain::Labels;
use crate::domain::{
    Collector, CollectorCredential, CollectorStatus, ConfigAssignment, Domain, DomainError, ServerInstance,
    DEFAULT_ASSIGNMENT,
};
use crate::proto::opamp_msgs as pb;
use crate::storage::{Change, ChangeFeed, Expect, Op, Table, Versioned};
use crate::telemetry::Metrics;
use desired::Desired;
use session::{AgentState, SessionError};
use writer::StatusWriter;

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
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session was replaced by a newer connection, timed out, or the
    /// collector was deregistered or its credential revoked.
    #[error("the session is closed")]
    Closed,
}

/// A collector that presented a valid credential.
pub struct Authenticated {
    pub collector: Versioned<Collector>,
    pub credential_id: String,
}

/// Handle of one open session, held by its transport.
#[derive(Debug, Clone)]
pub struct Conn {
    pub collector_id: String,
    epoch: u64,
}

/// Pushes to a streaming session: bounded, so a collector that stops
/// reading cannot grow server memory; what does not fit is re-offered when
/// the collector next reports.
const PUSH_QUEUE: usize = 16;
/// Instances refresh their presence this often; a row older than
/// `PRESENCE_STALE` means the instance is gone.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
pub const PRESENCE_STALE: Duration = Duration::from_secs(20);

struct Ctx {
    agent: AgentState,
    collector: Collector,
    /// Whether a config is pinned to this collector (saves a store read per
    /// session when the fleet default changes).
    pinned: bool,
    desired: Option<Arc<Desired>>,
    commands_pending: bool,
}

/// A session's state, locked per message (async: processing may read the
/// store while holding it).
type SharedCtx = Arc<tokio::sync::Mutex<Ctx>>;
/// The push side of a streaming session (`None` for HTTP polling).
type Push = Option<mpsc::Sender<pb::ServerToAgent>>;

struct Entry {
    epoch: u64,
    transport: Transport,
    credential_id: String,
    push: Push,
    ctx: SharedCtx,
    last_seen: Instant,
}

struct Inner {
    domain: Domain,
    settings: FleetSettings,
    metrics: Arc<Metrics>,
    // std Mutex: every critical section is a map lookup or insert; the
    // per-session state has its own async mutex.
    sessions: Mutex<HashMap<String, Entry>>,
    next_epoch: AtomicU64,
    /// The fleet default config; `None` = not loaded yet.
    default: RwLock<Option<Option<Arc<Desired>>>>,
    writer: StatusWriter,
    started_at: Timestamp,
    config_store: Option<ConfigStoreHandle>,
    /// Background tasks (change feed, sweeper, presence), ended by `shutdown`.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Renders of the served snapshot by label set: collectors sharing
    /// labels share one render. Cleared when the snapshot changes.
    renders: Mutex<RenderCache>,
}

#[derive(Default)]
struct RenderCache {
    commit: String,
    by_labels: HashMap<Labels, Option<Arc<Desired>>>,
}

#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl Fleet {
    /// Start the fleet of this instance: change-feed listener, liveness
    /// sweeper, presence heartbeat, status writer.
    pub fn start(
        domain: Domain,
        settings: FleetSettings,
        config_store: Option<ConfigStoreHandle>,
        metrics: Arc<Metrics>,
    ) -> Fleet {
        let feed = domain.store().subscribe();
        let snapshots = config_store.as_ref().map(|c| c.subscribe());
        let inner = Arc::new(Inner {
            config_store,
            tasks: Mutex::new(Vec::new()),
            renders: Mutex::new(RenderCache::default()),
            writer: StatusWriter::start(domain.store().clone()),
            started_at: domain.clock().now(),
            domain,
            settings,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            next_epoch: AtomicU64::new(1),
            default: RwLock::new(None),
        });
        let fleet = Fleet { inner };
        let mut tasks = vec![
            tokio::spawn(fleet.clone().follow_changes(feed)),
            tokio::spawn(fleet.clone().sweep()),
            tokio::spawn(fleet.clone().heartbeat_presence()),
        ];
        if let Some(rx) = snapshots {
            tasks.push(tokio::spawn(fleet.clone().follow_snapshots(rx)));
        }
        *fleet.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        fleet
    }

    pub fn instance(&self) -> &str {
        &self.inner.settings.instance
    }

    pub fn domain(&self) -> &Domain {
        &self.inner.domain
    }

    /// Identify a collector by its bearer credential and/or the client
    /// certificate it presented (mTLS; already verified against
    /// `tls.client_ca_file`). With both, they must name the same collector.
    pub async fn authenticate_with_cert(
        &self,
        bearer: Option<&str>,
        cert_collector: Option<String>,
    ) -> Result<Authenticated, FleetError> {
        let Some(cert_id) = cert_collector else {
            return self.authenticate(bearer).await;
        };
        if bearer.is_some() {
            let auth = self.authenticate(bearer).await?;
            if auth.collector.key != cert_id {
                return Err(self
                    .refuse_cert(&cert_id, "client certificate is for another collector")
                    .await);
            }
            return Ok(auth);
        }
        match self
            .inner
            .domain
            .store()
            .get::<Collector>(&cert_id)
            .await
            .map_err(DomainError::from)?
        {
            Some(collector) => Ok(Authenticated {
                collector,
                credential_id: String::new(),
            }),
            None => Err(self
                .refuse_cert(&cert_id, "client certificate names no enrolled collector")
                .await),
        }
    }

    async fn refuse_cert(&self, cert_id: &str, why: &str) -> FleetError {
        let actor = crate::domain::Actor::Collector {
            id: cert_id.to_string(),
        };
        self.inner
            .domain
            .audit_only(
                &actor,
                "collector.authenticate",
                cert_id,
                &format!("refused: {why}"),
                serde_json::Value::Null,
            )
            .await;
        FleetError::Domain(DomainError::Unauthenticated(why.to_string()))
    }

    /// Check a collector's bearer credential.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Authenticated, FleetError> {
        let token = bearer
            .ok_or_else(|| DomainError::Unauthenticated("send the collector credential as a bearer token".into()))?;
        let collector = self.inner.domain.authenticate_collector(token).await?;
        let credential_id = secrets::parse(SecretKind::Collector, token)
            .map(|(id, _)| id.to_string())
            .unwrap_or_default();
        Ok(Authenticated {
            collector,
            credential_id,
        })
    }

    /// Open a streaming session (gRPC, WebSocket). The receiver carries
    /// everything the server sends; it ends when the session is closed or
    /// replaced.
    pub async fn open_stream(
        &self,
        auth: Authenticated,
        transport: Transport,
    ) -> Result<(Conn, mpsc::Receiver<pb::ServerToAgent>), FleetError> {
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        let conn = self.open(auth, transport, Some(tx)).await?;
        Ok((conn, rx))
    }

    async fn open(&self, auth: Authenticated, transport: Transport, push: Push) -> Result<Conn, FleetError> {
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
        let agent = AgentState::new(&id, status.clone()).ok_or(FleetError::Session(SessionError::WrongInstance {
            presented: id.clone(),
            expected: "a UUID collector id".into(),
        }))?;
        let collector = auth.collector.value;
        // One read of the pinned config both marks the session pinned and,
        // when there is one, is its desired config (connect is a hot path).
        let (pinned, desired) = match self.assignment(&id).await? {
            Some(a) => (true, Some(Arc::new(Desired::from((&a.value, "assignment"))))),
            None => (false, self.resolve_for(&collector, false).await?),
        };
        let ctx = Ctx {
            agent,
            collector,
            pinned,
            desired,
            commands_pending: true,
        };
        let epoch = self.inner.next_epoch.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            epoch,
            transport,
            credential_id: auth.credential_id,
            push,
            ctx: Arc::new(tokio::sync::Mutex::new(ctx)),
            last_seen: Instant::now(),
        };
        let replaced = self.sessions().insert(id.clone(), entry);
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

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves a consistent map (every
        // section is a single insert/remove), so recover from poisoning.
        self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handle one message of a streaming session; the answer goes out on the
    /// session's stream.
    pub async fn handle_stream(&self, conn: &Conn, msg: pb::AgentToServer) -> Result<(), FleetError> {
        let uid = msg.instance_uid.clone();
        let (reply, push, disconnect) = match self.process(conn, msg).await {
            Ok(x) => x,
            Err(FleetError::Session(e)) => {
                // Tell the agent why before closing (OpAMP error response).
                if let Some((_, Some(push))) = self.session_of(&conn.collector_id) {
                    let refusal = pb::ServerToAgent {
                        instance_uid: uid,
                        error_response: Some(pb::ServerErrorResponse {
                            r#type: pb::ServerErrorResponseType::BadRequest as i32,
                            error_message: e.to_string(),
                            details: None,
                        }),
                        ..Default::default()
                    };
                    let _ = push.send(refusal).await;
                }
                self.close(conn);
                return Err(FleetError::Session(e));
            }
            Err(e) => return Err(e),
        };
        if let (Some(push), Some(reply)) = (push, reply) {
            // The agent paces its own messages, so waiting for room here
            // only slows down that agent.
            if push.send(reply).await.is_err() {
                return Err(FleetError::Closed);
            }
        }
        if disconnect {
            self.close(conn);
        }
        Ok(())
    }

    /// Handle one OpAMP HTTP request: the session lives across requests and
    /// ends by liveness timeout or agent_disconnect.
    pub async fn handle_poll(
        &self,
        auth: Authenticated,
        msg: pb::AgentToServer,
    ) -> Result<pb::ServerToAgent, FleetError> {
        let existing = self
            .sessions()
            .get(&auth.collector.key)
            .filter(|e| e.transport == Transport::Http)
            .map(|e| e.epoch);
        let conn = match existing {
            Some(epoch) => Conn {
                collector_id: auth.collector.key.clone(),
                epoch,
            },
            None => self.open(auth, Transport::Http, None).await?,
        };
        let (reply, _, disconnect) = self.process(&conn, msg).await?;
        if disconnect {
            self.close(&conn);
        }
        Ok(reply.unwrap_or_default())
    }

    async fn process(
        &self,
        conn: &Conn,
        msg: pb::AgentToServer,
    ) -> Result<(Option<pb::ServerToAgent>, Push, bool), FleetError> {
        let (ctx, push) = {
            let mut sessions = self.sessions();
            let entry = sessions
                .get_mut(&conn.collector_id)
                .filter(|e| e.epoch == conn.epoch)
                .ok_or(FleetError::Closed)?;
            entry.last_seen = Instant::now();
            (entry.ctx.clone(), entry.push.clone())
        };
        let now = self.inner.domain.clock().now();
        let mut ctx = ctx.lock().await;
        let desired = ctx.desired.clone();
        let processed = ctx.agent.process(msg, desired.as_deref(), now)?;
        if processed.status_changed {
            self.inner.writer.put(ctx.agent.status.clone());
        }
        let mut reply = processed.reply;
        if let Some(command) = self.take_command(&conn.collector_id, &mut ctx).await {
            // A command travels alone (OpAMP): after the reply on a stream,
            // instead of it over HTTP (the rest follows on the next poll).
            match &push {
                Some(p) => {
                    let _ = p.try_send(command);
                }
                None => reply = command,
            }
        }
        Ok((Some(reply), push, processed.disconnect))
    }

    /// End a session (the transport closed, or the agent said goodbye).
    pub fn close(&self, conn: &Conn) {
        let removed = {
            let mut sessions = self.sessions();
            match sessions.get(&conn.collector_id) {
                Some(e) if e.epoch == conn.epoch => sessions.remove(&conn.collector_id),
                _ => None,
            }
        };
        if let Some(entry) = removed {
            self.disconnected(entry);
        }
    }

    fn disconnected(&self, entry: Entry) {
        self.inner.metrics.connected_collectors.dec();
        let writer = self.inner.writer.clone();
        let now = self.inner.domain.clock().now();
        tokio::spawn(async move {
            let mut status = entry.ctx.lock().await.agent.status.clone();
            status.connected = false;
            status.last_seen = Some(now);
            writer.put(status);
        });
    }

    /// Graceful stop: every collector held here is stored as disconnected
    /// and this instance's presence row is removed, so other instances show
    /// the truth at once while the collectors reconnect through them.
    pub async fn shutdown(&self) {
        for task in self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        let entries: Vec<Entry> = self.sessions().drain().map(|(_, e)| e).collect();
        let now = self.inner.domain.clock().now();
        for entry in &entries {
            let mut status = entry.ctx.lock().await.agent.status.clone();
            status.connected = false;
            status.last_seen = Some(now);
            self.inner.writer.put(status);
        }
        self.inner.metrics.connected_collectors.set(0);
        self.inner.writer.flush(self.inner.domain.store()).await;
        let gone = Op::delete::<ServerInstance>(&self.inner.settings.instance, Expect::Any);
        if let Err(e) = self.inner.domain.store().commit(vec![gone]).await {
            tracing::warn!(error = %e, "Could not remove this instance's presence row.");
        }
        tracing::info!(
            collectors = entries.len(),
            "Marked this instance's collectors disconnected."
        );
    }

    /// Sessions held by this instance.
    pub fn connected_count(&self) -> usize {
        self.sessions().len()
    }

    /// The in-memory status of a collector whose session this instance holds
    /// (fresher than the stored one: it has the latest `last_seen`).
    pub async fn live_status(&self, collector_id: &str) -> Option<(CollectorStatus, Option<Arc<Desired>>)> {
        let ctx = self.sessions().get(collector_id).map(|e| e.ctx.clone())?;
        let ctx = ctx.lock().await;
        Some((ctx.agent.status.clone(), ctx.desired.clone()))
    }

    // ---- desired config ----

    async fn assignment(&self, key: &str) -> Result<Option<Versioned<ConfigAssignment>>, DomainError> {
        Ok(self.inner.domain.store().get::<ConfigAssignment>(key).await?)
    }

    async fn default_desired(&self) -> Result<Option<Arc<Desired>>, DomainError> {
        if let Ok(guard) = self.inner.default.read() {
            if let Some(d) = guard.as_ref() {
                return Ok(d.clone());
            }
        }
        let loaded = self
            .assignment(DEFAULT_ASSIGNMENT)
            .await?
            .map(|a| Arc::new(Desired::from((&a.value, "default"))));
        if let Ok(mut guard) = self.inner.default.write() {
            *guard = Some(loaded.clone());
        }
        Ok(loaded)
    }

    /// The config store's config for these labels, if it routes any
    /// pipeline to them (a config without pipelines would be refused by
    /// the collector, so it is never offered).
    fn rendered(&self, labels: &Labels) -> Option<Arc<Desired>> {
        let snapshot = self.inner.config_store.as_ref()?.current()?;
        let mut cache = self.inner.renders.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Where a collector's config comes from, in order: a config pinned to
    /// it, the config store for its labels, the fleet default.
    async fn resolve(&self, ctx: &Ctx) -> Result<Option<Arc<Desired>>, DomainError> {
        self.resolve_for(&ctx.collector, ctx.pinned).await
    }

    /// The order itself; `pinned` says whether a pinned config may exist
    /// (sessions know, saving a store read when none does).
    async fn resolve_for(&self, collector: &Collector, pinned: bool) -> Result<Option<Arc<Desired>>, DomainError> {
        if pinned {
            if let Some(a) = self.assignment(&collector.id).await? {
                return Ok(Some(Arc::new(Desired::from((&a.value, "assignment")))));
            }
        }
        if let Some(d) = self.rendered(&collector.labels) {
            return Ok(Some(d));
        }
        self.default_desired().await
    }

    /// The desired config of any collector (for the API), wherever it is
    /// connected.
    pub async fn desired_for(&self, collector: &Collector) -> Result<Option<Arc<Desired>>, DomainError> {
        self.resolve_for(collector, true).await
    }

    /// A new valid commit is served: re-resolve every session; only those
    /// whose config hash changed get a push.
    async fn follow_snapshots(self, mut rx: tokio::sync::watch::Receiver<Option<Arc<crate::configstore::Snapshot>>>) {
        while rx.changed().await.is_ok() {
            let commit = rx.borrow_and_update().as_ref().map(|s| s.revision.commit.clone());
            let started = Instant::now();
            let all: Vec<(SharedCtx, Push)> = self
                .sessions()
                .values()
                .map(|e| (e.ctx.clone(), e.push.clone()))
                .collect();
            let mut pushed = 0usize;
            for (ctx, push) in &all {
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

    /// Re-resolve a session's desired config and push it if it changed;
    /// returns whether it changed.
    async fn refresh(&self, ctx: &SharedCtx, push: &Push) -> bool {
        let mut ctx = ctx.lock().await;
        let desired = match self.resolve(&ctx).await {
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
            if push.try_send(msg).is_err() {
                tracing::debug!(collector_id = %ctx.collector.id, "Push queue full; the config is offered again on the next report.");
            }
        }
        true
    }

    // ---- reacting to changes from any instance ----

    async fn follow_changes(self, mut feed: ChangeFeed) {
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

    fn session_of(&self, id: &str) -> Option<(SharedCtx, Push)> {
        self.sessions().get(id).map(|e| (e.ctx.clone(), e.push.clone()))
    }

    async fn on_change(&self, change: Change) {
        match change.table {
            Table::Collectors => {
                let Some((ctx, push)) = self.session_of(&change.key) else {
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
                if let Ok(mut d) = self.inner.default.write() {
                    *d = None;
                }
                let all: Vec<_> = self
                    .sessions()
                    .values()
                    .map(|e| (e.ctx.clone(), e.push.clone()))
                    .collect();
                for (ctx, push) in all {
                    self.refresh(&ctx, &push).await;
                }
            }
            Table::ConfigAssignments => {
                let Some((ctx, push)) = self.session_of(&change.key) else {
                    return;
                };
                ctx.lock().await.pinned = change.version.is_some();
                self.refresh(&ctx, &push).await;
            }
            Table::Commands if change.version.is_some() => {
                let Some((ctx, push)) = self.session_of(&change.key) else {
                    return;
                };
                let mut ctx = ctx.lock().await;
                ctx.commands_pending = true;
                // Streams get it now; HTTP agents on their next poll.
                if let Some(push) = push {
                    if let Some(cmd) = self.take_command(&change.key, &mut ctx).await {
                        let _ = push.try_send(cmd);
                    }
                }
            }
            Table::CollectorCredentials => {
                let holders: Vec<String> = self
                    .sessions()
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

    /// The pending command for a session, if it has one it can take. Only
    /// `restart` exists in OpAMP; queued duplicates collapse into one.
    async fn take_command(&self, collector_id: &str, ctx: &mut Ctx) -> Option<pb::ServerToAgent> {
        if !ctx.commands_pending || !ctx.agent.accepts_restart() {
            return None;
        }
        ctx.commands_pending = false;
        let commands = match self.inner.domain.take_commands(collector_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Could not take pending commands.");
                return None;
            }
        };
        if !commands.iter().any(|c| c.kind == "restart") {
            return None;
        }
        self.inner
            .domain
            .audit_only(
                &crate::domain::Actor::System,
                "collector.restart",
                collector_id,
                "delivered",
                serde_json::Value::Null,
            )
            .await;
        Some(pb::ServerToAgent {
            instance_uid: ctx.agent.uid.to_vec(),
            capabilities: session::SERVER_CAPABILITIES,
            command: Some(pb::ServerToAgentCommand {
                r#type: pb::CommandType::Restart as i32,
            }),
            ..Default::default()
        })
    }

    /// Close a session from the server side.
    fn kick(&self, collector_id: &str, why: &str) {
        let removed = self.sessions().remove(collector_id);
        if let Some(entry) = removed {
            tracing::info!(collector_id, why, "Closed a collector session.");
            self.disconnected(entry);
        }
    }

    async fn resync(&self) {
        if let Ok(mut d) = self.inner.default.write() {
            *d = None;
        }
        let all: Vec<(String, SharedCtx, Push)> = self
            .sessions()
            .iter()
            .map(|(k, e)| (k.clone(), e.ctx.clone(), e.push.clone()))
            .collect();
        for (id, ctx, push) in all {
            match self.inner.domain.store().get::<Collector>(&id).await {
                Ok(Some(c)) => {
                    let pinned = matches!(self.assignment(&id).await, Ok(Some(_)));
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

    // ---- liveness and presence ----

    async fn sweep(self) {
        let timeout = self.inner.settings.liveness_timeout;
        let mut tick = tokio::time::interval((timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)));
        loop {
            tick.tick().await;
            let expired: Vec<Entry> = {
                let mut sessions = self.sessions();
                let ids: Vec<String> = sessions
                    .iter()
                    .filter(|(_, e)| e.last_seen.elapsed() > timeout)
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

    async fn heartbeat_presence(self) {
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
}
