//! Interop with the real OpenTelemetry OpAMP clients: the Python client from
//! PyPI and the Node.js client from npm, both over OpAMP HTTP, installed by
//! `scripts/test.sh` (tests/interop/). Each is configured the way a user
//! would: the server's OpAMP URL and an enrollment token as its bearer,
//! nothing enrolled beforehand. With `LINKMESH_INTEROP=1` (the test script
//! sets it) a missing client fails the test; without it the test prints
//! SKIPPED.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::support::*;

fn required() -> bool {
    std::env::var("LINKMESH_INTEROP").is_ok_and(|v| v == "1")
}

#[derive(Clone, Copy)]
enum Client {
    Python,
    Node,
}

impl Client {
    /// Ok when the client can be started here; otherwise what is missing
    /// and how to install it.
    fn missing(self) -> Result<(), String> {
        let probe = |program: &str, args: &[&str]| std::process::Command::new(program).args(args).output();
        match self {
            Client::Python => match probe("python3", &["-c", "import opentelemetry._opamp.agent"]) {
                Err(e) => Err(format!(
                    "python3 is not on PATH ({e}); install Python 3, then `pip install -r tests/interop/requirements.txt`"
                )),
                Ok(out) if !out.status.success() => Err(format!(
                    "the PyPI package opentelemetry-opamp-client is not importable by python3 ({}); install it with `pip install -r tests/interop/requirements.txt`",
                    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no error output").trim()
                )),
                Ok(_) => Ok(()),
            },
            Client::Node => {
                if let Err(e) = probe("node", &["--version"]) {
                    return Err(format!(
                        "node is not on PATH ({e}); install Node.js, then `npm ci` in tests/interop"
                    ));
                }
                let module = repo_root().join("tests/interop/node_modules/@elastic/opamp-client-node");
                if !module.is_dir() {
                    return Err(format!(
                        "the npm package @elastic/opamp-client-node is not installed ({} is missing); install it with `npm ci` in tests/interop",
                        module.display()
                    ));
                }
                Ok(())
            }
        }
    }

    /// False (and SKIPPED printed) when the client is absent and not
    /// required; a missing client fails the test when `LINKMESH_INTEROP=1`.
    fn available(self) -> bool {
        let Err(missing) = self.missing() else {
            return true;
        };
        assert!(!required(), "LINKMESH_INTEROP=1 but {missing}");
        println!("SKIPPED: {missing} (set LINKMESH_INTEROP=1 to make this a failure)");
        false
    }

    /// Start the client with `bearer`, keeping `uid` when given.
    fn spawn(self, endpoint: &str, bearer: &str, uid: Option<&str>) -> Agent {
        let mut cmd = match self {
            Client::Python => {
                let mut c = Command::new("python3");
                c.arg(repo_root().join("tests/interop/opamp_py.py"));
                c
            }
            Client::Node => {
                let mut c = Command::new("node");
                c.arg(repo_root().join("tests/interop/opamp_node.mjs"));
                c
            }
        };
        cmd.args(["--endpoint", endpoint, "--token", bearer]);
        if let Some(uid) = uid {
            cmd.args(["--uid", uid]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Agent { child, lines }
    }
}

/// A running client: its JSON event lines, and its stdin (closing it stops
/// the client).
struct Agent {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Agent {
    /// The next event named `name` (earlier ones are skipped).
    async fn event(&mut self, name: &str) -> Value {
        let read = async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "raw": line }));
                if v["event"] == name {
                    return v;
                }
            }
            panic!("the client exited before it reported {name}");
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .unwrap_or_else(|_| panic!("the client did not report {name} within 60 s"))
    }

    /// Close its stdin and wait for it to exit.
    async fn stop(mut self) -> ExitStatus {
        drop(self.child.stdin.take());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the client did not exit within 30 s of being told to stop")
            .unwrap()
    }
}

async fn detail(s: &TestServer, a: &reqwest::Client, id: &str) -> (u16, Value) {
    let r = a
        .get(format!("{}/api/v1/collectors/{id}", s.base))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_detail(
    s: &TestServer,
    a: &reqwest::Client,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    poll_json(what, async || detail(s, a, id).await.1, pred).await
}

async fn token_record(s: &TestServer, a: &reqwest::Client, id: &str) -> Value {
    get_as(a, format!("{}/api/v1/enrollment-tokens", s.base)).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap()
}

async fn collector_count(s: &TestServer, a: &reqwest::Client) -> usize {
    get_as(a, format!("{}/api/v1/collectors", s.base)).await["items"]
        .as_array()
        .unwrap()
        .len()
}

/// The whole front door with one real client and one enrollment token of
/// one use: the first start enrolls (token labels applied, config applied,
/// shown connected), a restart with the same uid resumes the same collector
/// without counting a use, and another agent is refused because the token
/// is used up — and is never shown in the fleet.
async fn token_only_front_door(client: Client, service_name: &str) {
    if !client.available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // The Node client never says goodbye: it is seen gone by liveness. The
    // Python client sends agent_disconnect, so a long timeout proves it.
    config.fleet.liveness_timeout = match client {
        Client::Python => Duration::from_secs(600),
        Client::Node => Duration::from_secs(3),
    };
    let s = start(open_store(dir.path()).await, config).await;
    let a = admin(&s.base).await;
    let r = a
        .put(format!("{}/api/v1/fleet/default-config", s.base))
        .json(&json!({"files": {"collector.yaml": {"body": "receivers:\n  otlp:\n    protocols:\n      http: {}\n"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (token_id, token) = enrollment_token(
        &s.base,
        &a,
        json!({"name": "interop", "max_uses": 1, "labels": {"site": "interop"}}),
    )
    .await;
    let endpoint = format!("{}/v1/opamp", s.base);

    // First start: only the URL and the token.
    let mut first = client.spawn(&endpoint, &token, None);
    let uid = first.event("started").await["uid"].as_str().unwrap().to_string();
    first.event("applied").await;
    let d = wait_detail(&s, &a, &uid, "enrolled, connected and APPLIED", |d| {
        d["connected"] == true && d["config_status"] == "applied"
    })
    .await;
    assert_eq!(d["transport"], "http");
    assert_eq!(d["labels"]["site"], "interop", "the token's labels are applied");
    assert_eq!(d["status"]["description"]["identifying"]["service.name"], service_name);
    assert_eq!(d["status"]["remote_config"]["hash"], d["desired_hash"]);
    assert_eq!(token_record(&s, &a, &token_id).await["uses"], 1);
    assert!(first.stop().await.success());
    let gone = match client {
        Client::Python => "disconnected after agent_disconnect",
        Client::Node => "disconnected after the liveness timeout",
    };
    wait_detail(&s, &a, &uid, gone, |d| d["connected"] == false).await;

    // Second start of the same agent (same uid, same token): resumed.
    let mut again = client.spawn(&endpoint, &token, Some(&uid));
    assert_eq!(again.event("started").await["uid"], uid.as_str());
    wait_detail(&s, &a, &uid, "the same collector connected again", |d| {
        d["connected"] == true && d["config_status"] == "applied"
    })
    .await;
    let t = token_record(&s, &a, &token_id).await;
    assert_eq!((t["uses"].as_u64(), t["state"].as_str()), (Some(1), Some("used_up")));
    assert_eq!(collector_count(&s, &a).await, 1);

    // A third agent with the used-up token: refused, never enrolled.
    let mut third = client.spawn(&endpoint, &token, None);
    let other = third.event("started").await["uid"].as_str().unwrap().to_string();
    let refused = third.event("refused").await;
    assert_eq!(refused["status"], 403, "{refused}");
    if let Client::Python = client {
        // The Node client keeps the response body to itself.
        assert!(
            refused["message"]
                .as_str()
                .unwrap()
                .contains("enrollment token is used up"),
            "{refused}"
        );
    }
    assert_eq!(third.stop().await.code(), Some(3));
    assert_eq!(
        detail(&s, &a, &other).await.0,
        404,
        "a refused agent is not in the fleet"
    );
    assert_eq!(collector_count(&s, &a).await, 1);
    let audit = get_as(&a, format!("{}/api/v1/audit?action=collector.enroll", s.base)).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["target"] == other.as_str() && e["outcome"] == "refused: used up"),
        "the refusal is audited with its reason: {audit}"
    );
    // The resumed agent was not disturbed by the refusal.
    assert_eq!(detail(&s, &a, &uid).await.1["connected"], true);
    again.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_opamp_client_joins_with_only_an_enrollment_token() {
    token_only_front_door(Client::Python, "python-interop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_opamp_client_joins_with_only_an_enrollment_token() {
    token_only_front_door(Client::Node, "node-interop").await;
}
