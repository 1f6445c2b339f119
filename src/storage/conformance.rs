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
    scans_clamp_cursors_and_order_by_code_point(fresh().await).await;
    values_round_trip_exactly(fresh().await).await;
    racing_creates_of_one_key_have_one_winner(fresh().await).await;
    a_check_keeps_its_record_against_a_racing_delete(fresh().await).await;
    absent_checks_never_both_commit(fresh().await).await;
    unknown_outcomes_are_settled_by_re_reading(fresh().await).await;
}

/// A record holding any JSON value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Blob(pub serde_json::Value);
impl Record for Blob {
    const TABLE: Table = Table::Canvas;
}

fn keys<T>(rows: Vec<super::Versioned<T>>) -> Vec<String> {
    rows.into_iter().map(|r| r.key).collect()
}

fn scan(prefix: &str, after: Option<&str>, limit: usize, reverse: bool) -> Scan {
    Scan {
        prefix: prefix.into(),
        after: after.map(String::from),
        limit,
        reverse,
    }
}

pub async fn scans_clamp_cursors_and_order_by_code_point(store: Store) {
    // Inside "u/", in code point (= UTF-8 byte) order; "u0" is the prefix's
    // successor and "u" and "t/x" lie below: all outside.
    let inside = [
        "u/a",
        "u/é",
        "u/東京",
        "u/\u{FFFF}",
        "u/\u{10000}",
        "u/\u{10FFFF}",
        "u/\u{10FFFF}z",
    ];
    let mut ops = Vec::new();
    for k in inside.iter().chain(&["u0", "u", "t/x", "v"]) {
        ops.push(Op::put(*k, &probe(1), Expect::Absent).unwrap());
    }
    store.commit(ops).await.unwrap();
    let rev: Vec<&str> = inside.iter().rev().copied().collect();
    let got = |s: Scan| {
        let store = store.clone();
        async move { keys(store.scan::<Probe>(s).await.unwrap()) }
    };
    assert_eq!(got(scan("u/", None, 0, false)).await, inside);
    assert_eq!(got(scan("u/", None, 0, true)).await, rev);
    // A cursor below the range: ascending from the start, descending nothing.
    assert_eq!(got(scan("u/", Some("a"), 0, false)).await, inside);
    assert!(got(scan("u/", Some("a"), 0, true)).await.is_empty());
    assert_eq!(got(scan("u/", Some("u"), 0, false)).await, inside);
    // Above the range: ascending nothing, descending from the end.
    assert!(got(scan("u/", Some("z"), 0, false)).await.is_empty());
    assert_eq!(got(scan("u/", Some("z"), 0, true)).await, rev);
    assert_eq!(got(scan("u/", Some("u0"), 2, true)).await, rev[..2]);
    // Cursors inside, between non-ASCII keys.
    assert_eq!(got(scan("u/", Some("u/é"), 2, false)).await, inside[2..4]);
    assert_eq!(got(scan("u/", Some("u/\u{10000}"), 0, true)).await, rev[3..]);
    // A prefix ending in U+10FFFF still has a true upper bound.
    assert_eq!(
        got(scan("u/\u{10FFFF}", None, 0, false)).await,
        ["u/\u{10FFFF}", "u/\u{10FFFF}z"]
    );
    assert_eq!(got(scan("u/\u{FFFF}", None, 0, false)).await, ["u/\u{FFFF}"]);
}

pub async fn values_round_trip_exactly(store: Store) {
    let value = serde_json::json!({
        "max": u64::MAX,
        "above_2_53": 9_007_199_254_740_993_u64,
        "min": i64::MIN,
        "float": 0.1,
        "whole_float": 3.0,
        "$dollar": { "$set": 1, "$oid": "not an id" },
        "dotted.key": { "a.b.c": "d", "app.kubernetes.io/name": "otel" },
        "nested": [[{ "$in": [] }], {}, null],
        "text": "\u{10FFFF} \u{FFFF} 東京",
    });
    store
        .commit(vec![Op::put("blob", &Blob(value.clone()), Expect::Absent).unwrap()])
        .await
        .unwrap();
    let back = store.get::<Blob>("blob").await.unwrap().unwrap().value.0;
    assert_eq!(back, value);
    assert_eq!(back["max"].as_u64(), Some(u64::MAX));
    assert_eq!(back["above_2_53"].as_u64(), Some(9_007_199_254_740_993));
    assert!(back["whole_float"].is_f64(), "a float stays a float");
    let listed = store.scan::<Blob>(Scan::default()).await.unwrap();
    assert_eq!(listed[0].value.0, value);
}

/// Run `a` and `b` at the same moment (as near as tasks get), `rounds`
/// times, with the round number.
async fn race<A, B, FA, FB, RA, RB>(rounds: u64, a: A, b: B) -> Vec<(RA, RB)>
where
    A: Fn(u64) -> FA,
    B: Fn(u64) -> FB,
    FA: Future<Output = RA> + Send + 'static,
    FB: Future<Output = RB> + Send + 'static,
    RA: Send + 'static,
    RB: Send + 'static,
{
    let mut out = Vec::new();
    for round in 0..rounds {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let (fa, fb) = (a(round), b(round));
        let ba = barrier.clone();
        let ta = tokio::spawn(async move {
            ba.wait().await;
            fa.await
        });
        let tb = tokio::spawn(async move {
            barrier.wait().await;
            fb.await
        });
        out.push((ta.await.unwrap(), tb.await.unwrap()));
    }
    out
}

pub async fn racing_creates_of_one_key_have_one_winner(store: Store) {
    let put = |n: u64| {
        let store = store.clone();
        move |round: u64| {
            let store = store.clone();
            async move {
                store
                    .commit(vec![Op::put(format!("new{round}"), &probe(n), Expect::Absent).unwrap()])
                    .await
            }
        }
    };
    for (round, (a, b)) in race(20, put(1), put(2)).await.into_iter().enumerate() {
        let stored = store.get::<Probe>(&format!("new{round}")).await.unwrap().unwrap();
        assert_eq!(stored.version, 1, "one create, no overwrite");
        match (a, b) {
            (Ok(v), Err(StorageError::Conflict { current: Some(1), .. })) => {
                assert_eq!((v, stored.value.n), (vec![1], 1))
            }
            (Err(StorageError::Conflict { current: Some(1), .. }), Ok(v)) => {
                assert_eq!((v, stored.value.n), (vec![1], 2))
            }
            other => panic!("round {round}: exactly one create must win, got {other:?}"),
        }
    }
}

/// The status writer against a deregistration: `[Check(X, Present),
/// Put(Y)]` racing `[Delete(X), Delete(Y)]` must never leave Y without X.
pub async fn a_check_keeps_its_record_against_a_racing_delete(store: Store) {
    let rounds = 20;
    let mut ops = Vec::new();
    for round in 0..rounds {
        ops.push(Op::put(format!("x{round}"), &probe(round), Expect::Absent).unwrap());
    }
    store.commit(ops).await.unwrap();
    let (s1, s2) = (store.clone(), store.clone());
    let writer = move |round: u64| {
        let store = s1.clone();
        async move {
            store
                .commit(vec![
                    Op::check::<Probe>(format!("x{round}"), Expect::Present),
                    Op::put(format!("y{round}"), &probe(round), Expect::Any).unwrap(),
                ])
                .await
        }
    };
    let deleter = move |round: u64| {
        let store = s2.clone();
        async move {
            store
                .commit(vec![
                    Op::delete::<Probe>(format!("x{round}"), Expect::Present),
                    Op::delete::<Probe>(format!("y{round}"), Expect::Any),
                ])
                .await
        }
    };
    for (round, (w, d)) in race(rounds, writer, deleter).await.into_iter().enumerate() {
        d.unwrap_or_else(|e| panic!("round {round}: the delete must succeed: {e}"));
        let y = store.get::<Probe>(&format!("y{round}")).await.unwrap();
        let x = store.get::<Probe>(&format!("x{round}")).await.unwrap();
        assert!(x.is_none(), "round {round}");
        assert!(
            y.is_none(),
            "round {round}: Y was written for a deleted X (writer: {w:?})"
        );
        match w {
            Ok(_) | Err(StorageError::Conflict { .. }) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
    }
}

/// Write skew: `[Check(B, Absent), Put(A)]` racing `[Check(A, Absent),
/// Put(B)]`; both committing would leave A and B. The embedded store
/// serialises them; MongoDB refuses absent checks (`Unsupported`).
pub async fn absent_checks_never_both_commit(store: Store) {
    let pair = |mine: &'static str, other: &'static str| {
        let store = store.clone();
        move |round: u64| {
            let store = store.clone();
            async move {
                store
                    .commit(vec![
                        Op::check::<Probe>(format!("{other}{round}"), Expect::Absent),
                        Op::put(format!("{mine}{round}"), &probe(round), Expect::Absent).unwrap(),
                    ])
                    .await
            }
        }
    };
    for (round, (a, b)) in race(20, pair("a", "b"), pair("b", "a")).await.into_iter().enumerate() {
        let a_there = store.get::<Probe>(&format!("a{round}")).await.unwrap().is_some();
        let b_there = store.get::<Probe>(&format!("b{round}")).await.unwrap().is_some();
        assert!(!(a_there && b_there), "round {round}: write skew ({a:?}, {b:?})");
        for r in [&a, &b] {
            match r {
                Ok(_) | Err(StorageError::Conflict { .. }) => {}
                Err(StorageError::Unsupported { .. }) if store.backend_name() != "embedded" => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(a.is_ok(), a_there);
        assert_eq!(b.is_ok(), b_there);
        if store.backend_name() == "embedded" {
            assert!(a.is_ok() || b.is_ok(), "round {round}: one of them commits");
        }
    }
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

/// A commit whose outcome the backend could not learn is settled by
/// `commit` itself: re-read, and sent again only if it is not there. What
/// the caller sees is the real outcome: success exactly once for a write
/// that happened (one version bump, one change event), never its own
/// write as a conflict; a real conflict is still a conflict.
pub async fn unknown_outcomes_are_settled_by_re_reading(store: Store) {
    let witness = |k: &str| Op::put(format!("audit-{k}"), &probe(7), Expect::Absent).unwrap();
    for applied in [true, false] {
        let k = format!("u-{applied}");
        let mut feed = store.subscribe();
        // Created under a key that must be absent (plus a witness, as the
        // domain's audit event is).
        store.lose_outcome_of_commit_touching(Table::Canvas, &k, applied);
        let v = store
            .commit(vec![Op::put(&k, &probe(1), Expect::Absent).unwrap(), witness(&k)])
            .await;
        assert_eq!(v.unwrap(), vec![1, 1], "create, applied: {applied}");
        // A versioned update: one bump, not two, and not a conflict.
        store.lose_outcome_of_commit_touching(Table::Canvas, &k, applied);
        let v = store
            .commit(vec![Op::put(&k, &probe(2), Expect::Version(1)).unwrap()])
            .await;
        assert_eq!(v.unwrap(), vec![2], "update, applied: {applied}");
        let got = store.get::<Probe>(&k).await.unwrap().unwrap();
        assert_eq!((got.version, got.value), (2, probe(2)), "applied: {applied}");
        // Unconditional writes: idempotent, whatever the first send did.
        store.lose_outcome_of_commit_touching(Table::Canvas, &k, applied);
        store
            .commit(vec![Op::put(&k, &probe(3), Expect::Any).unwrap()])
            .await
            .unwrap();
        assert_eq!(store.get::<Probe>(&k).await.unwrap().unwrap().value, probe(3));
        // A delete.
        store.lose_outcome_of_commit_touching(Table::Canvas, &k, applied);
        let gone = store.get::<Probe>(&k).await.unwrap().unwrap().version;
        store
            .commit(vec![Op::delete::<Probe>(&k, Expect::Version(gone))])
            .await
            .unwrap();
        assert!(store.get::<Probe>(&k).await.unwrap().is_none(), "applied: {applied}");
        // One change event per commit for the record, in order.
        let sentinel = format!("after-{applied}");
        store
            .commit(vec![Op::put(&sentinel, &probe(0), Expect::Absent).unwrap()])
            .await
            .unwrap();
        let mut seen = Vec::new();
        loop {
            let c = tokio::time::timeout(std::time::Duration::from_secs(30), feed.recv())
                .await
                .expect("a change event")
                .unwrap();
            if c.key == sentinel {
                break;
            }
            if c.key == k {
                seen.push(c.version);
            }
        }
        // Applied or re-sent, each commit happened once.
        assert_eq!(seen, [Some(1), Some(2), Some(3), None], "applied: {applied}");
    }
    // A real conflict stays one: the record moved on before the commit,
    // which was lost on the way and is then refused when sent again.
    store
        .commit(vec![Op::put("moved", &probe(1), Expect::Absent).unwrap()])
        .await
        .unwrap();
    store
        .commit(vec![Op::put("moved", &probe(2), Expect::Version(1)).unwrap()])
        .await
        .unwrap();
    store.lose_outcome_of_commit_touching(Table::Canvas, "moved", false);
    let r = store
        .commit(vec![Op::put("moved", &probe(9), Expect::Version(1)).unwrap()])
        .await;
    assert!(
        matches!(r, Err(StorageError::Conflict { current: Some(2), .. })),
        "{r:?}"
    );
    // A commit with a witness is recognised by it.
    store.lose_outcome_of_commit_touching(Table::Canvas, "moved", true);
    let v = store
        .commit(vec![
            Op::put("moved", &probe(3), Expect::Version(2)).unwrap(),
            witness("moved"),
        ])
        .await
        .unwrap();
    assert_eq!(v, vec![3, 1]);
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
    // A targeted fault leaves other commits alone and fires on its own.
    store.fail_commit_touching(Table::Canvas, "target", 1);
    store
        .commit(vec![
            Op::put("other", &probe(1), Expect::Absent).unwrap(),
            Op::put("other2", &probe(1), Expect::Absent).unwrap(),
        ])
        .await
        .unwrap();
    assert!(matches!(
        store
            .commit(vec![
                Op::put("first", &probe(1), Expect::Absent).unwrap(),
                Op::put("target", &probe(1), Expect::Absent).unwrap(),
            ])
            .await,
        Err(StorageError::Injected)
    ));
    assert!(store.get::<Probe>("first").await.unwrap().is_none());
    store
        .commit(vec![Op::put("target", &probe(1), Expect::Absent).unwrap()])
        .await
        .unwrap();
    for k in ["other", "other2", "target"] {
        store
            .commit(vec![Op::delete::<Probe>(k, Expect::Present)])
            .await
            .unwrap();
    }
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
    let data = serde_json::value::to_raw_value(&probe(1)).unwrap().into();
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
