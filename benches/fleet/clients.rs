//! `clients`: one simulator process, for either system. LinkMesh's share
//! is `linkmesh::sim` (enrolls over gRPC, then one stream per collector,
//! acking configs with status and effective config); the baseline's share
//! is `baseline::agents`. It reports on stdout and takes commands on stdin:
//!
//! - `ready ENROLL_MS CONNECT_MS` once every collector is connected;
//! - `wait NONCE` -> `lat MISSING T…`: when each collector received the
//!   config containing NONCE (unix microseconds), once all have or after
//!   two minutes;
//! - `quit`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use linkmesh::sim::{Sim, SimBehaviour, SimConfig, SimTransport};
use tokio::io::AsyncBufReadExt;

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// `baseline` or `linkmesh`.
    #[arg(long)]
    system: String,
    #[arg(long)]
    grpc: String,
    /// LinkMesh's web listener.
    #[arg(long, default_value = "")]
    http: String,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    source: Option<IpAddr>,
    #[arg(long, default_value = "")]
    enrollment_token: String,
    /// `bench`: role=bench and shard=0..9 round-robin (the page filter
    /// selects one shard); `app`: labels the example config repository
    /// routes (role=app, env=prod, os=linux).
    #[arg(long, default_value = "bench")]
    labels: String,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
}

fn label_sets(kind: &str) -> Vec<BTreeMap<String, String>> {
    let set = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    match kind {
        "app" => vec![set(&[
            ("role", "app".into()),
            ("env", "prod".into()),
            ("os", "linux".into()),
        ])],
        _ => (0..10)
            .map(|s| set(&[("role", "bench".into()), ("shard", s.to_string())]))
            .collect(),
    }
}

fn unix_micros(at: Instant) -> u128 {
    let ago = Instant::now().saturating_duration_since(at);
    SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

pub async fn run(a: ClientArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let sim = match a.system.as_str() {
        "baseline" => {
            let up = Arc::new(AtomicUsize::new(0));
            crate::baseline::agents(a.grpc.clone(), a.count, a.source, a.heartbeat, up.clone()).await?;
            wait_until(Duration::from_secs(300), || up.load(Ordering::Acquire) >= a.count).await?;
            println!("ready 0 {}", start.elapsed().as_millis());
            None
        }
        "linkmesh" => {
            let cfg = SimConfig {
                transport: SimTransport::Grpc,
                http_base: a.http.clone(),
                grpc: a.grpc.clone(),
                collectors: a.count,
                enrollment_token: a.enrollment_token.clone(),
                label_sets: label_sets(&a.labels),
                heartbeat: a.heartbeat,
                fail_when_config_contains: None,
                source_addrs: a.source.into_iter().collect(),
                concurrency: 64,
            };
            let sim = Sim::start_with(cfg, SimBehaviour::default()).await?;
            let enrolled = start.elapsed();
            wait_until(Duration::from_secs(300), || sim.stats().iter().all(|s| s.connected)).await?;
            println!(
                "ready {} {}",
                enrolled.as_millis(),
                start.elapsed().saturating_sub(enrolled).as_millis()
            );
            Some(sim)
        }
        other => bail!("unknown system {other:?}"),
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), &sim) {
            (Some("wait"), Some(nonce), Some(sim)) => {
                let has = |s: &linkmesh::sim::AgentStats| s.config_body.as_deref().is_some_and(|b| b.contains(nonce));
                let _ = wait_until(Duration::from_secs(120), || sim.stats().iter().all(has)).await;
                let stats = sim.stats();
                let times: Vec<String> = stats
                    .iter()
                    .filter(|s| has(s))
                    .filter_map(|s| s.received_at)
                    .map(|t| unix_micros(t.into_std()).to_string())
                    .collect();
                println!("lat {} {}", stats.len() - times.len(), times.join(" "));
            }
            (Some("quit"), _, _) => break,
            _ => println!("error unknown command {line:?}"),
        }
    }
    if let Some(sim) = sim {
        sim.stop();
    }
    Ok(())
}

/// Poll (every 100 ms: the poll itself takes CPU from the server under
/// test) until `done`, or fail after `within`.
async fn wait_until(within: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + within;
    while !done() {
        if Instant::now() > end {
            bail!("not done within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
