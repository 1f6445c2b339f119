//! The storage conformance suite on every backend available here.
//!
//! MongoDB: `LINKMESH_TEST_MONGODB_URI` names a replica set to use (each run
//! works in fresh databases and drops them); otherwise, with `mongod` on
//! PATH, a 3-member replica set is started on loopback in a temp dir.
//! Without either, the MongoDB tests print a SKIPPED line.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use linkmesh::config::{Config, DatabaseConfig, Secret, StorageBackend};
use linkmesh::storage::conformance::{self, Probe};
use linkmesh::storage::{Change, ChangeFeed, Expect, Op, StorageError, Store, Table};
use mongodb::bson::{doc, Document};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_backend_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        dirs.lock().unwrap().push(dir);
        async move { Store::open_embedded(&path).await.unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_backend_conforms() {
    let Some(rs) = replica_set("MongoDB conformance").await else {
        return;
    };
    let dbs = TestDatabases::new(&rs.uri);
    conformance::run_all(|| {
        let config = dbs.fresh();
        async move { Store::open_mongodb(&config).await.unwrap() }
    })
    .await;

    // HA: two instances on one database. A change committed through one
    // reaches the other's feed, and its own feed exactly once.
    let config = dbs.fresh();
    let a = Store::open_mongodb(&config).await.unwrap();
    let b = Store::open_mongodb(&config).await.unwrap();
    assert_eq!(a.backend_name(), "mongodb");
    let mut feed_a = a.subscribe();
    let mut feed_b = b.subscribe();
    let probe = |n| Probe { n, s: format!("p{n}") };
    a.commit(vec![Op::put("shared", &probe(1), Expect::Absent).unwrap()])
        .await
        .unwrap();
    a.commit(vec![Op::put("shared", &probe(2), Expect::Version(1)).unwrap()])
        .await
        .unwrap();
    let change = |version| Change {
        table: Table::Canvas,
        key: "shared".into(),
        version: Some(version),
    };
    for feed in [&mut feed_a, &mut feed_b] {
        for version in [1, 2] {
            let got = tokio::time::timeout(Duration::from_secs(30), feed.recv())
                .await
                .expect("the change stream reports the commit")
                .unwrap();
            assert_eq!(got, change(version), "each change once, in order");
        }
    }
    // The other instance reads what the change announced.
    assert_eq!(b.get::<Probe>("shared").await.unwrap().unwrap().value, probe(2));
    b.ping().await.unwrap();
    drop((a, b));
    dbs.drop_all().await;
}

#[tokio::test]
async fn mongodb_open_store_refuses_a_non_replica_set_naming_database_uri() {
    if !mongod_on_path() {
        println!("SKIPPED: MongoDB standalone refusal (put mongod on PATH)");
        return;
    }
    let (_local, uri) = LocalMongo::standalone().await;
    let mut config = Config::default();
    config.storage.backend = StorageBackend::Mongodb;
    config.database = Some(db_config(&uri, "linkmesh_refused".into()));
    let err = linkmesh::open_store(&config)
        .await
        .err()
        .expect("a standalone is refused");
    let msg = err.to_string();
    assert!(msg.starts_with("database.uri: "), "{msg}");
    assert!(msg.contains("not a replica set"), "{msg}");
}

/// Needs no server: the driver finds nothing listening on port 1.
#[tokio::test]
async fn mongodb_unreachable_is_refused_naming_database_uri() {
    let mut config = Config::default();
    config.storage.backend = StorageBackend::Mongodb;
    let mut db = db_config(
        "mongodb://linkmesh:hunter2-secret@127.0.0.1:1/?replicaSet=rs0",
        "linkmesh".into(),
    );
    db.connect_timeout = Duration::from_millis(500);
    config.database = Some(db);
    let err = linkmesh::open_store(&config)
        .await
        .err()
        .expect("nothing listens there");
    let msg = err.to_string();
    println!("refused as expected: {msg}");
    assert!(msg.starts_with("database.uri: "), "{msg}");
    assert!(msg.contains("127.0.0.1:1"), "names the hosts: {msg}");
    assert!(!msg.contains("hunter2"), "never the credentials: {msg}");
}

/// `check-config` refuses what the MongoDB backend would otherwise
/// replace silently or trip over later (needs no server).
#[test]
fn check_config_refuses_overridden_uri_options_and_a_broken_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let file = dir.path().join("linkmesh.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[storage]
backend = "mongodb"

[database]
uri = "mongodb://db1,db2/?replicaSet=rs0&w=1&serverSelectionTimeoutMS=500"
tls_ca_file = "{}"
"#,
            ca.display()
        ),
    )
    .unwrap();
    let stderr = super::support::check_config_refuses(&file);
    for needle in [
        "database.uri",
        "w=1",
        "serverSelectionTimeoutMS=500",
        "database.tls_ca_file",
        "not a usable CA certificate",
    ] {
        assert!(stderr.contains(needle), "{needle} not named in:\n{stderr}");
    }
}

fn probe(n: u64) -> Probe {
    Probe { n, s: format!("p{n}") }
}

/// The next change on `feed`, within a generous deadline.
async fn next_change(feed: &mut ChangeFeed) -> Change {
    tokio::time::timeout(Duration::from_secs(60), feed.recv())
        .await
        .expect("the change stream reports the commit")
        .expect("no lag")
}

/// Turn on the `failCommand` fail point for commands from LinkMesh's own
/// client (appName "linkmesh"), for one command. False when the server
/// does not allow fail points (started without enableTestCommands).
async fn fail_once(client: &mongodb::Client, data: Document) -> bool {
    let mut data = data;
    data.insert("appName", "linkmesh");
    let r = client
        .database("admin")
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": { "times": 1 }, "data": data })
        .await;
    match r {
        Ok(_) => true,
        Err(e) => {
            println!("SKIPPED: fail points unavailable on this server ({e}); start mongod with --setParameter enableTestCommands=1");
            false
        }
    }
}

async fn fail_point_off(client: &mongodb::Client) {
    let _ = client
        .database("admin")
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await;
}

/// Each injected failure (a transient write conflict, a connection closed
/// at commit, a write concern timeout 64, ShutdownInProgress 91) ends in
/// one successful commit: exactly one version bump and one change event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_injected_failures_commit_exactly_once() {
    let Some(rs) = replica_set("MongoDB fail points").await else {
        return;
    };
    let admin = mongodb::Client::with_uri_str(&rs.uri).await.unwrap();
    let dbs = TestDatabases::new(&rs.uri);
    let store = Store::open_mongodb(&dbs.fresh()).await.unwrap();
    let cases = [
        (
            "WriteConflict with TransientTransactionError",
            doc! { "failCommands": ["update"], "errorCode": 112, "errorLabels": ["TransientTransactionError"] },
        ),
        (
            "commitTransaction with closeConnection",
            doc! { "failCommands": ["commitTransaction"], "closeConnection": true },
        ),
        (
            "commitTransaction with write concern error 64",
            doc! { "failCommands": ["commitTransaction"], "writeConcernError": {
            "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out",
            "errInfo": { "wtimeout": true } } },
        ),
        (
            "commitTransaction with ShutdownInProgress 91",
            doc! { "failCommands": ["commitTransaction"], "errorCode": 91 },
        ),
    ];
    for (i, (what, data)) in cases.into_iter().enumerate() {
        let key = format!("fp{i}");
        store
            .commit(vec![Op::put(&key, &probe(0), Expect::Absent).unwrap()])
            .await
            .unwrap();
        let mut feed = store.subscribe();
        if !fail_once(&admin, data).await {
            break;
        }
        let r = store
            .commit(vec![Op::put(&key, &probe(1), Expect::Version(1)).unwrap()])
            .await;
        fail_point_off(&admin).await;
        assert_eq!(r.unwrap_or_else(|e| panic!("{what}: {e}")), vec![2], "{what}");
        let got = store.get::<Probe>(&key).await.unwrap().unwrap();
        assert_eq!((got.version, got.value), (2, probe(1)), "{what}: one bump");
        // One event for the commit; the sentinel after it proves there is
        // no second one.
        store
            .commit(vec![Op::put(format!("{key}-after"), &probe(9), Expect::Absent).unwrap()])
            .await
            .unwrap();
        let first = next_change(&mut feed).await;
        assert_eq!((first.key.as_str(), first.version), (key.as_str(), Some(2)), "{what}");
        let second = next_change(&mut feed).await;
        assert_eq!(second.key, format!("{key}-after"), "{what}: one event per commit");
    }
    drop(store);
    dbs.drop_all().await;
}

/// The primary steps down while commits run: every acknowledged write is
/// there, every definite failure left nothing, and commits go on after
/// the election.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_step_down_loses_no_acknowledged_write() {
    let Some(rs) = replica_set("MongoDB step-down").await else {
        return;
    };
    let dbs = TestDatabases::new(&rs.uri);
    let store = Store::open_mongodb(&dbs.fresh()).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..300u64 {
                let r = store
                    .commit(vec![Op::put(format!("w{i:04}"), &probe(i), Expect::Absent).unwrap()])
                    .await;
                results.push(r);
            }
            results
        })
    };
    // Step down once some commits went through.
    let admin = mongodb::Client::with_uri_str(&rs.uri).await.unwrap();
    super::support::poll_until("20 commits through", Duration::from_secs(120), async || {
        let n = store
            .scan::<Probe>(linkmesh::storage::Scan::default())
            .await
            .map(|r| r.len())
            .unwrap_or(0);
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n} so far"))
        }
    })
    .await;
    // The primary closes connections while stepping down: an error here is
    // expected.
    let _ = admin
        .database("admin")
        .run_command(doc! { "replSetStepDown": 10, "force": true })
        .await;
    let results = writer.await.unwrap();
    let (mut acked, mut unknown) = (0, 0);
    for (i, r) in results.iter().enumerate() {
        let there = store.get::<Probe>(&format!("w{i:04}")).await.unwrap().is_some();
        match r {
            Ok(_) => {
                acked += 1;
                assert!(there, "commit {i} was acknowledged but is lost");
            }
            Err(StorageError::OutcomeUnknown(_)) => unknown += 1,
            Err(e) => assert!(!there, "commit {i} failed definitely ({e}) but is there"),
        }
    }
    println!(
        "step-down: {acked} acknowledged, {unknown} unknown of {}",
        results.len()
    );
    assert!(
        results.last().is_some_and(|r| r.is_ok()),
        "commits resume after the election"
    );
    drop(store);
    dbs.drop_all().await;
}

/// The follower's cursor is killed on the server: the driver resumes from
/// the token, and the feed has no gap and no duplicate. Then a resume that
/// meets ChangeStreamHistoryLost (286) restarts the stream with a resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_feed_survives_killed_cursors_and_resyncs_on_lost_history() {
    let Some(rs) = replica_set("MongoDB change stream recovery").await else {
        return;
    };
    let admin = mongodb::Client::with_uri_str(&rs.uri).await.unwrap();
    let dbs = TestDatabases::new(&rs.uri);
    let config = dbs.fresh();
    let store = Store::open_mongodb(&config).await.unwrap();
    let mut feed = store.subscribe();
    let put = |k: String| {
        let store = store.clone();
        async move {
            store
                .commit(vec![Op::put(k, &probe(1), Expect::Absent).unwrap()])
                .await
                .unwrap()
        }
    };
    for i in 0..5 {
        put(format!("k{i}")).await;
    }
    kill_change_stream_cursors(&admin, &config.name).await;
    for i in 5..10 {
        put(format!("k{i}")).await;
    }
    for i in 0..10 {
        let c = next_change(&mut feed).await;
        assert_eq!(c.key, format!("k{i}"), "in order, no gap, no duplicate");
    }
    // History lost on the next getMore: a fresh stream and a resync.
    if fail_once(&admin, doc! { "failCommands": ["getMore"], "errorCode": 286 }).await {
        let got = tokio::time::timeout(Duration::from_secs(60), feed.recv())
            .await
            .expect("the feed reports the restart");
        fail_point_off(&admin).await;
        assert!(
            matches!(got, Err(tokio::sync::broadcast::error::RecvError::Lagged(0))),
            "{got:?}"
        );
        put("after-resync".into()).await;
        assert_eq!(next_change(&mut feed).await.key, "after-resync");
        let health = store.feed_health().unwrap();
        assert!(health.healthy, "{health:?}");
    }
    drop(store);
    dbs.drop_all().await;
}

async fn kill_change_stream_cursors(admin: &mongodb::Client, db: &str) {
    use futures::TryStreamExt;
    let cursors: Vec<Document> = admin
        .database("admin")
        .aggregate([
            doc! { "$currentOp": { "idleCursors": true, "allUsers": true } },
            doc! { "$match": { "type": "idleCursor", "ns": format!("{db}.$cmd.aggregate") } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<i64> = cursors
        .iter()
        .filter_map(|c| c.get_document("cursor").ok()?.get_i64("cursorId").ok())
        .collect();
    assert!(
        !ids.is_empty(),
        "the follower's cursor is idle on the server: {cursors:?}"
    );
    admin
        .database(db)
        .run_command(doc! { "killCursors": "$cmd.aggregate", "cursors": ids })
        .await
        .unwrap();
}

/// A commit as large as the status writer's largest (512 checks and 512
/// writes) completes within the operation timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_a_1024_op_commit_completes() {
    let Some(rs) = replica_set("MongoDB large commit").await else {
        return;
    };
    let dbs = TestDatabases::new(&rs.uri);
    let mut config = dbs.fresh();
    config.operation_timeout = Duration::from_secs(10);
    let store = Store::open_mongodb(&config).await.unwrap();
    let create: Vec<Op> = (0..512)
        .map(|i| Op::put(format!("c{i:03}"), &probe(i), Expect::Absent).unwrap())
        .collect();
    store.commit(create).await.unwrap();
    let ops: Vec<Op> = (0..512)
        .flat_map(|i| {
            [
                Op::check::<Probe>(format!("c{i:03}"), Expect::Present),
                Op::put(format!("s{i:03}"), &probe(i), Expect::Any).unwrap(),
            ]
        })
        .collect();
    let versions = store.commit(ops).await.unwrap();
    assert_eq!(versions.len(), 1024);
    let rows = store
        .scan::<Probe>(linkmesh::storage::Scan {
            prefix: "s".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 512);
    drop(store);
    dbs.drop_all().await;
}

fn db_config(uri: &str, name: String) -> DatabaseConfig {
    DatabaseConfig {
        uri: Some(Secret::new(uri)),
        uri_file: None,
        name,
        tls_ca_file: None,
        connect_timeout: Duration::from_secs(10),
        operation_timeout: Duration::from_secs(20),
    }
}

/// Fresh database names for one test run, dropped at the end (also when
/// the test fails, from `Drop`).
struct TestDatabases {
    uri: String,
    run: String,
    next: AtomicUsize,
    names: Mutex<Vec<String>>,
}

impl TestDatabases {
    fn new(uri: &str) -> TestDatabases {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        TestDatabases {
            uri: uri.to_string(),
            run: format!("lm_test_{}_{nanos}", std::process::id()),
            next: AtomicUsize::new(0),
            names: Mutex::new(Vec::new()),
        }
    }

    fn fresh(&self) -> DatabaseConfig {
        let name = format!("{}_{}", self.run, self.next.fetch_add(1, Ordering::SeqCst));
        self.names.lock().unwrap().push(name.clone());
        db_config(&self.uri, name)
    }

    async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap());
        drop_databases(&self.uri, names).await;
    }
}

impl Drop for TestDatabases {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap());
        if names.is_empty() {
            return;
        }
        let uri = self.uri.clone();
        // Async work from Drop: on a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(drop_databases(&uri, names));
            }
        })
        .join();
    }
}

async fn drop_databases(uri: &str, names: Vec<String>) {
    let Ok(client) = mongodb::Client::with_uri_str(uri).await else {
        return;
    };
    for name in names {
        if let Err(e) = client.database(&name).drop().await {
            eprintln!("could not drop test database {name}: {e}");
        }
    }
}

fn mongod_on_path() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("mongod").is_file()))
        .unwrap_or(false)
}

/// A replica set to test against, or None after printing a SKIPPED line.
async fn replica_set(what: &str) -> Option<ReplicaSet> {
    if let Ok(uri) = std::env::var("LINKMESH_TEST_MONGODB_URI") {
        return Some(ReplicaSet { uri, _local: None });
    }
    if !mongod_on_path() {
        println!("SKIPPED: {what} (set LINKMESH_TEST_MONGODB_URI or put mongod on PATH)");
        return None;
    }
    let (local, uri) = LocalMongo::replica_set().await;
    Some(ReplicaSet {
        uri,
        _local: Some(local),
    })
}

struct ReplicaSet {
    uri: String,
    _local: Option<LocalMongo>,
}

/// mongod processes in a temp dir, killed on drop.
struct LocalMongo {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for LocalMongo {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const SET_NAME: &str = "lmtest";

impl LocalMongo {
    fn new() -> LocalMongo {
        LocalMongo {
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A 3-member replica set on loopback, initiated with
    /// `replSetInitiate`, once it has a primary.
    async fn replica_set() -> (LocalMongo, String) {
        let mut local = LocalMongo::new();
        let ports = free_ports(3);
        for (i, port) in ports.iter().enumerate() {
            local.spawn(&format!("m{i}"), *port, true);
        }
        for port in &ports {
            local.wait_answers(*port).await;
        }
        let members: Vec<Document> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| doc! { "_id": i as i32, "host": format!("127.0.0.1:{p}") })
            .collect();
        let first = direct_client(ports[0]).await;
        first
            .database("admin")
            .run_command(doc! { "replSetInitiate": { "_id": SET_NAME, "members": members } })
            .await
            .unwrap_or_else(|e| panic!("replSetInitiate failed: {e}\n{}", local.logs()));
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let uri = format!("mongodb://{}/?replicaSet={SET_NAME}", hosts.join(","));
        local.wait_primary(&uri).await;
        (local, uri)
    }

    /// One mongod without --replSet.
    async fn standalone() -> (LocalMongo, String) {
        let mut local = LocalMongo::new();
        let port = free_ports(1)[0];
        local.spawn("standalone", port, false);
        local.wait_answers(port).await;
        (local, format!("mongodb://127.0.0.1:{port}/?directConnection=true"))
    }

    fn spawn(&mut self, name: &str, port: u16, member: bool) {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        let mut cmd = Command::new("mongod");
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind_ip", "127.0.0.1", "--wiredTigerCacheSizeGB", "0.25"])
            // failCommand fail points for the failure tests.
            .args(["--setParameter", "enableTestCommands=1"])
            .arg("--dbpath")
            .arg(&path)
            .arg("--logpath")
            .arg(path.join("mongod.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if member {
            cmd.args(["--replSet", SET_NAME]);
        }
        self.children.push(cmd.spawn().expect("start mongod"));
    }

    async fn wait_answers(&mut self, port: u16) {
        let client = direct_client(port).await;
        let what = format!("mongod on port {port} to answer");
        super::support::poll_until(&what, Duration::from_secs(60), async || {
            let ping = client.database("admin").run_command(doc! { "ping": 1 }).await;
            ping.map_err(|e| format!("{e}\n{}", self.logs()))
        })
        .await;
    }

    async fn wait_primary(&self, uri: &str) {
        let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
        options.server_selection_timeout = Some(Duration::from_secs(2));
        let client = mongodb::Client::with_options(options).unwrap();
        super::support::poll_until(
            "the replica set to elect a primary",
            Duration::from_secs(120),
            async || {
                let hello = client.database("admin").run_command(doc! { "hello": 1 }).await;
                match &hello {
                    Ok(h) if h.get_bool("isWritablePrimary").unwrap_or(false) => Ok(()),
                    _ => Err(format!("{hello:?}\n{}", self.logs())),
                }
            },
        )
        .await;
    }

    /// The end of every mongod's log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(dirs) = std::fs::read_dir(self.dir.path()) else {
            return out;
        };
        for dir in dirs.flatten() {
            let path = dir.path().join("mongod.log");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}:\n", path.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

async fn direct_client(port: u16) -> mongodb::Client {
    let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1000");
    mongodb::Client::with_uri_str(&uri).await.unwrap()
}

/// Ports the OS says are free now (held together, so they are distinct).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// What an API user sees when the store cannot confirm a commit (a
/// failover during `commitTransaction` on MongoDB), here on the embedded
/// store with the fault point standing for it: the write is settled by
/// re-reading, so a create that happened answers 201 (not 500, not a 409
/// "already exists" against itself), an update answers 200 with one
/// version bump, an enrollment counts one use — each audited once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_commit_outcome_is_answered_by_re_reading() {
    use crate::support::{admin, enroll, enrollment_token, get_as, start_fresh};
    use serde_json::{json, Value};
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    for applied in [true, false] {
        let name = format!("ops-{applied}");
        s.store.lose_outcome_of_commit_touching(Table::Users, &name, applied);
        let r = admin
            .post(format!("{}/api/v1/users", s.base))
            .json(&json!({ "username": name, "password": "a-long-enough-password", "role": "viewer" }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (status, &body["version"]),
            (201, &json!(1)),
            "create, applied: {applied}: {body}"
        );

        s.store.lose_outcome_of_commit_touching(Table::Users, &name, applied);
        let r = admin
            .patch(format!("{}/api/v1/users/{name}", s.base))
            .header("if-match", "\"1\"")
            .json(&json!({ "role": "editor" }))
            .send()
            .await
            .unwrap();
        let (status, etag) = (
            r.status().as_u16(),
            r.headers().get("etag").map(|v| v.to_str().unwrap().to_string()),
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (status, etag.as_deref(), &body["role"]),
            (200, Some("\"2\""), &json!("editor")),
            "update, applied: {applied}: {body}"
        );
        let got: Value = get_as(&admin, format!("{}/api/v1/users/{name}", s.base)).await;
        assert_eq!(got["version"], 2, "one bump: {got}");
    }
    let audit: Value = get_as(&admin, format!("{}/api/v1/audit?limit=100", s.base)).await;
    let mut actions: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"].as_str().unwrap_or("").starts_with("ops-"))
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    actions.sort();
    let want: Vec<(String, String)> = [
        ("user.create", "ops-false"),
        ("user.create", "ops-true"),
        ("user.update", "ops-false"),
        ("user.update", "ops-true"),
    ]
    .iter()
    .map(|(a, t)| (a.to_string(), t.to_string()))
    .collect();
    assert_eq!(actions, want, "each change audited once");

    // An enrollment whose commit was not confirmed: the collector gets its
    // credential, and the token counts one use.
    let (token_id, token) = enrollment_token(&s.base, &admin, json!({ "name": "fleet", "max_uses": 2 })).await;
    s.store
        .lose_outcome_of_commit_touching(Table::EnrollmentTokens, &token_id, true);
    let r = enroll(&s.base, &token, None).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert!(body["credential"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
    let tokens: Value = get_as(&admin, format!("{}/api/v1/enrollment-tokens", s.base)).await;
    let t = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == token_id.as_str())
        .unwrap();
    assert_eq!(t["uses"], 1, "{t}");
    let collectors: Value = get_as(&admin, format!("{}/api/v1/collectors", s.base)).await;
    assert_eq!(collectors["items"].as_array().unwrap().len(), 1, "{collectors}");
    s.stop().await;
}
