//! Interop with the real OpenTelemetry OpAMP clients: the Python client from
//! PyPI and the Node.js client from npm, both over OpAMP HTTP, installed by
//! `scripts/test.sh` (tests/interop/). Without them (and without
//! `LINKMESH_INTEROP=1`, which the test script sets) these tests print
//! SKIPPED instead of failing.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::support::*;

fn required() -> bool {
    std::env::var("LINKMESH_INTEROP").is_ok_and(|v| v == "1")
}

fn python_client_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import opentelemetry._opamp.agent"])
        .status()
        .is_ok_and(|s| s.success())
}

fn node_client_installed() -> bool {
    repo_root()
        .join("tests/interop/node_modules/@elastic/opamp-client-node")
        .is_dir()
}

async fn setup(liveness: Duration) -> (tempfile::TempDir, TestServer, reqwest::Client, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.fleet.liveness_timeout = liveness;
    let s = start(open_store(dir.path()).await, config).await;
    let a = admin(&s.base).await;
    let r = a
        .put(format!("{}/api/v1/fleet/default-config", s.base))
        .json(&json!({"files": {"collector.yaml": {"body": "receivers:\n  otlp:\n    protocols:\n      http: {}\n"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, token) = enrollment_token(&s.base, &a, json!({"name": "interop"})).await;
    let uid = uuid::Uuid::now_v7().to_string();
    let e: Value = enroll(&s.base, &token, Some(&uid)).await.json().await.unwrap();
    let cred = e["credential"].as_str().unwrap().to_string();
    (dir, s, a, uid, cred)
}

async fn wait_detail(
    s: &TestServer,
    a: &reqwest::Client,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("{}/api/v1/collectors/{id}", s.base);
    poll_json(
        what,
        async || a.get(&url).send().await.unwrap().json().await.unwrap(),
        pred,
    )
    .await
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_opamp_client_applies_config_and_says_goodbye() {
    if !python_client_installed() {
        assert!(
            !required(),
            "opentelemetry-opamp-client is not installed (pip install -r tests/interop/requirements.txt)"
        );
        println!("SKIPPED: Python OpAMP client not installed");
        return;
    }
    // A long liveness timeout: disconnection must come from agent_disconnect.
    let (_dir, s, a, uid, cred) = setup(Duration::from_secs(600)).await;
    let child = Command::new("python3")
        .arg(repo_root().join("tests/interop/opamp_py.py"))
        .args([
            "--endpoint",
            &format!("{}/v1/opamp", s.base),
            "--credential",
            &cred,
            "--uid",
            &uid,
            "--seconds",
            "6",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let d = wait_detail(&s, &a, &uid, "connected and APPLIED", |d| {
        d["connected"] == true && d["config_status"] == "applied"
    })
    .await;
    assert_eq!(d["transport"], "http");
    assert_eq!(
        d["status"]["description"]["identifying"]["service.name"],
        "python-interop"
    );
    assert_eq!(d["status"]["remote_config"]["status"], "APPLIED");
    assert_eq!(d["status"]["remote_config"]["hash"], d["desired_hash"]);
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    wait_detail(&s, &a, &uid, "disconnected after agent_disconnect", |d| {
        d["connected"] == false
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_opamp_client_applies_config_and_times_out_when_killed() {
    if !node_client_installed() {
        assert!(
            !required(),
            "@elastic/opamp-client-node is not installed (npm ci in tests/interop)"
        );
        println!("SKIPPED: Node OpAMP client not installed");
        return;
    }
    let (_dir, s, a, uid, cred) = setup(Duration::from_secs(3)).await;
    let child = Command::new("node")
        .arg(repo_root().join("tests/interop/opamp_node.mjs"))
        .args([
            "--endpoint",
            &format!("{}/v1/opamp", s.base),
            "--credential",
            &cred,
            "--uid",
            &uid,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    let d = wait_detail(&s, &a, &uid, "connected and APPLIED", |d| {
        d["connected"] == true && d["config_status"] == "applied"
    })
    .await;
    assert_eq!(
        d["status"]["description"]["identifying"]["service.name"],
        "node-interop"
    );
    let summary: Value = a
        .get(format!("{}/api/v1/fleet/summary", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (summary["connected"].as_u64(), summary["config"]["applied"].as_u64()),
        (Some(1), Some(1))
    );
    // The Node client never sends agent_disconnect: kill it and wait for
    // the liveness timeout.
    drop(child);
    wait_detail(&s, &a, &uid, "disconnected after the liveness timeout", |d| {
        d["connected"] == false
    })
    .await;
    s.stop().await;
}
