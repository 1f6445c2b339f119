//! The fleet benchmark (`scripts/bench-fleet.sh`): LinkMesh beside a bare
//! tonic bidi-stream server on the same stack, both driven by the same
//! machinery in the same run, so every LinkMesh figure comes with the floor
//! it should be compared to. A `[[bench]]` target with its own `main`: it
//! is built only on request, never by `cargo build` or the test suite.
//!
//! One binary in three roles (a run starts copies of itself):
//! - `run N…` drives everything and writes the report (`report`);
//! - `baseline-server` is the bare server (`baseline`);
//! - `clients` is one simulator process of either system (`clients`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;

mod baseline;
mod clients;
mod linkmesh;
mod procs;
mod report;
mod stored;

use linkmesh::{applied, Server};
use procs::Proc;
use report::{Baseline, Figures, LinkMesh};

#[derive(Parser)]
#[command(
    name = "fleet-bench",
    about = "LinkMesh beside a bare tonic server, at several fleet sizes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure both systems at each fleet size and write the report.
    Run(RunArgs),
    /// The bare baseline server (started by `run`).
    BaselineServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// One simulator process (started by `run`).
    Clients(clients::ClientArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Fleet sizes.
    #[arg(default_values_t = [1000, 10000, 19000])]
    sizes: Vec<usize>,
    /// Directory for performance.md and performance.json (nothing written
    /// when absent: the table is printed either way).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fleet-wide pushes per size.
    #[arg(long, default_value_t = 5)]
    pushes: usize,
    /// Idle window at the largest size (store writes/s, CPU).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Sequential requests per API latency figure.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Durable commits of the raw redb loop.
    #[arg(long, default_value_t = 2000)]
    raw_commits: usize,
    /// Collectors stored (not connected) for the summary and page
    /// latencies at scale; 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    stored: usize,
    /// Parts of the run to leave out, comma-separated, to measure one
    /// figure again quickly (e.g. `--skip baseline,commit,raw,pages
    /// --pushes 0 --stored 0` for enrollment, connect and idle only). The
    /// table then shows what was left out as 0 or NaN: never write such a
    /// run to docs/.
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The bare baseline server and its clients.
    Baseline,
    /// Figure 5: git commit -> all APPLIED.
    Commit,
    /// The raw redb durable-commit loop.
    Raw,
    /// The collectors page and fleet summary latencies.
    Pages,
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`; it means nothing here.
    let cli = Cli::parse_from(std::env::args().filter(|a| a != "--bench"));
    procs::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::BaselineServer { listen } => baseline::serve(listen).await,
            Cmd::Clients(a) => clients::run(a).await,
        }
    })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let nofile = procs::raise_nofile();
    if let Some(&big) = a.sizes.iter().max() {
        if (nofile as usize) < big + 500 {
            bail!("the open-file limit ({nofile}) is too low for {big} collectors on one server");
        }
    }
    if a.out.is_some() && !a.skip.is_empty() {
        bail!("--skip leaves figures out: run it without --out");
    }
    let skip = |p: Part| a.skip.contains(&p);
    let work = tempfile::tempdir()?;
    let largest = a.sizes.iter().copied().max().unwrap_or(0);
    let mut all = Vec::new();
    // A size may be given more than once (to see how a figure varies): each
    // run has directories of its own.
    for (k, &n) in a.sizes.iter().enumerate() {
        let base = if skip(Part::Baseline) {
            Baseline::default()
        } else {
            eprintln!("== {n} collectors: bare baseline");
            run_baseline(n, &a, n == largest)
                .await
                .with_context(|| format!("baseline, {n}"))?
        };
        eprintln!("== {n} collectors: LinkMesh, fleet-wide pushes");
        let dir = work.path().join(format!("lm-{k}-{n}"));
        let mut lm = run_linkmesh(n, &a, n == largest, &dir)
            .await
            .with_context(|| format!("LinkMesh, {n}"))?;
        if !skip(Part::Commit) {
            eprintln!("== {n} collectors: LinkMesh, git commit to all APPLIED");
            lm.commit_applied_ms = Some(
                run_commit(n, &work.path().join(format!("cs-{k}-{n}")))
                    .await
                    .with_context(|| format!("LinkMesh commit, {n}"))?,
            );
        }
        let raw_per_s = if skip(Part::Raw) {
            f64::NAN
        } else {
            eprintln!("== {n}: raw redb durable-commit loop");
            raw_redb(&work.path().join(format!("raw-{k}-{n}.redb")), a.raw_commits)?
        };
        let f = Figures { n, base, lm, raw_per_s };
        eprintln!("{}", serde_json::to_string(&f)?);
        all.push(f);
    }
    let stored = if a.stored > 0 {
        eprintln!("== {} collectors stored: fleet summary and collectors page", a.stored);
        let st = stored::run(&work.path().join("stored"), a.stored, a.requests)
            .await
            .context("stored fleet")?;
        eprintln!("{}", serde_json::to_string(&st)?);
        Some(st)
    } else {
        None
    };
    let md = report::markdown(&all, &a.sizes, stored.as_ref());
    println!("{}", report::table(&all));
    if let Some(st) = &stored {
        println!("{}", report::stored_table(st));
    }
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        // The console's page timings come from scripts/bench-ui.sh and are
        // kept below the generated part.
        let path = out.join("performance.md");
        let kept = std::fs::read_to_string(&path)
            .ok()
            .and_then(|old| old.find(report::KEPT_SECTION).map(|at| old[at..].to_string()))
            .unwrap_or_default();
        std::fs::write(&path, md + &kept)?;
        std::fs::write(out.join("performance.json"), serde_json::to_string_pretty(&all)? + "\n")?;
        eprintln!("wrote {}", out.join("performance.md").display());
    }
    Ok(())
}

/// Wait until the server's RSS stops moving (allocations after the last
/// connection settle), at most 10 s; returns it in KiB.
async fn settled_rss(pid: u32) -> u64 {
    let mut last = procs::rss_kib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = procs::rss_kib(pid);
        if now.abs_diff(last) * 200 < last.max(1) {
            return now;
        }
        last = now;
    }
    last
}

/// Wait until the server's store is quiet (at most one commit in 2 s; the
/// presence row is written every 5 s), at most two minutes: the idle
/// window must not measure the tail of the pushes before it (the status
/// writer storing every collector's APPLIED status and effective config).
/// Returns how long that took.
async fn quiet_store(srv: &Server) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last = srv.commits().await?;
    while start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = srv.commits().await?;
        if now - last <= 1.0 {
            break;
        }
        last = now;
    }
    Ok(start.elapsed())
}

async fn idle_cpu(pid: u32, window: Duration) -> f64 {
    let before = procs::cpu_secs(pid);
    tokio::time::sleep(window).await;
    (procs::cpu_secs(pid) - before) / window.as_secs_f64() * 100.0
}

async fn run_baseline(n: usize, a: &RunArgs, idle: bool) -> anyhow::Result<Baseline> {
    let port = procs::free_port()?;
    let mut cmd = tokio::process::Command::new(procs::me()?);
    cmd.args(["baseline-server", "--listen", &format!("127.0.0.1:{port}")]);
    let mut server = Proc::spawn("baseline-server", cmd)?;
    server.expect("listening", Duration::from_secs(30)).await?;
    let pid = server.pid();
    let empty = procs::rss_kib(pid);
    let grpc = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    let mut clients = linkmesh::start_clients(n, "baseline", &grpc, "", "", "bench")?;
    linkmesh::ready(&mut clients).await?;
    let connect_s = t0.elapsed().as_secs_f64();
    eprintln!("  connected in {connect_s:.1} s (load {})", procs::loadavg());
    let mut b = Baseline {
        connect_s,
        rss_empty_kib: empty,
        rss_idle_kib: settled_rss(pid).await,
        ..Default::default()
    };
    for round in 1..=a.pushes {
        server.send(&format!("broadcast {round}")).await?;
        let ans = server.expect("acked", Duration::from_secs(180)).await?;
        let mut w = ans.split_whitespace();
        let micros: f64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let acks: usize = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        if acks < n {
            bail!("broadcast {round}: only {acks} of {n} acked");
        }
        b.broadcast_ms.push(micros / 1000.0);
        b.rss_after_kib.push(procs::rss_kib(pid));
    }
    // The same broadcasts with each ack answered: the protocol's own floor.
    server.send("answer-acks").await?;
    server.expect("answering", Duration::from_secs(10)).await?;
    for round in 1..=a.pushes {
        server.send(&format!("broadcast {}", a.pushes + round)).await?;
        let ans = server.expect("acked", Duration::from_secs(180)).await?;
        let micros: f64 = ans
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        b.replied_ms.push(micros / 1000.0);
    }
    if idle {
        b.idle_cpu_pct = Some(idle_cpu(pid, a.idle).await);
    }
    for c in clients {
        c.stop().await;
    }
    server.stop().await;
    Ok(b)
}

async fn run_linkmesh(n: usize, a: &RunArgs, idle: bool, dir: &Path) -> anyhow::Result<LinkMesh> {
    let srv = Server::start(dir, "").await?;
    let pid = srv.pid();
    let empty = procs::rss_kib(pid);
    let token = srv.enrollment_token().await?;
    let mut clients = linkmesh::start_clients(n, "linkmesh", &srv.grpc, &srv.http, &token, "bench")?;
    let (enroll_ms, connect_ms) = linkmesh::ready(&mut clients).await?;
    eprintln!(
        "  enrolled in {:.1} s ({:.0}/s), then connected in {:.1} s (load {})",
        enroll_ms / 1000.0,
        n as f64 / (enroll_ms / 1000.0).max(1e-3),
        connect_ms / 1000.0,
        procs::loadavg()
    );
    srv.summary_until(Duration::from_secs(120), |s| s["connected"].as_u64() == Some(n as u64))
        .await?;
    let mut lm = LinkMesh {
        connected: srv.get("/api/v1/fleet/summary").await?["connected"]
            .as_u64()
            .unwrap_or(0),
        enroll_per_s: n as f64 / (enroll_ms / 1000.0).max(1e-3),
        connect_s: connect_ms / 1000.0,
        rss_empty_kib: empty,
        rss_idle_kib: settled_rss(pid).await,
        ..Default::default()
    };
    for round in 0..a.pushes {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let body = json!({ "files": { "collector.yaml": {
            "body": baseline::body(&nonce), "content_type": "application/yaml" } } });
        let t0 = SystemTime::now();
        let start = Instant::now();
        srv.call(reqwest::Method::PUT, "/api/v1/fleet/default-config", Some(body))
            .await?;
        let (got, all_applied) = tokio::join!(
            linkmesh::received(&mut clients, &nonce, t0),
            srv.summary_until(Duration::from_secs(180), |s| applied(s) == n as u64)
        );
        let (lat, missing) = got?;
        if missing > 0 {
            bail!("push {round}: {missing} of {n} collectors never received it");
        }
        lm.push_p50_ms.push(procs::percentile(&lat, 50.0));
        lm.push_p99_ms.push(procs::percentile(&lat, 99.0));
        lm.push_max_ms.push(lat.last().copied().unwrap_or(f64::NAN));
        lm.applied_ms
            .push(all_applied?.saturating_duration_since(start).as_secs_f64() * 1000.0);
        lm.rss_after_kib.push(procs::rss_kib(pid));
        eprintln!(
            "  push {round}: p50 {:.0} ms, p99 {:.0} ms, all APPLIED {:.0} ms",
            lm.push_p50_ms[round], lm.push_p99_ms[round], lm.applied_ms[round]
        );
    }
    if !a.skip.contains(&Part::Pages) {
        let page = "/api/v1/collectors?limit=100&selector=role%3Dbench%2Cshard%3D3";
        lm.page_ms = linkmesh::latencies(&srv, page, a.requests).await?;
        lm.summary_ms = linkmesh::latencies(&srv, "/api/v1/fleet/summary", a.requests).await?;
    }
    if idle {
        let waited = quiet_store(&srv).await?;
        eprintln!(
            "  idle for {:?}: server pid {pid}, store quiet after {:.1} s (load {})",
            a.idle,
            waited.as_secs_f64(),
            procs::loadavg()
        );
        let commits = srv.commits().await?;
        lm.idle_cpu_pct = Some(idle_cpu(pid, a.idle).await);
        lm.idle_writes_per_s = Some((srv.commits().await? - commits) / a.idle.as_secs_f64());
        eprintln!(
            "  idle: {:.1}% of a core, {:.2} store writes/s (load {})",
            lm.idle_cpu_pct.unwrap_or(f64::NAN),
            lm.idle_writes_per_s.unwrap_or(f64::NAN),
            procs::loadavg()
        );
    }
    for c in clients {
        c.stop().await;
    }
    srv.stop().await;
    Ok(lm)
}

/// Config store on a local repository: `git commit` -> every collector
/// APPLIED in the fleet summary (the commit served, all acked), in ms.
async fn run_commit(n: usize, dir: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let repo = linkmesh::config_repo(dir)?;
    let extra = format!("[config_store]\nurl = \"{}\"\npoll_interval = \"1h\"\n", repo.display());
    let srv = Server::start(&dir.join("server"), &extra).await?;
    let token = srv.enrollment_token().await?;
    let mut clients = linkmesh::start_clients(n, "linkmesh", &srv.grpc, &srv.http, &token, "app")?;
    linkmesh::ready(&mut clients).await?;
    srv.summary_until(Duration::from_secs(180), |s| applied(s) == n as u64)
        .await?;
    let traces = repo.join("pipelines/traces.toml");
    let text = std::fs::read_to_string(&traces)?;
    let changed = text.replacen("\"drop-health\", ", "", 1);
    if changed == text {
        bail!("{} no longer has the processor the benchmark removes", traces.display());
    }
    std::fs::write(&traces, changed)?;
    let start = Instant::now();
    linkmesh::git(&repo, &["commit", "-qam", "Keep health-check spans"])?;
    let head = linkmesh::git(&repo, &["rev-parse", "HEAD"])?;
    let end = start + Duration::from_secs(180);
    loop {
        let rev = srv.get("/api/v1/config/revision").await?;
        if rev["commit"].as_str() == Some(head.as_str())
            && applied(&srv.get("/api/v1/fleet/summary").await?) == n as u64
        {
            break;
        }
        if Instant::now() > end {
            bail!("commit {head} never reached all {n} collectors");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    for c in clients {
        c.stop().await;
    }
    srv.stop().await;
    Ok(ms)
}

/// What the embedded store's disk can do: one durable redb commit per
/// enrollment, writing records of the size enrollment writes (collector,
/// credential, token use count, audit event), in one thread.
fn raw_redb(path: &Path, commits: usize) -> anyhow::Result<f64> {
    const TABLES: [&str; 4] = [
        "collectors",
        "collector_credentials",
        "enrollment_tokens",
        "audit_events",
    ];
    let sizes = [420usize, 260, 300, 380];
    let db = redb::Database::create(path)?;
    let start = Instant::now();
    for i in 0..commits {
        let w = db.begin_write()?;
        for (t, size) in TABLES.iter().zip(sizes) {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(t);
            let mut table = w.open_table(def)?;
            let key = if *t == "enrollment_tokens" {
                "token".to_string()
            } else {
                uuid::Uuid::now_v7().to_string()
            };
            let value = vec![b'x'; size + i % 7];
            table.insert(key.as_str(), value.as_slice())?;
        }
        w.commit()?;
    }
    Ok(commits as f64 / start.elapsed().as_secs_f64())
}
