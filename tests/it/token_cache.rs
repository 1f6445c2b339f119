//! Verified API tokens and sessions are answered from memory (no store read
//! per request), and yet a revocation, a logout or a change to the owner is
//! refused or applied at once on every instance: the change feed reaches the
//! cache before the next request is answered.

use linkmesh::storage::Table;
use serde_json::{json, Value};

use super::support::*;

/// `GET /api/v1/auth/me` on `base` with `bearer`: (status, body).
async fn me(base: &str, bearer: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/auth/me"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_cached_api_token_is_refused_on_both_instances_as_soon_as_it_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(&dir.path().join("s")).await;
    let admin = admin(&a.base).await;
    let (id, token) = create_api_token(&a.base, &admin, json!({ "name": "ci" })).await;
    for s in [&a, &b] {
        assert_eq!(me(&s.base, &token).await.0, 200, "{}", s.base);
    }

    // Verified once, the token no longer needs the store: with reads of the
    // token table failing, both instances still know it.
    a.store.fail_reads_of(Some(Table::ApiTokens));
    for s in [&a, &b] {
        let (status, body) = me(&s.base, &token).await;
        assert_eq!(status, 200, "{}: {body}", s.base);
        assert_eq!(body["role"], "admin");
    }
    // A wrong secret for the same id is not taken from memory.
    let last = if token.ends_with('A') { 'B' } else { 'A' };
    let tampered = format!("{}{last}", &token[..token.len() - 1]);
    assert_ne!(me(&b.base, &tampered).await.0, 200);
    a.store.fail_reads_of(None);
    assert_eq!(me(&b.base, &tampered).await.0, 401);

    // Revoked on `a`: refused on both at once, with no wait.
    let r = admin
        .delete(format!("{}/api/v1/api-tokens/{id}", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for s in [&b, &a] {
        let (status, body) = me(&s.base, &token).await;
        assert_eq!(status, 401, "{}: {body}", s.base);
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_cached_token_follows_its_owner_at_once_demoted_then_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(&dir.path().join("s")).await;
    let admin = admin(&a.base).await;
    let ed = user_with_role(&a.base, &admin, "ed", "editor").await;
    let (_, token) = create_api_token(&a.base, &ed, json!({ "name": "deploys" })).await;
    for s in [&a, &b] {
        assert_eq!(me(&s.base, &token).await.1["role"], "editor", "{}", s.base);
    }

    let u: Value = get_as(&admin, format!("{}/api/v1/users/ed", a.base)).await;
    let r = admin
        .patch(format!("{}/api/v1/users/ed", a.base))
        .header("If-Match", format!("\"{}\"", u["version"]))
        .json(&json!({ "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    for s in [&b, &a] {
        let (status, body) = me(&s.base, &token).await;
        assert_eq!((status, body["role"].clone()), (200, json!("viewer")), "{}", s.base);
    }
    // What the token may do follows too: a viewer cannot create users.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/users", b.base))
        .bearer_auth(&token)
        .json(&json!({ "username": "mallory", "password": "a-long-enough-password", "role": "admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let r = admin
        .patch(format!("{}/api/v1/users/ed", a.base))
        .header("If-Match", etag)
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for s in [&b, &a] {
        assert_eq!(me(&s.base, &token).await.0, 401, "{}", s.base);
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_cached_session_ends_on_both_instances_at_logout() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(&dir.path().join("s")).await;
    // Cookies do not depend on the port: one client is logged in on both.
    let browser = admin(&a.base).await;
    for s in [&a, &b] {
        let me: Value = get_as(&browser, format!("{}/api/v1/auth/me", s.base)).await;
        assert_eq!(me["username"], "admin", "{}", s.base);
    }
    a.store.fail_reads_of(Some(Table::Sessions));
    let me: Value = get_as(&browser, format!("{}/api/v1/auth/me", b.base)).await;
    assert_eq!(me["username"], "admin", "the session is held in memory");
    a.store.fail_reads_of(None);

    // Keep the cookie to present it again after the browser forgot it.
    let cookie = {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/auth/login", a.base))
            .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let with_cookie = |base: &str| {
        reqwest::Client::new()
            .get(format!("{base}/api/v1/auth/me"))
            .header("cookie", cookie.clone())
    };
    for s in [&a, &b] {
        assert_eq!(with_cookie(&s.base).send().await.unwrap().status(), 200);
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/logout", a.base))
        .header("cookie", cookie.clone())
        .header("origin", a.base.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for s in [&b, &a] {
        assert_eq!(with_cookie(&s.base).send().await.unwrap().status(), 401, "{}", s.base);
    }
    b.stop().await;
    a.stop().await;
}
