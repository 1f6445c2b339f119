//! The storage conformance suite on every backend available here.
//!
//! MongoDB: `LINKMESH_TEST_MONGODB_URI` names a replica set to use (each run
//! works in fresh databases and drops them); otherwise, with `mongod` on
//! PATH, a 3-member replica set is started on loopback in a temp dir.
//! Without either, the MongoDB tests print a SKIPPED line.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use linkmesh::config::{Config, DatabaseConfig, Secret, StorageBackend};
use linkmesh::storage::conformance::{self, Probe};
use linkmesh::storage::{Change, Expect, Op, Store, Table};
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
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.database("admin").run_command(doc! { "ping": 1 }).await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("mongod on port {port} does not answer: {e}\n{}", self.logs())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn wait_primary(&self, uri: &str) {
        let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
        options.server_selection_timeout = Some(Duration::from_secs(2));
        let client = mongodb::Client::with_options(options).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let hello = client.database("admin").run_command(doc! { "hello": 1 }).await;
            if let Ok(h) = &hello {
                if h.get_bool("isWritablePrimary").unwrap_or(false) {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("the replica set elected no primary: {hello:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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
