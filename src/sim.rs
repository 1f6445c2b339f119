//! A simulated fleet: N collectors that enroll, connect over gRPC, OpAMP
//! WebSocket or OpAMP HTTP, apply pushed configs, report status and health,
//! and heartbeat. Used by `linkmesh-sim` (load, demos) and by the tests.
//!
//! Every simulated collector has its own connection (as real ones do);
//! spread them over several source addresses (`source_addrs`) to go past the
//! ephemeral ports of one address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::proto::opamp_msgs as pb;
use crate::proto::service::collector_service_client::CollectorServiceClient;
use crate::proto::service::EnrollRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimTransport {
    Grpc,
    WebSocket,
    Http,
}

impl std::str::FromStr for SimTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(SimTransport::Grpc),
            "ws" | "websocket" => Ok(SimTransport::WebSocket),
            "http" => Ok(SimTransport::Http),
            other => Err(format!("unknown transport {other:?} (grpc, ws, http)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub transport: SimTransport,
    /// The web listener, e.g. `http://127.0.0.1:8080` (OpAMP HTTP/WS).
    pub http_base: String,
    /// The gRPC listener, e.g. `http://127.0.0.1:4320` (gRPC enrollment and
    /// sessions).
    pub grpc: String,
    pub collectors: usize,
    pub enrollment_token: String,
    /// Labels reported at enrollment: collector `i` takes set
    /// `i % label_sets.len()`; `{i}` in a value becomes the index.
    pub label_sets: Vec<BTreeMap<String, String>>,
    pub heartbeat: Duration,
    /// Report FAILED (with an error message) for configs containing this.
    pub fail_when_config_contains: Option<String>,
    /// Local addresses to connect from, round-robin (empty: any).
    pub source_addrs: Vec<IpAddr>,
    /// Enrollments and connections in flight at once.
    pub concurrency: usize,
}

/// How simulated agents behave beyond the defaults (which enroll through
/// the API, accept remote config and restart, and report health).
#[derive(Debug, Clone, Default)]
pub struct SimBehaviour {
    /// No explicit enrollment: connect with only the enrollment token as
    /// bearer and an instance_uid of the agent's own, as a standard OpAMP
    /// agent configured with the server URL and the token does.
    pub token_only: bool,
    /// Report AcceptsOpAMPConnectionSettings and adopt the credential the
    /// server offers (`ConnectionSettingsOffers.opamp` Authorization header),
    /// reconnecting with it.
    pub accepts_connection_settings: bool,
    /// Report AvailableComponents: kind (`receivers`, `processors`,
    /// `exporters`, `extensions`, `connectors`) -> component types. Their
    /// ComponentHealth is reported per component too.
    pub available_components: Option<BTreeMap<String, Vec<String>>>,
}

/// What one simulated collector has seen.
#[derive(Debug, Clone, Default)]
pub struct AgentStats {
    pub collector_id: String,
    pub connected: bool,
    /// Hash (hex) of the last remote config received.
    pub config_hash: Option<String>,
    pub config_body: Option<String>,
    pub received_at: Option<Instant>,
    /// Remote configs received in all.
    pub received: u64,
    pub restarts: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// The bearer it connects with now (enrollment token or credential).
    pub bearer: String,
    /// Credentials adopted from connection-settings offers.
    pub credentials_adopted: u64,
    /// Where the server offered to receive its own metrics, and with which
    /// Authorization header.
    pub own_metrics: Option<(String, String)>,
    /// The server assigned its instance_uid (`AgentIdentification`).
    pub uid_assigned: bool,
}

pub struct Sim {
    stats: Arc<Mutex<Vec<AgentStats>>>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("enrollment of collector {index} failed: {message}")]
    Enroll { index: usize, message: String },
}

const CAPABILITIES: u64 = 0x1 | 0x2 | 0x4 | 0x400 | 0x800 | 0x1000 | 0x2000;
const ACCEPTS_OPAMP_CONNECTION_SETTINGS: u64 = 0x100;
const REPORTS_AVAILABLE_COMPONENTS: u64 = 0x4000;

/// AvailableComponents as the OpenTelemetry Collector reports them: one
/// entry per kind, its sub-components keyed by type.
fn available(components: &BTreeMap<String, Vec<String>>) -> pb::AvailableComponents {
    let mut out = pb::AvailableComponents::default();
    let mut hasher = Sha256::new();
    for (kind, types) in components {
        let mut details = pb::ComponentDetails::default();
        for t in types {
            hasher.update(format!("{kind}/{t};").as_bytes());
            details
                .sub_component_map
                .insert(t.clone(), pb::ComponentDetails::default());
        }
        out.components.insert(kind.clone(), details);
    }
    out.hash = hasher.finalize().to_vec();
    out
}

impl Sim {
    /// Enroll and connect every collector (returns once all are enrolled;
    /// connections come up in the background).
    pub async fn start(cfg: SimConfig) -> Result<Sim, SimError> {
        Sim::start_with(cfg, SimBehaviour::default()).await
    }

    /// As `start`, with agents behaving as `behaviour` says.
    pub async fn start_with(cfg: SimConfig, behaviour: SimBehaviour) -> Result<Sim, SimError> {
        let stats = Arc::new(Mutex::new(vec![AgentStats::default(); cfg.collectors]));
        let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SimError::Enroll {
                index: 0,
                message: e.to_string(),
            })?;
        let mut enrolls = Vec::new();
        for i in 0..cfg.collectors {
            let (cfg, gate) = (cfg.clone(), gate.clone());
            let token_only = behaviour.token_only;
            enrolls.push(tokio::spawn(async move {
                if token_only {
                    let uid = uuid::Uuid::now_v7().hyphenated().to_string();
                    return Ok((uid, cfg.enrollment_token.clone()));
                }
                let _permit = gate.acquire().await;
                enroll(&cfg, i)
                    .await
                    .map_err(|message| SimError::Enroll { index: i, message })
            }));
        }
        let mut creds = Vec::new();
        for e in enrolls {
            creds.push(e.await.map_err(|e| SimError::Enroll {
                index: 0,
                message: e.to_string(),
            })??);
        }
        let mut tasks = Vec::new();
        for (i, (id, credential)) in creds.into_iter().enumerate() {
            if let Ok(mut s) = stats.lock() {
                s[i].collector_id = id.clone();
                s[i].bearer = credential.clone();
            }
            let agent = Agent::new(
                i,
                id,
                credential,
                (cfg.clone(), behaviour.clone()),
                stats.clone(),
                http.clone(),
            );
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move { agent.run(gate).await }));
        }
        Ok(Sim { stats, tasks })
    }

    pub fn stats(&self) -> Vec<AgentStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Wait until `pred` holds for every collector, or the deadline passes.
    pub async fn wait_all(&self, deadline: Duration, pred: impl Fn(&AgentStats) -> bool) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if self.stats().iter().all(&pred) {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

fn label_values(cfg: &SimConfig, i: usize) -> BTreeMap<String, String> {
    let Some(set) = cfg.label_sets.get(i % cfg.label_sets.len().max(1)) else {
        return BTreeMap::new();
    };
    set.iter()
        .map(|(k, v)| (k.clone(), v.replace("{i}", &i.to_string())))
        .collect()
}

/// Enroll collector `i`: over gRPC for the gRPC transport, else over HTTP.
async fn enroll(cfg: &SimConfig, i: usize) -> Result<(String, String), String> {
    let uid = uuid::Uuid::now_v7();
    let name = format!("sim-{i}");
    let labels = label_values(cfg, i);
    match cfg.transport {
        SimTransport::Grpc => {
            let mut client = CollectorServiceClient::new(channel(cfg, i).await?);
            let r = client
                .enroll(EnrollRequest {
                    token: cfg.enrollment_token.clone(),
                    instance_uid: uid.as_bytes().to_vec(),
                    name,
                    labels: labels.into_iter().collect(),
                })
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                .into_inner();
            Ok((uid.hyphenated().to_string(), r.credential))
        }
        _ => {
            let body = serde_json::json!({ "token": cfg.enrollment_token, "instance_uid": uid.to_string(), "name": name, "labels": labels });
            let r = reqwest::Client::new()
                .post(format!("{}/api/v1/enroll", cfg.http_base))
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default()));
            }
            let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            let cred = v["credential"]
                .as_str()
                .ok_or("no credential in the answer")?
                .to_string();
            Ok((uid.hyphenated().to_string(), cred))
        }
    }
}

async fn channel(cfg: &SimConfig, i: usize) -> Result<tonic::transport::Channel, String> {
    let source = (!cfg.source_addrs.is_empty()).then(|| cfg.source_addrs[i % cfg.source_addrs.len()]);
    grpc_channel(&cfg.grpc, source).await
}

/// A gRPC channel (one TCP connection) to `uri`, from the local address
/// `source` when one is given.
///
/// From a source address the socket is bound before it connects, and a
/// plain bind to port 0 picks the port on its own: every port of that
/// address still in TIME_WAIT counts as taken, whatever it connected to.
/// After some 10,000 short connections from one address (enrollments, a
/// run a minute earlier) each bind searched for a free port, and bringing
/// a fleet up took 15–30 s instead of 3 (measured here: 5,000
/// bind+connect 0.6 s from a fresh address, 14–47 s with 10,000 of its
/// ports in TIME_WAIT). `IP_BIND_ADDRESS_NO_PORT` leaves the port to
/// `connect`, which picks it per destination and may reuse a TIME_WAIT
/// port on loopback: 25,000 in a row then took 0.7–1.3 s per 5,000.
pub async fn grpc_channel(uri: &str, source: Option<IpAddr>) -> Result<tonic::transport::Channel, String> {
    let ep = tonic::transport::Endpoint::from_shared(uri.to_string())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true);
    let connected = match source {
        None => ep.connect().await,
        Some(source) => {
            ep.connect_with_connector(tower::service_fn(move |to: http::Uri| connect_from(source, to)))
                .await
        }
    };
    connected.map_err(|e| format!("connect {uri}: {e}"))
}

async fn connect_from(
    source: IpAddr,
    to: http::Uri,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>> {
    let host = to.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = to.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{to} has no address of the family of {source}")))?;
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    bind_address_no_port(&socket)?;
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.set_nodelay(true)?;
    Ok(hyper_util::rt::TokioIo::new(socket.connect(addr).await?))
}

/// Defer the choice of the local port from `bind` to `connect` (Linux; see
/// `grpc_channel`). Elsewhere a no-op.
fn bind_address_no_port(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and a c_int option value of the
        // size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
    Ok(())
}

/// One simulated collector.
struct Agent {
    index: usize,
    uid: Vec<u8>,
    credential: String,
    cfg: SimConfig,
    behaviour: SimBehaviour,
    stats: Arc<Mutex<Vec<AgentStats>>>,
    http: reqwest::Client,
    seq: u64,
    /// A credential just adopted: drop the link and reconnect with it.
    reconnect: bool,
    remote: Option<pb::RemoteConfigStatus>,
    effective: Option<pb::EffectiveConfig>,
}

/// The server side of a connection, whatever the transport. Agents hold
/// one each, for their whole life: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Link {
    Grpc {
        tx: mpsc::Sender<pb::AgentToServer>,
        rx: tonic::Streaming<pb::ServerToAgent>,
    },
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>),
    Http,
}

impl Agent {
    fn new(
        index: usize,
        id: String,
        credential: String,
        (cfg, behaviour): (SimConfig, SimBehaviour),
        stats: Arc<Mutex<Vec<AgentStats>>>,
        http: reqwest::Client,
    ) -> Self {
        let uid = uuid::Uuid::parse_str(&id)
            .map(|u| u.as_bytes().to_vec())
            .unwrap_or_default();
        Agent {
            index,
            uid,
            credential,
            cfg,
            behaviour,
            stats,
            http,
            seq: 0,
            reconnect: false,
            remote: None,
            effective: None,
        }
    }

    fn update(&self, f: impl FnOnce(&mut AgentStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s[self.index]);
        }
    }

    fn message(&mut self, full: bool) -> pb::AgentToServer {
        self.seq += 1;
        let mut capabilities = CAPABILITIES;
        if self.behaviour.accepts_connection_settings {
            capabilities |= ACCEPTS_OPAMP_CONNECTION_SETTINGS;
        }
        if self.behaviour.available_components.is_some() {
            capabilities |= REPORTS_AVAILABLE_COMPONENTS;
        }
        let mut m = pb::AgentToServer {
            instance_uid: self.uid.clone(),
            sequence_num: self.seq,
            capabilities,
            ..Default::default()
        };
        if full {
            let kv = |k: &str, v: String| pb::KeyValue {
                key: k.into(),
                value: Some(pb::AnyValue {
                    value: Some(pb::any_value::Value::StringValue(v)),
                }),
            };
            m.agent_description = Some(pb::AgentDescription {
                identifying_attributes: vec![
                    kv("service.name", "linkmesh-sim".into()),
                    kv(
                        "service.instance.id",
                        uuid::Uuid::from_slice(&self.uid)
                            .map(|u| u.to_string())
                            .unwrap_or_default(),
                    ),
                ],
                non_identifying_attributes: vec![kv("host.name", format!("sim-{}", self.index))],
            });
            let components = self.behaviour.available_components.clone().unwrap_or_default();
            let healthy = |status: &str| pb::ComponentHealth {
                healthy: true,
                status: status.into(),
                ..Default::default()
            };
            let mut health = healthy("running");
            for (kind, types) in &components {
                for t in types {
                    let singular = kind.trim_end_matches('s');
                    health
                        .component_health_map
                        .insert(format!("{singular}:{t}"), healthy("StatusOK"));
                }
            }
            m.health = Some(health);
            if self.behaviour.available_components.is_some() {
                m.available_components = Some(available(&components));
            }
            m.remote_config_status = self.remote.clone();
            m.effective_config = self.effective.clone();
        }
        m
    }

    async fn run(mut self, gate: Arc<Semaphore>) {
        // Reconnect with a pause after failures, like a real agent.
        loop {
            let link = {
                let _permit = gate.acquire().await;
                self.connect().await
            };
            match link {
                Ok(link) => {
                    self.update(|s| s.connected = true);
                    let why = self.serve(link).await;
                    if self.reconnect {
                        // Not a failure: it switches to the offered credential.
                        self.reconnect = false;
                        self.update(|s| s.connected = false);
                        continue;
                    }
                    self.update(|s| {
                        s.connected = false;
                        s.errors += 1;
                        s.last_error = Some(why);
                    });
                }
                Err(e) => self.update(|s| {
                    s.errors += 1;
                    s.last_error = Some(e);
                }),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn connect(&mut self) -> Result<Link, String> {
        match self.cfg.transport {
            SimTransport::Grpc => {
                let mut client = CollectorServiceClient::new(channel(&self.cfg, self.index).await?);
                let (tx, rx) = mpsc::channel(8);
                let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                let bearer = format!("Bearer {}", self.credential)
                    .parse()
                    .map_err(|_| "bad credential")?;
                req.metadata_mut().insert("authorization", bearer);
                let first = self.message(true);
                tx.send(first).await.map_err(|e| e.to_string())?;
                let rx = client
                    .session(req)
                    .await
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                    .into_inner();
                Ok(Link::Grpc { tx, rx })
            }
            SimTransport::WebSocket => {
                let url = format!("{}/v1/opamp", self.cfg.http_base.replacen("http", "ws", 1));
                let mut req = url.into_client_request().map_err(|e| e.to_string())?;
                let bearer = format!("Bearer {}", self.credential)
                    .parse()
                    .map_err(|_| "bad credential")?;
                req.headers_mut().insert("authorization", bearer);
                let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
                let first = self.message(true);
                ws.send(WsMessage::Binary(crate::transport::opamp_ws::frame(&first).into()))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Link::Ws(Box::new(ws)))
            }
            SimTransport::Http => Ok(Link::Http),
        }
    }

    /// Exchange messages until the link breaks; returns why.
    async fn serve(&mut self, mut link: Link) -> String {
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.tick().await;
        if let Link::Http = link {
            let first = self.message(true);
            if let Err(e) = self.exchange_http(first).await {
                return e;
            }
        }
        loop {
            let incoming = match &mut link {
                Link::Grpc { rx, .. } => tokio::select! {
                    m = rx.message() => Some(match m { Ok(Some(m)) => m, Ok(None) => return "stream closed".into(), Err(s) => return format!("{}: {}", s.code(), s.message()) }),
                    _ = tick.tick() => None,
                },
                Link::Ws(ws) => tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(WsMessage::Binary(b))) => match b.first() {
                            Some(0) => match pb::ServerToAgent::decode(&b[1..]) { Ok(m) => Some(m), Err(e) => return e.to_string() },
                            _ => return "unexpected frame header".into(),
                        },
                        Some(Ok(WsMessage::Close(_))) | None => return "websocket closed".into(),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return e.to_string(),
                    },
                    _ = tick.tick() => None,
                },
                Link::Http => {
                    tick.tick().await;
                    None
                }
            };
            let out = match incoming {
                Some(m) => self.react(m),
                None => Some(self.message(false)),
            };
            if let Some(out) = out {
                let sent = match &mut link {
                    Link::Grpc { tx, .. } => tx.send(out).await.map_err(|e| e.to_string()),
                    Link::Ws(ws) => ws
                        .send(WsMessage::Binary(crate::transport::opamp_ws::frame(&out).into()))
                        .await
                        .map_err(|e| e.to_string()),
                    Link::Http => self.exchange_http(out).await,
                };
                if let Err(e) = sent {
                    return e;
                }
            }
            if self.reconnect {
                return "reconnecting with the offered credential".into();
            }
        }
    }

    /// One HTTP poll, and the follow-ups the answer calls for.
    async fn exchange_http(&mut self, mut msg: pb::AgentToServer) -> Result<(), String> {
        for _ in 0..4 {
            let r = self
                .http
                .post(format!("{}/v1/opamp", self.cfg.http_base))
                .bearer_auth(&self.credential)
                .header("content-type", "application/x-protobuf")
                .body(msg.encode_to_vec())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default()));
            }
            let body = r.bytes().await.map_err(|e| e.to_string())?;
            let reply = pb::ServerToAgent::decode(body.as_ref()).map_err(|e| e.to_string())?;
            match self.react(reply) {
                Some(next) => msg = next,
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// React to a server message; returns what to send back, if anything.
    fn react(&mut self, m: pb::ServerToAgent) -> Option<pb::AgentToServer> {
        if let Some(id) = m
            .agent_identification
            .as_ref()
            .filter(|i| i.new_instance_uid.len() == 16)
        {
            self.uid = id.new_instance_uid.clone();
            let uid = uuid::Uuid::from_slice(&self.uid)
                .map(|u| u.to_string())
                .unwrap_or_default();
            self.update(|s| {
                s.collector_id = uid;
                s.uid_assigned = true;
            });
        }
        if let Some(offers) = &m.connection_settings {
            self.adopt(offers);
        }
        if m.command.is_some() {
            self.update(|s| s.restarts += 1);
            return Some(self.message(true));
        }
        if let Some(rc) = m.remote_config {
            let files = rc.config.map(|c| c.config_map).unwrap_or_default();
            let body: String = files
                .values()
                .map(|f| String::from_utf8_lossy(&f.body).into_owned())
                .collect::<Vec<_>>()
                .join("\n");
            let failed = self
                .cfg
                .fail_when_config_contains
                .as_ref()
                .filter(|needle| body.contains(needle.as_str()));
            let status = match failed {
                Some(needle) => pb::RemoteConfigStatus {
                    last_remote_config_hash: rc.config_hash.clone(),
                    status: pb::RemoteConfigStatuses::Failed as i32,
                    error_message: format!("config rejected: contains {needle:?}"),
                },
                None => pb::RemoteConfigStatus {
                    last_remote_config_hash: rc.config_hash.clone(),
                    status: pb::RemoteConfigStatuses::Applied as i32,
                    error_message: String::new(),
                },
            };
            let applied = failed.is_none();
            let hash = hex::encode(&rc.config_hash);
            self.update(|s| {
                s.config_hash = Some(hash);
                s.config_body = Some(body);
                s.received_at = Some(Instant::now());
                s.received += 1;
            });
            self.remote = Some(status.clone());
            if applied {
                self.effective = Some(pb::EffectiveConfig {
                    config_map: Some(pb::AgentConfigMap { config_map: files }),
                });
            }
            let mut out = self.message(false);
            out.remote_config_status = Some(status);
            out.effective_config = self.effective.clone().filter(|_| applied);
            return Some(out);
        }
        if m.flags & 0x1 != 0 {
            return Some(self.message(true));
        }
        None
    }
}

impl Agent {
    /// Take the offered settings: the own-metrics destination is noted; a
    /// new OpAMP Authorization header replaces the bearer and the agent
    /// reconnects with it (as an OpAMP client does after an offer).
    fn adopt(&mut self, offers: &pb::ConnectionSettingsOffers) {
        let auth = |h: &Option<pb::Headers>| {
            h.as_ref()?
                .headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case("authorization"))
                .map(|h| h.value.clone())
        };
        if let Some(own) = &offers.own_metrics {
            let metrics = (own.destination_endpoint.clone(), auth(&own.headers).unwrap_or_default());
            self.update(|s| s.own_metrics = Some(metrics));
        }
        if !self.behaviour.accepts_connection_settings {
            return;
        }
        let offered = offers.opamp.as_ref().and_then(|o| auth(&o.headers));
        let Some(bearer) = offered.and_then(|v| v.strip_prefix("Bearer ").map(str::to_string)) else {
            return;
        };
        if bearer != self.credential {
            self.credential = bearer.clone();
            self.reconnect = true;
            self.update(|s| {
                s.bearer = bearer;
                s.credentials_adopted += 1;
            });
        }
    }
}

/// Percentile of sorted durations (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
