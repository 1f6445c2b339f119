//! The storage conformance suite, generic over the backend: every backend
//! must pass it (embedded always; MongoDB when a replica set is available).
//! It lives in the library so the integration tests can run it against a
//! store of their choosing: `run_all(|| async { fresh store }).await`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;

use serde::{Deserialize, Serialize};

use super::{Change, Expect, Op, Record, Scan, StorageError, Store, Table};

/// A record used only by the suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub n: u64,
    pub s: String,
}
impl Record for Probe {
    const TABLE: Table = Table::Canvas;
}

fn probe(n: u64) -> Probe {
    Probe {
        n,
        s: format!("probe-{n}"),
    }
}

/// Run every check, each on a fresh store from `fresh`.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Store>,
{
    versions_and_preconditions(fresh().await).await;
    commit_is_all_or_nothing(fresh().await).await;
    injected_failure_applies_nothing(fresh().await).await;
    scans_page_by_prefix_and_cursor(fresh().await).await;
    change_feed_reports_commits(fresh().await).await;
    concurrent_compare_and_swap_loses_no_update(fresh().await).await;
    future_format_is_refused(fresh().await).await;
}

pub async fn versions_and_preconditions(store: Store) {
    assert!(store.get::<Probe>("a").await.unwrap().is_none());
    let v = store
        .commit(vec![Op::put("a", &probe(1), Expect::Absent).unwrap()])
        .await
        .unwrap();
    assert_eq!(v, vec![1], "a new record starts at version 1");
    let got = store.get::<Probe>("a").await.unwrap().unwrap();
    assert_eq!((got.version, got.value), (1, probe(1)));

    // Absent on an existing key conflicts and names the current version.
    match store
        .commit(vec![Op::put("a", &probe(2), Expect::Absent).unwrap()])
        .await
    {
        Err(StorageError::Conflict {
            table: Table::Canvas,
            key,
            current: Some(1),
        }) => assert_eq!(key, "a"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A stale version conflicts; the right one bumps the version.
    assert!(matches!(
        store
            .commit(vec![Op::put("a", &probe(2), Expect::Version(7)).unwrap()])
            .await,
        Err(StorageError::Conflict { current: Some(1), .. })
    ));
    assert_eq!(
        store
            .commit(vec![Op::put("a", &probe(2), Expect::Version(1)).unwrap()])
            .await
            .unwrap(),
        vec![2]
    );
    assert_eq!(
        store
            .commit(vec![Op::put("a", &probe(3), Expect::Any).unwrap()])
            .await
            .unwrap(),
        vec![3]
    );
    assert_eq!(store.get::<Probe>("a").await.unwrap().unwrap().value, probe(3));

    // Present / Check.
    assert!(matches!(
        store.commit(vec![Op::check::<Probe>("missing", Expect::Present)]).await,
        Err(StorageError::Conflict { current: None, .. })
    ));
    store
        .commit(vec![Op::check::<Probe>("a", Expect::Version(3))])
        .await
        .unwrap();

    // Delete with a stale version conflicts; with the right one it removes.
    assert!(store
        .commit(vec![Op::delete::<Probe>("a", Expect::Version(2))])
        .await
        .is_err());
    store
        .commit(vec![Op::delete::<Probe>("a", Expect::Version(3))])
        .await
        .unwrap();
    assert!(store.get::<Probe>("a").await.unwrap().is_none());
    // Deleting something absent is a no-op unless a version is required.
    store.commit(vec![Op::delete::<Probe>("a", Expect::Any)]).await.unwrap();
    assert!(store
        .commit(vec![Op::delete::<Probe>("a", Expect::Present)])
        .await
        .is_err());
    // A recreated record starts over at version 1.
    assert_eq!(
        store
            .commit(vec![Op::put("a", &probe(9), Expect::Absent).unwrap()])
            .await
            .unwrap(),
        vec![1]
    );
}

pub async fn commit_is_all_or_nothing(store: Store) {
    store
        .commit(vec![Op::put("x", &probe(1), Expect::Absent).unwrap()])
        .await
        .unwrap();
    // The last op's precondition fails: the first two must not apply.
    let r = store
        .commit(vec![
            Op::put("y", &probe(2), Expect::Absent).unwrap(),
            Op::delete::<Probe>("x", Expect::Version(1)),
            Op::put("x", &probe(3), Expect::Version(1)).unwrap(),
        ])
        .await;
    assert!(matches!(r, Err(StorageError::Conflict { .. })), "got {r:?}");
    assert!(
        store.get::<Probe>("y").await.unwrap().is_none(),
        "a failed commit must not create records"
    );
    let x = store.get::<Probe>("x").await.unwrap().unwrap();
    assert_eq!(
        (x.version, x.value),
        (1, probe(1)),
        "a failed commit must not delete records"
    );
}

pub async fn injected_failure_applies_nothing(store: Store) {
    let mut ops = Vec::new();
    for i in 0..5 {
        ops.push(Op::put(format!("k{i}"), &probe(i), Expect::Absent).unwrap());
    }
    store.commit(ops).await.unwrap();
    let deletes: Vec<Op> = (0..5)
        .map(|i| Op::delete::<Probe>(format!("k{i}"), Expect::Version(1)))
        .collect();
    store.fail_next_commit_after(3);
    assert!(matches!(
        store.commit(deletes.clone()).await,
        Err(StorageError::Injected)
    ));
    for i in 0..5 {
        assert!(
            store.get::<Probe>(&format!("k{i}")).await.unwrap().is_some(),
            "k{i} half-deleted"
        );
    }
    // The fault point fires once; the same commit then goes through.
    store.commit(deletes).await.unwrap();
    assert!(store.scan::<Probe>(Scan::default()).await.unwrap().is_empty());
}

pub async fn scans_page_by_prefix_and_cursor(store: Store) {
    let mut ops = Vec::new();
    for k in ["a/1", "a/2", "a/3", "b/1", "a/4", "c"] {
        ops.push(Op::put(k, &probe(1), Expect::Absent).unwrap());
    }
    store.commit(ops).await.unwrap();
    let keys = |rows: Vec<super::Versioned<Probe>>| rows.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let all = keys(store.scan::<Probe>(Scan::default()).await.unwrap());
    assert_eq!(all, ["a/1", "a/2", "a/3", "a/4", "b/1", "c"]);
    let a = |after: Option<&str>, limit, reverse| Scan {
        prefix: "a/".into(),
        after: after.map(String::from),
        limit,
        reverse,
    };
    assert_eq!(
        keys(store.scan::<Probe>(a(None, 2, false)).await.unwrap()),
        ["a/1", "a/2"]
    );
    assert_eq!(
        keys(store.scan::<Probe>(a(Some("a/2"), 2, false)).await.unwrap()),
        ["a/3", "a/4"]
    );
    assert!(store.scan::<Probe>(a(Some("a/4"), 2, false)).await.unwrap().is_empty());
    assert_eq!(
        keys(store.scan::<Probe>(a(None, 3, true)).await.unwrap()),
        ["a/4", "a/3", "a/2"]
    );
    assert_eq!(
        keys(store.scan::<Probe>(a(Some("a/2"), 3, true)).await.unwrap()),
        ["a/1"]
    );
}

pub async fn change_feed_reports_commits(store: Store) {
    let mut feed = store.subscribe();
    store
        .commit(vec![
            Op::put("p", &probe(1), Expect::Absent).unwrap(),
            Op::check::<Probe>("p", Expect::Any),
        ])
        .await
        .unwrap();
    store
        .commit(vec![Op::delete::<Probe>("p", Expect::Version(1))])
        .await
        .unwrap();
    let first = feed.recv().await.unwrap();
    assert_eq!(
        first,
        Change {
            table: Table::Canvas,
            key: "p".into(),
            version: Some(1)
        }
    );
    let second = feed.recv().await.unwrap();
    assert_eq!(
        second,
        Change {
            table: Table::Canvas,
            key: "p".into(),
            version: None
        },
        "checks are not changes"
    );
    // A failed commit publishes nothing.
    let _ = store.commit(vec![Op::delete::<Probe>("p", Expect::Present)]).await;
    assert!(feed.try_recv().is_err());
}

pub async fn concurrent_compare_and_swap_loses_no_update(store: Store) {
    store
        .commit(vec![Op::put("counter", &probe(0), Expect::Absent).unwrap()])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    loop {
                        let cur = store.get::<Probe>("counter").await.unwrap().unwrap();
                        let next = probe(cur.value.n + 1);
                        match store
                            .commit(vec![Op::put("counter", &next, Expect::Version(cur.version)).unwrap()])
                            .await
                        {
                            Ok(_) => break,
                            Err(StorageError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let c = store.get::<Probe>("counter").await.unwrap().unwrap();
    assert_eq!(c.value.n, 80, "every increment must survive");
    assert_eq!(c.version, 81);
}

pub async fn future_format_is_refused(store: Store) {
    let data = serde_json::to_value(probe(1)).unwrap();
    store
        .commit(vec![Op::Put {
            table: Table::Canvas,
            key: "f".into(),
            format: 99,
            data,
            expect: Expect::Absent,
        }])
        .await
        .unwrap();
    assert!(matches!(
        store.get::<Probe>("f").await,
        Err(StorageError::FutureFormat { format: 99, .. })
    ));
}
