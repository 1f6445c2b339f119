//! Enrollment group commit on one instance: concurrent enrollments share a
//! commit, and the token's rules still hold for each of them exactly.

use std::collections::HashSet;

use linkmesh::domain::{AuditEvent, Collector, CollectorCredential, EnrollmentToken};
use linkmesh::storage::Scan;
use serde_json::{json, Value};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_enrollments_on_seven_uses_admit_exactly_seven() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let (token_id, token) = enrollment_token(&s.base, &admin, json!({"name":"seven","max_uses":7})).await;
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (base, token) = (s.base.clone(), token.clone());
            tokio::spawn(async move {
                let uid = uuid::Uuid::new_v4().to_string();
                let r = enroll(&base, &token, Some(&uid)).await;
                let code = r.status().as_u16();
                (uid, code, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let admitted: Vec<_> = answers.iter().filter(|(_, code, _)| *code == 201).collect();
    let refused: Vec<_> = answers.iter().filter(|(_, code, _)| *code == 403).collect();
    assert_eq!(admitted.len(), 7, "{answers:?}");
    assert_eq!(refused.len(), 33, "{answers:?}");
    for (_, _, body) in &refused {
        assert!(
            body["detail"].as_str().unwrap_or_default().contains("used up"),
            "a refusal names why: {body}"
        );
    }
    // Each admitted one got its own collector and a credential of its own.
    let credentials: HashSet<&str> = admitted
        .iter()
        .map(|(_, _, b)| b["credential"].as_str().unwrap())
        .collect();
    assert_eq!(credentials.len(), 7);
    for (uid, _, body) in &admitted {
        assert_eq!(body["collector_id"], json!(uid));
    }

    // Every acknowledged enrollment is stored, and nothing else is.
    let stored: HashSet<String> = s
        .store
        .scan::<Collector>(Scan::default())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.key)
        .collect();
    let acknowledged: HashSet<String> = admitted.iter().map(|(uid, _, _)| uid.clone()).collect();
    assert_eq!(stored, acknowledged);
    assert_eq!(
        s.store
            .scan::<CollectorCredential>(Scan::default())
            .await
            .unwrap()
            .len(),
        7
    );
    let t = s.store.get::<EnrollmentToken>(&token_id).await.unwrap().unwrap().value;
    assert_eq!(t.uses, 7);
    // Audited once each: seven enrollments, thirty-three refusals.
    let events = s.store.scan::<AuditEvent>(Scan::default()).await.unwrap();
    let enrolls = |outcome: &str| {
        events
            .iter()
            .filter(|e| e.value.action == "collector.enroll" && e.value.outcome == outcome)
            .count()
    };
    assert_eq!(enrolls("ok"), 7);
    assert_eq!(enrolls("refused: used up"), 33);

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_uid_enrolling_twice_at_once_is_enrolled_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_fresh(dir.path()).await;
    let admin = admin(&s.base).await;
    let (token_id, token) = enrollment_token(&s.base, &admin, json!({"name":"twice"})).await;
    let uid = uuid::Uuid::new_v4().to_string();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (base, token, uid) = (s.base.clone(), token.clone(), uid.clone());
            tokio::spawn(async move { enroll(&base, &token, Some(&uid)).await.status().as_u16() })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, [201, 409, 409, 409, 409, 409]);
    let t = s.store.get::<EnrollmentToken>(&token_id).await.unwrap().unwrap().value;
    assert_eq!(t.uses, 1, "only the enrollment that happened counts a use");
    s.stop().await;
}
