//! Staged rollouts (`rollout.toml`): real store, real git repository, sim
//! collectors over gRPC, a manual clock moved past bake times. What a user
//! notices: which collectors run which commit's config, wave by wave; a
//! failing wave rolled back; another instance taking over; a newer commit
//! superseding; the API, history, audit and metrics saying so.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkmesh::clock::{ManualClock, Timestamp};
use linkmesh::configstore::RolloutPolicy;
use linkmesh::domain::rollout::Rollouts;
use linkmesh::sim::{Sim, SimConfig, SimTransport};
use linkmesh::storage::Store;
use serde_json::{json, Value};

use crate::configstore::{store_config, GitRepo};
use crate::support::{admin, enrollment_token, open_store, poll_json, start_with_clock, test_config, TestServer};

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
        let mut c = test_config(self._tmp.path());
        c.server.instance_name = Some(name.into());
        c.config_store = Some(store_config(self.repo.dir.to_str().unwrap()));
        start_with_clock(self.store.clone(), c, self.clock.clone()).await
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
    client
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = sim.stats();
        let wrong: Vec<_> = stats
            .iter()
            .filter(|s| s.config_hash.as_deref() != Some(want(&s.collector_id).as_str()))
            .map(|s| s.collector_id.clone())
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} of {} collectors on another config, e.g. {:?}",
            wrong.len(),
            stats.len(),
            &wrong[..wrong.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, line_start: &str) -> Option<String> {
    text.lines().find(|l| l.starts_with(line_start)).map(String::from)
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
    let metrics = reqwest::get(format!("{}/metrics", a.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "linkmesh_rollout_state{").as_deref(),
        Some("linkmesh_rollout_state{state=\"paused\"} 1")
    );
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
    let metrics = reqwest::get(format!("{}/metrics", a.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "linkmesh_rollout_gate_failures_total{").as_deref(),
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
    let (s, c1) = setup(Some(THREE_WAVES)).await;
    let a = s.instance("a").await;
    let b = s.instance("b").await;
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
    let holder = s
        .store
        .get::<linkmesh::domain::rollout::RolloutLease>("rollout-lease")
        .await
        .unwrap()
        .unwrap()
        .value
        .holder;
    let (driver, other, other_admin, survivors) = if holder == "a" {
        (a, b, admin_b, on_b.clone())
    } else {
        (b, a, admin_a, on_a.clone())
    };
    driver.stop().await;
    s.clock.advance(Duration::from_secs(11 * 60));
    poll_json(
        "the other instance to reach wave 1",
        async || rollouts(&other, &other_admin).await,
        |r| r["current"]["wave"] == 1 && r["current"]["waves"][1]["state"] == "baking",
    )
    .await;
    let lease = s
        .store
        .get::<linkmesh::domain::rollout::RolloutLease>("rollout-lease")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(lease.value.holder, holder, "the lease moved to the surviving instance");
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
        until_configs("all on c1", &sim, |_| h1.clone()).await;
        s.repo.write("fleet.toml", &fleet(1024));
        let started = Instant::now();
        let c2 = s.repo.commit_all("Batch 1024");
        let h2 = hash_at(&a, &admin, &c2, &prod).await;
        until_configs("all on c2", &sim, |_| h2.clone()).await;
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
