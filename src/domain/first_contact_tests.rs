//! First-contact enrollment and delivered credentials, on a real redb store.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::{ManualClock, Timestamp};
use crate::storage::Scan;

const ACCEPTS_CS: bool = true;

async fn domain(dir: &std::path::Path, policy: CredentialPolicy) -> (Domain, Arc<ManualClock>) {
    let store = Store::open_embedded(&dir.join("db.redb")).await.unwrap();
    let clock = ManualClock::new(Timestamp(1_700_000_000_000));
    let settings = AuthSettings {
        session_ttl: Duration::from_secs(60),
        api_token_ttl: Duration::from_secs(60),
        enrollment_token_ttl: Duration::from_secs(3600),
    };
    let d = Domain::new(store, clock.clone(), "test".into(), settings).with_credential_policy(policy);
    (d, clock)
}

async fn token(d: &Domain, req: NewEnrollmentToken) -> String {
    d.create_enrollment_token(&Actor::System, req).await.unwrap().token
}

fn uid() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

fn refusal(e: DomainError) -> String {
    match e {
        DomainError::Refused(m) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn audit_outcomes(d: &Domain, action: &str) -> Vec<String> {
    d.store()
        .scan::<AuditEvent>(Scan::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.value.action == action)
        .map(|e| e.value.outcome)
        .collect()
}

#[tokio::test]
async fn first_contact_enrolls_once_resumes_and_never_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = domain(dir.path(), CredentialPolicy::default()).await;
    let labels: Labels = [("site".to_string(), "eu".to_string())].into();
    let t = token(
        &d,
        NewEnrollmentToken {
            name: "edge".into(),
            max_uses: Some(2),
            labels: labels.clone(),
            ..Default::default()
        },
    )
    .await;
    let a = uid();
    let first = d
        .first_contact(&t, Some(a.clone()), false, Some("host-a".into()))
        .await
        .unwrap();
    assert!(first.enrolled && !first.assigned_uid);
    assert_eq!(first.collector.key, a);
    assert_eq!(first.collector.value.labels, labels, "token labels applied");
    assert!(first.collector.value.token_path_open());
    assert!(first.collector.value.credential_ids.is_empty());

    // A restart of the same agent: same collector, no use counted.
    let again = d.first_contact(&t, Some(a.clone()), false, None).await.unwrap();
    assert!(!again.enrolled);
    assert_eq!(again.collector.key, a);
    let tokens = d.list_enrollment_tokens(&Actor::System, None, None).await.unwrap();
    assert_eq!(tokens.items[0].uses, 1);

    // An empty/malformed uid: the server picks one.
    let picked = d.first_contact(&t, None, false, None).await.unwrap();
    assert!(picked.enrolled && picked.assigned_uid);
    assert!(uuid::Uuid::parse_str(&picked.collector.key).is_ok());

    // Used up for a third uid, with a message saying so; the bound ones
    // still resume.
    let msg = refusal(d.first_contact(&t, Some(uid()), false, None).await.unwrap_err());
    assert!(msg.contains("used up"), "{msg}");
    assert!(d.first_contact(&t, Some(a.clone()), false, None).await.is_ok());

    // Another token cannot take over the uid; nor can the same token take
    // over a uid enrolled explicitly (it has its own credential).
    let other = token(
        &d,
        NewEnrollmentToken {
            name: "other".into(),
            ..Default::default()
        },
    )
    .await;
    let msg = refusal(d.first_contact(&other, Some(a.clone()), false, None).await.unwrap_err());
    assert!(msg.contains("already enrolled"), "{msg}");
    let b = uid();
    d.enroll(EnrollRequest {
        token: other.clone(),
        instance_uid: Some(b.clone()),
        name: None,
        labels: Labels::new(),
    })
    .await
    .unwrap();
    assert!(d.first_contact(&other, Some(b), false, None).await.is_err());

    let outcomes = audit_outcomes(&d, "collector.enroll").await;
    assert_eq!(outcomes.iter().filter(|o| *o == "ok").count(), 3, "{outcomes:?}");
    assert!(outcomes.iter().any(|o| o == "refused: used up"), "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o == "refused: uid bound to another token"),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (d, clock) = domain(dir.path(), CredentialPolicy::default()).await;
    let t = token(
        &d,
        NewEnrollmentToken {
            name: "short".into(),
            expires_in: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .await;
    let a = uid();
    d.first_contact(&t, Some(a.clone()), false, None).await.unwrap();
    clock.advance(Duration::from_secs(61));
    let msg = refusal(d.first_contact(&t, Some(uid()), false, None).await.unwrap_err());
    assert!(msg.contains("expired"), "{msg}");
    // Expiry limits new enrollments only: the bound agent keeps working.
    assert!(d.first_contact(&t, Some(a.clone()), false, None).await.is_ok());

    let token_id = d
        .list_enrollment_tokens(&Actor::System, None, None)
        .await
        .unwrap()
        .items[0]
        .id
        .clone();
    d.revoke_enrollment_token(&Actor::System, &token_id).await.unwrap();
    let msg = refusal(d.first_contact(&t, Some(a), false, None).await.unwrap_err());
    assert!(msg.contains("revoked"), "{msg}");
    let msg = refusal(d.first_contact(&t, Some(uid()), false, None).await.unwrap_err());
    assert!(msg.contains("revoked"), "{msg}");
    assert!(matches!(
        d.first_contact("lme_00000000000000000000000000000000_nope", Some(uid()), false, None)
            .await,
        Err(DomainError::Unauthenticated(_))
    ));
}

#[tokio::test]
async fn per_agent_credentials_can_be_required_by_the_token_or_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = domain(dir.path(), CredentialPolicy::default()).await;
    let strict = token(
        &d,
        NewEnrollmentToken {
            name: "strict".into(),
            require_own_credential: true,
            ..Default::default()
        },
    )
    .await;
    let msg = refusal(d.first_contact(&strict, Some(uid()), false, None).await.unwrap_err());
    assert!(msg.contains("AcceptsOpAMPConnectionSettings"), "{msg}");
    assert!(d.first_contact(&strict, Some(uid()), ACCEPTS_CS, None).await.is_ok());

    let dir = tempfile::tempdir().unwrap();
    let policy = CredentialPolicy {
        require_own_credential: true,
        ..Default::default()
    };
    let (d, _) = domain(dir.path(), policy).await;
    let plain = token(
        &d,
        NewEnrollmentToken {
            name: "plain".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(d.first_contact(&plain, Some(uid()), false, None).await.is_err());
    assert!(d.first_contact(&plain, Some(uid()), ACCEPTS_CS, None).await.is_ok());
}

#[tokio::test]
async fn an_offered_credential_closes_the_token_path_once_used() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = domain(dir.path(), CredentialPolicy::default()).await;
    let t = token(
        &d,
        NewEnrollmentToken {
            name: "t".into(),
            ..Default::default()
        },
    )
    .await;
    let a = uid();
    let fc = d.first_contact(&t, Some(a.clone()), ACCEPTS_CS, None).await.unwrap();
    assert!(Domain::wants_credential_offer(&fc.collector.value));
    let offered = d.issue_offered_credential(&a).await.unwrap();
    let c = d.authenticate_collector(&offered.credential).await.unwrap();
    assert_eq!(c.key, a);
    // Before the agent reconnected with it, a restart on the token resumes.
    assert!(d.first_contact(&t, Some(a.clone()), ACCEPTS_CS, None).await.is_ok());

    let adopted = d
        .credential_connected(&c, &offered.credential_id)
        .await
        .unwrap()
        .expect("the switch is recorded");
    assert!(!adopted.value.token_path_open());
    assert!(!Domain::wants_credential_offer(&adopted.value));
    let msg = refusal(
        d.first_contact(&t, Some(a.clone()), ACCEPTS_CS, None)
            .await
            .unwrap_err(),
    );
    assert!(msg.contains("already enrolled"), "{msg}");
    // Connecting again with it writes nothing.
    let c = d.authenticate_collector(&offered.credential).await.unwrap();
    assert!(d
        .credential_connected(&c, &offered.credential_id)
        .await
        .unwrap()
        .is_none());
    assert_eq!(audit_outcomes(&d, "collector.credential_adopted").await, vec!["ok"]);
}

#[tokio::test]
async fn delivered_rotation_keeps_the_old_credential_for_the_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let policy = CredentialPolicy {
        rotation_overlap: Duration::from_secs(600),
        ..Default::default()
    };
    let (d, clock) = domain(dir.path(), policy).await;
    let t = token(
        &d,
        NewEnrollmentToken {
            name: "t".into(),
            ..Default::default()
        },
    )
    .await;
    let a = uid();
    let e = d
        .enroll(EnrollRequest {
            token: t,
            instance_uid: Some(a.clone()),
            name: None,
            labels: Labels::new(),
        })
        .await
        .unwrap();
    // The agent last reported that it accepts connection settings.
    let status = CollectorStatus {
        collector_id: a.clone(),
        capabilities: credentials::ACCEPTS_OPAMP_CONNECTION_SETTINGS | 0x1,
        ..Default::default()
    };
    d.store()
        .commit(vec![crate::storage::Op::put(
            &a,
            &status,
            crate::storage::Expect::Absent,
        )
        .unwrap()])
        .await
        .unwrap();

    let r = d.rotate_credential(&Actor::System, &a, None).await.unwrap();
    assert_eq!(
        (r.delivery.as_str(), r.credential.is_none()),
        ("connection_settings", true)
    );
    let c = d.store().get::<Collector>(&a).await.unwrap().unwrap();
    assert!(Domain::wants_credential_offer(&c.value));
    let offered = d.issue_offered_credential(&a).await.unwrap();
    assert!(!Domain::wants_credential_offer(&offered.collector.value));
    // Both work during the overlap ...
    assert!(d.authenticate_collector(&e.credential).await.is_ok());
    assert!(d.authenticate_collector(&offered.credential).await.is_ok());
    // ... and the old one stops at the end of the window even though the
    // agent never connected with the new one.
    clock.advance(Duration::from_secs(601));
    assert!(d.authenticate_collector(&e.credential).await.is_err());
    assert!(d.authenticate_collector(&offered.credential).await.is_ok());

    // Another rotation; this time the agent connects with the new one:
    // the old one is revoked at once.
    d.rotate_credential(&Actor::System, &a, None).await.unwrap();
    let second = d.issue_offered_credential(&a).await.unwrap();
    assert!(d.authenticate_collector(&offered.credential).await.is_ok());
    let c = d.authenticate_collector(&second.credential).await.unwrap();
    d.credential_connected(&c, &second.credential_id)
        .await
        .unwrap()
        .unwrap();
    assert!(d.authenticate_collector(&offered.credential).await.is_err());
    assert!(d.authenticate_collector(&second.credential).await.is_ok());
    let audited = audit_outcomes(&d, "collector.rotate_credential").await;
    assert_eq!(audited, vec!["requested", "requested"]);
    assert_eq!(audit_outcomes(&d, "collector.credential_offered").await.len(), 2);
}
