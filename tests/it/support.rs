//! Test harness: in-process server instances on loopback port 0, sharing a
//! store when asked (the shape of an HA pair), and HTTP clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkmesh::clock::{Clock, SystemClock};
use linkmesh::config::{Config, Secret};
use linkmesh::proto::opamp_msgs as pb;
use linkmesh::proto::service::collector_service_client::CollectorServiceClient;
use linkmesh::storage::Store;
use linkmesh::{Listeners, RunError};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_PASSWORD: &str = "correct-horse-battery-staple";

pub struct TestServer {
    pub base: String,
    /// The collector gRPC endpoint, `http://127.0.0.1:port`.
    pub grpc: String,
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), RunError>>>,
}

impl TestServer {
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// A config for tests: loopback, bootstrap admin, short grace.
pub fn test_config(data_dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.http_listen = "127.0.0.1:0".parse().unwrap();
    c.server.shutdown_grace = Duration::from_secs(2);
    c.storage.embedded.path = data_dir.join("linkmesh.redb");
    c.auth.bootstrap_admin_password = Some(Secret::new(ADMIN_PASSWORD));
    c
}

pub async fn open_store(dir: &Path) -> Store {
    Store::open_embedded(&dir.join("linkmesh.redb")).await.unwrap()
}

/// Start an instance on `store`.
pub async fn start(store: Store, config: Config) -> TestServer {
    start_with_clock(store, config, Arc::new(SystemClock)).await
}

pub async fn start_with_clock(store: Store, config: Config, clock: Arc<dyn Clock>) -> TestServer {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", http.local_addr().unwrap());
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(linkmesh::run_with_store(
        config,
        store.clone(),
        clock,
        Listeners { http, grpc },
        async move {
            let _ = rx.await;
        },
    ));
    let server = TestServer {
        base,
        grpc: grpc_url,
        store,
        shutdown: Some(tx),
        handle: Some(handle),
    };
    wait_ready(&server.base).await;
    server
}

/// Two instances, `a` and `b`, sharing one fresh store in `dir` (the shape
/// of an HA pair).
pub async fn pair(dir: &Path) -> (TestServer, TestServer) {
    pair_with(dir, test_config(dir)).await
}

/// [`pair`] with `config` (a [`test_config`] of `dir`, changed) on both
/// instances, each under its own name.
pub async fn pair_with(dir: &Path, config: Config) -> (TestServer, TestServer) {
    let store = open_store(dir).await;
    let mut ca = config.clone();
    ca.server.instance_name = Some("a".into());
    let mut cb = config;
    cb.server.instance_name = Some("b".into());
    let a = start(store.clone(), ca).await;
    let b = start(store, cb).await;
    (a, b)
}

/// A fresh store in `dir` and one instance on it.
pub async fn start_fresh(dir: &Path) -> TestServer {
    start(open_store(dir).await, test_config(dir)).await
}

pub async fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client with a cookie jar, logged in as `user`.
pub async fn login(base: &str, user: &str, password: &str) -> reqwest::Client {
    // Like a browser, the session client names its origin: cookie-
    // authenticated mutations without one are refused (CSRF check).
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::ORIGIN, base.parse().unwrap());
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .default_headers(headers)
        .build()
        .unwrap();
    let r = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login as {user} failed: {}", r.text().await.unwrap());
    client
}

pub async fn admin(base: &str) -> reqwest::Client {
    login(base, "admin", ADMIN_PASSWORD).await
}

/// Create a user with `role` through the API and log in as them.
pub async fn user_with_role(base: &str, admin: &reqwest::Client, name: &str, role: &str) -> reqwest::Client {
    let pw = format!("{name}-password-long");
    let r = admin
        .post(format!("{base}/api/v1/users"))
        .json(&json!({ "username": name, "password": pw, "role": role }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    login(base, name, &pw).await
}

/// Create an enrollment token; returns (id, secret).
pub async fn enrollment_token(base: &str, client: &reqwest::Client, body: Value) -> (String, String) {
    let r = client
        .post(format!("{base}/api/v1/enrollment-tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    (v["id"].as_str().unwrap().into(), v["token"].as_str().unwrap().into())
}

pub async fn enroll(base: &str, token: &str, uid: Option<&str>) -> reqwest::Response {
    let mut body = json!({ "token": token, "name": "test-collector" });
    if let Some(uid) = uid {
        body["instance_uid"] = json!(uid);
    }
    reqwest::Client::new()
        .post(format!("{base}/api/v1/enroll"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_linkmesh"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How long a test waits for state to settle before it fails: generous for
/// a loaded 2-core machine, yet a hang still ends with the state named.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Ask `probe` every 50 ms until it answers `Ok`; after `limit`, fail naming
/// `what` and the last `Err` (what the state was instead). The one polling
/// loop of these tests: they poll with a deadline, never sleep blind.
pub async fn poll_until<T, E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetch a JSON document with `fetch` until `pred` holds on it; fail naming
/// `what` (with the last document) after [`SETTLE`].
pub async fn poll_json(what: &str, mut fetch: impl AsyncFnMut() -> Value, pred: impl Fn(&Value) -> bool) -> Value {
    poll_until(what, SETTLE, async || {
        let v = fetch().await;
        if pred(&v) {
            Ok(v)
        } else {
            Err(v)
        }
    })
    .await
}

/// `GET base+path` as JSON, with a bearer token.
pub async fn get_json(base: &str, token: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET url` as `client` (a logged-in session or a plain client), the
/// answer as JSON.
pub async fn get_as(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// The Prometheus text an instance serves at `/metrics`.
pub async fn get_metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The lines of a Prometheus text that start with `prefix`: a metric name,
/// or a name and the start of its labels (`name{state=`).
pub fn metric_lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Create an API token as `client` (it acts with its owner's role);
/// returns its secret.
pub async fn api_token(base: &str, client: &reqwest::Client) -> String {
    create_api_token(base, client, json!({ "name": "test" })).await.1
}

/// Create an API token as `client` with `body` (`POST /api/v1/api-tokens`);
/// returns (id, secret).
pub async fn create_api_token(base: &str, client: &reqwest::Client, body: Value) -> (String, String) {
    let r = client
        .post(format!("{base}/api/v1/api-tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "creating an API token");
    let v: Value = r.json().await.unwrap();
    (v["id"].as_str().unwrap().into(), v["token"].as_str().unwrap().into())
}

/// Enroll one collector with a fresh enrollment token created as `admin`;
/// returns (collector id, credential).
pub async fn enroll_one(base: &str, admin: &reqwest::Client) -> (String, String) {
    let (_, t) = enrollment_token(base, admin, json!({"name":"one"})).await;
    let e: Value = enroll(base, &t, None).await.json().await.unwrap();
    (
        e["collector_id"].as_str().unwrap().into(),
        e["credential"].as_str().unwrap().into(),
    )
}

/// The fleet summary (`GET /api/v1/fleet/summary`) with a bearer token.
pub async fn summary(base: &str, token: &str) -> Value {
    get_json(base, token, "/api/v1/fleet/summary").await
}

/// Poll the fleet summary until `pred` holds (deadline: [`SETTLE`]).
pub async fn wait_summary(base: &str, token: &str, pred: impl Fn(&Value) -> bool) -> Value {
    poll_json("the fleet summary", async || summary(base, token).await, pred).await
}

/// Run `linkmesh check-config file`, which must refuse it; returns what it
/// printed on stderr (the errors, each naming its key).
pub fn check_config_refuses(file: &Path) -> String {
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "check-config accepted {}", file.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A domain handle on `store` outside any server (to look at what a server
/// stored), with one-minute session and token lifetimes.
pub fn domain_on(store: Store) -> linkmesh::domain::Domain {
    linkmesh::domain::Domain::new(
        store,
        Arc::new(SystemClock),
        "t".into(),
        linkmesh::domain::AuthSettings {
            session_ttl: Duration::from_secs(60),
            api_token_ttl: Duration::from_secs(60),
            enrollment_token_ttl: Duration::from_secs(60),
        },
    )
}

/// What the served commit renders for a collector with `labels`
/// (`POST /api/v1/config/render-preview`, bearer token): hash, YAML,
/// pipelines, commit.
pub async fn render_preview(base: &str, token: &str, labels: &std::collections::BTreeMap<String, String>) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/config/render-preview"))
        .bearer_auth(token)
        .json(&json!({ "labels": labels }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "render preview for {labels:?}");
    r.json().await.unwrap()
}

/// Set the fleet-wide default config (`PUT /api/v1/fleet/default-config`)
/// to one `collector.yaml` of `body`.
pub async fn set_default(base: &str, token: &str, body: &str) {
    let r = reqwest::Client::new()
        .put(format!("{base}/api/v1/fleet/default-config"))
        .bearer_auth(token)
        .json(&json!({"files": {"collector.yaml": {"body": body}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

/// A raw gRPC session with `credential`; the first answer (or the refusal).
pub async fn grpc_session(
    grpc: &str,
    credential: &str,
    uid: &[u8],
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::AgentToServer>,
        tonic::Streaming<pb::ServerToAgent>,
    ),
    tonic::Status,
> {
    let mut client = CollectorServiceClient::connect(grpc.to_string()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentToServer {
        instance_uid: uid.to_vec(),
        sequence_num: 1,
        capabilities: 0x1 | 0x2,
        agent_description: Some(Default::default()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {credential}").parse().unwrap());
    let stream = client.session(req).await?.into_inner();
    Ok((tx, stream))
}

/// A collector id (a UUID) as the 16 bytes of an OpAMP instance_uid.
pub fn uid_bytes(id: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(id).unwrap().as_bytes().to_vec()
}

/// `data` gzip-compressed (a collector's `Content-Encoding: gzip` body).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}
