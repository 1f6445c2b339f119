//! The fleet core keeps what it is told and shows the truth: statuses an
//! earlier run left wrong are corrected, a stopped instance lets go of
//! everything it held, refused agents are never shown connected.

use linkmesh::domain::{CollectorStatus, ServerInstance};
use linkmesh::storage::{Expect, Op};
use serde_json::{json, Value};

use super::support::*;

/// Enroll one collector through the API; returns (collector id, credential).
async fn enrolled(base: &str) -> (String, String) {
    let admin = admin(base).await;
    let (_, token) = enrollment_token(base, &admin, json!({"name":"t"})).await;
    let r = enroll(base, &token, None).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    (
        v["collector_id"].as_str().unwrap().into(),
        v["credential"].as_str().unwrap().into(),
    )
}

/// A crash (or a stop whose last write failed) leaves a status claiming
/// the collector is connected to instance `a`. Once `a` runs again and is
/// alive, nothing would correct it: `a` must, when it starts.
#[tokio::test]
async fn a_status_left_connected_by_an_earlier_run_is_corrected_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let mut cb = test_config(dir.path());
    cb.server.instance_name = Some("b".into());
    let b = start(store.clone(), cb).await;
    let (id, _) = enrolled(&b.base).await;
    let left = CollectorStatus {
        collector_id: id.clone(),
        connected: true,
        instance: "a".into(),
        transport: "grpc".into(),
        ..Default::default()
    };
    store
        .commit(vec![Op::put(&id, &left, Expect::Any).unwrap()])
        .await
        .unwrap();

    let mut ca = test_config(dir.path());
    ca.server.instance_name = Some("a".into());
    let a = start(store.clone(), ca).await;
    // Settled when `a` is alive (its presence row) and the status stored.
    let st = store.clone();
    let key = id.clone();
    poll_json(
        "a alive and the status corrected",
        async || {
            let alive = st.get::<ServerInstance>("a").await.unwrap().is_some();
            let status = st.get::<CollectorStatus>(&key).await.unwrap().unwrap().value;
            json!({ "alive": alive, "connected": status.connected })
        },
        |v| v["alive"] == true && v["connected"] == false,
    )
    .await;
    let admin_b = admin(&b.base).await;
    let seen: Value = get_as(&admin_b, format!("{}/api/v1/collectors/{id}", b.base)).await;
    assert_eq!(seen["connected"], false, "{seen}");
    assert_eq!(seen["instance"], "a");
    a.stop().await;
    b.stop().await;
}
