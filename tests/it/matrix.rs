//! The route × role matrix: every operation of the served OpenAPI document
//! is called as every kind of caller, and the status must be the one in
//! `tests/it/matrix.table`. An operation without a line there fails the
//! test (a new route must say who may call it), and so does a line for an
//! operation the document no longer lists.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use linkmesh::clock::{ManualClock, Timestamp};
use serde_json::{json, Value};

use super::support::*;

const TABLE: &str = "tests/it/matrix.table";

/// The callers, in the column order of the table.
const CALLERS: [&str; 10] = [
    "anon",
    "viewer",
    "editor",
    "admin",
    "tok:viewer",
    "tok:editor",
    "tok:admin",
    "collector",
    "expired",
    "disabled",
];

/// What a path parameter is replaced with: nothing of that name exists, so
/// a caller who is allowed gets 404 and one who is not gets 401/403, and no
/// row changes what the next one sees.
const NO_SUCH_ID: &str = "0192f7a4-0000-7000-8000-000000000000";
const NO_SUCH_USER: &str = "nobody";

/// In the body column: send a WebSocket upgrade instead of a body.
const WEBSOCKET: &str = "@websocket";

struct Row {
    line: usize,
    expected: Vec<u16>,
    /// JSON text; `{caller}` becomes the caller's name, for bodies that
    /// create something with a unique name.
    body: Option<String>,
}

fn read_table() -> BTreeMap<String, Row> {
    let path = repo_root().join(TABLE);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rows = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let op = format!("{} {}", parts.next().unwrap(), parts.next().unwrap_or(""));
        let expected: Vec<u16> = parts
            .by_ref()
            .take(CALLERS.len())
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| panic!("{TABLE}:{}: {s:?} is not a status", i + 1))
            })
            .collect();
        assert_eq!(
            expected.len(),
            CALLERS.len(),
            "{TABLE}:{}: want {} statuses ({})",
            i + 1,
            CALLERS.len(),
            CALLERS.join(" ")
        );
        let rest: Vec<&str> = parts.collect();
        let body = match rest.join(" ").as_str() {
            "" | "-" => None,
            WEBSOCKET => Some(WEBSOCKET.to_string()),
            json => {
                if let Err(e) = serde_json::from_str::<Value>(json) {
                    panic!("{TABLE}:{}: body is not JSON: {e}", i + 1);
                }
                Some(json.to_string())
            }
        };
        let dup = rows.insert(
            op.clone(),
            Row {
                line: i + 1,
                expected,
                body,
            },
        );
        assert!(dup.is_none(), "{TABLE}:{}: {op} listed twice", i + 1);
    }
    rows
}

/// One caller: how it authenticates.
enum Caller {
    Anonymous,
    Session(reqwest::Client),
    Bearer(String),
}

#[tokio::test]
async fn every_operation_answers_every_caller_as_the_table_says() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let mut config = test_config(dir.path());
    // Every caller logs in from loopback; the matrix is not about limits.
    config.auth.login_attempts_per_minute = 10_000;
    config.auth.enroll_attempts_per_minute = 10_000;
    let s = start_with_clock(open_store(dir.path()).await, config, clock.clone()).await;
    let b = s.base.clone();
    let admin_session = admin(&b).await;

    let mut sessions = BTreeMap::new();
    let mut tokens = BTreeMap::new();
    for role in ["viewer", "editor", "admin"] {
        let name = format!("matrix-{role}");
        let client = user_with_role(&b, &admin_session, &name, role).await;
        tokens.insert(role, matrix_token(&b, &client, "1y").await);
        sessions.insert(role, (name, client));
    }
    // An admin's token that has expired, and a token of an admin who has
    // since been disabled: both must be worthless.
    let expired = matrix_token(&b, &admin_session, "1m").await;
    let dis_client = user_with_role(&b, &admin_session, "matrix-disabled", "admin").await;
    let disabled = matrix_token(&b, &dis_client, "1y").await;
    let u: Value = admin_session
        .get(format!("{b}/api/v1/users/matrix-disabled"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = admin_session
        .patch(format!("{b}/api/v1/users/matrix-disabled"))
        .json(&json!({"disabled": true, "version": u["version"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, enrollment) = enrollment_token(&b, &admin_session, json!({"name": "matrix"})).await;
    let enrolled: Value = enroll(&b, &enrollment, None).await.json().await.unwrap();
    let collector = enrolled["credential"].as_str().unwrap().to_string();
    clock.advance(Duration::from_secs(120));

    let callers: Vec<Caller> = CALLERS
        .iter()
        .map(|c| match *c {
            "anon" => Caller::Anonymous,
            "viewer" | "editor" | "admin" => Caller::Session(sessions[c].1.clone()),
            "tok:viewer" => Caller::Bearer(tokens["viewer"].clone()),
            "tok:editor" => Caller::Bearer(tokens["editor"].clone()),
            "tok:admin" => Caller::Bearer(tokens["admin"].clone()),
            "collector" => Caller::Bearer(collector.clone()),
            "expired" => Caller::Bearer(expired.clone()),
            "disabled" => Caller::Bearer(disabled.clone()),
            other => unreachable!("{other}"),
        })
        .collect();

    let doc: Value = reqwest::get(format!("{b}/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut operations = Vec::new();
    // Operations that need credentials (the body carries none).
    let mut secured = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, operation) in ops.as_object().unwrap() {
            let op = format!("{} {path}", method.to_uppercase());
            if operation.get("security").is_some() {
                secured.insert(op.clone());
            }
            operations.push(op);
        }
    }
    // Logging in replaces a session caller's cookie, logging out ends it:
    // these two come last.
    operations.sort_by_key(|op| op.ends_with("/auth/login") || op.ends_with("/auth/logout"));

    let table = read_table();
    let missing: Vec<&String> = operations.iter().filter(|op| !table.contains_key(*op)).collect();
    assert!(
        missing.is_empty(),
        "operations without a line in {TABLE}: {missing:?}\n\
         Add one line per operation: METHOD PATH, then the expected status for each caller \
         ({}), then an optional JSON request body, e.g.\n\
         GET /api/v1/things 401 200 200 200 200 200 200 401 401 401",
        CALLERS.join(" ")
    );
    let stale: Vec<&String> = table.keys().filter(|op| !operations.contains(op)).collect();
    assert!(
        stale.is_empty(),
        "{TABLE} lists operations the OpenAPI document does not: {stale:?}"
    );

    let http = reqwest::Client::new();
    let mut wrong = String::new();
    for op in &operations {
        let row = &table[op];
        let (method, path) = op.split_once(' ').unwrap();
        let url = format!(
            "{b}{}",
            path.replace("{username}", NO_SUCH_USER).replace("{id}", NO_SUCH_ID)
        );
        for (i, caller) in callers.iter().enumerate() {
            let client = match caller {
                Caller::Session(c) => c,
                _ => &http,
            };
            // The UI's own origin, as a browser sends it.
            let mut req = client.request(method.parse().unwrap(), &url).header("origin", &b);
            if let Caller::Bearer(t) = caller {
                req = req.bearer_auth(t);
            }
            if row.body.as_deref() == Some(WEBSOCKET) {
                req = req
                    .header("connection", "Upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
            }
            // Built before the body goes in: the same request without one.
            let bare = req.try_clone().unwrap();
            if let Some(body) = &row.body {
                if body != WEBSOCKET {
                    req = req
                        .header("content-type", "application/json")
                        .body(body.replace("{caller}", &CALLERS[i].replace(':', "-")));
                }
            }
            let got = req.send().await.unwrap().status().as_u16();
            if got != row.expected[i] {
                let _ = writeln!(
                    wrong,
                    "{TABLE}:{}: {op} as {}: want {}, got {got}",
                    row.line, CALLERS[i], row.expected[i]
                );
            }
            // A refusal does not depend on the body: without one (so no
            // media type either) the caller is refused the same way.
            let refused = matches!(row.expected[i], 401 | 403);
            if refused && secured.contains(op) && row.body.as_deref().is_some_and(|b| b != WEBSOCKET) {
                let got = bare.send().await.unwrap().status().as_u16();
                if got != row.expected[i] {
                    let _ = writeln!(
                        wrong,
                        "{TABLE}:{}: {op} as {} without a body: want {} (refused before the body is read), got {got}",
                        row.line, CALLERS[i], row.expected[i]
                    );
                }
            }
        }
    }
    assert!(wrong.is_empty(), "statuses differ from the table:\n{wrong}");
    s.stop().await;
}

async fn matrix_token(base: &str, client: &reqwest::Client, expires_in: &str) -> String {
    create_api_token(base, client, json!({"name": "matrix", "expires_in": expires_in}))
        .await
        .1
}
