//! Staged rollouts (`rollout.toml`): real store, real git repository, sim
//! collectors over gRPC, a manual clock moved past bake times. What a user
//! notices: which collectors run which commit's config, wave by wave; a
//! failing wave rolled back; another instance taking over; a newer commit
//! superseding; the API, history, audit and metrics saying so.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkmesh::clock::{ManualClock, Timestamp};
use linkmesh::configstore::RolloutPolicy;
use linkmesh::domain::rollout::{RolloutLease, Rollouts};
use linkmesh::owntelemetry::TelemetryRollup;
use linkmesh::proto::opamp_msgs as pb;
use linkmesh::proto::service::collector_service_client::CollectorServiceClient;
use linkmesh::sim::{Sim, SimConfig, SimTransport};
use linkmesh::storage::{KillSwitch, Store};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use prost::Message;
use serde_json::{json, Value};

use crate::configstore::{store_config, GitRepo};
use crate::support::{
    admin, enroll, enrollment_token, get_as, get_metrics, metric_lines, open_store, poll_json, poll_until,
    start_with_clock, test_config, TestServer, SETTLE,
};

/// The fleet config: every collector gets a batched pipeline whose batch
/// size is the only thing that changes between commits.
fn fleet(batch: u32) -> String {
    format!(
        r#"
[sources.app]
type = "filelog"
settings.include = ["/var/log/app/*.log"]
[processors.batch]
type = "batch"
settings.send_batch_size = {batch}
[destinations.backend]
type = "otlphttp"
settings.endpoint = "https://otlp.example.com"
[pipelines.logs]
signals = ["logs"]
sources = ["app"]
processors = ["batch"]
destinations = ["backend"]
[routes.everyone]
pipelines = ["logs"]
"#
    )
}

const THREE_WAVES: &str = r#"
[[waves]]
name = "canary"
percent = 10
bake = "10m"
[[waves]]
name = "half"
percent = 50
bake = "10m"
"#;

fn policy(text: &str) -> RolloutPolicy {
    let files = vec![
        linkmesh::configstore::SourceFile {
            path: "fleet.toml".into(),
            bytes: fleet(1).into_bytes(),
        },
        linkmesh::configstore::SourceFile {
            path: "rollout.toml".into(),
            bytes: text.as_bytes().to_vec(),
        },
    ];
    linkmesh::configstore::load_files(&files).unwrap().rollout.unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    repo: GitRepo,
    clock: Arc<ManualClock>,
    store: Store,
}

async fn setup(rollout: Option<&str>) -> (Setup, String) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&tmp.path().join("fleet"));
    repo.write("fleet.toml", &fleet(512));
    if let Some(r) = rollout {
        repo.write("rollout.toml", r);
    }
    let c1 = repo.commit_all("Batch 512");
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let store = open_store(tmp.path()).await;
    (
        Setup {
            _tmp: tmp,
            repo,
            clock,
            store,
        },
        c1,
    )
}

impl Setup {
    async fn instance(&self, name: &str) -> TestServer {
        self.instance_on(name, self.store.clone()).await
    }

    async fn instance_on(&self, name: &str, store: Store) -> TestServer {
        let mut c = test_config(self._tmp.path());
        c.server.instance_name = Some(name.into());
        c.config_store = Some(store_config(self.repo.dir.to_str().unwrap()));
        // Own telemetry reaches the store (and the send-failure gate) soon.
        c.fleet.telemetry_rollup_interval = Duration::from_secs(1);
        start_with_clock(store, c, self.clock.clone()).await
    }

    /// An instance that can be killed: `KillSwitch::kill` cuts it off the
    /// store the way a crash does (nothing more of it is stored, not even
    /// the lease release of a graceful stop).
    async fn killable_instance(&self, name: &str) -> (TestServer, KillSwitch) {
        let (store, kill) = self.store.with_kill_switch();
        (self.instance_on(name, store).await, kill)
    }
}

async fn sims(server: &TestServer, token: &str, n: usize, labels: BTreeMap<String, String>, fail: Option<&str>) -> Sim {
    Sim::start(SimConfig {
        transport: SimTransport::Grpc,
        http_base: server.base.clone(),
        grpc: server.grpc.clone(),
        collectors: n,
        enrollment_token: token.into(),
        label_sets: vec![labels],
        heartbeat: Duration::from_secs(1),
        fail_when_config_contains: fail.map(String::from),
        source_addrs: vec![],
        concurrency: 8,
    })
    .await
    .unwrap()
}

/// The hash of the config a collector with `labels` gets from `commit`.
async fn hash_at(
    server: &TestServer,
    client: &reqwest::Client,
    commit: &str,
    labels: &BTreeMap<String, String>,
) -> String {
    let r: Value = client
        .post(format!("{}/api/v1/config/render-diff", server.base))
        .json(&json!({ "from": commit, "to": commit, "labels": labels }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["to_hash"].as_str().unwrap_or_else(|| panic!("{r}")).to_string()
}

/// `GET` a JSON document as `client`.
async fn get(server: &TestServer, client: &reqwest::Client, path: &str) -> Value {
    get_as(client, format!("{}{path}", server.base)).await
}

async fn rollouts(server: &TestServer, client: &reqwest::Client) -> Value {
    get(server, client, "/api/v1/rollouts").await
}

async fn act(server: &TestServer, client: &reqwest::Client, id: &str, action: &str) -> (u16, Value) {
    let r = client
        .post(format!("{}/api/v1/rollouts/{id}/{action}?reason=test", server.base))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Wait until every collector of `sim` runs the config `want` says it
/// should (by collector id); fail naming `what`.
async fn until_configs(what: &str, sim: &Sim, want: impl Fn(&str) -> String) {
    until_configs_within(what, sim, want, SETTLE).await
}

async fn until_configs_within(what: &str, sim: &Sim, want: impl Fn(&str) -> String, limit: Duration) {
    poll_until(what, limit, async || {
        let stats = sim.stats();
        let wrong: Vec<_> = stats
            .iter()
            .filter(|s| s.config_hash.as_deref() != Some(want(&s.collector_id).as_str()))
            .map(|s| (s.collector_id.clone(), s.connected, s.last_error.clone()))
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} of {} collectors on another config, e.g. (id, connected, last error) {:?}",
            wrong.len(),
            stats.len(),
            &wrong[..wrong.len().min(3)]
        ))
    })
    .await
}

/// The first line of a Prometheus text starting with `line_start`.
fn metric<'a>(text: &'a str, line_start: &str) -> Option<&'a str> {
    metric_lines(text, line_start).first().copied()
}

/// 3 waves (canary 10%, half of the rest, the rest) over 60 collectors:
/// each wave gets the new commit only when the clock passed the previous
/// wave's bake; pause holds the rollout, resume and promote move it on;
/// every action is audited and the state is in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_waves_over_60_collectors_follow_the_clock() {
    let (s, c1) = setup(Some(THREE_WAVES)).await;
    let a = s.instance("a").await;
    let admin = admin(&a.base).await;
    let (_, token) = enrollment_token(&a.base, &admin, json!({"name": "fleet"})).await;
    let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let sim = sims(&a, &token, 60, prod.clone(), None).await;
    let h1 = hash_at(&a, &admin, &c1, &prod).await;
    until_configs("every collector on c1", &sim, |_| h1.clone()).await;
    // The first commit is served to all: there is nothing to roll out from.
    let r = rollouts(&a, &admin).await;
    assert_eq!(
        (r["current"]["commit"].as_str(), r["current"]["state"].as_str()),
        (Some(c1.as_str()), Some("completed")),
        "{r}"
    );

    s.repo.write("fleet.toml", &fleet(1024));
    let c2 = s.repo.commit_all("Batch 1024");
    let h2 = hash_at(&a, &admin, &c2, &prod).await;
    let p = policy(THREE_WAVES);
    let wave: HashMap<String, usize> = sim
        .stats()
        .iter()
        .map(|st| (st.collector_id.clone(), p.wave_of(&st.collector_id, &prod)))
        .collect();
    let sizes: Vec<usize> = (0..3).map(|w| wave.values().filter(|&&x| x == w).count()).collect();
    assert!(sizes.iter().all(|&n| n > 0), "every wave has collectors: {sizes:?}");
    let on = |reached: usize| {
        let (wave, h1, h2) = (wave.clone(), h1.clone(), h2.clone());
        move |id: &str| if wave[id] <= reached { h2.clone() } else { h1.clone() }
    };

    // Wave 0: the canary collectors get c2, nobody else.
    until_configs("the canary on c2", &sim, on(0)).await;
    let r = poll_json(
        "the canary to bake",
        async || rollouts(&a, &admin).await,
        |r| r["current"]["waves"][0]["state"] == "baking",
    )
    .await;
    let cur = &r["current"];
    assert_eq!(
        (cur["commit"].as_str(), cur["baseline"].as_str()),
        (Some(c2.as_str()), Some(c1.as_str()))
    );
    assert_eq!(cur["waves"][0]["counts"]["applied"], sizes[0], "{r}");
    assert_eq!(
        cur["waves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["canary", "half", "rest"]
    );
    let gates: Vec<_> = cur["waves"][0]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["gate"].as_str().unwrap(), g["result"].as_str().unwrap()))
        .collect();
    assert_eq!(gates, [("applied", "passed"), ("healthy", "passed")], "{r}");
    let id = cur["id"].as_str().unwrap().to_string();
    let history: Value = get(&a, &admin, "/api/v1/config/history").await;
    assert_eq!(history["entries"][0]["outcome"], "rolling_out", "{history}");

    // Paused: the bake runs out, yet no wave is reached.
    let (status, body) = act(&a, &admin, &id, "pause").await;
    assert_eq!(
        (status, body["current"]["state"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    s.clock.advance(Duration::from_secs(11 * 60));
    // The metric follows the stored record (the driver reads it back).
    poll_until("the rollout state metric to say paused", SETTLE, async || {
        let text = get_metrics(&a.base).await;
        match metric(&text, "linkmesh_rollout_state{") {
            Some("linkmesh_rollout_state{state=\"paused\"} 1") => Ok(()),
            state => Err(format!("{state:?}")),
        }
    })
    .await;
    until_configs("nothing beyond the canary while paused", &sim, on(0)).await;
    assert_eq!(rollouts(&a, &admin).await["current"]["wave"], 0);

    // Resumed: the bake is over, so wave 1 is reached.
    let (status, _) = act(&a, &admin, &id, "resume").await;
    assert_eq!(status, 200);
    until_configs("half on c2", &sim, on(1)).await;
    poll_json(
        "half to bake",
        async || rollouts(&a, &admin).await,
        |r| r["current"]["waves"][1]["state"] == "baking",
    )
    .await;
    // Promote skips the rest of the bake without moving the clock.
    let (status, _) = act(&a, &admin, &id, "promote").await;
    assert_eq!(status, 200);
    until_configs("everyone on c2", &sim, on(2)).await;
    let r = poll_json(
        "the rollout to complete",
        async || rollouts(&a, &admin).await,
        |r| r["current"]["state"] == "completed",
    )
    .await;
    assert_eq!(r["current"]["waves"][2]["counts"]["applied"], sizes[2], "{r}");
    let (status, e) = act(&a, &admin, &id, "abort").await;
    assert_eq!(status, 422, "a completed rollout cannot be aborted: {e}");

    let audit: Value = get(&a, &admin, "/api/v1/audit?limit=50").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == c2.as_str())
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["rollout.promote", "rollout.resume", "rollout.pause"],
        "{audit}"
    );
    sim.stop();
    a.stop().await;
}

/// Wave 2's collectors report FAILED: the rollout halts, that wave goes
/// back to the old config, the canary keeps the new one, the rest is never
/// touched. Then a newer commit supersedes the halted rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_wave_is_rolled_back_and_a_newer_commit_supersedes() {
    let policy_text = r#"
[[waves]]
name = "canary"
selector.match_labels = { tier = "canary" }
[[waves]]
name = "main"
percent = 50
"#;
    let (s, c1) = setup(Some(policy_text)).await;
    let a = s.instance("a").await;
    let admin = admin(&a.base).await;
    let (_, token) = enrollment_token(&a.base, &admin, json!({"name": "fleet"})).await;
    let canary_l = BTreeMap::from([("tier".to_string(), "canary".to_string())]);
    let main_l = BTreeMap::from([("tier".to_string(), "main".to_string())]);
    let canary = sims(&a, &token, 6, canary_l.clone(), None).await;
    // These collectors refuse a batch size of 4096.
    let main = sims(&a, &token, 40, main_l.clone(), Some("send_batch_size: 4096")).await;
    let h1 = hash_at(&a, &admin, &c1, &main_l).await;
    until_configs("canary on c1", &canary, |_| h1.clone()).await;
    until_configs("main on c1", &main, |_| h1.clone()).await;

    s.repo.write("fleet.toml", &fleet(4096));
    let c2 = s.repo.commit_all("Batch 4096");
    let h2 = hash_at(&a, &admin, &c2, &main_l).await;
    let p = policy(policy_text);
    let wave = |id: &str| p.wave_of(id, &main_l);
    let r = poll_json(
        "the rollout to halt",
        async || rollouts(&a, &admin).await,
        |r| r["current"]["state"] == "halted",
    )
    .await;
    let cur = &r["current"];
    assert_eq!(cur["wave"], 1, "{r}");
    assert_eq!(cur["waves"][0]["state"], "passed");
    assert_eq!(cur["waves"][1]["state"], "rolled_back");
    assert_eq!(cur["waves"][2]["state"], "pending");
    let failure = &cur["waves"][1]["failure"];
    assert_eq!(failure["gate"], "applied", "{r}");
    assert!(failure["message"].as_str().unwrap().contains("reported FAILED"), "{r}");
    let named: Vec<&str> = failure["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(!named.is_empty());
    assert!(
        named.iter().all(|id| wave(id) == 1),
        "only wave-1 collectors are blamed: {named:?}"
    );
    assert!(cur["reason"].as_str().unwrap().contains("wave main"), "{r}");

    // Earlier wave kept, failed wave back on c1, later wave untouched.
    until_configs("the canary to keep c2", &canary, |_| h2.clone()).await;
    until_configs("main back on c1", &main, |_| h1.clone()).await;
    let never_touched: Vec<_> = main
        .stats()
        .into_iter()
        .filter(|st| wave(&st.collector_id) == 2 && st.received > 1)
        .map(|st| st.collector_id)
        .collect();
    assert!(never_touched.is_empty(), "the rest got configs: {never_touched:?}");
    let history: Value = get(&a, &admin, "/api/v1/config/history").await;
    assert_eq!(history["entries"][0]["outcome"], "rolled_back", "{history}");
    let metrics = get_metrics(&a.base).await;
    assert_eq!(
        metric(&metrics, "linkmesh_rollout_gate_failures_total{"),
        Some("linkmesh_rollout_gate_failures_total{gate=\"applied\"} 1")
    );

    // A newer commit supersedes the halted rollout and goes out from c1.
    s.repo.write("fleet.toml", &fleet(2048));
    let c3 = s.repo.commit_all("Batch 2048");
    let h3 = hash_at(&a, &admin, &c3, &main_l).await;
    let r = poll_json(
        "c3 to complete",
        async || rollouts(&a, &admin).await,
        |r| r["current"]["commit"] == c3.as_str() && r["current"]["state"] == "completed",
    )
    .await;
    assert_eq!(r["current"]["baseline"], c1.as_str(), "{r}");
    let old = &r["past"][0];
    assert_eq!(
        (
            old["commit"].as_str(),
            old["state"].as_str(),
            old["superseded_by"].as_str()
        ),
        (Some(c2.as_str()), Some("superseded"), Some(c3.as_str())),
        "{r}"
    );
    until_configs("canary on c3", &canary, |_| h3.clone()).await;
    until_configs("main on c3", &main, |_| h3.clone()).await;
    canary.stop();
    main.stop();
    a.stop().await;
}

/// Two instances on one store, collectors on both: the instance driving
/// the rollout stops mid-way; the other takes the lease and finishes. A
/// watcher checks all along that no collector ever runs the new config
/// before the stored rollout reached its wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_instance_takes_over_and_no_collector_gets_a_wave_early() {
    takeover(false).await;
}

/// The same with the driving instance killed rather than stopped: it never
/// gives the lease up, so the other one takes it only once it expired
/// (the clock moved past it), and continues from the stored record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_driver_is_replaced_once_its_lease_expired() {
    takeover(true).await;
}

async fn takeover(kill: bool) {
    let (s, c1) = setup(Some(THREE_WAVES)).await;
    let (a, kill_a) = s.killable_instance("a").await;
    let (b, kill_b) = s.killable_instance("b").await;
    let admin_a = admin(&a.base).await;
    let admin_b = admin(&b.base).await;
    let (_, token) = enrollment_token(&a.base, &admin_a, json!({"name": "fleet"})).await;
    let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let on_a = sims(&a, &token, 30, prod.clone(), None).await;
    let on_b = sims(&b, &token, 30, prod.clone(), None).await;
    let h1 = hash_at(&a, &admin_a, &c1, &prod).await;
    until_configs("a's collectors on c1", &on_a, |_| h1.clone()).await;
    until_configs("b's collectors on c1", &on_b, |_| h1.clone()).await;

    s.repo.write("fleet.toml", &fleet(1024));
    let c2 = s.repo.commit_all("Batch 1024");
    let h2 = hash_at(&a, &admin_a, &c2, &prod).await;
    let p = policy(THREE_WAVES);

    // The watcher: read the collectors first, then the record; a collector
    // on c2 must be in a wave the record (as new or newer) has reached.
    let on_a = Arc::new(on_a);
    let on_b = Arc::new(on_b);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (on_a, on_b, stop, store, h2, p, prod) = (
            on_a.clone(),
            on_b.clone(),
            stop.clone(),
            s.store.clone(),
            h2.clone(),
            p.clone(),
            prod.clone(),
        );
        tokio::spawn(async move {
            let mut early = std::collections::BTreeSet::new();
            let mut samples = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let stats: Vec<_> = on_a.stats().into_iter().chain(on_b.stats()).collect();
                let rec = store.get::<Rollouts>("rollouts").await.unwrap();
                let reached = rec
                    .and_then(|r| r.value.current)
                    .filter(|c| c.commit.len() == 40)
                    .map(|c| {
                        if c.state.as_str() == "completed" {
                            usize::MAX
                        } else {
                            c.wave
                        }
                    });
                for st in &stats {
                    if st.config_hash.as_deref() == Some(h2.as_str()) {
                        let w = p.wave_of(&st.collector_id, &prod);
                        if reached.is_none_or(|r| w > r) {
                            early.insert((st.collector_id.clone(), w, reached));
                        }
                    }
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (early, samples)
        })
    };

    let r = poll_json(
        "the canary to bake",
        async || rollouts(&b, &admin_b).await,
        |r| r["current"]["commit"] == c2.as_str() && r["current"]["waves"][0]["state"] == "baking",
    )
    .await;
    assert_eq!(r["current"]["baseline"], c1.as_str());
    let held = s
        .store
        .get::<RolloutLease>("rollout-lease")
        .await
        .unwrap()
        .unwrap()
        .value;
    let holder = held.holder.clone();
    let (driver, driver_kill, other, other_admin, survivors) = if holder == "a" {
        (a, kill_a, b, admin_b, on_b.clone())
    } else {
        (b, kill_b, a, admin_a, on_a.clone())
    };
    if kill {
        // From here on nothing of the driver reaches the store: its stop
        // below cannot release the lease or store anything, as after a
        // crash.
        driver_kill.kill();
    }
    driver.stop().await;
    let lease = s.store.get::<RolloutLease>("rollout-lease").await.unwrap();
    if kill {
        assert_eq!(
            lease.map(|l| l.value),
            Some(held.clone()),
            "a killed instance leaves its lease behind"
        );
    } else {
        // Given up: gone, or already taken by the other instance.
        assert!(
            lease.as_ref().is_none_or(|l| l.value.holder != holder),
            "a stopped instance gives its lease up: {:?}",
            lease.map(|l| l.value)
        );
    }
    s.clock.advance(Duration::from_secs(11 * 60));
    poll_json(
        "the other instance to reach wave 1",
        async || rollouts(&other, &other_admin).await,
        |r| r["current"]["wave"] == 1 && r["current"]["waves"][1]["state"] == "baking",
    )
    .await;
    let lease = s.store.get::<RolloutLease>("rollout-lease").await.unwrap().unwrap();
    assert_ne!(lease.value.holder, holder, "the lease moved to the surviving instance");
    if kill {
        let taken_at = lease.value.expires_at.0 - linkmesh::rollout::LEASE_TTL.as_millis() as u64;
        assert!(
            taken_at >= held.expires_at.0,
            "taken at {taken_at}, before the dead holder's lease expired at {}",
            held.expires_at.0
        );
    }
    s.clock.advance(Duration::from_secs(11 * 60));
    poll_json(
        "the rollout to complete",
        async || rollouts(&other, &other_admin).await,
        |r| r["current"]["state"] == "completed",
    )
    .await;
    until_configs("the surviving instance's collectors on c2", &survivors, |_| h2.clone()).await;
    stop.store(true, Ordering::SeqCst);
    let (early, samples) = watcher.await.unwrap();
    assert!(samples > 10, "the watcher looked {samples} times");
    assert!(early.is_empty(), "collectors got a wave's config early: {early:?}");
    other.stop().await;
}

/// A collector driven by hand over gRPC, for what the sim does not do:
/// report itself unhealthy after a config, or never apply one. It
/// heartbeats every second like a real agent and records every config
/// hash it is sent.
struct HandAgent {
    id: String,
    credential: String,
    received: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq)]
enum Reaction {
    /// Apply it and report healthy.
    Apply,
    /// Apply it and report unhealthy.
    ApplySick,
    /// Never answer it.
    Ignore,
}

impl HandAgent {
    /// Enroll with `token` (its labels place the agent) and connect;
    /// `react` decides from a config's text what the agent does with it.
    async fn start(server: &TestServer, token: &str, react: fn(&str) -> Reaction) -> HandAgent {
        let e: Value = enroll(&server.base, token, None).await.json().await.unwrap();
        let id = e["collector_id"].as_str().unwrap().to_string();
        let credential = e["credential"].as_str().unwrap().to_string();
        let uid = uuid::Uuid::parse_str(&id).unwrap().as_bytes().to_vec();
        let mut client = CollectorServiceClient::connect(server.grpc.clone()).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let health = |healthy: bool| pb::ComponentHealth {
            healthy,
            status: if healthy { "running" } else { "exporter failing" }.into(),
            last_error: if healthy {
                ""
            } else {
                "export failed: connection refused"
            }
            .into(),
            ..Default::default()
        };
        let message = move |seq: u64| pb::AgentToServer {
            instance_uid: uid.clone(),
            sequence_num: seq,
            capabilities: 0x1 | 0x2 | 0x4 | 0x400 | 0x800 | 0x1000 | 0x2000,
            ..Default::default()
        };
        let mut first = message(1);
        first.agent_description = Some(Default::default());
        first.health = Some(health(true));
        tx.send(first).await.unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {credential}").parse().unwrap());
        let mut stream = client.session(req).await.unwrap().into_inner();
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = received.clone();
        let task = tokio::spawn(async move {
            let mut seq = 1;
            let mut remote: Option<pb::RemoteConfigStatus> = None;
            let mut healthy = true;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                seq += 1;
                let mut out = message(seq);
                tokio::select! {
                    _ = tick.tick() => {}
                    m = stream.message() => {
                        let Ok(Some(m)) = m else { return };
                        if let Some(rc) = m.remote_config {
                            let body: String = rc
                                .config
                                .map(|c| c.config_map)
                                .unwrap_or_default()
                                .values()
                                .map(|f| String::from_utf8_lossy(&f.body).into_owned())
                                .collect();
                            seen.lock().unwrap().push(hex::encode(&rc.config_hash));
                            match react(&body) {
                                Reaction::Ignore => continue,
                                r => {
                                    healthy = r == Reaction::Apply;
                                    remote = Some(pb::RemoteConfigStatus {
                                        last_remote_config_hash: rc.config_hash,
                                        status: pb::RemoteConfigStatuses::Applied as i32,
                                        error_message: String::new(),
                                    });
                                    out.remote_config_status = remote.clone();
                                    out.health = Some(health(healthy));
                                }
                            }
                        } else if m.flags & 0x1 != 0 {
                            out.agent_description = Some(Default::default());
                            out.remote_config_status = remote.clone();
                            out.health = Some(health(healthy));
                        } else {
                            continue;
                        }
                    }
                }
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        });
        HandAgent {
            id,
            credential,
            received,
            task,
        }
    }

    fn last_received(&self) -> Option<String> {
        self.received.lock().unwrap().last().cloned()
    }

    /// Report its exporter's cumulative sent and failed spans as its own
    /// telemetry (OTLP/HTTP, as the collector's internal metrics arrive).
    async fn report_sends(&self, server: &TestServer, sent: i64, failed: i64, time_s: u64) {
        let counter = |name: &str, value: i64| Metric {
            name: name.into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: vec![KeyValue {
                        key: "exporter".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("otlphttp/backend".into())),
                        }),
                    }],
                    start_time_unix_nano: 1,
                    time_unix_nano: time_s * 1_000_000_000,
                    value: Some(number_data_point::Value::AsInt(value)),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let body = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        counter("otelcol_exporter_sent_spans", sent),
                        counter("otelcol_exporter_send_failed_spans", failed),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let r = reqwest::Client::new()
            .post(format!("{}/v1/metrics", server.base))
            .bearer_auth(&self.credential)
            .header("content-type", "application/x-protobuf")
            .body(body.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
}

impl Drop for HandAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One gated wave (`canary`, by label) before the rest; the send-failure
/// gate allows 10 points more failed sends than before.
const GATED: &str = r#"
[gates]
apply_timeout = "5m"
max_send_failure_increase = 0.1
[[waves]]
name = "canary"
selector.match_labels = { tier = "canary" }
bake = "10m"
"#;

/// What the config text of the new commit contains.
const NEW_BATCH: &str = "send_batch_size: 4096";

struct Gated {
    s: Setup,
    server: TestServer,
    admin: reqwest::Client,
    canary: Sim,
    rest: Sim,
    agent: HandAgent,
    h1: String,
    h2: String,
}

/// Four sims and one hand agent in the canary wave, eight sims in the
/// rest, all on the first commit; then the new commit (batch 4096).
async fn gated(react: fn(&str) -> Reaction, before_commit: impl AsyncFnOnce(&TestServer, &HandAgent)) -> Gated {
    let (s, c1) = setup(Some(GATED)).await;
    let server = s.instance("a").await;
    let admin = admin(&server.base).await;
    let (_, token) = enrollment_token(&server.base, &admin, json!({"name": "fleet"})).await;
    let (_, canary_token) = enrollment_token(
        &server.base,
        &admin,
        json!({"name": "canary", "labels": {"tier": "canary"}}),
    )
    .await;
    let canary_l = BTreeMap::from([("tier".to_string(), "canary".to_string())]);
    let rest_l = BTreeMap::from([("tier".to_string(), "main".to_string())]);
    let canary = sims(&server, &token, 4, canary_l.clone(), None).await;
    let rest = sims(&server, &token, 8, rest_l, None).await;
    let agent = HandAgent::start(&server, &canary_token, react).await;
    let h1 = hash_at(&server, &admin, &c1, &canary_l).await;
    until_configs("canary on c1", &canary, |_| h1.clone()).await;
    until_configs("the rest on c1", &rest, |_| h1.clone()).await;
    poll_json(
        "the hand agent to apply c1",
        async || get(&server, &admin, &format!("/api/v1/collectors/{}", agent.id)).await,
        |c| c["status"]["remote_config"]["status"] == "APPLIED",
    )
    .await;
    before_commit(&server, &agent).await;
    s.repo.write("fleet.toml", &fleet(4096));
    let c2 = s.repo.commit_all("Batch 4096");
    let h2 = hash_at(&server, &admin, &c2, &canary_l).await;
    Gated {
        s,
        server,
        admin,
        canary,
        rest,
        agent,
        h1,
        h2,
    }
}

impl Gated {
    async fn halted(&self) -> Value {
        poll_json(
            "the rollout to halt",
            async || rollouts(&self.server, &self.admin).await,
            |r| r["current"]["state"] == "halted",
        )
        .await
    }

    /// After a halt: the canary wave is rolled back (sims and agent back
    /// on c1), the rest never got anything but c1, and the failure names
    /// `gate` and only the hand agent.
    async fn assert_rolled_back(&self, r: &Value, gate: &str) {
        self.assert_rolled_back_as(r, gate, true).await
    }

    /// `resent`: the agent applied c2, so c1 is pushed to it again; one
    /// that never applied c2 still runs c1, and only its desired config
    /// (what the server wants it to run) goes back.
    async fn assert_rolled_back_as(&self, r: &Value, gate: &str, resent: bool) {
        let cur = &r["current"];
        assert_eq!(
            (&cur["wave"], &cur["waves"][0]["state"]),
            (&json!(0), &json!("rolled_back")),
            "{r}"
        );
        assert_eq!(cur["waves"][1]["state"], "pending", "{r}");
        let failure = &cur["waves"][0]["failure"];
        assert_eq!(failure["gate"], gate, "{r}");
        assert_eq!(failure["collectors"], json!([self.agent.id]), "{r}");
        assert!(
            cur["reason"].as_str().unwrap().contains(&format!("gate {gate} failed")),
            "{r}"
        );
        until_configs("the canary back on c1", &self.canary, |_| self.h1.clone()).await;
        poll_json(
            "the hand agent's desired config back on c1",
            async || {
                get(
                    &self.server,
                    &self.admin,
                    &format!("/api/v1/collectors/{}", self.agent.id),
                )
                .await
            },
            |c| c["desired"]["hash"] == self.h1.as_str(),
        )
        .await;
        if resent {
            poll_until("the hand agent sent c1 again", SETTLE, async || {
                if self.agent.last_received().as_deref() == Some(self.h1.as_str()) {
                    Ok(())
                } else {
                    Err(format!("it got {:?}", self.agent.received.lock().unwrap()))
                }
            })
            .await;
        }
        let touched: Vec<_> = self
            .rest
            .stats()
            .into_iter()
            .filter(|st| st.received != 1 || st.config_hash.as_deref() != Some(self.h1.as_str()))
            .map(|st| st.collector_id)
            .collect();
        assert!(touched.is_empty(), "the rest got other configs: {touched:?}");
        let metrics = get_metrics(&self.server.base).await;
        assert_eq!(
            metric(&metrics, "linkmesh_rollout_gate_failures_total{"),
            Some(format!("linkmesh_rollout_gate_failures_total{{gate=\"{gate}\"}} 1").as_str())
        );
    }

    async fn stop(self) {
        self.canary.stop();
        self.rest.stop();
        drop(self.agent);
        self.server.stop().await;
        drop(self.s);
    }
}

/// The healthy gate: a canary collector applies the new config and then
/// reports itself unhealthy; the rollout halts and rolls the canary back,
/// naming that collector; the rest is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unhealthy_collector_fails_the_healthy_gate() {
    let g = gated(
        |body| {
            if body.contains(NEW_BATCH) {
                Reaction::ApplySick
            } else {
                Reaction::Apply
            }
        },
        async |_, _| {},
    )
    .await;
    let r = g.halted().await;
    let failure = &r["current"]["waves"][0]["failure"];
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("1 collector(s) unhealthy after applying"),
        "{r}"
    );
    assert_eq!(r["current"]["waves"][0]["counts"]["unhealthy"], 1, "{r}");
    g.assert_rolled_back(&r, "healthy").await;
    g.stop().await;
}

/// The apply timeout: a connected canary collector never reports the new
/// config APPLIED. The gate waits (the others applied), and fails once
/// the clock passed `apply_timeout` — moved, not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_that_never_applies_fails_the_wave_at_the_apply_timeout() {
    let g = gated(
        |body| {
            if body.contains(NEW_BATCH) {
                Reaction::Ignore
            } else {
                Reaction::Apply
            }
        },
        async |_, _| {},
    )
    .await;
    until_configs("the canary sims on c2", &g.canary, |_| g.h2.clone()).await;
    let r = poll_json(
        "the applied gate to wait for the hand agent",
        async || rollouts(&g.server, &g.admin).await,
        |r| r["current"]["waves"][0]["counts"]["applied"] == 4,
    )
    .await;
    let cur = &r["current"];
    assert_eq!(
        (&cur["state"], &cur["waves"][0]["state"]),
        (&json!("running"), &json!("rolling_out")),
        "{r}"
    );
    assert_eq!(cur["waves"][0]["gates"][0]["result"], "waiting", "{r}");
    assert_eq!(
        cur["waves"][0]["gates"][0]["detail"], "4 of 5 connected collector(s) applied",
        "{r}"
    );
    assert_eq!(
        g.agent.last_received().as_deref(),
        Some(g.h2.as_str()),
        "the agent was sent c2"
    );
    g.s.clock.advance(Duration::from_secs(5 * 60));
    let r = g.halted().await;
    let failure = &r["current"]["waves"][0]["failure"];
    assert_eq!(
        failure["message"], "1 connected collector(s) did not apply the new config within 5m",
        "{r}"
    );
    g.assert_rolled_back_as(&r, "applied", false).await;
    assert_eq!(
        *g.agent.received.lock().unwrap(),
        [g.h1.clone(), g.h2.clone()],
        "it was sent nothing more: it still runs c1"
    );
    g.stop().await;
}

/// The send-failure gate: before the change the canary agent's exporter
/// failed 1% of its sends; after applying the new config, half of its new
/// sends fail. The wave passed its other gates and is baking, and halts
/// on the send figures alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rising_exporter_failures_fail_the_send_failure_gate() {
    let g = gated(
        |_| Reaction::Apply,
        async |server, agent| {
            agent.report_sends(server, 990, 10, 100).await;
            // The "before" figures are taken from the stored rollup.
            poll_until("the rollup stored", SETTLE, async || {
                let stored = server.store.get::<TelemetryRollup>(&agent.id).await.unwrap();
                let text = stored
                    .map(|r| serde_json::to_string(&r.value).unwrap())
                    .unwrap_or_default();
                if text.contains("990") {
                    Ok(())
                } else {
                    Err(format!("no rollup with the 990 sends: {text:?}"))
                }
            })
            .await;
        },
    )
    .await;
    let r = poll_json(
        "the canary to bake",
        async || rollouts(&g.server, &g.admin).await,
        |r| r["current"]["waves"][0]["state"] == "baking",
    )
    .await;
    let wave = &r["current"]["waves"][0];
    assert_eq!(wave["send_baseline"], json!({"sent": 990.0, "failed": 10.0}), "{r}");
    let gates: Vec<_> = wave["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["gate"].as_str().unwrap(), g["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        gates,
        [
            ("applied", "passed"),
            ("healthy", "passed"),
            ("send_failures", "passed")
        ],
        "{r}"
    );
    // 100 more sent, 100 more failed: 50% of the new sends.
    g.agent.report_sends(&g.server, 1090, 110, 160).await;
    let r = g.halted().await;
    let failure = &r["current"]["waves"][0]["failure"];
    assert_eq!(
        failure["message"], "failed exporter sends rose from 1.0% to 50.0% (allowed: +10.0 points)",
        "{r}"
    );
    g.assert_rolled_back(&r, "send_failures").await;
    g.stop().await;
}

/// Commit -> last wave APPLIED for 1,000 sim collectors, three waves with
/// no bake time, against no policy. A measurement, not a test: run with
/// `cargo nextest run --run-ignored only -E 'test(/rollouts::measure/)'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement (1,000 collectors); run explicitly"]
async fn measure_commit_to_last_wave_applied_1000() {
    let three = "[[waves]]\nname = \"canary\"\npercent = 10\n[[waves]]\nname = \"half\"\npercent = 50\n";
    for (name, policy) in [
        ("no policy", None),
        ("three waves, no bake", Some(three)),
        ("no policy", None),
        ("three waves, no bake", Some(three)),
    ] {
        let (s, c1) = setup(policy).await;
        let a = s.instance("a").await;
        let admin = admin(&a.base).await;
        let (_, token) = enrollment_token(&a.base, &admin, json!({"name": "fleet"})).await;
        let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let sim = sims(&a, &token, 1000, prod.clone(), None).await;
        let h1 = hash_at(&a, &admin, &c1, &prod).await;
        // Enrolling and connecting 1,000 collectors on a loaded machine
        // takes a while; that is not what is measured.
        until_configs_within("all on c1", &sim, |_| h1.clone(), Duration::from_secs(600)).await;
        s.repo.write("fleet.toml", &fleet(1024));
        let started = Instant::now();
        let c2 = s.repo.commit_all("Batch 1024");
        let h2 = hash_at(&a, &admin, &c2, &prod).await;
        until_configs_within("all on c2", &sim, |_| h2.clone(), Duration::from_secs(600)).await;
        let applied = started.elapsed();
        if policy.is_some() {
            poll_json(
                "the rollout to complete",
                async || rollouts(&a, &admin).await,
                |r| r["current"]["commit"] == c2.as_str() && r["current"]["state"] == "completed",
            )
            .await;
        }
        let elapsed = started.elapsed();
        println!(
            "MEASURE rollout {name}: commit -> 1000 collectors on c2 in {} ms, rollout recorded complete at {} ms",
            applied.as_millis(),
            elapsed.as_millis()
        );
        sim.stop();
        a.stop().await;
        drop(s);
    }
}
