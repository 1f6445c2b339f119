//! The change feed on MongoDB: a change stream on the database, followed
//! by one task per store (`Follower`), published on the store's channel,
//! with its health (`FeedHealth`) kept for `/readyz` and the metrics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::Database;
use tokio::sync::broadcast;

use super::{code, describe, int_field, OpTime};
use crate::storage::{Change, FeedEvent, FeedHealth, Table, FEED_STALE_AFTER};

const CAPPED_POSITION_LOST: i32 = 136;
const INVALID_RESUME_TOKEN: i32 = 260;
const CHANGE_STREAM_FATAL: i32 = 280;
const CHANGE_STREAM_HISTORY_LOST: i32 = 286;

/// The change stream cannot continue from its resume token.
fn history_lost(e: &MongoError) -> bool {
    matches!(
        code(e),
        Some(CHANGE_STREAM_HISTORY_LOST | CHANGE_STREAM_FATAL | CAPPED_POSITION_LOST | INVALID_RESUME_TOKEN)
    )
}

/// An event the driver could not decode. The driver has already moved the
/// resume token past it, so resuming would skip it silently.
fn undecodable(e: &MongoError) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::BsonDeserialization(_))
}

/// Backoff before reopening the change stream after `failures` failures in
/// a row: 250 ms doubling, at most 30 s.
pub(super) fn stream_backoff(failures: u32) -> Duration {
    let ms = 250u64.saturating_mul(1u64 << failures.saturating_sub(1).min(7));
    Duration::from_millis(ms.min(30_000))
}

/// What the follower last did, shared with `MongoBackend::feed_health`. A
/// std mutex: held for a few assignments, never across an await.
#[derive(Default)]
pub(super) struct Progress(Mutex<ProgressState>);

#[derive(Default, Clone)]
struct ProgressState {
    failures: u32,
    last_progress: Option<Instant>,
    last_event: Option<Instant>,
    last_error: Option<String>,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut ProgressState)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }

    /// The stream answered (an event, or an empty batch with a new token).
    fn progressed(&self, event: bool) {
        let now = Instant::now();
        self.update(|s| {
            s.failures = 0;
            s.last_error = None;
            s.last_progress = Some(now);
            if event {
                s.last_event = Some(now);
            }
        });
    }

    fn failed(&self, error: String) {
        self.update(|s| {
            s.failures = s.failures.saturating_add(1);
            s.last_error = Some(error);
        });
    }

    /// The health at `now`; `started` is when following began (a stream
    /// that never made progress is stale from then on).
    pub(super) fn health(&self, started: Instant, now: Instant) -> FeedHealth {
        let s = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_secs_f64());
        let quiet_for = now.saturating_duration_since(s.last_progress.unwrap_or(started));
        FeedHealth {
            consecutive_failures: s.failures,
            seconds_since_progress: since(s.last_progress),
            seconds_since_event: since(s.last_event),
            last_error: s.last_error,
            healthy: quiet_for < FEED_STALE_AFTER,
        }
    }
}

/// The change stream of the database, limited to what the feed reports:
/// inserts, replacements and deletions in our collections (Check's counter
/// updates are not changes), plus the events after which the stream cannot
/// be trusted (drop, rename, dropDatabase, invalidate). The record data is
/// projected away: only `v` is needed.
pub(super) async fn open_stream(
    db: &Database,
    resume: Option<ResumeToken>,
) -> mongodb::error::Result<ChangeStream<ChangeStreamEvent<Document>>> {
    let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
    let pipeline = [
        doc! { "$match": { "$or": [
            { "operationType": { "$in": ["insert", "replace", "delete"] }, "ns.coll": { "$in": names } },
            { "operationType": { "$in": ["drop", "rename", "dropDatabase", "invalidate"] } },
        ] } },
        doc! { "$project": { "fullDocument.d": 0, "fullDocument.f": 0, "fullDocument.l": 0 } },
    ];
    let watch = db.watch().pipeline(pipeline);
    match resume {
        Some(token) => watch.resume_after(token).await,
        None => watch.await,
    }
}

/// What a change event means for the feed: a change, a resync (the stream
/// saw a collection or the database dropped or renamed), or nothing.
pub(super) fn feed_event(event: &ChangeStreamEvent<Document>) -> Option<FeedEvent> {
    match event.operation_type {
        OperationType::Insert | OperationType::Replace | OperationType::Delete => {}
        OperationType::Drop | OperationType::Rename | OperationType::DropDatabase | OperationType::Invalidate => {
            return Some(FeedEvent::Resync)
        }
        _ => return None,
    }
    let coll = event.ns.as_ref()?.coll.as_deref()?;
    let table = Table::ALL.into_iter().find(|t| t.name() == coll)?;
    let key = event.document_key.as_ref()?.get_str("_id").ok()?.to_string();
    let version = match event.operation_type {
        OperationType::Delete => None,
        // Inserts and replacements carry the whole new document. Without a
        // readable version the change cannot be described: let subscribers
        // re-read instead of reporting a deletion.
        _ => match event.full_document.as_ref().and_then(|d| int_field(d, "v")) {
            Some(v) => Some(v),
            None => return Some(FeedEvent::Resync),
        },
    };
    Some(FeedEvent::Change(Change { table, key, version }))
}

/// Follows the change stream and publishes on the store's feed.
///
/// The resume token is kept in memory; the driver resumes by itself once
/// after a resumable error; when the stream still fails, it is reopened
/// from the token (with backoff, for as long as it takes, each failure
/// counted in `Progress`). When the token cannot be used any more (the
/// oplog no longer holds it: ChangeStreamHistoryLost and friends) or the
/// stream was invalidated, a fresh stream is opened and a `Resync` is sent
/// after it is open, which subscribers receive as `RecvError::Lagged(0)`
/// and answer by re-reading the store: nothing committed after the new
/// stream started is missed, and what was committed before is in the
/// store. An event the driver cannot decode also sends a `Resync`: it is
/// behind the token already, and only a re-read recovers what it said.
///
/// The stream is read with `next_if_any`, which also returns after an
/// empty batch (the server's await period, about a second): progress is
/// visible in quiet periods too, so a stalled stream is told from a quiet
/// one.
pub(super) struct Follower {
    pub(super) db: Database,
    pub(super) changes: broadcast::Sender<FeedEvent>,
    pub(super) seen: Arc<OpTime>,
    pub(super) progress: Arc<Progress>,
    pub(super) op_timeout: Duration,
}

impl Follower {
    pub(super) async fn run(self, mut stream: ChangeStream<ChangeStreamEvent<Document>>) {
        let mut token = stream.resume_token();
        self.progress.progressed(false);
        loop {
            let failure = match stream.next_if_any().await {
                Ok(Some(event)) => {
                    self.progress.progressed(true);
                    self.seen.advance(event.cluster_time);
                    if let Some(e) = feed_event(&event) {
                        if matches!(e, FeedEvent::Resync) {
                            tracing::warn!(operation = ?event.operation_type, "The change stream reported a dropped or renamed collection; subscribers re-read the store.");
                        }
                        // No receiver is fine: nobody is interested yet.
                        let _ = self.changes.send(e);
                    }
                    if let Some(t) = stream.resume_token() {
                        token = Some(t);
                    }
                    continue;
                }
                Ok(None) if stream.is_alive() => {
                    // An empty batch: the post-batch token moved on.
                    self.progress.progressed(false);
                    if let Some(t) = stream.resume_token() {
                        token = Some(t);
                    }
                    continue;
                }
                Ok(None) => {
                    tracing::warn!("The change stream ended (invalidated); restarting it and resynchronising.");
                    token = None;
                    "the change stream ended".to_string()
                }
                Err(e) if undecodable(&e) => {
                    tracing::warn!(error = %describe(&e), "A change event could not be decoded; subscribers re-read the store.");
                    let _ = self.changes.send(FeedEvent::Resync);
                    if let Some(t) = stream.resume_token() {
                        token = Some(t);
                    }
                    if stream.is_alive() {
                        continue;
                    }
                    describe(&e)
                }
                Err(e) if history_lost(&e) => {
                    tracing::warn!(error = %describe(&e), "The change stream lost its history; restarting it and resynchronising.");
                    token = None;
                    describe(&e)
                }
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "The change stream failed; resuming it.");
                    // The latest token, including the server's post-batch
                    // token of quiet periods: resuming from it needs less
                    // oplog history than the last event's.
                    if let Some(t) = stream.resume_token() {
                        token = Some(t);
                    }
                    describe(&e)
                }
            };
            self.progress.failed(failure);
            stream = self.reopen(&mut token).await;
        }
    }

    async fn reopen(&self, token: &mut Option<ResumeToken>) -> ChangeStream<ChangeStreamEvent<Document>> {
        let mut failures = 0;
        loop {
            failures += 1;
            tokio::time::sleep(stream_backoff(failures)).await;
            let opened = tokio::time::timeout(self.op_timeout, open_stream(&self.db, token.clone())).await;
            match opened {
                Ok(Ok(stream)) => {
                    if token.is_none() {
                        let _ = self.changes.send(FeedEvent::Resync);
                    } else {
                        tracing::info!("Resumed the change stream.");
                    }
                    return stream;
                }
                Ok(Err(e)) if history_lost(&e) => {
                    tracing::warn!(error = %describe(&e), "The change stream cannot resume (history lost); starting a new one and resynchronising.");
                    *token = None;
                    self.progress.failed(describe(&e));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %describe(&e), failures, "Cannot reopen the change stream; retrying.");
                    self.progress.failed(describe(&e));
                }
                Err(_) => {
                    tracing::warn!(failures, "Reopening the change stream timed out; retrying.");
                    self.progress
                        .failed(format!("reopening timed out after {:?}", self.op_timeout));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn event(d: Document) -> ChangeStreamEvent<Document> {
        mongodb::bson::from_document(d).unwrap()
    }

    #[test]
    fn change_events_become_feed_changes() {
        let base = |op: &str| {
            doc! {
                "_id": { "_data": "826000" },
                "operationType": op,
                "ns": { "db": "linkmesh", "coll": "collectors" },
                "documentKey": { "_id": "c1" },
            }
        };
        let mut insert = base("replace");
        insert.insert("fullDocument", doc! { "_id": "c1", "v": 4_i64 });
        match feed_event(&event(insert)) {
            Some(FeedEvent::Change(c)) => assert_eq!(
                c,
                Change {
                    table: Table::Collectors,
                    key: "c1".into(),
                    version: Some(4)
                }
            ),
            other => panic!("{other:?}"),
        }
        match feed_event(&event(base("delete"))) {
            Some(FeedEvent::Change(c)) => assert_eq!(c.version, None),
            other => panic!("{other:?}"),
        }
        // An insert without a readable version is not reported as a delete.
        assert!(matches!(feed_event(&event(base("insert"))), Some(FeedEvent::Resync)));
        assert!(matches!(
            feed_event(&event(
                doc! { "_id": { "_data": "1" }, "operationType": "dropDatabase", "ns": { "db": "linkmesh" } }
            )),
            Some(FeedEvent::Resync)
        ));
        // Check's counter updates and foreign collections are not changes.
        assert!(feed_event(&event(base("update"))).is_none());
        let mut foreign = base("delete");
        foreign.insert("ns", doc! { "db": "linkmesh", "coll": "other" });
        assert!(feed_event(&event(foreign)).is_none());
    }

    #[test]
    fn feed_health_reports_failures_and_staleness() {
        let p = Progress::default();
        let t0 = Instant::now();
        let h = p.health(t0, t0 + Duration::from_secs(1));
        assert!(h.healthy, "a new follower is given time to start");
        assert_eq!(h.seconds_since_progress, None);
        assert!(!p.health(t0, t0 + FEED_STALE_AFTER).healthy, "never progressed");
        p.progressed(false);
        p.failed("connection refused".into());
        p.failed("connection refused".into());
        let h = p.health(t0, Instant::now());
        assert_eq!(h.consecutive_failures, 2);
        assert_eq!(h.last_error.as_deref(), Some("connection refused"));
        assert_eq!(h.seconds_since_event, None);
        let later = p.health(t0, Instant::now() + FEED_STALE_AFTER + Duration::from_secs(1));
        assert!(!later.healthy, "no progress for longer than FEED_STALE_AFTER");
        p.progressed(true);
        let h = p.health(t0, Instant::now());
        assert!(h.healthy);
        assert_eq!((h.consecutive_failures, h.last_error), (0, None));
        assert!(h.seconds_since_event.is_some());
    }

    #[test]
    fn backoffs_are_bounded() {
        assert_eq!(stream_backoff(1), Duration::from_millis(250));
        assert_eq!(stream_backoff(100), Duration::from_secs(30));
    }
}
