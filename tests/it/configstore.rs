//! The git-backed config store against real git repositories (created with
//! the git CLI here; the server itself never runs git): hot reload through
//! the notify watcher, last-known-good on an invalid commit, rewinds and
//! force-pushes, a remote mirror over the git protocol that survives a
//! restart, the API, `linkmesh validate`, and load time of 1,000
//! resources (printed, never asserted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkmesh::config::ConfigStoreConfig;
use linkmesh::configstore::{ConfigStoreHandle, Snapshot, StoreStatus};
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::{
    admin, bin, get_as, get_metrics, open_store, poll_json, poll_until, repo_root, test_config, wait_ready,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// A git work repository driven by the git CLI.
pub struct GitRepo {
    pub dir: PathBuf,
}

impl GitRepo {
    pub fn init(dir: &Path) -> GitRepo {
        std::fs::create_dir_all(dir).unwrap();
        let r = GitRepo { dir: dir.to_path_buf() };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.dir, args)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.join(rel)).unwrap()
    }

    /// Commit everything; returns the commit id.
    pub fn commit_all(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }
}

fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Fleet Admin")
        .env("GIT_AUTHOR_EMAIL", "fleet@example.com")
        .env("GIT_COMMITTER_NAME", "Fleet Admin")
        .env("GIT_COMMITTER_EMAIL", "fleet@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn example_dir() -> PathBuf {
    repo_root().join("config/examples/fleet-config")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A repository holding the example config in its first commit.
pub fn example_repo(dir: &Path) -> (GitRepo, String) {
    let repo = GitRepo::init(dir);
    copy_dir(&example_dir(), dir);
    let c = repo.commit_all("Initial fleet config");
    (repo, c)
}

/// Polling is for remote fetches only in these tests; reloads of a local
/// repository must come from the notify watcher.
pub fn store_config(url: &str) -> ConfigStoreConfig {
    ConfigStoreConfig {
        url: url.to_string(),
        branch: "main".into(),
        dir: None,
        poll_interval: Duration::from_secs(3600),
        credentials_file: None,
        collector_validator: None,
        collector_validator_timeout: Duration::from_secs(10),
        allow_publish: false,
    }
}

pub fn served(store: &ConfigStoreHandle) -> Option<String> {
    store.current().map(|s| s.revision.commit.clone())
}

/// Wait for the next snapshot swap (event-driven, with a deadline).
pub async fn next_snapshot(rx: &mut tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>) -> Arc<Snapshot> {
    tokio::time::timeout(DEADLINE, rx.changed())
        .await
        .expect("no snapshot swap before the deadline")
        .unwrap();
    rx.borrow_and_update().clone().expect("a swap to a snapshot")
}

/// Poll the store's status until `f` holds.
pub async fn status_until(store: &ConfigStoreHandle, what: &str, f: impl Fn(&StoreStatus) -> bool) -> StoreStatus {
    poll_until(what, DEADLINE, async || {
        let st = store.status();
        if f(&st) {
            Ok(st)
        } else {
            Err(format!("status: {st:#?}"))
        }
    })
    .await
}

pub fn attempted(st: &StoreStatus, commit: &str) -> bool {
    st.last_attempt.as_ref().is_some_and(|a| a.revision.commit == commit)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_repo_hot_reload_keeps_the_last_valid_commit_and_follows_rewinds() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, c1) = example_repo(&tmp.path().join("fleet"));
    let store = ConfigStoreHandle::start(&store_config(repo.dir.to_str().unwrap()), &tmp.path().join("data"))
        .await
        .unwrap();

    // The initial commit is served as soon as start returns.
    let snap = store.current().expect("initial commit served");
    assert_eq!(snap.revision.commit, c1);
    assert_eq!(snap.revision.message, "Initial fleet config");
    assert_eq!(snap.revision.author, "Fleet Admin <fleet@example.com>");
    assert!(snap.resources.pipelines.contains_key("app-traces"));
    let mut rx = store.subscribe();
    rx.borrow_and_update();

    // A new valid commit is picked up by the watcher (poll interval: 1 h).
    repo.write(
        "processors.toml",
        &repo
            .read("processors.toml")
            .replace("timeout = \"5s\"", "timeout = \"2s\""),
    );
    let committed = Instant::now();
    let c2 = repo.commit_all("Shorter batch timeout");
    let snap = next_snapshot(&mut rx).await;
    println!(
        "commit -> snapshot swap via notify: {} ms",
        committed.elapsed().as_millis()
    );
    assert_eq!(snap.revision.commit, c2);
    assert!(snap
        .render(&labels(&[("role", "app")]))
        .yaml
        .contains("timeout: \"2s\""));

    // An invalid commit (dangling reference) is refused: the previous
    // snapshot keeps serving and the error names the file and key.
    let traces = repo.read("pipelines/traces.toml");
    repo.write(
        "pipelines/traces.toml",
        &traces.replace(
            "destinations = [\"backend\"]",
            "destinations = [\"backend\", \"nowhere\"]",
        ),
    );
    let c3 = repo.commit_all("Send traces nowhere");
    let st = status_until(&store, "the invalid commit to be checked", |s| attempted(s, &c3)).await;
    let attempt = st.last_attempt.unwrap();
    assert!(!attempt.valid);
    let e = attempt
        .errors
        .iter()
        .find(|e| e.file == "pipelines/traces.toml")
        .unwrap_or_else(|| panic!("no error for the file: {:#?}", attempt.errors));
    assert_eq!(e.key, "pipelines.app-traces.destinations[1]");
    assert!(e.message.contains("dangling reference"), "{}", e.message);
    assert_eq!(served(&store).as_deref(), Some(c2.as_str()));
    assert_eq!(st.serving.unwrap().commit, c2);
    assert_eq!(st.reload_failures, 1);
    assert!(
        !rx.has_changed().unwrap(),
        "a refused commit must not notify subscribers"
    );

    // The fix is served.
    repo.write("pipelines/traces.toml", &traces);
    let c4 = repo.commit_all("Fix the traces pipeline");
    assert_eq!(next_snapshot(&mut rx).await.revision.commit, c4);

    // A rewind (the branch moves back) is served as it is.
    repo.git(&["reset", "-q", "--hard", &c2]);
    assert_eq!(next_snapshot(&mut rx).await.revision.commit, c2);

    // A rewritten history (amend = force-push on a local branch) too.
    repo.git(&["commit", "-q", "--amend", "-m", "Shorter batch timeout, reworded"]);
    let c5 = repo.head();
    assert_ne!(c5, c2);
    let snap = next_snapshot(&mut rx).await;
    assert_eq!(snap.revision.commit, c5);
    assert_eq!(snap.revision.message, "Shorter batch timeout, reworded");

    // The store reads commits, never the worktree: garbage left uncommitted
    // next to a committed change does not reach the snapshot.
    repo.write("routes.toml", "this is not toml");
    repo.write(
        "processors.toml",
        &repo
            .read("processors.toml")
            .replace("timeout = \"2s\"", "timeout = \"3s\""),
    );
    repo.git(&["commit", "-q", "-m", "Batch timeout 3s", "processors.toml"]);
    let c6 = repo.head();
    let snap = next_snapshot(&mut rx).await;
    assert_eq!(snap.revision.commit, c6);
    assert!(snap.resources.routes.contains_key("canaries"));
    assert!(store.status().last_attempt.unwrap().valid);
    store.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendering_is_byte_identical_across_independently_loaded_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, c1) = example_repo(&tmp.path().join("fleet"));
    let url = repo.dir.to_str().unwrap().to_string();
    // Two instances: separate handles, separate data dirs, separate loads.
    let a = ConfigStoreHandle::start(&store_config(&url), &tmp.path().join("a"))
        .await
        .unwrap();
    let b = ConfigStoreHandle::start(&store_config(&url), &tmp.path().join("b"))
        .await
        .unwrap();
    let (sa, sb) = (a.current().unwrap(), b.current().unwrap());
    assert!(!Arc::ptr_eq(&sa, &sb));
    for l in [
        labels(&[]),
        labels(&[("role", "app"), ("env", "prod"), ("os", "linux")]),
        labels(&[("role", "web"), ("env", "dev"), ("gateway", "yes")]),
        labels(&[("ring", "canary"), ("role", "app")]),
        labels(&[("os", "linux"), ("container", "true")]),
    ] {
        let (ra, rb) = (sa.render(&l), sb.render(&l));
        assert_eq!(ra.yaml, rb.yaml, "labels {l:?}");
        assert_eq!(ra.hash, rb.hash);
        assert_eq!(ra.pipelines, rb.pipelines);
        assert!(ra
            .yaml
            .starts_with(&format!("# Rendered by LinkMesh from config commit {c1}.\n")));
        // Rendering twice from one snapshot is stable too.
        assert_eq!(sa.render(&l).yaml, ra.yaml);
    }

    // The YAML is what a collector reads: parse it and check the shape.
    let r = sa.render(&labels(&[("role", "app"), ("env", "prod"), ("os", "linux")]));
    assert_eq!(r.pipelines, ["app-traces", "app-metrics", "app-logs", "host-metrics"]);
    let doc = &YamlLoader::load_from_str(&r.yaml).unwrap()[0];
    let pipelines = &doc["service"]["pipelines"];
    let ids: Vec<&str> = pipelines
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "logs/app-logs",
            "metrics/app-metrics",
            "metrics/host-metrics",
            "traces/app-traces"
        ]
    );
    let chain = |p: &str, part: &str| -> Vec<String> {
        pipelines[p][part]
            .as_vec()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        chain("traces/app-traces", "processors"),
        [
            "memory_limiter/memory",
            "resourcedetection/detect",
            "filter/drop-health",
            "redaction/redact",
            "batch/batch"
        ]
    );
    assert_eq!(chain("logs/app-logs", "receivers"), ["filelog/app-logs", "otlp/otlp"]);
    let backend = &doc["exporters"]["otlphttp/backend"];
    assert_eq!(
        backend["headers"]["authorization"].as_str(),
        Some("Bearer ${env:BACKEND_API_KEY}")
    );
    assert_eq!(backend["sending_queue"]["queue_size"].as_i64(), Some(5000));
    assert_eq!(doc["processors"]["batch/batch"]["timeout"].as_str(), Some("5s"));
    assert_eq!(
        doc["receivers"]["otlp/otlp"]["protocols"]["grpc"]["endpoint"].as_str(),
        Some("0.0.0.0:4317")
    );
    assert!(
        matches!(doc["exporters"]["debug/debug"], Yaml::BadValue),
        "canary-only exporter not rendered"
    );
    a.stop();
    b.stop();
}

/// `git daemon` serving `base` on a loopback port; killed on drop.
struct GitDaemon {
    child: std::process::Child,
    port: u16,
}

impl GitDaemon {
    async fn start(base: &Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Run git-daemon itself: `git daemon` would fork it as a child that
        // outlives a kill of the `git` wrapper.
        let exec_path = git_in(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                "--export-all",
                "--reuseaddr",
                "--informative-errors",
            ])
            .arg(base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        poll_until("git daemon to listen", DEADLINE, async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await
        })
        .await;
        GitDaemon { child, port }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_mirror_follows_force_pushes_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    git_in(&srv, &["init", "-q", "--bare", "-b", "main", "fleet.git"]);
    let origin = srv.join("fleet.git");
    let origin = origin.to_str().unwrap();
    let (work, c1) = example_repo(&tmp.path().join("work"));
    work.git(&["push", "-q", origin, "main"]);

    let daemon = GitDaemon::start(&srv).await;
    let url = format!("git://127.0.0.1:{}/fleet.git", daemon.port);
    let data = tmp.path().join("data");
    let store = ConfigStoreHandle::start(&store_config(&url), &data).await.unwrap();
    let mut rx = store.subscribe();
    // The first fetch runs at once.
    let already = rx.borrow_and_update().clone();
    let first = match already {
        Some(s) => s,
        None => next_snapshot(&mut rx).await,
    };
    assert_eq!(first.revision.commit, c1);
    let st = store.status();
    assert_eq!(st.mode, "mirror");
    let mirror = PathBuf::from(st.mirror_path.unwrap());
    assert!(mirror.starts_with(data.join("config-mirror")), "{}", mirror.display());

    // A normal push, fetched on refresh (the poll tick would do the same).
    work.write("README.md", "changed\n");
    let c2 = work.commit_all("Touch the README");
    work.git(&["push", "-q", origin, "main"]);
    store.refresh();
    assert_eq!(next_snapshot(&mut rx).await.revision.commit, c2);

    // A force-push of a rewritten history.
    work.git(&["reset", "-q", "--hard", &c1]);
    work.write("README.md", "rewritten\n");
    let c3 = work.commit_all("Rewritten history");
    work.git(&["push", "-q", "--force", origin, "main"]);
    store.refresh();
    assert_eq!(next_snapshot(&mut rx).await.revision.commit, c3);

    // A rewind to an older commit.
    work.git(&["push", "-q", "--force", origin, &format!("{c1}:refs/heads/main")]);
    store.refresh();
    assert_eq!(next_snapshot(&mut rx).await.revision.commit, c1);
    let fetched = store.status().last_fetch.unwrap();
    assert!(fetched.error.is_none(), "{fetched:?}");
    store.stop();
    drop(store);

    // Restart with the remote gone: the mirror serves what it had, and the
    // fetch error is visible.
    drop(daemon);
    let store = ConfigStoreHandle::start(&store_config(&url), &data).await.unwrap();
    assert_eq!(
        served(&store).as_deref(),
        Some(c1.as_str()),
        "served from the mirror at start"
    );
    let st = status_until(&store, "the failed fetch", |s| {
        s.last_fetch.as_ref().is_some_and(|f| f.error.is_some())
    })
    .await;
    assert_eq!(st.serving.unwrap().commit, c1);
    store.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_serves_revision_status_resources_and_render_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, c1) = example_repo(&tmp.path().join("fleet"));
    let mut config = test_config(tmp.path());
    config.config_store = Some(store_config(repo.dir.to_str().unwrap()));
    let s = crate::support::start(open_store(tmp.path()).await, config).await;
    let a = admin(&s.base).await;

    let rev: Value = get_as(&a, format!("{}/api/v1/config/revision", s.base)).await;
    assert_eq!(rev["commit"], json!(c1));
    assert_eq!(rev["author"], json!("Fleet Admin <fleet@example.com>"));
    assert_eq!(rev["message"], json!("Initial fleet config"));

    let res: Value = get_as(&a, format!("{}/api/v1/config/resources", s.base)).await;
    assert_eq!(res["revision"]["commit"], json!(c1));
    assert_eq!(res["resources"]["destinations"]["backend"]["type"], json!("otlphttp"));
    assert_eq!(res["resources"]["routes"]["canaries"]["final"], json!(true));
    assert_eq!(
        res["resources"]["pipelines"]["app-traces"]["file"],
        json!("pipelines/traces.toml")
    );

    let r = a
        .post(format!("{}/api/v1/config/render-preview", s.base))
        .json(&json!({ "labels": { "ring": "canary" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let preview: Value = r.json().await.unwrap();
    assert_eq!(preview["pipelines"], json!(["canary"]));
    assert_eq!(preview["commit"], json!(c1));
    assert_eq!(preview["hash"].as_str().unwrap().len(), 64);
    assert!(preview["yaml"].as_str().unwrap().contains("debug/debug"));

    let metrics = get_metrics(&s.base).await;
    assert!(
        metrics.contains(&format!("linkmesh_config_revision_info{{commit=\"{c1}\"}} 1")),
        "{metrics}"
    );

    // An invalid commit: status shows it with file and key; the revision
    // and readiness stay on the last valid commit.
    repo.write(
        "destinations.toml",
        &repo
            .read("destinations.toml")
            .replace("Bearer ${env:BACKEND_API_KEY}", "Bearer s3cr3t-t0ken"),
    );
    let bad = repo.commit_all("Inline the API key");
    let status = poll_json(
        "the inlined key's commit attempted",
        async || get_as(&a, format!("{}/api/v1/config/status", s.base)).await,
        |st| st["last_attempt"]["revision"]["commit"] == json!(bad),
    )
    .await;
    assert_eq!(status["last_attempt"]["valid"], json!(false));
    assert_eq!(status["serving"]["commit"], json!(c1));
    assert_eq!(status["last_attempt"]["errors"][0]["file"], json!("destinations.toml"));
    assert_eq!(
        status["last_attempt"]["errors"][0]["key"],
        json!("destinations.backend.settings.headers.authorization")
    );
    let rev: Value = get_as(&a, format!("{}/api/v1/config/revision", s.base)).await;
    assert_eq!(rev["commit"], json!(c1));
    assert_eq!(reqwest::get(format!("{}/readyz", s.base)).await.unwrap().status(), 200);
    let metrics = get_metrics(&s.base).await;
    assert!(metrics.contains("linkmesh_config_reload_failures_total 1"), "{metrics}");
    assert!(metrics.contains("linkmesh_config_head_valid 0"), "{metrics}");

    // Viewers may read; unauthenticated callers may not.
    let anon = reqwest::get(format!("{}/api/v1/config/status", s.base)).await.unwrap();
    assert_eq!(anon.status(), 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_a_valid_commit_is_not_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&tmp.path().join("fleet"));
    repo.write("routes.toml", "[routes.r]\npipelines = [\"missing\"]\n");
    let bad = repo.commit_all("Broken from the start");
    let mut config = test_config(tmp.path());
    config.config_store = Some(store_config(repo.dir.to_str().unwrap()));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", http.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(linkmesh::run_with_store(
        config,
        open_store(tmp.path()).await,
        Arc::new(linkmesh::clock::SystemClock),
        linkmesh::Listeners {
            http,
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        },
        async move {
            let _ = rx.await;
        },
    ));
    let client = reqwest::Client::new();
    poll_until("the server to answer /healthz", DEADLINE, async || {
        client.get(format!("{base}/healthz")).send().await
    })
    .await;
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("config store") && reason.contains(&bad), "{reason}");

    // Fixing the branch makes it ready.
    copy_dir(&example_dir(), &repo.dir);
    repo.commit_all("Fix");
    wait_ready(&base).await;
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn validate_cli_accepts_the_example_and_names_file_and_key_of_a_broken_copy() {
    let ok = Command::new(bin()).arg("validate").arg(example_dir()).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK"));

    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("fleet");
    copy_dir(&example_dir(), &broken);
    let traces = broken.join("pipelines/traces.toml");
    let text = std::fs::read_to_string(&traces).unwrap();
    std::fs::write(
        &traces,
        text.replace("sources = [\"otlp\"]", "sources = [\"otlp\", \"kafka-in\"]"),
    )
    .unwrap();
    let out = Command::new(bin()).arg("validate").arg(&broken).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pipelines/traces.toml: pipelines.app-traces.sources[1]: dangling reference"),
        "{stderr}"
    );

    // The render preview of the CLI is the server's rendering.
    let out = Command::new(bin())
        .args(["validate", "--render", "ring=canary"])
        .arg(example_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("traces/canary:"));
}

/// Write a config of `n` resources (a fifth of each kind) into `dir`, in
/// files of 50 resources.
fn generate(dir: &Path, n: usize) {
    let per_kind = n / 5;
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..per_kind {
        let file = |kind: &str| format!("{kind}/{kind}-{:03}.toml", i / 50);
        files.entry(file("sources")).or_default().push_str(&format!(
            "[sources.in-{i}]\ntype = \"otlp\"\nsettings.protocols.grpc.endpoint = \"0.0.0.0:{}\"\n\n",
            10000 + i
        ));
        files.entry(file("processors")).or_default().push_str(&format!(
            "[processors.attrs-{i}]\ntype = \"attributes\"\nsettings.actions = [{{ key = \"shard\", value = \"{i}\", action = \"upsert\" }}]\n\n"
        ));
        files.entry(file("destinations")).or_default().push_str(&format!(
            "[destinations.out-{i}]\ntype = \"otlphttp\"\nsettings.endpoint = \"https://backend-{i}.example.com\"\nsettings.headers.authorization = \"Bearer ${{env:TOKEN_{i}}}\"\n\n"
        ));
        files.entry(file("pipelines")).or_default().push_str(&format!(
            "[pipelines.p-{i}]\nsignals = [\"traces\", \"metrics\", \"logs\"]\nsources = [\"in-{i}\"]\nprocessors = [\"attrs-{i}\"]\ndestinations = [\"out-{i}\", \"out-{}\"]\n\n",
            (i + 1) % per_kind
        ));
        files.entry(file("routes")).or_default().push_str(&format!(
            "[routes.r-{i}]\npriority = {i}\npipelines = [\"p-{i}\"]\nselector.match_labels = {{ shard = \"{}\" }}\nselector.match_expressions = [{{ key = \"env\", operator = \"In\", values = [\"prod\", \"stage\"] }}]\n\n",
            i % 20
        ));
    }
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// Benchmark-style: prints load+validate and reload times of a generated
/// 1,000-resource repository; asserts only behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_load_validate_and_reload_of_1000_resources() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&tmp.path().join("fleet"));
    generate(&repo.dir, 1000);
    repo.commit_all("1,000 resources");

    let t = Instant::now();
    let res = linkmesh::configstore::load_dir(&repo.dir).expect("generated config is valid");
    let dir_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(res.len(), 1000);

    let t = Instant::now();
    let store = ConfigStoreHandle::start(&store_config(repo.dir.to_str().unwrap()), &tmp.path().join("data"))
        .await
        .unwrap();
    let start_ms = t.elapsed().as_secs_f64() * 1000.0;
    let snap = store.current().expect("served");
    assert_eq!(snap.resources.len(), 1000);
    let load_ms = store.status().last_attempt.unwrap().load_ms;

    let l = labels(&[("shard", "7"), ("env", "prod")]);
    let t = Instant::now();
    let r = snap.render(&l);
    let render_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(r.pipelines.len(), 10);

    let mut rx = store.subscribe();
    rx.borrow_and_update();
    repo.write("routes/extra.toml", "[routes.extra]\npipelines = [\"p-0\"]\n");
    let t = Instant::now();
    let c2 = repo.commit_all("One more route");
    assert_eq!(next_snapshot(&mut rx).await.revision.commit, c2);
    let swap_ms = t.elapsed().as_secs_f64() * 1000.0;

    println!(
        "1,000 resources ({} build): load_dir {dir_ms:.1} ms; git read+parse+validate {load_ms} ms; \
         ConfigStoreHandle::start {start_ms:.1} ms; render for one collector {render_ms:.2} ms ({} pipelines, {} bytes); \
         commit -> snapshot swap via notify {swap_ms:.0} ms",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        r.pipelines.len(),
        r.yaml.len()
    );
    store.stop();
}

/// The https transport is wired to rustls with certificate verification:
/// a server with an untrusted (self-signed) certificate is refused, and the
/// failure is a visible fetch error, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_remote_with_an_untrusted_certificate_is_a_fetch_error() {
    let tmp = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(tmp.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(tmp.path().join("key.pem"), key.serialize_pem()).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = linkmesh::tls::server_config(
        &linkmesh::config::TlsConfig {
            cert_file: tmp.path().join("cert.pem"),
            key_file: tmp.path().join("key.pem"),
            client_ca_file: None,
        },
        &[b"http/1.1"],
        &linkmesh::tasks::Tasks::new(),
    )
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let server = tokio::spawn(async move {
        loop {
            let (s, _) = tcp.accept().await.unwrap();
            let _ = acceptor.accept(s).await;
        }
    });

    let url = format!("https://localhost:{port}/org/fleet.git");
    let store = ConfigStoreHandle::start(&store_config(&url), &tmp.path().join("data"))
        .await
        .unwrap();
    let st = status_until(&store, "the failed fetch", |s| {
        s.last_fetch.as_ref().is_some_and(|f| f.error.is_some())
    })
    .await;
    let error = st.last_fetch.unwrap().error.unwrap();
    println!("fetch error: {error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(store.current().is_none());
    assert!(st.repository_error.unwrap().contains("not mirrored yet"));
    store.stop();
    server.abort();
}

#[test]
fn check_config_refuses_unsupported_config_store_urls() {
    for (url, want) in [
        ("http://git.example.com/fleet.git", "https"),
        ("ftp://git.example.com/fleet.git", "unsupported scheme"),
        ("file://relative/path", "absolute path"),
    ] {
        let text = format!("[config_store]\nurl = {url:?}\n");
        let e = linkmesh::config::load_str("t", &text, vec![]).unwrap_err();
        assert!(
            e.errors
                .iter()
                .any(|e| e.path == "config_store.url" && e.message.contains(want)),
            "{url}: {e}"
        );
    }
    let ok = linkmesh::config::load_str(
        "t",
        "[config_store]\nurl = \"https://git.example.com/fleet.git\"\n",
        vec![],
    )
    .unwrap();
    assert_eq!(ok.config_store.unwrap().branch, "main");
}
