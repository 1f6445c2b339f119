//! Watching a local repository with notify so a commit is picked up at
//! once. We watch the refs, not the worktree: a commit (or reset, or
//! force-update) ends by rewriting `refs/heads/<branch>` or `packed-refs`;
//! edits in the worktree that are not committed must not reload anything.
//! Events are debounced (a commit writes many files) and only wake the
//! reload loop, which re-reads the branch and ignores no-op wake-ups.

use std::path::Path;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;

use super::ConfigStoreError;

/// Keeps the watch alive; dropping it stops the watcher thread.
pub type Watch = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// How long the repository must be quiet before we look.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watch the refs of the repository whose common git dir is `git_dir`;
/// each burst of changes sends one wake-up on `wake`.
pub fn watch_refs(git_dir: &Path, wake: mpsc::Sender<()>) -> Result<Watch, ConfigStoreError> {
    let watch_err = |path: &Path, source| ConfigStoreError::Watch {
        path: path.display().to_string(),
        source,
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| match result {
        // Capacity 1 and try_send: a full channel means a reload is already
        // pending, which will see this change too.
        Ok(events) if !events.is_empty() => {
            let _ = wake.try_send(());
        }
        Ok(_) => {}
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "Watching the config repository reported an error.");
            }
            let _ = wake.try_send(());
        }
    })
    .map_err(|e| watch_err(git_dir, e))?;
    // `packed-refs` and HEAD live directly in the git dir; loose branch refs
    // below refs/ (recursively: branch names may contain '/').
    debouncer
        .watch(git_dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_err(git_dir, e))?;
    let refs = git_dir.join("refs");
    debouncer
        .watch(&refs, RecursiveMode::Recursive)
        .map_err(|e| watch_err(&refs, e))?;
    Ok(debouncer)
}
