//! Two server instances in one process sharing one store (the shape of an
//! HA pair): racing edits, racing enrollments, and an interrupted cascade.

use linkmesh::domain::{Collector, CollectorCredential, CollectorStatus, Command, EnrollmentToken, PendingCommands};
use linkmesh::storage::{Expect, Op, Scan, Table};
use serde_json::{json, Value};

use super::support::*;

fn statuses(rs: &[u16]) -> (usize, usize) {
    (
        rs.iter().filter(|s| **s == 200).count(),
        rs.iter().filter(|s| **s == 409).count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_user_edits_on_two_instances_one_wins_one_gets_409() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path()).await;
    let (ax, ay) = (admin(&x.base).await, admin(&y.base).await);
    for round in 0..5 {
        let name = format!("u{round}");
        let r = ax
            .post(format!("{}/api/v1/users", x.base))
            .json(&json!({"username":name,"password":"u-password-long","role":"viewer"}))
            .send()
            .await
            .unwrap();
        let v = r.headers()["etag"].to_str().unwrap().to_string();
        let (r1, r2) = tokio::join!(
            ax.patch(format!("{}/api/v1/users/{name}", x.base))
                .header("If-Match", &v)
                .json(&json!({"role":"editor"}))
                .send(),
            ay.patch(format!("{}/api/v1/users/{name}", y.base))
                .header("If-Match", &v)
                .json(&json!({"role":"admin"}))
                .send(),
        );
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        let codes = [r1.status().as_u16(), r2.status().as_u16()];
        assert_eq!(statuses(&codes), (1, 1), "round {round}: {codes:?}");
        let (winner, loser) = if codes[0] == 200 { (r1, r2) } else { (r2, r1) };
        let won: Value = winner.json().await.unwrap();
        let lost: Value = loser.json().await.unwrap();
        assert_eq!(lost["current_version"], won["version"]);
        let now: Value = get_as(&ax, format!("{}/api/v1/users/{name}", x.base)).await;
        assert_eq!(now["role"], won["role"], "the stored user is the winner's edit");
    }
    x.stop().await;
    y.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_canvas_saves_on_two_instances_one_wins_one_gets_409() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path()).await;
    let (ax, ay) = (admin(&x.base).await, admin(&y.base).await);
    let mut version = 0;
    for round in 0..5 {
        let (r1, r2) = tokio::join!(
            ax.put(format!("{}/api/v1/canvas", x.base))
                .json(&json!({"version":version,"document":{"by":"x","round":round}}))
                .send(),
            ay.put(format!("{}/api/v1/canvas", y.base))
                .json(&json!({"version":version,"document":{"by":"y","round":round}}))
                .send(),
        );
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        let codes = [r1.status().as_u16(), r2.status().as_u16()];
        assert_eq!(statuses(&codes), (1, 1), "round {round}: {codes:?}");
        let winner: Value = if codes[0] == 200 {
            r1.json().await.unwrap()
        } else {
            r2.json().await.unwrap()
        };
        let stored: Value = get_as(&ay, format!("{}/api/v1/canvas", y.base)).await;
        assert_eq!(stored["document"], winner["document"]);
        version = stored["version"].as_u64().unwrap();
    }
    assert_eq!(version, 5);
    x.stop().await;
    y.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_enrollments_on_ten_uses_make_exactly_ten_collectors() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path()).await;
    let ax = admin(&x.base).await;
    let (token_id, token) = enrollment_token(&x.base, &ax, json!({"name":"ten","max_uses":10})).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let base = if i % 2 == 0 { x.base.clone() } else { y.base.clone() };
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            enroll(&base, &token, None).await.status().as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 403).count(), 40, "{codes:?}");
    let store = &x.store;
    assert_eq!(store.scan::<Collector>(Scan::default()).await.unwrap().len(), 10);
    assert_eq!(
        store.scan::<CollectorCredential>(Scan::default()).await.unwrap().len(),
        10
    );
    assert_eq!(
        store
            .get::<EnrollmentToken>(&token_id)
            .await
            .unwrap()
            .unwrap()
            .value
            .uses,
        10
    );
    x.stop().await;
    y.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_deregistration_leaves_nothing_half_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path()).await;
    let ax = admin(&x.base).await;
    let (_, token) = enrollment_token(&x.base, &ax, json!({"name":"t"})).await;
    let e: Value = enroll(&x.base, &token, None).await.json().await.unwrap();
    let id = e["collector_id"].as_str().unwrap().to_string();
    // A second credential, a status and a pending command: every child kind.
    assert_eq!(
        ax.post(format!("{}/api/v1/collectors/{id}/rotate-credential", x.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let now = linkmesh::clock::Timestamp(1);
    x.store
        .commit(vec![
            Op::put(
                &id,
                &CollectorStatus {
                    collector_id: id.clone(),
                    connected: true,
                    ..Default::default()
                },
                Expect::Absent,
            )
            .unwrap(),
            Op::put(
                &id,
                &linkmesh::domain::ConfigAssignment {
                    files: Default::default(),
                    updated_at: now,
                    updated_by: "t".into(),
                },
                Expect::Absent,
            )
            .unwrap(),
            Op::put(
                &id,
                &PendingCommands {
                    collector_id: id.clone(),
                    items: vec![Command {
                        id: "c1".into(),
                        kind: "restart".into(),
                        created_at: now,
                    }],
                },
                Expect::Absent,
            )
            .unwrap(),
        ])
        .await
        .unwrap();
    let count = |store: linkmesh::storage::Store, id: String| async move {
        (
            store.get::<Collector>(&id).await.unwrap().is_some() as usize,
            store.scan::<CollectorCredential>(Scan::default()).await.unwrap().len(),
            store.get::<CollectorStatus>(&id).await.unwrap().is_some() as usize,
            store.get::<PendingCommands>(&id).await.unwrap().is_some() as usize
                + store
                    .get::<linkmesh::domain::ConfigAssignment>(&id)
                    .await
                    .unwrap()
                    .is_some() as usize,
        )
    };
    assert_eq!(count(x.store.clone(), id.clone()).await, (1, 2, 1, 2));

    // The cascade fails midway (after 3 of its 7 operations). The fault is
    // armed for the commit that touches this collector only: a presence
    // heartbeat committed meanwhile cannot take it.
    x.store.fail_commit_touching(Table::Collectors, &id, 3);
    let r = ax
        .delete(format!("{}/api/v1/collectors/{id}", x.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        count(x.store.clone(), id.clone()).await,
        (1, 2, 1, 2),
        "a failed cascade must delete nothing"
    );

    // Retried through the other instance, it removes everything at once.
    let ay = admin(&y.base).await;
    assert_eq!(
        ay.delete(format!("{}/api/v1/collectors/{id}", y.base))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(count(x.store.clone(), id.clone()).await, (0, 0, 0, 0));
    let audit: Value = get_as(&ay, format!("{}/api/v1/audit?action=collector.deregister", y.base)).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);
    x.stop().await;
    y.stop().await;
}
