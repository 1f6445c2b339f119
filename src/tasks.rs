//! The background tasks of one instance, owned by `run`.
//!
//! Every task an instance starts (status writer, presence, change-feed
//! follower, sweepers, TLS reloader and accept loops, collector streams,
//! config store reload, own-telemetry rollup, …) is spawned through a
//! [`Tasks`] handle. When `run` stops it cancels them all and waits until
//! every one has ended, so a stopped instance holds nothing: no store
//! handle (the embedded store's file lock is released), no socket, no
//! timer. A bare `tokio::spawn` would outlive `run` and keep the store
//! open — don't add one.
//!
//! Two ways to spawn:
//! - [`Tasks::spawn`]: a loop with nothing to finish. It is dropped at its
//!   next `.await` once the instance stops.
//! - [`Tasks::spawn_graceful`]: the task gets the stop token and ends itself
//!   after finishing its work (storing the last figures, a final flush).
//!   It must watch the token: `run` waits for it.
//!
//! Must not know about HTTP, gRPC or storage: it only owns futures.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// A clonable handle on the instance's task set: a tracker (who is still
/// running) and one stop token (time to end).
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Run `fut` until it ends or the instance stops, whichever is first.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(UntilStopped {
            stop: self.stop.clone().cancelled_owned(),
            task: fut,
            name,
        });
    }

    /// Run a task that ends itself when the token it is given is
    /// cancelled, after finishing what it holds.
    pub fn spawn_graceful<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = task(self.stop.clone());
        self.tracker.spawn(async move {
            fut.await;
            tracing::trace!(task = name, "Background task ended.");
        });
    }

    /// `fut`, counted as one of this instance's tasks and cut short when
    /// it stops: for futures somebody else spawns (a WebSocket handler
    /// that axum runs after the upgrade).
    pub fn track<F>(&self, fut: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.track_future(UntilStopped {
            stop: self.stop.clone().cancelled_owned(),
            task: fut,
            name: "tracked",
        })
    }

    /// Adopt a task somebody else spawned: it is aborted when the instance
    /// stops, and `run` waits until it has really ended.
    pub fn adopt(&self, name: &'static str, mut handle: tokio::task::JoinHandle<()>) {
        self.spawn_graceful(name, |stop| async move {
            tokio::select! {
                _ = &mut handle => {}
                _ = stop.cancelled() => {
                    handle.abort();
                    let _ = handle.await;
                }
            }
        });
    }

    /// Resolves once the instance is stopping.
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// [`Tasks::stopping`] as an owned future, for what must end with the
    /// instance but is no task of its own: a long response body (an SSE
    /// stream, `StreamExt::take_until`), which would otherwise keep its
    /// connection, and so `run`, open until the client goes away.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.stop.clone().cancelled_owned()
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Tell every task to end, and wait until all have. Tasks spawned after
    /// this are stopped at once (the token is already cancelled).
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

pin_project_lite::pin_project! {
    /// `task` until it ends or the instance stops. A named future rather
    /// than an `async` block with `select!`: the block kept the task twice
    /// (once as captured, once moved into the select), and a collector's
    /// stream task (gRPC, or a tracked WebSocket handler) lives as long as
    /// its connection: 1,928 bytes per connected gRPC collector instead of
    /// ~1,000.
    struct UntilStopped<F> {
        #[pin]
        stop: WaitForCancellationFutureOwned,
        #[pin]
        task: F,
        name: &'static str,
    }
}

impl<F: Future<Output = ()>> Future for UntilStopped<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // Stop first: once stopping, never start another round of work.
        if this.stop.poll(cx).is_ready() {
            tracing::trace!(task = *this.name, "Background task stopped.");
            return Poll::Ready(());
        }
        let ended = this.task.poll(cx);
        if ended.is_ready() {
            tracing::trace!(task = *this.name, "Background task ended.");
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_waits_for_every_task_and_graceful_ones_finish_their_work() {
        let tasks = Tasks::new();
        let (held, _keep) = tokio::sync::mpsc::channel::<()>(1);
        // A loop that never ends by itself, holding a resource.
        tasks.spawn("forever", async move {
            let _held = held;
            std::future::pending::<()>().await
        });
        let flushed = Arc::new(AtomicBool::new(false));
        let f = flushed.clone();
        tasks.spawn_graceful("flusher", |stop| async move {
            stop.cancelled().await;
            tokio::task::yield_now().await;
            f.store(true, Ordering::SeqCst);
        });
        let adopted = tokio::spawn(std::future::pending::<()>());
        let adopted_abort = adopted.abort_handle();
        tasks.adopt("adopted", adopted);
        let tracked = tokio::spawn(tasks.track(std::future::pending::<()>()));
        assert_eq!(tasks.len(), 4);

        tasks.stop().await;
        assert!(tasks.is_empty());
        assert!(flushed.load(Ordering::SeqCst), "the graceful task finished its work");
        assert!(_keep.is_closed(), "the looping task dropped what it held");
        assert!(adopted_abort.is_finished());
        assert!(tracked.await.is_ok());

        // Spawned after the stop: ends at once.
        tasks.spawn("late", std::future::pending::<()>());
        tasks.stop().await;
        assert!(tasks.is_empty());
    }
}
