//! Figure 8 at scale: the fleet summary and a collectors page with many
//! collectors stored (100,000 by default). The records are written straight
//! through the storage facade into the server's embedded store before it
//! starts (enrolling that many through the API would take minutes and
//! measure enrollment again); then a `linkmesh serve` process on that file
//! answers the requests, as after a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use linkmesh::clock::Timestamp;
use linkmesh::domain::{Collector, CollectorStatus, HealthView, RemoteConfigView};
use linkmesh::storage::{Expect, Op, Store};
use serde::Serialize;

use crate::linkmesh::{latencies, Server};

#[derive(Debug, Default, Serialize)]
pub struct Stored {
    pub n: usize,
    /// `linkmesh serve` start -> ready (the fleet index is built from the
    /// store at start-up).
    pub ready_s: f64,
    /// Sorted request latencies.
    pub summary_ms: Vec<f64>,
    pub page_ms: Vec<f64>,
}

/// Records per commit while filling.
const CHUNK: usize = 1000;

async fn fill(path: &Path, n: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let store = Store::open_embedded(path).await?;
    let now = Timestamp(1_764_000_000_000);
    for start in (0..n).step_by(CHUNK) {
        let mut ops = Vec::with_capacity(2 * CHUNK);
        for i in start..(start + CHUNK).min(n) {
            let id = uuid::Uuid::now_v7().hyphenated().to_string();
            let labels = [("role", "bench".to_string()), ("shard", (i % 10).to_string())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let c = Collector {
                id: id.clone(),
                name: format!("stored-{i}"),
                labels,
                enrolled_at: now,
                enrollment_token_id: "bench".into(),
                credential_ids: vec![],
                enrolled_on_first_contact: false,
                credential_adopted_at: None,
                superseded_credential_ids: vec![],
                rotation_requested_at: None,
            };
            // Last held by an instance that is gone (no presence row):
            // disconnected, healthy when last seen, a config applied.
            let s = CollectorStatus {
                collector_id: id.clone(),
                connected: true,
                instance: "bench-gone".into(),
                transport: "grpc".into(),
                last_seen: Some(now),
                health: Some(HealthView {
                    healthy: true,
                    ..Default::default()
                }),
                remote_config: Some(RemoteConfigView {
                    status: "APPLIED".into(),
                    hash: "00".repeat(32),
                    error_message: String::new(),
                }),
                ..Default::default()
            };
            ops.push(Op::put(&id, &c, Expect::Absent)?);
            ops.push(Op::put(&id, &s, Expect::Absent)?);
        }
        store.commit(ops).await?;
    }
    store.idle().await;
    Ok(())
}

pub async fn run(dir: &Path, n: usize, requests: usize) -> anyhow::Result<Stored> {
    let t = Instant::now();
    fill(&dir.join("data/linkmesh.redb"), n).await?;
    eprintln!("  stored {n} collectors in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let srv = Server::start(dir, "").await?;
    let ready_s = t.elapsed().as_secs_f64();
    srv.summary_until(Duration::from_secs(60), |s| s["total"].as_u64() == Some(n as u64))
        .await?;
    let page = "/api/v1/collectors?limit=100&selector=role%3Dbench%2Cshard%3D3";
    let out = Stored {
        n,
        ready_s,
        summary_ms: latencies(&srv, "/api/v1/fleet/summary", requests).await?,
        page_ms: latencies(&srv, page, requests).await?,
    };
    srv.stop().await;
    Ok(out)
}
