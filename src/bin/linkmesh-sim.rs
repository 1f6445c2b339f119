//! `linkmesh-sim`: run a simulated fleet against a LinkMesh server and
//! measure config push latency.
//!
//!     linkmesh-sim --api-token lma_… --collectors 1000 --transport grpc --push-rounds 3

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use linkmesh::sim::{percentile, Sim, SimBehaviour, SimConfig, SimTransport};
use tokio::time::Instant;

#[derive(Parser)]
#[command(name = "linkmesh-sim", version, about = "Simulated collector fleet for LinkMesh")]
struct Args {
    /// Web/API listener of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// gRPC listener of the server.
    #[arg(long, default_value = "http://127.0.0.1:4320")]
    grpc: String,
    /// grpc, ws or http.
    #[arg(long, default_value = "grpc")]
    transport: SimTransport,
    #[arg(long, default_value_t = 100)]
    collectors: usize,
    /// Enrollment token; created with --api-token when absent.
    #[arg(long, env = "LINKMESH_SIM_ENROLLMENT_TOKEN")]
    enrollment_token: Option<String>,
    /// API token (editor) to create an enrollment token and push configs.
    #[arg(long, env = "LINKMESH_SIM_API_TOKEN")]
    api_token: Option<String>,
    /// Labels reported at enrollment, `k=v`; `{i}` becomes the index.
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Local source addresses, comma-separated (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    source_addrs: Vec<IpAddr>,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Config pushes to measure (each replaces the fleet default config).
    #[arg(long, default_value_t = 3)]
    push_rounds: usize,
    /// Keep the fleet running this long after the measurements.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Server process id, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connect with only the enrollment token as bearer (no explicit
    /// enrollment), as a standard OpAMP agent given the URL and the token.
    #[arg(long)]
    token_only: bool,
    /// Report AcceptsOpAMPConnectionSettings and switch to the credential
    /// the server offers.
    #[arg(long)]
    accept_connection_settings: bool,
    /// Report AvailableComponents (and per-component health), e.g.
    /// `receivers=otlp,filelog;exporters=otlphttp;processors=batch`.
    #[arg(long)]
    available_components: Option<String>,
}

/// `kind=type,type;kind=type` -> kind -> types.
fn parse_components(s: &str) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, types) = part
            .split_once('=')
            .with_context(|| format!("--available-components: {part:?} is not kind=type,type"))?;
        let types = types.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        out.insert(kind.trim().to_string(), types.collect());
    }
    Ok(out)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn api(
    client: &reqwest::Client,
    args: &Args,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let token = args.api_token.as_deref().context("--api-token is needed for this")?;
    let r = client
        .request(method, format!("{}{path}", args.server))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("{path}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

async fn main_async(args: Args) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let token = match &args.enrollment_token {
        Some(t) => t.clone(),
        None => {
            let body = serde_json::json!({ "name": "linkmesh-sim", "expires_in": "1h" });
            let v = api(&client, &args, reqwest::Method::POST, "/api/v1/enrollment-tokens", body).await?;
            v["token"].as_str().context("no token in the answer")?.to_string()
        }
    };
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').context("labels are k=v")?;
        labels.insert(k.to_string(), v.to_string());
    }
    let cfg = SimConfig {
        transport: args.transport,
        http_base: args.server.clone(),
        grpc: args.grpc.clone(),
        collectors: args.collectors,
        enrollment_token: token,
        label_sets: vec![labels],
        heartbeat: args.heartbeat,
        fail_when_config_contains: None,
        source_addrs: args.source_addrs.clone(),
        concurrency: args.concurrency,
    };
    let behaviour = SimBehaviour {
        token_only: args.token_only,
        accepts_connection_settings: args.accept_connection_settings,
        available_components: args.available_components.as_deref().map(parse_components).transpose()?,
    };
    let t0 = Instant::now();
    let sim = Sim::start_with(cfg, behaviour).await?;
    println!("enrolled {} collectors in {:.2?}", args.collectors, t0.elapsed());
    if !sim.wait_all(Duration::from_secs(120), |s| s.connected).await {
        let up = sim.stats().iter().filter(|s| s.connected).count();
        bail!("only {up} of {} collectors connected", args.collectors);
    }
    println!("connected {} collectors in {:.2?}", args.collectors, t0.elapsed());
    if let Some(pid) = args.server_pid {
        println!(
            "server RSS with {} collectors connected: {} MiB",
            args.collectors,
            rss_kib(pid).unwrap_or(0) / 1024
        );
    }
    if args.api_token.is_some() {
        for round in 0..args.push_rounds {
            let nonce = uuid::Uuid::new_v4().to_string();
            let body = serde_json::json!({ "files": { "collector.yaml": { "body": format!("# push {round} {nonce}\nreceivers:\n  otlp:\n    protocols:\n      grpc: {{}}\n"), "content_type": "application/yaml" } } });
            let start = Instant::now();
            api(
                &client,
                &args,
                reqwest::Method::PUT,
                "/api/v1/fleet/default-config",
                body,
            )
            .await?;
            let all = sim
                .wait_all(Duration::from_secs(120), |s| {
                    s.config_body.as_deref().is_some_and(|b| b.contains(&nonce))
                })
                .await;
            let mut lat: Vec<Duration> = sim
                .stats()
                .iter()
                .filter_map(|s| {
                    s.received_at
                        .filter(|_| s.config_body.as_deref().is_some_and(|b| b.contains(&nonce)))
                        .map(|t| t.saturating_duration_since(start))
                })
                .collect();
            lat.sort();
            println!(
                "push {round}: {}/{} received; latency p50 {:.1?} p90 {:.1?} p99 {:.1?} max {:.1?}",
                lat.len(),
                args.collectors,
                percentile(&lat, 50.0),
                percentile(&lat, 90.0),
                percentile(&lat, 99.0),
                lat.last().copied().unwrap_or_default()
            );
            if !all {
                bail!("not every collector received push {round}");
            }
            // Until the server shows them all APPLIED.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let s = api(
                    &client,
                    &args,
                    reqwest::Method::GET,
                    "/api/v1/fleet/summary",
                    serde_json::Value::Null,
                )
                .await?;
                if s["config"]["applied"].as_u64() == Some(args.collectors as u64) {
                    println!(
                        "push {round}: all {} APPLIED in the fleet summary after {:.2?}",
                        args.collectors,
                        start.elapsed()
                    );
                    if let Some(pid) = args.server_pid {
                        println!("push {round}: server RSS {} MiB", rss_kib(pid).unwrap_or(0) / 1024);
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the fleet summary never showed all APPLIED: {s}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let errors: u64 = sim.stats().iter().map(|s| s.errors).sum();
    println!("errors: {errors}");
    if let Some(pid) = args.server_pid {
        println!("server RSS after pushes: {} MiB", rss_kib(pid).unwrap_or(0) / 1024);
    }
    // While holding, say when a collector got a restart command, so a
    // person or a test sees a restart asked for in the console arrive.
    let until = Instant::now() + args.hold;
    let mut restarts: BTreeMap<String, u64> = BTreeMap::new();
    while Instant::now() < until {
        for s in sim.stats() {
            let seen = restarts.entry(s.collector_id.clone()).or_default();
            if s.restarts > *seen {
                *seen = s.restarts;
                println!("restart received by {}", s.collector_id);
            }
        }
        tokio::time::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
        )
        .await;
    }
    sim.stop();
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
