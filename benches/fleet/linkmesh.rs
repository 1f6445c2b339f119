//! The LinkMesh side of a run: a `linkmesh serve` process on a fresh
//! embedded store, driven over its API and by simulator processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::procs::{self, Proc};

pub struct Server {
    child: tokio::process::Child,
    pub http: String,
    pub grpc: String,
    token: String,
    client: reqwest::Client,
}

impl Server {
    /// Start a server whose data lives in `dir`, with `extra` TOML appended
    /// to its config, and sign in: an API token for everything else.
    pub async fn start(dir: &Path, extra: &str) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir)?;
        let (http_port, grpc_port) = (procs::free_port()?, procs::free_port()?);
        let config = dir.join("linkmesh.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nhttp_listen = \"127.0.0.1:{http_port}\"\ngrpc_listen = \"127.0.0.1:{grpc_port}\"\n\
                 [storage.embedded]\npath = \"{}\"\n[telemetry]\nlog_level = \"warn\"\n{extra}\n",
                dir.join("data/linkmesh.redb").display()
            ),
        )?;
        let password = format!("bench-{}", uuid::Uuid::new_v4());
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = tokio::process::Command::new(procs::linkmesh_bin()?)
            .args(["serve", "--config"])
            .arg(&config)
            .env("LINKMESH_AUTH__BOOTSTRAP_ADMIN_PASSWORD", &password)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start linkmesh")?;
        let http = format!("http://127.0.0.1:{http_port}");
        let client = reqwest::Client::builder().cookie_store(true).build()?;
        let ready = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = client.get(format!("{http}/readyz")).send().await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > ready {
                bail!("linkmesh never became ready; see {}", dir.join("server.log").display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let login = client
            .post(format!("{http}/api/v1/auth/login"))
            .json(&json!({ "username": "admin", "password": password }))
            .send()
            .await?;
        if !login.status().is_success() {
            bail!("login: {}", login.status());
        }
        let created: Value = client
            .post(format!("{http}/api/v1/api-tokens"))
            .header("origin", &http)
            .json(&json!({ "name": "bench" }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = created["token"].as_str().context("no API token")?.to_string();
        Ok(Server {
            child,
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            http,
            token,
            client: reqwest::Client::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.http))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn enrollment_token(&self) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/api/v1/enrollment-tokens",
                Some(json!({ "name": "bench", "expires_in": "4h" })),
            )
            .await?;
        Ok(v["token"].as_str().context("no enrollment token")?.to_string())
    }

    /// Storage commits so far (each one a durable write transaction).
    pub async fn commits(&self) -> anyhow::Result<f64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.http))
            .bearer_auth(&self.token)
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find(|l| l.contains("storage_operation_duration_seconds_count{") && l.contains("op=\"commit\""))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0))
    }

    /// Poll the fleet summary until `done` holds; returns when it first did.
    pub async fn summary_until(&self, within: Duration, done: impl Fn(&Value) -> bool) -> anyhow::Result<Instant> {
        let end = Instant::now() + within;
        loop {
            let s = self.get("/api/v1/fleet/summary").await?;
            if done(&s) {
                return Ok(Instant::now());
            }
            if Instant::now() > end {
                bail!("the fleet summary never got there: {s}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

pub fn applied(s: &Value) -> u64 {
    s["config"]["applied"].as_u64().unwrap_or(0)
}

/// Start the simulator processes of one system for `n` collectors.
pub fn start_clients(
    n: usize,
    system: &str,
    grpc: &str,
    http: &str,
    token: &str,
    labels: &str,
) -> anyhow::Result<Vec<Proc>> {
    procs::shares(n)
        .into_iter()
        .enumerate()
        .map(|(k, (count, source))| {
            let mut cmd = tokio::process::Command::new(procs::me()?);
            cmd.args(["clients", "--system", system, "--grpc", grpc, "--http", http])
                .args(["--count", &count.to_string(), "--source", &source, "--labels", labels])
                .args(["--enrollment-token", token]);
            Proc::spawn(format!("{system}-clients-{k}"), cmd)
        })
        .collect()
}

/// Wait for every simulator process to report all its collectors
/// connected; returns the slowest (enroll ms, connect ms).
pub async fn ready(clients: &mut [Proc]) -> anyhow::Result<(f64, f64)> {
    let answers =
        futures::future::join_all(clients.iter_mut().map(|c| c.expect("ready", Duration::from_secs(900)))).await;
    let (mut enroll, mut connect) = (0.0f64, 0.0f64);
    for a in answers {
        let a = a?;
        let mut w = a.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(0.0));
        enroll = enroll.max(w.next().unwrap_or(0.0));
        connect = connect.max(w.next().unwrap_or(0.0));
    }
    Ok((enroll, connect))
}

/// Ask every simulator process when its collectors received NONCE; returns
/// the latencies after `t0` in ms, sorted, and how many never got it.
pub async fn received(clients: &mut [Proc], nonce: &str, t0: SystemTime) -> anyhow::Result<(Vec<f64>, usize)> {
    let t0 = t0.duration_since(UNIX_EPOCH)?.as_micros() as f64;
    let answers = futures::future::join_all(clients.iter_mut().map(|c| async move {
        c.send(&format!("wait {nonce}")).await?;
        c.expect("lat", Duration::from_secs(180)).await
    }))
    .await;
    let (mut lat, mut missing) = (Vec::new(), 0);
    for a in answers {
        let a = a?;
        let mut w = a.split_whitespace();
        missing += w.next().and_then(|m| m.parse::<usize>().ok()).unwrap_or(0);
        lat.extend(w.filter_map(|t| t.parse::<f64>().ok()).map(|t| (t - t0) / 1000.0));
    }
    lat.sort_by(f64::total_cmp);
    Ok((lat, missing))
}

/// Copy the example fleet config repository into `dir` and commit it.
pub fn config_repo(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/fleet-config");
    let repo = dir.join("fleet-config");
    copy_dir(&src, &repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-qm", "initial"])?;
    Ok(repo)
}

fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), to)?;
        }
    }
    Ok(())
}

pub fn git(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Latencies (ms) of `count` sequential GETs of `path`, sorted.
pub async fn latencies(srv: &Server, path: &str, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut v = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        srv.get(path).await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}
