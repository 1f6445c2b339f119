//! The console's one live view of the fleet, shared by every open page.
//!
//! One task (started and ended by `crate::run`) recomputes the fleet
//! summary, from the fleet's in-memory index (no store scan), into a
//! `tokio::sync::watch` at most once per [`LIVE_PERIOD`], and only when
//! something that shows changed (the store's change feed or a new served
//! commit) while at least one page listens. SSE streams subscribe to it and
//! each sends its page only the values that differ from what it sent last;
//! a page's rows are looked up in the index by id with the context of the
//! last computation (never a pass over the whole fleet per page).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::Event;
use futures::Stream;
use tokio::sync::{broadcast, watch};

use crate::api::AppState;
use crate::configstore::Snapshot;
use crate::domain::{DomainError, Labels};
use crate::fleet::views::{FleetCollector, FleetSummary, ViewContext};
use crate::fleet::Fleet;
use crate::storage::{ChangeFeed, Table};

/// A live page gets at most one update per period.
pub const LIVE_PERIOD: Duration = Duration::from_secs(1);

/// Recompute even without a change event this often while pages listen:
/// an instance that died stops holding its collectors without any write
/// (its presence row just goes stale).
const RECHECK: Duration = Duration::from_secs(10);

/// The summary, each distinct label set with how many collectors carry
/// it, and the context the rows are judged in, as of `computed_at`.
#[derive(Debug)]
pub struct LiveState {
    pub summary: FleetSummary,
    pub label_sets: Vec<(Arc<Labels>, usize)>,
    context: ViewContext,
    pub computed_at: Instant,
}

impl LiveState {
    async fn compute(fleet: &Fleet) -> Result<LiveState, DomainError> {
        let context = fleet.view_context_current().await?;
        let (summary, label_sets) = fleet.summary_in(&context);
        Ok(LiveState {
            summary,
            label_sets,
            context,
            computed_at: Instant::now(),
        })
    }

    /// The views of the given collectors (a page's rows); one that is not
    /// stored is absent.
    pub fn rows(&self, fleet: &Fleet, ids: &[String]) -> HashMap<String, FleetCollector> {
        fleet.views_of(ids, &self.context)
    }
}

/// Handle to the shared live view (cheap to clone).
#[derive(Clone)]
pub struct LiveFleet {
    inner: Arc<Inner>,
}

struct Inner {
    tx: watch::Sender<Arc<LiveState>>,
    /// Something changed since the last computation. An atomic, not a
    /// lock: set from request handlers and the feed, read by one task.
    dirty: AtomicBool,
}

impl Default for LiveFleet {
    fn default() -> Self {
        let empty = LiveState {
            summary: FleetSummary::default(),
            label_sets: Vec::new(),
            context: ViewContext::default(),
            computed_at: Instant::now(),
        };
        LiveFleet {
            inner: Arc::new(Inner {
                tx: watch::channel(Arc::new(empty)).0,
                dirty: AtomicBool::new(true),
            }),
        }
    }
}

impl LiveFleet {
    /// A receiver whose first `changed()` is the next computation, made
    /// within a period (the value held now may be old: nobody listened).
    pub fn subscribe(&self) -> watch::Receiver<Arc<LiveState>> {
        let rx = self.inner.tx.subscribe();
        self.mark();
        rx
    }

    fn mark(&self) {
        self.inner.dirty.store(true, Ordering::Release);
    }

    /// The current view for a page being rendered: the shared one when it
    /// is up to date, else one computed now (and shared with the others).
    pub async fn latest(&self, fleet: &Fleet) -> Result<Arc<LiveState>, DomainError> {
        let cur = self.inner.tx.borrow().clone();
        let watched = self.inner.tx.receiver_count() > 0 && !self.inner.dirty.load(Ordering::Acquire);
        if cur.computed_at.elapsed() < LIVE_PERIOD || watched {
            return Ok(cur);
        }
        let fresh = Arc::new(LiveState::compute(fleet).await?);
        self.inner.tx.send_replace(fresh.clone());
        Ok(fresh)
    }

    /// The task that keeps the view current; `crate::run` owns it.
    pub async fn follow(
        self,
        fleet: Fleet,
        mut feed: ChangeFeed,
        mut snapshots: Option<watch::Receiver<Option<Arc<Snapshot>>>>,
    ) {
        let mut tick = tokio::time::interval(LIVE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut feed_open = true;
        let mut last = Instant::now();
        loop {
            tokio::select! {
                r = feed.recv(), if feed_open => match r {
                    Ok(c) if shows(c.table) => self.mark(),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => self.mark(),
                    Err(broadcast::error::RecvError::Closed) => feed_open = false,
                },
                _ = snapshot_changed(&mut snapshots) => self.mark(),
                _ = tick.tick() => {
                    if self.inner.tx.receiver_count() == 0 {
                        continue;
                    }
                    let due = self.inner.dirty.swap(false, Ordering::AcqRel) || last.elapsed() >= RECHECK;
                    if !due {
                        continue;
                    }
                    last = Instant::now();
                    match LiveState::compute(&fleet).await {
                        Ok(state) => {
                            self.inner.tx.send_replace(Arc::new(state));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Could not read the fleet for live pages; retrying.");
                            self.mark();
                        }
                    }
                }
            }
        }
    }
}

/// Tables whose changes show on live pages (statuses, labels and names,
/// pinned configs, the config override).
fn shows(t: Table) -> bool {
    matches!(
        t,
        Table::CollectorStatus | Table::Collectors | Table::ConfigAssignments | Table::ConfigControl
    )
}

/// Resolves when the served commit changes; never without a config store.
async fn snapshot_changed(rx: &mut Option<watch::Receiver<Option<Arc<Snapshot>>>>) {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return;
        }
        *rx = None;
    }
    std::future::pending::<()>().await
}

/// A page's live values by `data-key`, computed from the shared view.
pub type Values = BTreeMap<String, String>;

/// The SSE events of one live page: once the shared view is fresh, all its
/// values (which also tells the page the stream is open); then, checked
/// once per period, only the values that changed (`update`), or `reload`
/// when the set of keys changed (the page's shape). Each check is a
/// comparison of a few maps in memory; the fleet is read by the one task.
pub fn diff_stream<F>(
    s: Arc<AppState>,
    rx: watch::Receiver<Arc<LiveState>>,
    values: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: Fn(&LiveState, &AppState) -> Values + Send + 'static,
{
    use futures::StreamExt as _;
    // Ends when the instance stops: an open page must not hold `run`.
    let stopped = s.tasks.stopped();
    futures::stream::unfold(
        (s, rx, values, None::<Values>),
        |(s, mut rx, values, last)| async move {
            let Some(prev) = last else {
                rx.changed().await.ok()?;
                let now = values(&rx.borrow_and_update(), &s);
                let event = update(&now);
                return Some((Ok(event), (s, rx, values, Some(now))));
            };
            loop {
                tokio::time::sleep(LIVE_PERIOD).await;
                let now = values(&rx.borrow_and_update(), &s);
                if now == prev {
                    continue;
                }
                let event = if prev.keys().ne(now.keys()) {
                    Event::default().event("reload").data("{}")
                } else {
                    update(&now.iter().filter(|(k, v)| prev.get(*k) != Some(*v)).collect())
                };
                return Some((Ok(event), (s, rx, values, Some(now))));
            }
        },
    )
    .take_until(stopped)
}

fn update<K: serde::Serialize + Ord, V: serde::Serialize>(changed: &BTreeMap<K, V>) -> Event {
    Event::default()
        .event("update")
        .data(serde_json::to_string(changed).unwrap_or_else(|_| "{}".into()))
}
