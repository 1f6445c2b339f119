//! The collector protocol end to end: simulated fleets over gRPC, OpAMP
//! WebSocket and OpAMP HTTP; refusals; session rules; commands and label
//! changes made through another instance.

use std::io::Write;
use std::time::Duration;

use linkmesh::domain::CollectorStatus;
use linkmesh::proto::opamp_msgs as pb;
use linkmesh::sim::{Sim, SimConfig, SimTransport};
use prost::Message;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::support::*;

fn sim_config(s: &TestServer, transport: SimTransport, n: usize, token: &str) -> SimConfig {
    SimConfig {
        transport,
        http_base: s.base.clone(),
        grpc: s.grpc.clone(),
        collectors: n,
        enrollment_token: token.into(),
        label_sets: vec![[("sim".to_string(), "{i}".to_string())].into()],
        heartbeat: Duration::from_millis(500),
        fail_when_config_contains: None,
        source_addrs: vec![],
        concurrency: 32,
    }
}

async fn fleet_applies(transport: SimTransport, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    // The whole fleet enrolls from one address at once: above the
    // per-address limit of POST /enroll, which is not under test here.
    let mut config = test_config(dir.path());
    config.auth.enroll_attempts_per_minute = 100_000;
    let s = start(open_store(dir.path()).await, config).await;
    let admin = admin(&s.base).await;
    let token = api_token(&s.base, &admin).await;
    let (_, enroll) = enrollment_token(&s.base, &admin, json!({"name":"fleet"})).await;
    set_default(&s.base, &token, "receivers:\n  otlp: {}\n").await;
    let sim = Sim::start(sim_config(&s, transport, n, &enroll)).await.unwrap();
    assert!(
        sim.wait_all(Duration::from_secs(60), |a| a.config_hash.is_some()).await,
        "not every collector got the config"
    );
    let sum = wait_summary(&s.base, &token, |v| v["connected"] == n && v["config"]["applied"] == n).await;
    assert_eq!(sum["total"], n);

    // A new default reaches everyone and is applied; it and the effective
    // config each collector echoes are far larger than one read of the
    // server's WebSocket buffer (4 KiB).
    let padding = "# a comment line of about sixty characters, many times over\n".repeat(800);
    set_default(&s.base, &token, &format!("receivers:\n  otlp: {{}}\n# v2\n{padding}")).await;
    assert!(
        sim.wait_all(Duration::from_secs(60), |a| a
            .config_body
            .as_deref()
            .is_some_and(|b| b.contains("# v2")))
            .await
    );
    wait_summary(&s.base, &token, |v| v["config"]["applied"] == n).await;
    let hashes: std::collections::BTreeSet<_> = sim.stats().into_iter().map(|a| a.config_hash).collect();
    assert_eq!(hashes.len(), 1, "everyone has the same hash");

    // The detail shows the effective config each reported, while connected
    // and after it went away (read from the store, where its bodies are
    // stored once for the fleet).
    let id = sim.stats()[0].collector_id.clone();
    let reported = |d: &Value| {
        d["status"]["effective_config"]["files"]
            .as_object()
            .is_some_and(|f| f.values().any(|b| b.as_str().is_some_and(|b| b.contains("# v2"))))
    };
    let d = wait_until_detail(&s.base, &token, &id, |d| d["status"]["connected"] == true).await;
    assert!(reported(&d), "{d}");
    sim.stop();
    // A polling agent has no connection to lose: it times out later.
    if !matches!(transport, SimTransport::Http) {
        let d = wait_until_detail(&s.base, &token, &id, |d| d["status"]["connected"] == false).await;
        assert!(reported(&d), "{d}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_collectors_over_grpc_enroll_connect_and_apply() {
    fleet_applies(SimTransport::Grpc, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_collectors_over_websocket_enroll_connect_and_apply() {
    fleet_applies(SimTransport::WebSocket, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_collectors_over_http_polling_enroll_connect_and_apply() {
    fleet_applies(SimTransport::Http, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_config_shows_the_collectors_error_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let token = api_token(&s.base, &admin).await;
    let (_, enroll) = enrollment_token(&s.base, &admin, json!({"name":"fleet"})).await;
    let mut cfg = sim_config(&s, SimTransport::Grpc, 3, &enroll);
    cfg.fail_when_config_contains = Some("nonexistent_exporter".into());
    let sim = Sim::start(cfg).await.unwrap();
    set_default(&s.base, &token, "exporters:\n  nonexistent_exporter: {}\n").await;
    wait_summary(&s.base, &token, |v| v["config"]["failed"] == 3).await;
    let id = sim.stats()[0].collector_id.clone();
    let d: Value = get_as(&admin, format!("{}/api/v1/collectors/{id}", s.base)).await;
    assert_eq!(d["config_status"], "failed");
    assert!(
        d["config_error"].as_str().unwrap().contains("nonexistent_exporter"),
        "{d}"
    );
    assert_eq!(d["status"]["remote_config"]["status"], "FAILED");
    let list: Value = get_as(&admin, format!("{}/api/v1/collectors?config_status=failed", s.base)).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    sim.stop();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_and_unknown_credentials_are_refused_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let (id, old) = enroll_one(&s.base, &admin).await;
    let uid = uid_bytes(&id);

    // Connected with the credential, then it is rotated away: the open
    // session is closed and new ones are refused.
    let (_tx, mut stream) = grpc_session(&s.grpc, &old, &uid).await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    let r: Value = admin
        .post(format!("{}/api/v1/collectors/{id}/rotate-credential", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = r["credential"].as_str().unwrap().to_string();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
    assert!(closed.is_ok(), "the session with the revoked credential stayed open");

    for bad in [old.as_str(), "lmc_00000000000000000000000000000000_forged"] {
        let err = grpc_session(&s.grpc, bad, &uid).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let msg = pb::AgentToServer {
            instance_uid: uid.clone(),
            sequence_num: 1,
            ..Default::default()
        };
        let r = reqwest::Client::new()
            .post(format!("{}/v1/opamp", s.base))
            .bearer_auth(bad)
            .header("content-type", "application/x-protobuf")
            .body(msg.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let url = format!("{}/v1/opamp", s.base.replacen("http", "ws", 1));
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {bad}").parse().unwrap());
        assert!(
            tokio_tungstenite::connect_async(req).await.is_err(),
            "websocket upgrade with a bad credential"
        );
    }
    // The new credential works; a foreign instance_uid with it does not.
    let (_tx, mut stream) = grpc_session(&s.grpc, &new, &uid).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.instance_uid, uid, "instance_uid echoed");
    let (_tx2, mut foreign) = grpc_session(&s.grpc, &new, &[9u8; 16]).await.unwrap();
    let refusal = foreign.message().await.unwrap().unwrap();
    let err = refusal.error_response.expect("an OpAMP error response");
    assert!(err.error_message.contains("does not belong"), "{}", err.error_message);
    assert!(
        foreign.message().await.map(|m| m.is_none()).unwrap_or(true),
        "the stream ends after the refusal"
    );

    let audit: Value = get_as(&admin, format!("{}/api/v1/audit?action=collector.authenticate", s.base)).await;
    assert!(
        audit["items"].as_array().unwrap().len() >= 4,
        "refusals are audited: {audit}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_connection_replaces_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let (id, cred) = enroll_one(&s.base, &admin).await;
    let (_tx1, mut first) = grpc_session(&s.grpc, &cred, &uid_bytes(&id)).await.unwrap();
    assert!(first.message().await.unwrap().is_some());
    let (_tx2, mut second) = grpc_session(&s.grpc, &cred, &uid_bytes(&id)).await.unwrap();
    assert!(second.message().await.unwrap().is_some());
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = first.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the replaced stream stayed open");
    let token = api_token(&s.base, &admin).await;
    assert_eq!(summary(&s.base, &token).await["connected"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_polling_sessions_time_out_and_heartbeats_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.fleet.liveness_timeout = Duration::from_secs(1);
    let s = start(open_store(dir.path()).await, config).await;
    let admin = admin(&s.base).await;
    let token = api_token(&s.base, &admin).await;
    let (id, cred) = enroll_one(&s.base, &admin).await;
    let post = |seq: u64, full: bool| {
        let mut m = pb::AgentToServer {
            instance_uid: uid_bytes(&id),
            sequence_num: seq,
            capabilities: 0x1,
            ..Default::default()
        };
        if full {
            m.agent_description = Some(pb::AgentDescription::default());
        }
        reqwest::Client::new()
            .post(format!("{}/v1/opamp", s.base))
            .bearer_auth(&cred)
            .header("content-type", "application/x-protobuf")
            .body(m.encode_to_vec())
            .send()
    };
    let r = post(1, true).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let reply = pb::ServerToAgent::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(reply.instance_uid, uid_bytes(&id));
    assert_eq!(reply.flags, 0, "full state was sent");
    wait_summary(&s.base, &token, |v| v["connected"] == 1).await;
    // Let the status write land, then heartbeat: its version stays put.
    let end = Instant::now() + Duration::from_secs(10);
    let version = loop {
        if let Some(v) = s.store.get::<CollectorStatus>(&id).await.unwrap() {
            break v.version;
        }
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for seq in 2..6 {
        assert_eq!(post(seq, false).await.unwrap().status(), 200);
    }
    // Barrier: one message that does change the status. Statuses are
    // written in order, so once it is stored any write the heartbeats
    // caused has landed too; exactly one version later means they wrote
    // nothing.
    let change = pb::AgentToServer {
        instance_uid: uid_bytes(&id),
        sequence_num: 6,
        capabilities: 0x1,
        health: Some(pb::ComponentHealth {
            healthy: true,
            status: "barrier".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = reqwest::Client::new()
        .post(format!("{}/v1/opamp", s.base))
        .bearer_auth(&cred)
        .header("content-type", "application/x-protobuf")
        .body(change.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let end = Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let v = s.store.get::<CollectorStatus>(&id).await.unwrap().unwrap();
        if v.value.health.as_ref().is_some_and(|h| h.status == "barrier") {
            break v;
        }
        assert!(Instant::now() < end, "the status change was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stored.version, version + 1, "heartbeats wrote to the store");
    // Silence: the session expires and the collector shows disconnected.
    wait_summary(&s.base, &token, |v| v["connected"] == 0 && v["disconnected"] == 1).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opamp_http_handles_gzip_and_refuses_oversized_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_request_bytes = 64 * 1024;
    let s = start(open_store(dir.path()).await, config).await;
    let admin = admin(&s.base).await;
    let token = api_token(&s.base, &admin).await;
    let (id, cred) = enroll_one(&s.base, &admin).await;
    set_default(&s.base, &token, &format!("# {}\n", "x".repeat(4000))).await;
    let m = pb::AgentToServer {
        instance_uid: uid_bytes(&id),
        sequence_num: 1,
        capabilities: 0x1 | 0x2,
        agent_description: Some(Default::default()),
        ..Default::default()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&m.encode_to_vec()).unwrap();
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw
        .post(format!("{}/v1/opamp", s.base))
        .bearer_auth(&cred)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .header("accept-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-encoding"],
        "gzip",
        "a large answer is compressed when accepted"
    );
    let mut body = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(r.bytes().await.unwrap().as_ref()),
        &mut body,
    )
    .unwrap();
    assert!(pb::ServerToAgent::decode(body.as_slice())
        .unwrap()
        .remote_config
        .is_some());
    // Without Accept-Encoding: plain.
    let r = raw
        .post(format!("{}/v1/opamp", s.base))
        .bearer_auth(&cred)
        .body(
            pb::AgentToServer {
                instance_uid: uid_bytes(&id),
                sequence_num: 2,
                capabilities: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        )
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    // Over the limit: 413.
    let r = raw
        .post(format!("{}/v1/opamp", s.base))
        .bearer_auth(&cred)
        .body(vec![0u8; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_labels_and_pins_made_on_another_instance_reach_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path()).await;
    let admin_b = admin(&b.base).await;
    let token_b = api_token(&b.base, &admin_b).await;
    let (_, enroll) = enrollment_token(&b.base, &admin_b, json!({"name":"x"})).await;
    let sim = Sim::start(sim_config(&a, SimTransport::Grpc, 2, &enroll))
        .await
        .unwrap();
    assert!(sim.wait_all(Duration::from_secs(30), |s| s.connected).await);
    let id = sim.stats()[0].collector_id.clone();
    let d = wait_until_detail(&b.base, &token_b, &id, |d| d["connected"] == true).await;
    assert_eq!(d["instance"], "a", "instance b sees which instance holds the collector");

    // Pin a config through b: only that collector gets it, via a.
    let r = admin_b
        .put(format!("{}/api/v1/collectors/{id}/config", b.base))
        .json(&json!({"files":{"c.yaml":{"body":"pinned: true"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        sim.wait_all(Duration::from_secs(30), |s| s.collector_id != id
            || s.config_body.as_deref() == Some("pinned: true"))
            .await
    );
    assert!(
        sim.stats()[1].config_body.is_none(),
        "the other collector got a config pinned to someone else"
    );
    wait_until_detail(&b.base, &token_b, &id, |d| {
        d["config_status"] == "applied" && d["desired"]["source"] == "assignment"
    })
    .await;

    // Restart through b.
    assert_eq!(
        admin_b
            .post(format!("{}/api/v1/collectors/{id}/restart", b.base))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert!(
        sim.wait_all(Duration::from_secs(30), |s| s.collector_id != id || s.restarts == 1)
            .await,
        "restart never arrived"
    );

    // Labels through b, with optimistic concurrency.
    let d: Value = get_as(&admin_b, format!("{}/api/v1/collectors/{id}", b.base)).await;
    let r = admin_b
        .patch(format!("{}/api/v1/collectors/{id}/labels", b.base))
        .json(&json!({"labels":{"env":"prod"},"version":d["version"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stale = admin_b
        .patch(format!("{}/api/v1/collectors/{id}/labels", b.base))
        .json(&json!({"labels":{"env":"dev"},"version":d["version"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    let listed: Value = get_as(&admin_b, format!("{}/api/v1/collectors?selector=env=prod", b.base)).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // Deregistration through b ends the session on a.
    assert_eq!(
        admin_b
            .delete(format!("{}/api/v1/collectors/{id}", b.base))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(
        sim.wait_all(Duration::from_secs(30), |s| s.collector_id != id || !s.connected)
            .await
    );
    sim.stop();
    a.stop().await;
    b.stop().await;
}

async fn wait_until_detail(base: &str, token: &str, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    poll_json(
        "the collector detail",
        async || get_json(base, token, &format!("/api/v1/collectors/{id}")).await,
        pred,
    )
    .await
}

/// A collector that came back through instance b while instance a still
/// held its old session (a half-open connection a notices late): when a
/// lets the old session go, the collector stays connected on b, instead of
/// a storing it disconnected over b's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_session_ending_late_leaves_the_collector_connected_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path()).await;
    let admin_a = admin(&a.base).await;
    let api = api_token(&a.base, &admin_a).await;
    let (id, cred) = enroll_one(&a.base, &admin_a).await;
    let stored = |instance: &'static str| {
        let store = a.store.clone();
        let id = id.clone();
        async move {
            poll_json(
                "the stored status",
                async || {
                    let s = store.get::<CollectorStatus>(&id).await.unwrap();
                    serde_json::to_value(s.map(|s| s.value)).unwrap()
                },
                |s| s["connected"] == true && s["instance"] == instance,
            )
            .await
        }
    };
    let (old_tx, mut old) = grpc_session(&a.grpc, &cred, &uid_bytes(&id)).await.unwrap();
    assert!(old.message().await.unwrap().is_some());
    stored("a").await;
    // Back through b, while a's stream is still open.
    let (_new_tx, mut new) = grpc_session(&b.grpc, &cred, &uid_bytes(&id)).await.unwrap();
    assert!(new.message().await.unwrap().is_some());
    stored("b").await;

    // a notices the old stream ended.
    drop(old_tx);
    drop(old);
    wait_summary(&a.base, &api, |v| v["connected"] == 1 && v["instances"]["b"] == 1).await;
    a.stop().await;
    let s = b.store.get::<CollectorStatus>(&id).await.unwrap().unwrap().value;
    assert!(s.connected && s.instance == "b", "{s:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_instance_hands_its_collectors_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path()).await;
    let store = b.store.clone();
    let admin_b = admin(&b.base).await;
    let token = api_token(&b.base, &admin_b).await;
    let (_, enroll) = enrollment_token(&b.base, &admin_b, json!({"name":"x"})).await;
    let sim = Sim::start(sim_config(&a, SimTransport::Grpc, 3, &enroll))
        .await
        .unwrap();
    wait_summary(&b.base, &token, |v| v["connected"] == 3 && v["instances"]["a"] == 3).await;
    // Graceful stop: once `run` returns, the store already says so (no
    // waiting for a's presence to go stale).
    a.stop().await;
    assert!(
        store
            .get::<linkmesh::domain::ServerInstance>("a")
            .await
            .unwrap()
            .is_none(),
        "a's presence row is still there"
    );
    for s in sim.stats() {
        let st = store.get::<CollectorStatus>(&s.collector_id).await.unwrap().unwrap();
        assert!(!st.value.connected, "{} still stored as connected", s.collector_id);
    }
    assert_eq!(summary(&b.base, &token).await["connected"], 0);
    sim.stop();
    b.stop().await;
}

/// Standard agents given only the URL and an enrollment token: enrolled on
/// their first message, offered a credential of their own (and where to
/// send their own metrics), switched to it; then a rotation through the API
/// is delivered the same way. No installable agent takes connection
/// settings, so the simulator plays the agent.
async fn token_only_agents_switch_to_their_own_credentials(transport: SimTransport) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.public_url = Some("https://linkmesh.example".into());
    let s = start(open_store(dir.path()).await, config).await;
    let admin = admin(&s.base).await;
    let token = api_token(&s.base, &admin).await;
    set_default(&s.base, &token, "receivers:\n  otlp: {}\n").await;
    let (token_id, enroll) = enrollment_token(
        &s.base,
        &admin,
        json!({"name":"edge","max_uses":3,"labels":{"site":"edge"}}),
    )
    .await;
    let behaviour = linkmesh::sim::SimBehaviour {
        token_only: true,
        accepts_connection_settings: true,
        ..Default::default()
    };
    let sim = Sim::start_with(sim_config(&s, transport, 3, &enroll), behaviour)
        .await
        .unwrap();
    assert!(
        sim.wait_all(Duration::from_secs(60), |a| a.connected
            && a.credentials_adopted == 1
            && a.config_hash.is_some())
            .await,
        "{:?}",
        sim.stats()
    );
    for a in sim.stats() {
        assert!(a.bearer.starts_with("lmc_"), "{a:?}");
        assert_eq!(
            a.own_metrics,
            Some((
                "https://linkmesh.example/v1/metrics".to_string(),
                format!("Bearer {}", a.bearer)
            ))
        );
        let d = get_json(&s.base, &token, &format!("/api/v1/collectors/{}", a.collector_id)).await;
        assert_eq!(d["labels"]["site"], "edge", "{d}");
        // The token path for this uid is closed once it switched.
        let err = grpc_session(&s.grpc, &enroll, &uid_bytes(&a.collector_id))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("already enrolled"), "{}", err.message());
    }
    let tokens = get_json(&s.base, &token, "/api/v1/enrollment-tokens").await;
    let t = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == token_id.as_str())
        .unwrap();
    assert_eq!(t["uses"], 3, "one use per agent, none for reconnects");

    // Rotation: delivered on the session, the agent switches again, the
    // replaced credential is refused afterwards.
    let first = sim.stats()[0].clone();
    let r: Value = admin
        .post(format!(
            "{}/api/v1/collectors/{}/rotate-credential",
            s.base, first.collector_id
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["delivery"], "connection_settings", "{r}");
    assert!(r["credential"].is_null());
    assert!(
        sim.wait_all(Duration::from_secs(60), |a| a.collector_id != first.collector_id
            || (a.credentials_adopted == 2 && a.connected))
            .await,
        "{:?}",
        sim.stats()
    );
    let now = sim.stats()[0].clone();
    assert_ne!(now.bearer, first.bearer);
    let old = grpc_session(&s.grpc, &first.bearer, &uid_bytes(&first.collector_id))
        .await
        .unwrap_err();
    assert_eq!(old.code(), tonic::Code::Unauthenticated);
    assert!(grpc_session(&s.grpc, &now.bearer, &uid_bytes(&now.collector_id))
        .await
        .is_ok());

    let audit = get_json(&s.base, &token, "/api/v1/audit?action=collector.").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "collector.enroll",
        "collector.credential_offered",
        "collector.credential_adopted",
        "collector.rotate_credential",
    ] {
        assert!(actions.contains(&wanted), "{wanted} missing from {actions:?}");
    }
    sim.stop();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_only_agents_over_grpc_switch_to_their_own_credentials() {
    token_only_agents_switch_to_their_own_credentials(SimTransport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_only_agents_over_websocket_switch_to_their_own_credentials() {
    token_only_agents_switch_to_their_own_credentials(SimTransport::WebSocket).await;
}

/// An agent with an empty uid is given one and enrolled under it; a used-up
/// token is refused with the reason on the OpAMP stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_contact_assigns_a_uid_and_refuses_a_used_up_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let (_, enroll) = enrollment_token(&s.base, &admin, json!({"name":"one","max_uses":1})).await;
    let (_tx, mut stream) = grpc_session(&s.grpc, &enroll, &[]).await.unwrap();
    let reply = stream.message().await.unwrap().unwrap();
    let uid = reply.agent_identification.expect("a uid is assigned").new_instance_uid;
    let id = uuid::Uuid::from_slice(&uid).unwrap().to_string();
    let d: Value = get_as(&admin, format!("{}/api/v1/collectors/{id}", s.base)).await;
    assert_eq!(d["id"], id.as_str(), "{d}");
    let other = uuid::Uuid::now_v7();
    let err = grpc_session(&s.grpc, &enroll, other.as_bytes()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("used up"), "{}", err.message());
    s.stop().await;
}

/// A config naming a component type the agents lack (they report their
/// AvailableComponents) is not pushed: the collectors show `incompatible`
/// with the missing types, and a config they can run reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_naming_components_the_agent_lacks_is_not_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let token = api_token(&s.base, &admin).await;
    let (_, enroll) = enrollment_token(&s.base, &admin, json!({"name":"fleet"})).await;
    set_default(
        &s.base,
        &token,
        "receivers:\n  otlp: {}\nexporters:\n  kafka/primary: {}\n",
    )
    .await;
    let behaviour = linkmesh::sim::SimBehaviour {
        available_components: Some(
            [
                ("receivers".to_string(), vec!["otlp".to_string()]),
                ("exporters".to_string(), vec!["debug".to_string()]),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let sim = Sim::start_with(sim_config(&s, SimTransport::Grpc, 2, &enroll), behaviour)
        .await
        .unwrap();
    wait_summary(&s.base, &token, |v| {
        v["connected"] == 2 && v["config"]["incompatible"] == 2
    })
    .await;
    let id = sim.stats()[0].collector_id.clone();
    let d = get_json(&s.base, &token, &format!("/api/v1/collectors/{id}")).await;
    assert_eq!(d["config_status"], "incompatible", "{d}");
    let why = d["config_error"].as_str().unwrap();
    assert!(why.contains("exporters/kafka") && !why.contains("otlp"), "{why}");
    assert_eq!(
        d["status"]["available_components"]["components"]["exporters"],
        json!(["debug"])
    );
    assert!(
        sim.stats().iter().all(|a| a.received == 0),
        "nothing was pushed: {:?}",
        sim.stats()
    );

    set_default(&s.base, &token, "receivers:\n  otlp: {}\nexporters:\n  debug: {}\n").await;
    assert!(
        sim.wait_all(Duration::from_secs(60), |a| a
            .config_body
            .as_deref()
            .is_some_and(|b| b.contains("debug")))
            .await,
        "{:?}",
        sim.stats()
    );
    wait_summary(&s.base, &token, |v| v["config"]["applied"] == 2).await;
    sim.stop();
    s.stop().await;
}
