//! The bare baseline: a tonic bidi-stream server with no application logic
//! on the stack LinkMesh uses (the same generated service and its 1 KiB
//! codec buffers, the same server settings), and its clients. A broadcast
//! sends one ~2 KiB message to every stream and returns when every stream
//! has acked it (the client echoes the body, as a collector reports its
//! effective config). A heartbeat is answered with an empty ServerToAgent,
//! as OpAMP asks of a server and LinkMesh does (acks are not: the
//! broadcast figure stays what it was). Whatever LinkMesh costs above these
//! figures is its own.
//!
//! After `answer-acks` it also answers each ack, as OpAMP requires of a
//! server for every status report (LinkMesh does): broadcasts then measure
//! the floor of the protocol itself, one more message per stream and push.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::Stream;
use linkmesh::proto::opamp_msgs as pb;
use linkmesh::proto::service::collector_service_client::CollectorServiceClient;
use linkmesh::proto::service::collector_service_server::{CollectorService, CollectorServiceServer};
use linkmesh::proto::service::{EnrollRequest, EnrollResponse};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Same bound as LinkMesh's per-session push queue.
const PUSH_QUEUE: usize = 16;

#[derive(Default)]
struct Hub {
    // std Mutex: held only to push or clone the list of senders.
    streams: Mutex<Vec<mpsc::Sender<Result<pb::ServerToAgent, Status>>>>,
    /// The broadcast being acked, and how many acks it has.
    round: AtomicU64,
    acked: AtomicUsize,
    all_acked: Notify,
    target: AtomicUsize,
    /// Answer each ack with an empty ServerToAgent (`answer-acks`).
    answer_acks: AtomicBool,
}

struct Bare {
    hub: Arc<Hub>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ServerToAgent, Status>> + Send>>;

#[tonic::async_trait]
impl CollectorService for Bare {
    async fn enroll(&self, _: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        Err(Status::unimplemented("the baseline has no enrollment"))
    }

    type SessionStream = OutStream;

    async fn session(&self, req: Request<Streaming<pb::AgentToServer>>) -> Result<Response<OutStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        self.hub
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx.clone());
        let hub = self.hub.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                // A heartbeat is answered, as OpAMP asks of a server (the
                // server responds to every status report): LinkMesh does,
                // so the floor does too.
                let Some(status) = m.remote_config_status else {
                    let answer = pb::ServerToAgent {
                        instance_uid: m.instance_uid,
                        ..Default::default()
                    };
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let round = hub.round.load(Ordering::Acquire);
                if status.last_remote_config_hash == round.to_be_bytes()
                    && hub.acked.fetch_add(1, Ordering::AcqRel) + 1 == hub.target.load(Ordering::Acquire)
                {
                    hub.all_acked.notify_one();
                }
                if hub.answer_acks.load(Ordering::Acquire) {
                    let answer = pb::ServerToAgent {
                        instance_uid: m.instance_uid,
                        ..Default::default()
                    };
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A config push of about 2 KiB, as both systems send it.
pub fn body(tag: &str) -> String {
    let mut s = format!("# bench push {tag}\nreceivers:\n  otlp:\n    protocols:\n      grpc: {{}}\n");
    while s.len() < 2048 {
        s.push_str("# padding to a realistic config size ..........................\n");
    }
    s
}

/// `baseline-server`: serve until stdin closes. Commands: `broadcast SEQ`
/// answers `acked MICROS ACKS`; `streams` answers `streams N`;
/// `answer-acks` answers `answering` and from then on answers each ack.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let hub = Arc::new(Hub::default());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .add_service(CollectorServiceServer::new(Bare { hub: hub.clone() }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    println!("listening");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("broadcast"), Some(seq)) => {
                let seq: u64 = seq.parse().context("broadcast SEQ")?;
                let (micros, acks) = broadcast(&hub, seq).await;
                println!("acked {micros} {acks}");
            }
            (Some("streams"), _) => {
                println!(
                    "streams {}",
                    hub.streams.lock().unwrap_or_else(|p| p.into_inner()).len()
                );
            }
            (Some("answer-acks"), _) => {
                hub.answer_acks.store(true, Ordering::Release);
                println!("answering");
            }
            (Some("quit"), _) => break,
            _ => println!("error unknown command {line:?}"),
        }
    }
    Ok(())
}

async fn broadcast(hub: &Hub, seq: u64) -> (u128, usize) {
    let streams: Vec<_> = hub.streams.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let start = Instant::now();
    hub.acked.store(0, Ordering::Release);
    hub.target.store(streams.len(), Ordering::Release);
    hub.round.store(seq, Ordering::Release);
    let file = pb::AgentConfigFile {
        body: body(&seq.to_string()).into_bytes(),
        content_type: "application/yaml".into(),
    };
    let msg = pb::ServerToAgent {
        remote_config: Some(pb::AgentRemoteConfig {
            config: Some(pb::AgentConfigMap {
                config_map: [("collector.yaml".to_string(), file)].into_iter().collect(),
            }),
            config_hash: seq.to_be_bytes().to_vec(),
        }),
        ..Default::default()
    };
    for tx in &streams {
        let _ = tx.send(Ok(msg.clone())).await;
    }
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while hub.acked.load(Ordering::Acquire) < streams.len() {
            // notify_one keeps a permit, so an ack between the check and
            // the wait is not lost.
            hub.all_acked.notified().await;
        }
    })
    .await;
    let _ = waited;
    (start.elapsed().as_micros(), hub.acked.load(Ordering::Acquire))
}

/// Baseline agents: one connection and one stream each; every config is
/// acked with the body echoed; a tiny heartbeat every `heartbeat`.
pub async fn agents(
    grpc: String,
    count: usize,
    source: Option<IpAddr>,
    heartbeat: Duration,
    up: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(64));
    for i in 0..count {
        let (grpc, gate, up) = (grpc.clone(), gate.clone(), up.clone());
        tokio::spawn(async move {
            loop {
                let link = {
                    let _permit = gate.acquire().await;
                    open(&grpc, source, i).await
                };
                if let Ok((tx, inbound)) = link {
                    up.fetch_add(1, Ordering::AcqRel);
                    let _ = run_agent(tx, inbound, heartbeat).await;
                    up.fetch_sub(1, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    Ok(())
}

type Link = (mpsc::Sender<pb::AgentToServer>, Streaming<pb::ServerToAgent>);

async fn open(grpc: &str, source: Option<IpAddr>, i: usize) -> anyhow::Result<Link> {
    // The simulator's way to connect, so both systems connect alike.
    let ch = linkmesh::sim::grpc_channel(grpc, source)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut client = CollectorServiceClient::new(ch);
    let (tx, rx) = mpsc::channel(8);
    let uid = uuid::Uuid::now_v7().as_bytes().to_vec();
    tx.send(pb::AgentToServer {
        instance_uid: uid,
        sequence_num: i as u64,
        ..Default::default()
    })
    .await?;
    let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

async fn run_agent(
    tx: mpsc::Sender<pb::AgentToServer>,
    mut inbound: Streaming<pb::ServerToAgent>,
    heartbeat: Duration,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    loop {
        tokio::select! {
            m = inbound.message() => {
                let Some(m) = m? else { return Ok(()) };
                let Some(rc) = m.remote_config else { continue };
                let ack = pb::AgentToServer {
                    remote_config_status: Some(pb::RemoteConfigStatus {
                        last_remote_config_hash: rc.config_hash,
                        status: pb::RemoteConfigStatuses::Applied as i32,
                        error_message: String::new(),
                    }),
                    effective_config: Some(pb::EffectiveConfig { config_map: rc.config }),
                    ..Default::default()
                };
                tx.send(ack).await?;
            }
            _ = tick.tick() => tx.send(pb::AgentToServer::default()).await?,
        }
    }
}
