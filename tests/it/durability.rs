//! The real binary: SIGKILL in the middle of an enrollment burst loses no
//! acknowledged enrollment, and a second process on the same store file is
//! refused with a clear message; a stopped in-process instance releases
//! the file.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkmesh::domain::{Collector, CollectorCredential};
use linkmesh::storage::Store;
use serde_json::{json, Value};

use super::support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_server(dir: &Path, port: u16) -> Child {
    let config = dir.join("linkmesh.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:{port}\"\ngrpc_listen = \"127.0.0.1:0\"\n[storage.embedded]\npath = {:?}\n[telemetry]\nlog_level = \"warn\"\n",
            dir.join("store.redb")
        ),
    )
    .unwrap();
    Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("LINKMESH_AUTH__BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_an_enrollment_burst_loses_no_acknowledged_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_server(dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    let a = admin(&base).await;
    let (_, token) = enrollment_token(&base, &a, json!({"name":"burst"})).await;

    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (base, token, acked) = (base.clone(), token.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            // Bounded: stops at the first failure (the kill) or after 500.
            for _ in 0..500 {
                let Ok(r) = reqwest::Client::new()
                    .post(format!("{base}/api/v1/enroll"))
                    .json(&json!({"token": token}))
                    .send()
                    .await
                else {
                    return;
                };
                if r.status() != 201 {
                    return;
                }
                let Ok(v) = r.json::<Value>().await else { return };
                acked.lock().unwrap().push((
                    v["collector_id"].as_str().unwrap().into(),
                    v["credential"].as_str().unwrap().into(),
                ));
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "the burst was too small to mean anything: {}",
        acked.len()
    );

    // Reopen the file the killed process held: every acknowledged
    // enrollment is there, with a working credential.
    let store = Store::open_embedded(&dir.path().join("store.redb")).await.unwrap();
    let domain = domain_on(store.clone());
    for (id, credential) in &acked {
        let c = store.get::<Collector>(id).await.unwrap();
        assert!(c.is_some(), "acknowledged collector {id} lost");
        let cred_id = &c.unwrap().value.credential_ids[0];
        assert!(store.get::<CollectorCredential>(cred_id).await.unwrap().is_some());
        assert_eq!(domain.authenticate_collector(credential).await.unwrap().key, *id);
    }
    println!(
        "acknowledged before SIGKILL: {}, all present after restart",
        acked.len()
    );
}

#[tokio::test]
async fn a_second_process_on_the_same_store_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = spawn_server(dir.path(), port);
    wait_ready(&format!("http://127.0.0.1:{port}")).await;
    let second = spawn_server(dir.path(), free_port());
    let out = second.wait_with_output().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
}

/// `run` owns every task of the instance: once it returned, the same
/// process can open the store file again at once (nothing still holds it),
/// the ports are free, and the collectors that were connected over gRPC and
/// WebSocket are stored as disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_instance_releases_its_store_file_and_ports() {
    use linkmesh::domain::CollectorStatus;
    use linkmesh::sim::{Sim, SimConfig, SimTransport};
    use linkmesh::storage::Scan;

    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let path = config.storage.embedded.path.clone();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let base = format!("http://{http_addr}");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(linkmesh::run(config, linkmesh::Listeners { http, grpc }, async move {
        let _ = stop_rx.await;
    }));
    wait_ready(&base).await;
    let admin = admin(&base).await;
    let (_, enroll) = enrollment_token(&base, &admin, json!({"name": "stop"})).await;
    let mut sims = Vec::new();
    for transport in [SimTransport::Grpc, SimTransport::WebSocket] {
        let sim = Sim::start(SimConfig {
            transport,
            http_base: base.clone(),
            grpc: format!("http://{grpc_addr}"),
            collectors: 2,
            enrollment_token: enroll.clone(),
            label_sets: vec![[("sim".to_string(), "{i}".to_string())].into()],
            heartbeat: Duration::from_millis(500),
            fail_when_config_contains: None,
            source_addrs: vec![],
            concurrency: 4,
        })
        .await
        .unwrap();
        sims.push(sim);
    }
    let summary = async || {
        admin
            .get(format!("{base}/api/v1/fleet/summary"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    poll_json("4 connected collectors", summary, |v| v["connected"] == 4).await;

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();

    // No retry: the file must be free the moment `run` returned.
    let store = Store::open_embedded(&path)
        .await
        .expect("the stopped instance still holds the store file");
    let statuses = store
        .scan::<CollectorStatus>(Scan {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(statuses.len(), 4);
    assert!(
        statuses.iter().all(|s| !s.value.connected),
        "collectors still stored as connected: {statuses:?}"
    );
    tokio::net::TcpListener::bind(http_addr)
        .await
        .expect("the web port is still bound");
    tokio::net::TcpListener::bind(grpc_addr)
        .await
        .expect("the gRPC port is still bound");
    for sim in sims {
        sim.stop();
    }
}

/// A console page left open (its SSE stream) does not hold a stopping
/// instance: the stream ends, `run` returns long before the shutdown grace,
/// and the store file opens again at once. The instance serves a config
/// store, whose reload loop (and notify watcher) must have ended too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_console_stream_ends_when_the_instance_stops() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("fleet");
    let (repo, _) = crate::configstore::example_repo(&repo_dir);
    let mut config = test_config(dir.path());
    // Far longer than the deadline below: waiting on the open stream would
    // show as a timeout, not as a slow pass.
    config.server.shutdown_grace = Duration::from_secs(600);
    config.config_store = Some(crate::configstore::store_config(repo.dir.to_str().unwrap()));
    let path = config.storage.embedded.path.clone();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", http.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(linkmesh::run(config, linkmesh::Listeners { http, grpc }, async move {
        let _ = stop_rx.await;
    }));
    wait_ready(&base).await;
    let browser = admin(&base).await;
    let mut streams = Vec::new();
    for page in ["/events/overview", "/events/collectors"] {
        let mut r = browser.get(format!("{base}{page}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{page}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        // The first event: the stream is open and being served.
        let first = r.chunk().await.unwrap().expect("the stream ended at once");
        assert!(String::from_utf8_lossy(&first).contains("event"), "{page}");
        streams.push(r);
    }

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the instance did not stop while a console stream was open")
        .unwrap()
        .unwrap();
    for mut r in streams {
        // What is left is read to the end, and the end comes.
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(_)) = r.chunk().await {}
        })
        .await;
        assert!(end.is_ok(), "a console stream stayed open after the instance stopped");
    }
    Store::open_embedded(&path)
        .await
        .expect("the stopped instance still holds the store file");
}
