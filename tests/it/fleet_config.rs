//! The config store driving the fleet end to end: a real git repository
//! with the example config, simulated collectors with different labels, new
//! commits pushed to exactly the collectors they change, an invalid commit
//! that changes nothing, and identical renders on two instances.

use std::collections::BTreeMap;
use std::time::Duration;

use linkmesh::sim::{AgentStats, Sim, SimConfig, SimTransport};
use serde_json::json;

use super::configstore::{example_repo, store_config};
use super::support::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The five kinds of collector in the test fleet, by index % 5.
fn label_sets() -> Vec<BTreeMap<String, String>> {
    vec![
        labels(&[("role", "app"), ("env", "prod"), ("os", "linux")]), // app pipelines + host metrics
        labels(&[("role", "web"), ("env", "dev"), ("os", "linux")]),  // host metrics only
        labels(&[("ring", "canary"), ("role", "app"), ("env", "prod")]), // canary only (final)
        labels(&[("gateway", "edge"), ("os", "linux"), ("container", "yes")]), // network logs
        labels(&[("role", "db")]),                                    // nothing routes here
    ]
}

/// Poll `check` until it holds (a condition with no state worth naming).
async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    poll_until(
        what,
        SETTLE,
        async || if check().await { Ok(()) } else { Err("not yet") },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_reach_exactly_the_collectors_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, first) = example_repo(&dir.path().join("fleet"));
    let mut config = test_config(dir.path());
    config.config_store = Some(store_config(repo.dir.to_str().unwrap()));
    let (a, b) = pair_with(dir.path(), config).await;
    let admin = admin(&a.base).await;
    let token = api_token(&a.base, &admin).await;
    let (_, enroll_token) = enrollment_token(&a.base, &admin, json!({"name":"fleet"})).await;
    assert_eq!(
        get_json(&a.base, &token, "/api/v1/config/revision").await["commit"],
        first
    );

    let sets = label_sets();
    let sim = Sim::start(SimConfig {
        transport: SimTransport::Grpc,
        http_base: a.base.clone(),
        grpc: a.grpc.clone(),
        collectors: 50,
        enrollment_token: enroll_token,
        label_sets: sets.clone(),
        heartbeat: Duration::from_secs(1),
        fail_when_config_contains: None,
        source_addrs: vec![],
        concurrency: 16,
    })
    .await
    .unwrap();

    // Every collector gets the config rendered for its labels (none for
    // the labels nothing routes to).
    let mut expected = Vec::new();
    for set in &sets {
        let p = render_preview(&a.base, &token, set).await;
        let routed = !p["pipelines"].as_array().unwrap().is_empty();
        expected.push(routed.then(|| p["hash"].as_str().unwrap().to_string()));
    }
    assert!(expected[4].is_none() && expected.iter().take(4).all(Option::is_some));
    assert_ne!(expected[0], expected[1]);
    let kind =
        |s: &AgentStats, stats: &[AgentStats]| stats.iter().position(|x| x.collector_id == s.collector_id).unwrap() % 5;
    let matches = |stats: &[AgentStats], expected: &[Option<String>]| {
        stats.iter().all(|s| s.config_hash == expected[kind(s, stats)])
    };
    wait_for("every collector on its rendered config", async || {
        matches(&sim.stats(), &expected)
    })
    .await;
    wait_for("40 APPLIED in the summary", async || {
        let s = get_json(&a.base, &token, "/api/v1/fleet/summary").await;
        s["connected"] == 50 && s["config"]["applied"] == 40 && s["config"]["none"] == 10
    })
    .await;
    let body = sim.stats()[0].config_body.clone().unwrap();
    assert!(body.contains(&first), "the header names the commit");
    assert!(
        body.contains("traces/app-traces") || body.contains("app-traces"),
        "{body}"
    );

    // Both instances render byte-identical configs for the same collector.
    for s in sim.stats().iter().take(5) {
        let da = get_json(&a.base, &token, &format!("/api/v1/collectors/{}", s.collector_id)).await;
        let db = get_json(&b.base, &token, &format!("/api/v1/collectors/{}", s.collector_id)).await;
        assert_eq!(da["desired"], db["desired"], "instances disagree on {}", s.collector_id);
    }

    // Change one pipeline: only the collectors running it get a push.
    let before: Vec<u64> = sim.stats().iter().map(|s| s.received).collect();
    let traces = repo.read("pipelines/traces.toml").replace("\"drop-health\", ", "");
    assert!(!traces.contains("drop-health"));
    repo.write("pipelines/traces.toml", &traces);
    let second = repo.commit_all("Keep health-check spans");
    let mut expected2 = Vec::new();
    wait_for("the new commit served", async || {
        get_json(&a.base, &token, "/api/v1/config/revision").await["commit"] == second.as_str()
    })
    .await;
    for set in &sets {
        let p = render_preview(&a.base, &token, set).await;
        expected2
            .push((!p["pipelines"].as_array().unwrap().is_empty()).then(|| p["hash"].as_str().unwrap().to_string()));
    }
    assert_ne!(expected2[0], expected[0], "app collectors are affected");
    assert_eq!(expected2[1..], expected[1..], "nobody else is");
    wait_for("the affected collectors on the new config", async || {
        matches(&sim.stats(), &expected2)
    })
    .await;
    wait_for("all APPLIED again", async || {
        get_json(&a.base, &token, "/api/v1/fleet/summary").await["config"]["applied"] == 40
    })
    .await;
    let stats = sim.stats();
    for (i, s) in stats.iter().enumerate() {
        let pushed = s.received - before[i];
        if i % 5 == 0 {
            assert_eq!(pushed, 1, "collector {i} runs app-traces and must get exactly one push");
        } else {
            assert_eq!(
                pushed,
                0,
                "collector {i} (kind {}) was pushed a config that did not change",
                i % 5
            );
        }
    }

    // An invalid commit (dangling reference) changes nothing and shows the
    // error with its file.
    let broken = traces.replace(
        "destinations = [\"backend\"]",
        "destinations = [\"backend\", \"nowhere\"]",
    );
    assert_ne!(broken, traces);
    repo.write("pipelines/traces.toml", &broken);
    let bad = repo.commit_all("Send traces nowhere");
    wait_for("the invalid commit to be refused", async || {
        let s = get_json(&a.base, &token, "/api/v1/config/status").await;
        s["last_attempt"]["revision"]["commit"] == bad.as_str() && s["last_attempt"]["valid"] == false
    })
    .await;
    let status = get_json(&a.base, &token, "/api/v1/config/status").await;
    let errors = status["last_attempt"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["file"] == "pipelines/traces.toml" && e["message"].as_str().unwrap().contains("nowhere")),
        "{status}"
    );
    assert_eq!(
        status["serving"]["commit"], second,
        "the last valid commit keeps serving"
    );
    assert_eq!(
        get_json(&b.base, &token, "/api/v1/config/revision").await["commit"],
        second
    );
    let received: Vec<u64> = sim.stats().iter().map(|s| s.received).collect();
    assert!(matches(&sim.stats(), &expected2), "an invalid commit moved a collector");

    // The fix is served; nothing changed for the collectors, so no push.
    repo.write("pipelines/traces.toml", &traces);
    let fix = repo.commit_all("Fix the destination");
    wait_for("the fix served", async || {
        get_json(&a.base, &token, "/api/v1/config/revision").await["commit"] == fix.as_str()
    })
    .await;
    assert!(get_json(&a.base, &token, "/api/v1/config/status").await["last_attempt"]["valid"] == true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sim.stats().iter().map(|s| s.received).collect::<Vec<_>>(),
        received,
        "a commit with unchanged renders pushed configs"
    );

    // Relabelling a collector re-renders it: a db collector becomes an app.
    let id = sim.stats()[4].collector_id.clone();
    let d = get_json(&a.base, &token, &format!("/api/v1/collectors/{id}")).await;
    let r = admin
        .patch(format!("{}/api/v1/collectors/{id}/labels", b.base))
        // A browser on instance b names b as its origin (behind a load
        // balancer both would share one public URL).
        .header("origin", &b.base)
        .json(&json!({"labels": sets[0], "version": d["version"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for("the relabelled collector on the app config", async || {
        sim.stats()[4].config_hash == expected2[0]
    })
    .await;
    sim.stop();
    a.stop().await;
    b.stop().await;
}
