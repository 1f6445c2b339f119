//! Route drafts end to end: a real bare git repository served by the
//! config store, simulated collectors with different labels, the impact
//! preview, publishing as a commit that the store serves and pushes to
//! exactly the affected collectors, a branch that moved (409), publishing
//! switched off (403, with a patch that `git am` applies), and invalid
//! drafts whose errors name file and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use linkmesh::sim::{Sim, SimConfig, SimTransport};
use serde_json::{json, Value};

use super::configstore::{example_repo, store_config, GitRepo};
use super::support::*;

/// Collector kinds, by index % 5 (as in fleet_config.rs).
fn label_sets() -> Vec<std::collections::BTreeMap<String, String>> {
    let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    vec![
        l(&[("role", "app"), ("env", "prod"), ("os", "linux")]),
        l(&[("role", "web"), ("env", "dev"), ("os", "linux")]),
        l(&[("ring", "canary"), ("role", "app"), ("env", "dev")]),
        l(&[("gateway", "edge"), ("os", "linux"), ("container", "yes")]),
        l(&[("role", "db")]),
    ]
}

/// The example config in a work repository, pushed to a bare one that the
/// server serves (a branch checked out in a work tree cannot be published
/// to, like git's receive.denyCurrentBranch).
fn bare_repo(dir: &Path) -> (GitRepo, PathBuf, String) {
    let (work, first) = example_repo(&dir.join("work"));
    let bare = dir.join("fleet.git");
    work.git(&[
        "clone",
        "-q",
        "--bare",
        work.dir.to_str().unwrap(),
        bare.to_str().unwrap(),
    ]);
    work.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
    (work, bare, first)
}

fn git_at(repo: &Path, args: &[&str]) -> String {
    GitRepo {
        dir: repo.to_path_buf(),
    }
    .git(args)
}

struct Fleet {
    server: TestServer,
    editor: reqwest::Client,
    token: String,
    sim: Sim,
}

async fn fleet(dir: &Path, url: &Path, allow_publish: bool) -> Fleet {
    let mut config = test_config(dir);
    let mut cs = store_config(url.to_str().unwrap());
    cs.allow_publish = allow_publish;
    config.config_store = Some(cs);
    let server = start(open_store(dir).await, config).await;
    let admin = admin(&server.base).await;
    let editor = user_with_role(&server.base, &admin, "erin", "editor").await;
    let token = api_token(&server.base, &admin).await;
    let (_, enroll) = enrollment_token(&server.base, &admin, json!({"name": "fleet"})).await;
    let sim = Sim::start(SimConfig {
        transport: SimTransport::Grpc,
        http_base: server.base.clone(),
        grpc: server.grpc.clone(),
        collectors: 10,
        enrollment_token: enroll,
        label_sets: label_sets(),
        heartbeat: Duration::from_secs(1),
        fail_when_config_contains: None,
        source_addrs: vec![],
        concurrency: 8,
    })
    .await
    .unwrap();
    // Connected is not settled: a collector counts as connected before it
    // has taken the config its first reply carries. Waiting for that too
    // keeps a late first config from passing for a push the test caused.
    // Kind 4 (role=db) is routed nothing.
    wait_summary(&server.base, &token, |s| {
        s["connected"] == 10 && s["config"]["applied"] == 8 && s["config"]["none"] == 2
    })
    .await;
    Fleet {
        server,
        editor,
        token,
        sim,
    }
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The `applications` route without its `env NotIn [dev]` condition: it
/// then also reaches the dev web hosts (kind 1); the canaries (kind 2)
/// stay on their final route.
fn widen_applications(graph: &Value) -> Value {
    let r = graph["graph"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "applications")
        .unwrap();
    let mut route = r["route"].clone();
    route.as_object_mut().unwrap().remove("file");
    let exprs = route["selector"]["match_expressions"].as_array_mut().unwrap();
    exprs.retain(|e| e["key"] != "env");
    json!({"op": "set", "name": "applications", "route": route})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preview_then_publish_reaches_exactly_the_affected_collectors() {
    let dir = tempfile::tempdir().unwrap();
    let (_work, bare, first) = bare_repo(dir.path());
    let f = fleet(dir.path(), &bare, true).await;
    let base = &f.server.base;

    let g = poll_json(
        "the routing graph",
        async || get_json(base, &f.token, "/api/v1/routing").await,
        |g| g["graph"]["collectors"] == 10,
    )
    .await;
    assert_eq!(g["revision"]["commit"], first);
    assert_eq!(g["publish"]["allowed"], true, "{g}");
    let count = |name: &str| {
        g["graph"]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["matched"]
            .clone()
    };
    assert_eq!(count("applications"), 2, "kind 0 only: {g}");
    assert_eq!(count("linux-hosts"), 4, "kinds 0 and 1: {g}");
    assert_eq!(
        g["graph"]["routes"][0]["selector_text"], "ring=canary",
        "routes in the order they apply"
    );

    let stats = f.sim.stats();
    let before: Vec<(Option<String>, u64)> = stats.iter().map(|s| (s.config_hash.clone(), s.received)).collect();
    let kind1: Vec<String> = stats
        .iter()
        .skip(1)
        .step_by(5)
        .map(|s| s.collector_id.clone())
        .collect();

    // The preview names exactly the dev web hosts, and shows both diffs.
    let change = widen_applications(&g);
    let draft = json!({"base_commit": first, "changes": [change.clone()], "focus": kind1[1]});
    let (status, p) = post(&f.editor, format!("{base}/api/v1/routing/drafts/preview"), &draft).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["valid"], true, "{p}");
    assert_eq!(p["stale"], false);
    let impact = &p["impact"];
    assert_eq!(impact["affected_count"], 2, "{impact}");
    let mut ids: Vec<String> = impact["affected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected = kind1.clone();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(impact["render_diff"]["collector_id"], kind1[1]);
    let render = impact["render_diff"]["diff"].as_str().unwrap();
    assert!(render.contains("+    traces/app-traces:"), "{render}");
    let files = p["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["file"], "routes.toml");
    let toml_diff = files[0]["diff"].as_str().unwrap();
    assert!(toml_diff.contains("-values = [\"dev\"]"), "{toml_diff}");
    assert!(
        !toml_diff.contains("canaries"),
        "only the changed route's lines: {toml_diff}"
    );
    let apps = impact["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "applications")
        .unwrap();
    // Selector matches, final routes aside: the canaries (role=app) count.
    assert_eq!((apps["before"].clone(), apps["after"].clone()), (json!(2), json!(6)));

    // Publish: a commit by the editor, served, pushed to the two only.
    let (status, published) = post(
        &f.editor,
        format!("{base}/api/v1/routing/drafts/publish"),
        &json!({"base_commit": first, "changes": [change], "message": "Dev web hosts run the app pipelines"}),
    )
    .await;
    assert_eq!(status, 201, "{published}");
    let commit = published["commit"].as_str().unwrap().to_string();
    assert_eq!(published["parent"], first);
    assert_eq!(git_at(&bare, &["rev-parse", "main"]), commit);
    assert_eq!(
        git_at(&bare, &["log", "-1", "--format=%an <%ae>|%s", "main"]),
        "erin <erin@linkmesh.invalid>|Dev web hosts run the app pipelines"
    );
    assert_eq!(
        git_at(&bare, &["diff", "--name-only", &first, &commit]),
        "routes.toml",
        "only the routes file changes"
    );
    poll_json(
        "the published commit served",
        async || get_json(base, &f.token, "/api/v1/config/revision").await,
        |r| r["commit"] == commit.as_str(),
    )
    .await;
    let affected = |i: usize| i % 5 == 1;
    poll_until("the affected collectors pushed the new config", SETTLE, async || {
        let waiting: Vec<usize> = (f.sim.stats().iter().enumerate())
            .filter(|(i, s)| affected(*i) && s.received <= before[*i].1)
            .map(|(i, _)| i)
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!("collectors {waiting:?} got nothing yet"))
        }
    })
    .await;
    let web_dev = render_preview(base, &f.token, &label_sets()[1]).await["hash"]
        .as_str()
        .unwrap()
        .to_string();
    for (i, s) in f.sim.stats().iter().enumerate() {
        if affected(i) {
            assert_eq!(s.config_hash.as_deref(), Some(web_dev.as_str()), "collector {i}");
            assert!(
                s.config_body.as_deref().unwrap().contains(&commit),
                "collector {i} names the commit"
            );
        } else {
            assert_eq!(
                (s.config_hash.clone(), s.received),
                before[i],
                "collector {i} was pushed a config"
            );
        }
    }

    // Audited, with the user.
    let admin = admin(base).await;
    let audit: Value = get_as(&admin, format!("{base}/api/v1/audit?action=config.publish")).await;
    let e = &audit["items"][0];
    assert_eq!(
        (e["actor"].as_str(), e["target"].as_str(), e["outcome"].as_str()),
        (Some("user:erin"), Some(commit.as_str()), Some("ok")),
        "{audit}"
    );
    f.sim.stop();
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_branch_is_a_conflict_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (work, bare, first) = bare_repo(dir.path());
    let f = fleet(dir.path(), &bare, true).await;
    let base = &f.server.base;
    let g = get_json(base, &f.token, "/api/v1/routing").await;
    let change = widen_applications(&g);

    // Someone pushes meanwhile.
    let sources = work.read("sources.toml");
    work.write("sources.toml", &format!("{sources}\n# reviewed\n"));
    let theirs = work.commit_all("A comment");
    work.git(&["push", "-q", "origin", "main"]);

    let body = json!({"base_commit": first, "changes": [change]});
    let (status, problem) = post(&f.editor, format!("{base}/api/v1/routing/drafts/publish"), &body).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["current_commit"], theirs);
    assert!(problem["detail"].as_str().unwrap().contains("moved"), "{problem}");
    assert_eq!(git_at(&bare, &["rev-parse", "main"]), theirs, "their commit stays");
    // The draft is still good for a preview on the new commit.
    let served = poll_json(
        "their commit served",
        async || get_json(base, &f.token, "/api/v1/config/revision").await,
        |r| r["commit"] == theirs.as_str(),
    )
    .await;
    let (status, p) = post(
        &f.editor,
        format!("{base}/api/v1/routing/drafts/preview"),
        &json!({"base_commit": served["commit"], "changes": body["changes"]}),
    )
    .await;
    assert_eq!(
        (status, p["valid"].clone(), p["stale"].clone()),
        (200, json!(true), json!(false)),
        "{p}"
    );
    // A stale base previews (flagged) but is not published.
    let (_, p) = post(&f.editor, format!("{base}/api/v1/routing/drafts/preview"), &body).await;
    assert_eq!(p["stale"], true, "{p}");

    // Viewers may look but not draft.
    let admin = admin(base).await;
    let viewer = user_with_role(base, &admin, "vic", "viewer").await;
    let (status, _) = post(&viewer, format!("{base}/api/v1/routing/drafts/publish"), &body).await;
    assert_eq!(status, 403);
    let (status, _) = post(&viewer, format!("{base}/api/v1/routing/drafts/preview"), &body).await;
    assert_eq!(status, 403);
    f.sim.stop();
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_off_refuses_clearly_and_the_patch_applies_with_git_am() {
    let dir = tempfile::tempdir().unwrap();
    let (work, bare, first) = bare_repo(dir.path());
    let f = fleet(dir.path(), &bare, false).await;
    let base = &f.server.base;
    let g = get_json(base, &f.token, "/api/v1/routing").await;
    assert_eq!(g["publish"]["allowed"], false);
    assert!(
        g["publish"]["reason"].as_str().unwrap().contains("allow_publish"),
        "{g}"
    );
    let body = json!({"base_commit": first, "changes": [widen_applications(&g)], "message": "Widen applications"});
    let (status, problem) = post(&f.editor, format!("{base}/api/v1/routing/drafts/publish"), &body).await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("config_store.allow_publish"),
        "{problem}"
    );
    assert_eq!(git_at(&bare, &["rev-parse", "main"]), first, "nothing committed");

    let r = f
        .editor
        .post(format!("{base}/api/v1/routing/drafts/patch"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("routes-draft.patch"));
    let patch = r.text().await.unwrap();
    let file = dir.path().join("draft.patch");
    std::fs::write(&file, &patch).unwrap();
    work.git(&["am", "-q", file.to_str().unwrap()]);
    assert_eq!(work.git(&["log", "-1", "--format=%an|%s"]), "erin|Widen applications");
    let routes = work.read("routes.toml");
    assert!(!routes.contains("\"dev\""), "{routes}");
    assert!(routes.contains("[routes.canaries]"), "{routes}");
    // The applied commit is exactly what the server would have served.
    let out = std::process::Command::new(bin())
        .args(["validate", work.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    f.sim.stop();
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_drafts_name_file_and_key_and_a_checked_out_branch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Served in place from a work tree with `main` checked out.
    let (work, first) = example_repo(&dir.path().join("fleet"));
    let mut config = test_config(dir.path());
    let mut cs = store_config(work.dir.to_str().unwrap());
    cs.allow_publish = true;
    config.config_store = Some(cs);
    let server = start(open_store(dir.path()).await, config).await;
    let base = &server.base;
    let admin = admin(base).await;

    let bad = json!({"base_commit": first, "changes": [
        {"op": "set", "name": "applications", "route": {"priority": 100, "pipelines": ["app-traces", "no-such-pipeline"]}},
    ]});
    let (status, p) = post(&admin, format!("{base}/api/v1/routing/drafts/preview"), &bad).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["valid"], false);
    let e = &p["errors"][0];
    assert_eq!(
        (e["file"].as_str(), e["key"].as_str()),
        (Some("routes.toml"), Some("routes.applications.pipelines[1]")),
        "{p}"
    );
    assert!(e["message"].as_str().unwrap().contains("no-such-pipeline"), "{p}");
    let (status, p) = post(&admin, format!("{base}/api/v1/routing/drafts/publish"), &bad).await;
    assert_eq!(status, 422, "{p}");
    assert_eq!(p["errors"][0]["key"], "routes.applications.pipelines[1]");

    let ghost = json!({"base_commit": first, "changes": [{"op": "remove", "name": "ghost"}]});
    let (status, p) = post(&admin, format!("{base}/api/v1/routing/drafts/preview"), &ghost).await;
    assert_eq!(status, 422, "{p}");
    assert_eq!(p["errors"][0]["key"], "routes.ghost");

    let (status, p) = post(
        &admin,
        format!("{base}/api/v1/routing/drafts/preview"),
        &json!({"base_commit": "0123456789abcdef0123456789abcdef01234567", "changes": []}),
    )
    .await;
    assert_eq!(status, 422, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("base_commit"), "{p}");

    let (status, p) = post(
        &admin,
        format!("{base}/api/v1/routing/drafts/preview"),
        &json!({"base_commit": first, "changes": [{"op": "set", "name": "x", "route": {"pipelines": ["a"], "colour": 1}}]}),
    )
    .await;
    assert_eq!(status, 422, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("colour"), "{p}");

    let ok = json!({"base_commit": first, "changes": [{"op": "remove", "name": "gateways"}]});
    let (status, p) = post(&admin, format!("{base}/api/v1/routing/drafts/publish"), &ok).await;
    assert_eq!(status, 403, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("checked out"), "{p}");
    assert_eq!(work.git(&["rev-parse", "HEAD"]), first);
    assert_eq!(work.git(&["status", "--porcelain"]), "", "the work tree is untouched");
    server.stop().await;
}
