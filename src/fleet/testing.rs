//! Unit-test fixtures: a fleet on a real embedded store in a temp dir, and
//! collector records written directly (no enrollment needed).

use std::sync::Arc;
use std::time::Duration;

use super::{Authenticated, Fleet, FleetSettings};
use crate::clock::SystemClock;
use crate::domain::{AuthSettings, Collector, Domain};
use crate::storage::{Expect, Op, Store};
use crate::telemetry::Metrics;

pub struct Fixture {
    pub fleet: Fleet,
    pub store: Store,
    _dir: tempfile::TempDir,
}

pub async fn fleet() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
    let hour = Duration::from_secs(3600);
    let settings = AuthSettings {
        session_ttl: hour,
        api_token_ttl: hour,
        enrollment_token_ttl: hour,
    };
    let domain = Domain::new(store.clone(), Arc::new(SystemClock), "t".into(), settings);
    let fleet = Fleet::start(
        domain,
        FleetSettings {
            instance: "t".into(),
            liveness_timeout: hour,
            public_url: None,
        },
        None,
        Arc::new(Metrics::new("t")),
        crate::tasks::Tasks::new(),
    )
    .await;
    Fixture {
        fleet,
        store,
        _dir: dir,
    }
}

/// Store a collector record and return it as authenticated.
pub async fn collector(store: &Store) -> Authenticated {
    let id = uuid::Uuid::now_v7().to_string();
    // From JSON, so fields added later with serde defaults need no edit here.
    let c: Collector = serde_json::from_value(serde_json::json!({
        "id": id,
        "name": "c",
        "labels": {},
        "enrolled_at": crate::clock::Timestamp(0),
        "enrollment_token_id": "t",
        "credential_ids": [],
    }))
    .unwrap();
    let v = store
        .commit(vec![Op::put(&id, &c, Expect::Absent).unwrap()])
        .await
        .unwrap();
    Authenticated {
        collector: crate::storage::Versioned {
            key: id,
            version: v[0],
            value: c,
        },
        credential_id: String::new(),
        uid_assigned: false,
        enrollment_token: None,
    }
}
