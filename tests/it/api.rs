//! The REST API as a user sees it: login, roles, tokens, enrollment,
//! versions, problem+json, the OpenAPI document.

use std::collections::BTreeSet;
use std::time::Duration;

use linkmesh::clock::{ManualClock, Timestamp};
use linkmesh::domain::{Collector, CollectorCredential, EnrollmentToken};
use linkmesh::storage::Scan;
use serde_json::{json, Value};

use super::support::*;

#[tokio::test]
async fn login_sets_a_hardened_cookie_and_wrong_passwords_get_problem_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/api/v1/auth/login", s.base))
        .json(&json!({"username":"admin","password":ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    let r = c
        .post(format!("{}/api/v1/auth/login", s.base))
        .json(&json!({"username":"admin","password":"wrong-password-x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], 401);
    assert_eq!(p["type"], "urn:linkmesh:problem:unauthenticated");

    // Unauthenticated API calls are refused; probes are public.
    assert_eq!(
        c.get(format!("{}/api/v1/users", s.base)).send().await.unwrap().status(),
        401
    );
    assert_eq!(c.get(format!("{}/healthz", s.base)).send().await.unwrap().status(), 200);
    let metrics = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("linkmesh_http_requests_total"), "{metrics}");
    // The login above committed a session: storage latency is reported.
    assert!(
        metrics.contains("linkmesh_storage_operation_duration_seconds_count{op=\"commit\"}"),
        "{metrics}"
    );

    // Logout ends the session server-side.
    let a = admin(&s.base).await;
    assert_eq!(
        a.get(format!("{}/api/v1/auth/me", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        a.post(format!("{}/api/v1/auth/logout", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        a.get(format!("{}/api/v1/auth/me", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    s.stop().await;
}

/// Every route the server answers is in the OpenAPI document and every
/// route in the document is served.
#[tokio::test]
async fn openapi_document_covers_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "GET /healthz",
        "GET /readyz",
        "GET /api/v1/downloads/install-opamp.sh",
        "GET /metrics",
        "GET /api/v1/openapi.json",
        "POST /api/v1/auth/login",
        "POST /api/v1/auth/logout",
        "GET /api/v1/auth/me",
        "GET /api/v1/users",
        "POST /api/v1/users",
        "GET /api/v1/users/{username}",
        "PATCH /api/v1/users/{username}",
        "DELETE /api/v1/users/{username}",
        "GET /api/v1/api-tokens",
        "POST /api/v1/api-tokens",
        "DELETE /api/v1/api-tokens/{id}",
        "GET /api/v1/enrollment-tokens",
        "POST /api/v1/enrollment-tokens",
        "POST /api/v1/enrollment-tokens/{id}/revoke",
        "POST /api/v1/enroll",
        "GET /api/v1/collectors",
        "GET /api/v1/collectors/{id}",
        "DELETE /api/v1/collectors/{id}",
        "POST /api/v1/collectors/{id}/rotate-credential",
        "PATCH /api/v1/collectors/{id}/labels",
        "POST /api/v1/collectors/{id}/restart",
        "PUT /api/v1/collectors/{id}/config",
        "DELETE /api/v1/collectors/{id}/config",
        "GET /api/v1/fleet/summary",
        "PUT /api/v1/fleet/default-config",
        "DELETE /api/v1/fleet/default-config",
        "POST /v1/opamp",
        "GET /v1/opamp",
        "GET /api/v1/canvas",
        "PUT /api/v1/canvas",
        "GET /api/v1/audit",
        "GET /api/v1/config/revision",
        "GET /api/v1/config/status",
        "GET /api/v1/config/resources",
        "POST /api/v1/config/render-preview",
        "POST /v1/metrics",
        "GET /api/v1/collectors/{id}/telemetry",
        "GET /api/v1/telemetry/components",
        "GET /api/v1/config/history",
        "POST /api/v1/config/render-diff",
        "GET /api/v1/config/override",
        "PUT /api/v1/config/override",
        "DELETE /api/v1/config/override",
        "GET /api/v1/routing",
        "POST /api/v1/routing/drafts/preview",
        "POST /api/v1/routing/drafts/publish",
        "POST /api/v1/routing/drafts/patch",
        "GET /api/v1/rollouts",
        "POST /api/v1/rollouts/{id}/pause",
        "POST /api/v1/rollouts/{id}/resume",
        "POST /api/v1/rollouts/{id}/abort",
        "POST /api/v1/rollouts/{id}/promote",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(documented, expected);

    // Each documented route is routed: never the fallback 404 nor a 405.
    let mut a = admin(&s.base).await;
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let url = format!(
            "{}{}",
            s.base,
            path.replace("{username}", "nobody").replace("{id}", "nothing")
        );
        let r = a
            .request(method.parse().unwrap(), url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{route}");
        assert!(!body.contains("no such route"), "{route} is documented but not routed");
        if route == "POST /api/v1/auth/logout" {
            a = admin(&s.base).await; // that logged the client out: the routes after it need auth
        }
    }
    // And an undocumented path is the fallback.
    let r = a.get(format!("{}/api/v1/nope", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn roles_are_enforced_on_every_area() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let a = admin(&s.base).await;
    let viewer = user_with_role(&s.base, &a, "vera", "viewer").await;
    let editor = user_with_role(&s.base, &a, "ed", "editor").await;
    let b = &s.base;

    // Viewers read, but change nothing.
    assert_eq!(
        viewer
            .get(format!("{b}/api/v1/collectors"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        viewer.get(format!("{b}/api/v1/canvas")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        viewer
            .post(format!("{b}/api/v1/enrollment-tokens"))
            .json(&json!({"name":"x"}))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        viewer
            .put(format!("{b}/api/v1/canvas"))
            .json(&json!({"version":0,"document":{}}))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // Nor anything about a real collector: every fleet change is refused,
    // and the collector is left as it was.
    let (_, token) = enrollment_token(b, &a, json!({"name":"roles","labels":{"env":"prod"}})).await;
    let enrolled: Value = enroll(b, &token, None).await.json().await.unwrap();
    let id = enrolled["collector_id"].as_str().unwrap();
    let before: Value = get_as(&a, format!("{b}/api/v1/collectors/{id}")).await;
    let files = json!({"files":{"collector.yaml":{"body":"receivers: {}\n"}}});
    let refused = [
        viewer.post(format!("{b}/api/v1/collectors/{id}/restart")),
        viewer
            .patch(format!("{b}/api/v1/collectors/{id}/labels"))
            .json(&json!({"labels":{"env":"dev"},"version":before["version"]})),
        viewer.put(format!("{b}/api/v1/collectors/{id}/config")).json(&files),
        viewer.delete(format!("{b}/api/v1/collectors/{id}/config")),
        viewer.put(format!("{b}/api/v1/fleet/default-config")).json(&files),
        viewer.delete(format!("{b}/api/v1/fleet/default-config")),
        viewer.post(format!("{b}/api/v1/collectors/{id}/rotate-credential")),
        viewer.delete(format!("{b}/api/v1/collectors/{id}")),
    ];
    for req in refused {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{:?}", r.url().path());
    }
    let after: Value = get_as(&a, format!("{b}/api/v1/collectors/{id}")).await;
    assert_eq!(before, after, "a viewer changed a collector");
    // The credential was not rotated: it still authenticates over OpAMP.
    let opamp = reqwest::Client::new()
        .post(format!("{b}/v1/opamp"))
        .bearer_auth(enrolled["credential"].as_str().unwrap())
        .header("content-type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(opamp.status(), 200);

    // Editors manage enrollment and the canvas, not users or the audit log.
    assert_eq!(
        editor
            .post(format!("{b}/api/v1/enrollment-tokens"))
            .json(&json!({"name":"x"}))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        editor
            .put(format!("{b}/api/v1/canvas"))
            .json(&json!({"version":0,"document":{"nodes":[]}}))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        editor.get(format!("{b}/api/v1/users")).send().await.unwrap().status(),
        403
    );
    assert_eq!(
        editor.get(format!("{b}/api/v1/audit")).send().await.unwrap().status(),
        403
    );
    assert_eq!(
        editor
            .post(format!("{b}/api/v1/users"))
            .json(&json!({"username":"x","password":"xxxxxxxxxxxxxxxx","role":"admin"}))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // Users can see themselves and change their own password.
    let me: Value = get_as(&viewer, format!("{b}/api/v1/users/vera")).await;
    let r = viewer
        .patch(format!("{b}/api/v1/users/vera"))
        .json(&json!({"role":"admin","version":me["version"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no self-promotion");
    let r = viewer
        .patch(format!("{b}/api/v1/users/vera"))
        .json(&json!({"password":"a-brand-new-password","version":me["version"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A password change ends the sessions started before it (this one too);
    // the new password logs in; other users' sessions are untouched.
    assert_eq!(
        viewer.get(format!("{b}/api/v1/auth/me")).send().await.unwrap().status(),
        401
    );
    let again = login(b, "vera", "a-brand-new-password").await;
    assert_eq!(
        again.get(format!("{b}/api/v1/auth/me")).send().await.unwrap().status(),
        200
    );
    assert_eq!(a.get(format!("{b}/api/v1/auth/me")).send().await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn api_tokens_act_as_their_owner_until_revoked_or_the_owner_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let b = &s.base;
    let a = admin(b).await;
    let ed = user_with_role(b, &a, "ed", "editor").await;
    let t: Value = ed
        .post(format!("{b}/api/v1/api-tokens"))
        .json(&json!({"name":"ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = t["token"].as_str().unwrap().to_string();
    let bot = reqwest::Client::new();
    let me: Value = bot
        .get(format!("{b}/api/v1/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "editor");
    assert_eq!(me["username"], "ed");

    // The stored record holds a hash, never the token.
    let stored = s
        .store
        .scan::<linkmesh::domain::ApiToken>(Scan::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!token.contains(&stored[0].value.secret_hash) && !stored[0].value.secret_hash.is_empty());

    // A tampered token is refused.
    let r = bot
        .get(format!("{b}/api/v1/auth/me"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Disabling the owner disables the token.
    let u: Value = get_as(&a, format!("{b}/api/v1/users/ed")).await;
    let r = a
        .patch(format!("{b}/api/v1/users/ed"))
        .header("If-Match", format!("\"{}\"", u["version"]))
        .json(&json!({"disabled":true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        bot.get(format!("{b}/api/v1/auth/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = a
        .patch(format!("{b}/api/v1/users/ed"))
        .header("If-Match", r.headers()["etag"].to_str().unwrap())
        .json(&json!({"disabled":false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        bot.get(format!("{b}/api/v1/auth/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Revoked tokens are refused.
    let id = t["id"].as_str().unwrap();
    assert_eq!(
        a.delete(format!("{b}/api/v1/api-tokens/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        bot.get(format!("{b}/api/v1/auth/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    s.stop().await;
}

#[tokio::test]
async fn user_edits_need_the_version_they_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let b = &s.base;
    let a = admin(b).await;
    let r = a
        .post(format!("{b}/api/v1/users"))
        .json(&json!({"username":"ops","password":"ops-password-long","role":"viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["etag"], "\"1\"");

    let r = a
        .patch(format!("{b}/api/v1/users/ops"))
        .json(&json!({"role":"editor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 428, "an edit without a version is refused");
    let r = a
        .patch(format!("{b}/api/v1/users/ops"))
        .header("If-Match", "\"1\"")
        .json(&json!({"role":"editor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let r = a
        .patch(format!("{b}/api/v1/users/ops"))
        .json(&json!({"role":"admin","version":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["current_version"], 2);
    let u: Value = get_as(&a, format!("{b}/api/v1/users/ops")).await;
    assert_eq!(u["role"], "editor", "the stale edit changed nothing");

    // Bad input names the field.
    let r = a
        .post(format!("{b}/api/v1/users"))
        .json(&json!({"username":"Bad Name","password":"ops-password-long","role":"viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], "username");
    let r = a
        .post(format!("{b}/api/v1/users"))
        .json(&json!({"username":"x","password":"p","role":"viewer","extra":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("extra"));
    s.stop().await;
}

#[tokio::test]
async fn enrollment_tokens_expire_run_out_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let s = start_with_clock(open_store(dir.path()).await, test_config(dir.path()), clock.clone()).await;
    let b = &s.base;
    let a = admin(b).await;

    let (_, two_uses) = enrollment_token(b, &a, json!({"name":"two","max_uses":2,"labels":{"env":"prod"}})).await;
    let r = enroll(b, &two_uses, Some("0192f7a4-5b6c-7d8e-9f00-112233445566")).await;
    assert_eq!(r.status(), 201);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["labels"]["env"], "prod");
    assert!(e["credential"].as_str().unwrap().starts_with("lmc_"));
    // The same instance_uid cannot enroll twice.
    assert_eq!(
        enroll(b, &two_uses, Some("0192f7a4-5b6c-7d8e-9f00-112233445566"))
            .await
            .status(),
        409
    );
    assert_eq!(enroll(b, &two_uses, None).await.status(), 201);
    let r = enroll(b, &two_uses, None).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("used up"));

    let (_, short) = enrollment_token(b, &a, json!({"name":"short","expires_in":"1h"})).await;
    clock.advance(Duration::from_secs(3601));
    let r = enroll(b, &short, None).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("expired"));

    let (id, revoked) = enrollment_token(b, &a, json!({"name":"rev"})).await;
    assert_eq!(
        a.post(format!("{b}/api/v1/enrollment-tokens/{id}/revoke"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(enroll(b, &revoked, None).await.status(), 403);
    assert_eq!(
        enroll(b, "lme_00000000000000000000000000000000_nope", None)
            .await
            .status(),
        401
    );

    // Tokens are stored hashed; listing never shows a secret.
    let listed = a
        .get(format!("{b}/api/v1/enrollment-tokens"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&two_uses[40..]), "a listed token leaks its secret");
    let stored = s.store.scan::<EnrollmentToken>(Scan::default()).await.unwrap();
    assert!(stored.iter().all(|t| !two_uses.contains(&t.value.secret_hash)));
    let states: Vec<String> = serde_json::from_str::<Value>(&listed).unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["used_up", "expired", "revoked"]);

    // Refusals are audited.
    let audit: Value = get_as(&a, format!("{b}/api/v1/audit?action=collector.enroll")).await;
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"refused: used up")
            && outcomes.contains(&"refused: expired")
            && outcomes.contains(&"refused: revoked"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| **o == "ok").count(), 2);
    s.stop().await;
}

#[tokio::test]
async fn credential_rotation_refuses_the_old_credential() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let b = &s.base;
    let a = admin(b).await;
    let (_, token) = enrollment_token(b, &a, json!({"name":"t"})).await;
    let e: Value = enroll(b, &token, None).await.json().await.unwrap();
    let (id, old) = (
        e["collector_id"].as_str().unwrap().to_string(),
        e["credential"].as_str().unwrap().to_string(),
    );

    let domain = domain_on(s.store.clone());
    assert_eq!(domain.authenticate_collector(&old).await.unwrap().key, id);

    let r: Value = a
        .post(format!("{b}/api/v1/collectors/{id}/rotate-credential"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = r["credential"].as_str().unwrap();
    assert_ne!(new, old);
    assert!(
        domain.authenticate_collector(&old).await.is_err(),
        "the rotated-away credential still works"
    );
    assert_eq!(domain.authenticate_collector(new).await.unwrap().key, id);

    let c = s.store.get::<Collector>(&id).await.unwrap().unwrap();
    assert_eq!(c.value.credential_ids.len(), 2);
    let creds = s.store.scan::<CollectorCredential>(Scan::default()).await.unwrap();
    assert_eq!(creds.iter().filter(|c| c.value.revoked_at.is_some()).count(), 1);

    let audit: Value = get_as(&a, format!("{b}/api/v1/audit?action=collector.")).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"collector.rotate_credential") && actions.contains(&"collector.authenticate"),
        "{actions:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn lists_paginate_with_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let b = &s.base;
    let a = admin(b).await;
    let (_, token) = enrollment_token(b, &a, json!({"name":"t","labels":{"site":"a"}})).await;
    for _ in 0..7 {
        assert_eq!(enroll(b, &token, None).await.status(), 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{b}/api/v1/collectors?limit=3&selector=site=a");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = a.get(url).send().await.unwrap().json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 7, "no collector twice");
    let none: Value = get_as(&a, format!("{b}/api/v1/collectors?selector=site=b")).await;
    assert!(none["items"].as_array().unwrap().is_empty());
    s.stop().await;
}

/// Password guessing from one address is cut off with 429 and a usable
/// `Retry-After`; other addresses (as a trusted proxy reports them) still
/// log in, and a client cannot pick its own address through the header.
#[tokio::test]
async fn login_and_enrollment_are_rate_limited_per_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.login_attempts_per_minute = 3;
    config.auth.enroll_attempts_per_minute = 2;
    config.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let s = start(open_store(dir.path()).await, config).await;
    let client = reqwest::Client::new();
    let attempt = |from: &'static str, password: &'static str| {
        client
            .post(format!("{}/api/v1/auth/login", s.base))
            .header("x-forwarded-for", from)
            .json(&json!({ "username": "admin", "password": password }))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(attempt("198.51.100.1", "guess").await.unwrap().status(), 401);
    }
    // The right password does not help once the address is over its limit.
    let r = attempt("198.51.100.1", ADMIN_PASSWORD).await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:linkmesh:problem:rate-limited");
    assert!(problem["detail"].as_str().unwrap().contains("retry in"), "{problem}");
    // A header the client wrote itself, left of the proxy's entry, is ignored.
    let spoofed = attempt("203.0.113.50, 198.51.100.1", ADMIN_PASSWORD).await.unwrap();
    assert_eq!(spoofed.status(), 429);
    // Another client behind the same proxy is unaffected.
    assert_eq!(attempt("198.51.100.2", ADMIN_PASSWORD).await.unwrap().status(), 200);

    // Enrollment has its own budget.
    let enroll_from = |from: &'static str| {
        client
            .post(format!("{}/api/v1/enroll", s.base))
            .header("x-forwarded-for", from)
            .json(&json!({ "token": "lme_00000000000000000000000000000000_nope", "name": "c" }))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(enroll_from("198.51.100.1").await.unwrap().status(), 401);
    }
    let r = enroll_from("198.51.100.1").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(enroll_from("198.51.100.3").await.unwrap().status(), 401);
    s.stop().await;
}

/// The values a schema allows: its `enum`, following `$ref` and the
/// `oneOf`/`anyOf`/`allOf` an `Option` is wrapped in.
fn enum_values(doc: &Value, schema: &Value) -> Vec<String> {
    if let Some(values) = schema["enum"].as_array() {
        return values.iter().filter_map(|v| v.as_str().map(String::from)).collect();
    }
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return enum_values(doc, &doc["components"]["schemas"][name]);
    }
    ["oneOf", "anyOf", "allOf"]
        .iter()
        .filter_map(|k| schema[*k].as_array())
        .flatten()
        .flat_map(|s| enum_values(doc, s))
        .collect()
}

/// An unknown filter value is a 400 that names the parameter and the values
/// it takes, and the OpenAPI document lists those values for filters and
/// for the states the API shows.
#[tokio::test]
async fn filters_and_states_are_closed_sets_named_in_errors_and_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let a = admin(&s.base).await;
    for (query, names) in [
        ("health=helthy", &["health", "healthy", "unhealthy", "unknown"][..]),
        (
            "config_status=done",
            &[
                "config_status",
                "applied",
                "applying",
                "failed",
                "pending",
                "incompatible",
                "none",
            ][..],
        ),
        ("connected=yes", &["connected", "true", "false"][..]),
        ("sort=size", &["sort", "id", "name", "last_seen"][..]),
    ] {
        let r = a
            .get(format!("{}/api/v1/collectors?{query}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "?{query}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let detail = r.json::<Value>().await.unwrap()["detail"].as_str().unwrap().to_string();
        for name in names {
            assert!(detail.contains(name), "?{query}: {detail:?} does not name {name}");
        }
    }
    // A valid value still filters (nothing is enrolled: an empty page).
    let r = a
        .get(format!(
            "{}/api/v1/collectors?health=unknown&config_status=none&connected=false",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let params = doc["paths"]["/api/v1/collectors"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let param = |name: &str| {
        let p = params.iter().find(|p| p["name"] == name).unwrap();
        enum_values(&doc, &p["schema"])
    };
    assert_eq!(param("health"), ["healthy", "unhealthy", "unknown"]);
    assert_eq!(
        param("config_status"),
        ["applied", "applying", "failed", "pending", "incompatible", "none"]
    );
    let field = |schema: &str, field: &str| {
        let s = &doc["components"]["schemas"][schema]["properties"][field];
        assert!(!s.is_null(), "{schema}.{field} is not in the document");
        enum_values(&doc, s)
    };
    assert_eq!(
        field("EnrollmentTokenView", "state"),
        ["active", "expired", "used_up", "revoked"]
    );
    assert_eq!(
        field("RemoteConfigView", "status"),
        ["APPLIED", "APPLYING", "FAILED", "UNSET"]
    );
    assert_eq!(field("StoreStatus", "mode"), ["local", "mirror"]);
    assert_eq!(field("FleetCollector", "health"), ["healthy", "unhealthy", "unknown"]);
    assert_eq!(
        field("FleetCollector", "config_status"),
        ["applied", "applying", "failed", "pending", "incompatible", "none"]
    );
    s.stop().await;
}

/// What a collector is told when it is refused or the store fails: an
/// agent polling OpAMP over HTTP with a revoked credential gets 401 and is
/// never shown connected; a first contact whose enrollment cannot be
/// stored gets 503 with a retry hint and no storage internals, is not
/// shown at all, and enrolls once the store works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_or_failed_opamp_agents_are_not_shown_and_see_no_storage_internals() {
    use linkmesh::proto::opamp_msgs as pb;
    use linkmesh::storage::Table;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // The old credential stops working the moment it is rotated away.
    config.auth.credential_rotation_overlap = Duration::from_secs(0);
    let s = start(open_store(dir.path()).await, config).await;
    let a = admin(&s.base).await;
    let (token_id, token) = enrollment_token(&s.base, &a, json!({"name": "t"})).await;
    let enrolled: Value = enroll(&s.base, &token, None).await.json().await.unwrap();
    let id = enrolled["collector_id"].as_str().unwrap().to_string();
    let old = enrolled["credential"].as_str().unwrap().to_string();
    let r = a
        .post(format!("{}/api/v1/collectors/{id}/rotate-credential", s.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let poll = |bearer: String, uid: uuid::Uuid| {
        let m = pb::AgentToServer {
            instance_uid: uid.as_bytes().to_vec(),
            sequence_num: 1,
            capabilities: 0x1,
            agent_description: Some(pb::AgentDescription::default()),
            ..Default::default()
        };
        reqwest::Client::new()
            .post(format!("{}/v1/opamp", s.base))
            .bearer_auth(bearer)
            .header("content-type", "application/x-protobuf")
            .body(m.encode_to_vec())
            .send()
    };
    let uid = uuid::Uuid::parse_str(&id).unwrap();
    for _ in 0..3 {
        let r = poll(old.clone(), uid).await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let detail: Value = get_as(&a, format!("{}/api/v1/collectors/{id}", s.base)).await;
    assert_eq!(detail["connected"], false, "{detail}");
    let summary: Value = get_as(&a, format!("{}/api/v1/fleet/summary", s.base)).await;
    assert_eq!(summary["connected"], 0, "{summary}");

    // First contact with the token while the enrollment cannot be stored.
    let newcomer = uuid::Uuid::now_v7();
    s.store.fail_commit_touching(Table::EnrollmentTokens, &token_id, 1);
    let r = poll(token.clone(), newcomer).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("content-type"));
    let body = r.text().await.unwrap();
    for internal in ["injected", "fault", "redb", "table", "EnrollmentTokens", "commit"] {
        assert!(!body.contains(internal), "{internal:?} reaches the collector: {body}");
    }
    assert!(body.contains("try again"), "{body}");
    let r = a
        .get(format!("{}/api/v1/collectors/{newcomer}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a collector whose enrollment failed is shown");
    // The store works again: the same agent enrolls on its next poll.
    let r = poll(token, newcomer).await.unwrap();
    assert_eq!(r.status(), 200);
    let detail: Value = get_as(&a, format!("{}/api/v1/collectors/{newcomer}", s.base)).await;
    assert_eq!(detail["id"], newcomer.to_string(), "{detail}");
    s.stop().await;
}
