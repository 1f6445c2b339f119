//! The running store: one reload loop per instance that wakes on a notify
//! event (local repository), a poll tick (fetch of a remote mirror; also a
//! safety net for a local one), or an explicit refresh; reads the branch
//! tip; and when the commit changed, parses and validates it as a whole.
//! Stages: load, validate, then apply (swap the snapshot) or keep the old
//! one, with the outcome in the status, metrics and log.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use super::collector::CollectorValidator;
use super::git::{self, Credentials, Location};
use super::{load_files, ConfigStoreError, Resources, Revision, Snapshot, ValidationError};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::ConfigStoreConfig;
use crate::telemetry::Metrics;

/// Where remote mirrors live below the data directory.
pub fn mirror_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("config-mirror")
}

/// What the store is doing, for the API, `/readyz` and operators.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoreStatus {
    /// The repository URL (credentials removed).
    pub url: String,
    pub branch: String,
    pub dir: Option<String>,
    /// `local` (opened in place, watched) or `mirror` (fetched).
    #[schema(value_type = crate::domain::StoreMode)]
    pub mode: String,
    /// The bare mirror (mode `mirror`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_path: Option<String>,
    /// The commit being served: the last valid one.
    pub serving: Option<Revision>,
    /// The last commit checked (the branch tip), valid or not.
    pub last_attempt: Option<Attempt>,
    /// The last fetch of a remote (mode `mirror`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fetch: Option<FetchStatus>,
    /// Reading the repository failed (not a content problem), e.g. the
    /// branch does not exist.
    pub repository_error: Option<String>,
    /// Valid commits applied since start.
    pub reloads: u64,
    /// Invalid commits refused since start.
    pub reload_failures: u64,
    /// The emergency override, when one is set: the fleet is served
    /// `override.commit` instead of the branch tip.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<OverrideStatus>,
}

/// An emergency override as stored (set by an admin for the whole fleet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ActiveOverride {
    /// Full commit id to serve.
    pub commit: String,
    pub reason: String,
    pub set_by: String,
    pub set_at: Timestamp,
}

/// The override and whether this instance serves it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OverrideStatus {
    #[serde(flatten)]
    pub active: ActiveOverride,
    /// This instance serves the override's commit.
    pub applied: bool,
    /// Why this instance cannot serve it (e.g. its mirror does not have the
    /// commit yet); it keeps serving what it served and retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What became of a commit the instance considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HistoryOutcome {
    /// Valid and served (the branch tip).
    Served,
    /// Refused: see `errors`; the previous commit kept serving.
    Refused,
    /// Served (or held back), then replaced by a newer valid commit.
    Superseded,
    /// Valid, but an emergency override serves another commit instead.
    HeldByOverride,
    /// Being rolled out wave by wave (`rollout.toml`).
    RollingOut,
    /// Its rollout halted on a failed gate (that wave rolled back) or was
    /// aborted (every collector back on the baseline).
    RolledBack,
}

/// One commit the instance considered, newest first in the history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub revision: Revision,
    pub outcome: HistoryOutcome,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ValidationError>,
    /// The commit that replaced it (outcome `superseded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    pub considered_at: Timestamp,
    pub load_ms: u64,
}

/// How many commits the history keeps (per instance, in memory).
pub const HISTORY_LEN: usize = 200;

/// One commit's validation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Attempt {
    pub revision: Revision,
    pub valid: bool,
    /// Every problem, with file and key path (empty when valid).
    pub errors: Vec<ValidationError>,
    pub checked_at: Timestamp,
    /// Time to read, parse and validate the commit.
    pub load_ms: u64,
    /// How many resources the commit defines (when valid).
    pub resources: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FetchStatus {
    pub at: Timestamp,
    /// `None` when the fetch succeeded.
    pub error: Option<String>,
    pub last_success: Option<Timestamp>,
}

/// Time, metrics and tasks for the store; `Default` is the system clock,
/// no metrics and a reload loop of its own.
#[derive(Clone)]
pub struct StoreOptions {
    pub clock: Arc<dyn Clock>,
    pub metrics: Option<Arc<Metrics>>,
    /// The server instance's tasks: the reload loop runs there and ends
    /// when the instance stops (`crate::tasks`).
    pub tasks: Option<crate::tasks::Tasks>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            clock: Arc::new(SystemClock),
            metrics: None,
            tasks: None,
        }
    }
}

/// Running store: started by `crate::run` when `[config_store]` is set.
/// Cheap to clone; the tasks stop when the last clone is dropped or on
/// `stop()`.
#[derive(Clone)]
pub struct ConfigStoreHandle {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

/// State shared by the handles and the reload loop.
struct Shared {
    /// The served snapshot. A watch channel: readers take the current value
    /// without locking, subscribers are woken on every swap.
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    /// A std mutex: held only to copy or update a few fields, never across
    /// an await. Also guards `tip` and `history`, which change together with
    /// the status.
    status: Mutex<StoreStatus>,
    /// The last valid branch tip: served unless an override is applied.
    tip: Mutex<Option<Arc<Snapshot>>>,
    /// Commits considered, newest first.
    history: Mutex<VecDeque<HistoryEntry>>,
    /// Serialises override changes (loading the override's commit awaits);
    /// a tokio mutex because it is held across that await.
    override_lock: tokio::sync::Mutex<()>,
    /// Wakes the reload loop (notify events, `refresh()`).
    wake: mpsc::Sender<()>,
    /// Tells a running gix fetch to give up (on stop).
    interrupt: AtomicBool,
    source: Source,
    options: StoreOptions,
    /// `config_store.collector_validator`: checks every distinct render of
    /// a commit that passed our own rules.
    validator: Option<CollectorValidator>,
}

/// Why a commit could not be loaded on request.
#[derive(Debug, thiserror::Error)]
pub enum LoadCommitError {
    #[error("no commit {0:?} in the config repository")]
    NotFound(String),
    #[error("commit {commit} is not a valid config commit: {}", errors.first().map(ToString::to_string).unwrap_or_default())]
    Invalid {
        commit: String,
        errors: Vec<ValidationError>,
    },
    #[error("{0}")]
    Repository(String),
}

/// What the loop reads from.
struct Source {
    location: Location,
    /// The local repository, or the mirror.
    repo_path: PathBuf,
    branch: String,
    dir: Option<String>,
    credentials_file: Option<PathBuf>,
    allow_publish: bool,
}

struct Tasks(Mutex<Vec<JoinHandle<()>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in lock(&self.0).drain(..) {
            t.abort();
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConfigStoreHandle {
    /// Open (local) or create (remote mirror) the repository, load the
    /// current commit, and spawn the watcher and poller.
    pub async fn start(cfg: &ConfigStoreConfig, data_dir: &Path) -> Result<ConfigStoreHandle, ConfigStoreError> {
        Self::start_with(cfg, data_dir, StoreOptions::default()).await
    }

    pub async fn start_with(
        cfg: &ConfigStoreConfig,
        data_dir: &Path,
        options: StoreOptions,
    ) -> Result<ConfigStoreHandle, ConfigStoreError> {
        let location = git::locate(&cfg.url)?;
        if let Location::Remote {
            scheme: git::Scheme::Https,
            ..
        } = location
        {
            // gix's https client (reqwest) uses the process-wide rustls
            // provider; `main` installs ring, embedders may not have.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let (repo_path, mode, mirror_path) = match &location {
            Location::Local(p) => (p.clone(), "local", None),
            Location::Remote { url, .. } => {
                let m = git::mirror_path(&mirror_dir(data_dir), url);
                (m.clone(), "mirror", Some(m.display().to_string()))
            }
        };
        let source = Source {
            location: location.clone(),
            repo_path,
            branch: cfg.branch.clone(),
            dir: cfg.dir.clone(),
            credentials_file: cfg.credentials_file.clone(),
            allow_publish: cfg.allow_publish,
        };
        // Fail start-up on what an operator must fix: a path that is no git
        // repository, a mirror directory we cannot create.
        let git_dir = {
            let path = source.repo_path.clone();
            let is_local = matches!(location, Location::Local(_));
            tokio::task::spawn_blocking(move || {
                let repo = if is_local {
                    git::open(&path, Vec::new())?
                } else {
                    git::open_or_init_mirror(&path, Vec::new())?
                };
                Ok::<_, ConfigStoreError>(git::refs_dir(&repo))
            })
            .await
            .map_err(|e| ConfigStoreError::Task(e.to_string()))??
        };

        let (wake_tx, wake_rx) = mpsc::channel(1);
        let status = StoreStatus {
            url: git::redact(&cfg.url),
            branch: cfg.branch.clone(),
            dir: cfg.dir.clone(),
            mode: mode.into(),
            mirror_path,
            serving: None,
            last_attempt: None,
            last_fetch: None,
            repository_error: None,
            reloads: 0,
            reload_failures: 0,
            override_: None,
        };
        let shared = Arc::new(Shared {
            snapshot: watch::Sender::new(None),
            status: Mutex::new(status),
            tip: Mutex::new(None),
            history: Mutex::new(VecDeque::new()),
            override_lock: tokio::sync::Mutex::new(()),
            wake: wake_tx.clone(),
            interrupt: AtomicBool::new(false),
            source,
            options,
            validator: cfg.collector_validator.as_ref().map(|binary| CollectorValidator {
                binary: binary.clone(),
                timeout: cfg.collector_validator_timeout,
            }),
        });

        // Serve what is there now: the local branch, or what the mirror kept
        // from before a restart (the first fetch follows at once).
        check(&shared, false).await;

        let watch = match &location {
            Location::Local(_) => Some(super::watch::watch_refs(&git_dir, wake_tx)?),
            Location::Remote { .. } => None,
        };
        let reload = reload_loop(shared.clone(), wake_rx, cfg.poll_interval, watch);
        let own = match &shared.options.tasks {
            Some(tasks) => {
                let s = shared.clone();
                tasks.spawn_graceful("config store reload", |stop| async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = reload => {}
                    }
                    // A fetch still running on a blocking thread gives up.
                    s.interrupt.store(true, Ordering::SeqCst);
                });
                Vec::new()
            }
            None => vec![tokio::spawn(reload)],
        };
        Ok(ConfigStoreHandle {
            shared,
            tasks: Arc::new(Tasks(Mutex::new(own))),
        })
    }

    /// The last valid snapshot.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.shared.snapshot.borrow().clone()
    }

    /// Record what the stored rollout made of a commit in the history
    /// (every instance follows the one record).
    pub fn mark_history(&self, commit: &str, outcome: HistoryOutcome) {
        for e in lock(&self.shared.history).iter_mut() {
            let open = matches!(
                e.outcome,
                HistoryOutcome::Served | HistoryOutcome::RollingOut | HistoryOutcome::RolledBack
            );
            if e.revision.commit == commit && open {
                e.outcome = outcome;
            }
        }
    }

    /// Whether an emergency override decides what this instance serves.
    pub fn override_applied(&self) -> bool {
        lock(&self.shared.status).override_.as_ref().is_some_and(|o| o.applied)
    }

    /// Woken on every snapshot swap (not on refused commits).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.shared.snapshot.subscribe()
    }

    /// Last attempted commit, whether it was valid, its errors, the last
    /// fetch and repository errors.
    pub fn status(&self) -> StoreStatus {
        lock(&self.shared.status).clone()
    }

    /// Where the served commits come from, for route drafts
    /// (`super::publish`).
    pub(super) fn repository(&self) -> super::publish::Repository {
        let src = &self.shared.source;
        super::publish::Repository {
            path: src.repo_path.clone(),
            local: matches!(src.location, Location::Local(_)),
            branch: src.branch.clone(),
            dir: src.dir.clone(),
            allow_publish: src.allow_publish,
        }
    }

    /// Check the repository now (fetch a remote) instead of at the next
    /// poll.
    pub fn refresh(&self) {
        let _ = self.shared.wake.try_send(());
    }

    /// Commits this instance considered, newest first (at most
    /// [`HISTORY_LEN`]).
    pub fn history(&self) -> Vec<HistoryEntry> {
        lock(&self.shared.history).iter().cloned().collect()
    }

    /// Read a commit of the repository (full or abbreviated id) and check
    /// it with every rule, the collector validator included: what an
    /// override may serve.
    pub async fn checked_commit(&self, id: &str) -> Result<Arc<Snapshot>, LoadCommitError> {
        let snapshot = self.load_commit(id).await?;
        if let Some(v) = &self.shared.validator {
            let verdict = v.check_commit(&snapshot.resources, &snapshot.revision.commit).await;
            if !verdict.errors.is_empty() {
                return Err(LoadCommitError::Invalid {
                    commit: snapshot.revision.commit.clone(),
                    errors: verdict.errors,
                });
            }
        }
        Ok(snapshot)
    }

    /// Read a commit of the repository (full or abbreviated id) and check
    /// it with our own rules (not the collector: for diffs and previews).
    pub async fn load_commit(&self, id: &str) -> Result<Arc<Snapshot>, LoadCommitError> {
        let s = self.shared.clone();
        let spec = id.to_string();
        let loaded = tokio::task::spawn_blocking(move || {
            let repo =
                git::open(&s.source.repo_path, Vec::new()).map_err(|e| LoadCommitError::Repository(e.to_string()))?;
            let oid = git::resolve_commit(&repo, &spec)
                .map_err(|e| LoadCommitError::Repository(e.to_string()))?
                .ok_or_else(|| LoadCommitError::NotFound(spec.clone()))?;
            let commit = git::read_commit(&repo, oid, s.source.dir.as_deref())
                .map_err(|e| LoadCommitError::Repository(e.to_string()))?;
            let resources = commit.files.map_err(|e| vec![e]).and_then(|files| load_files(&files));
            Ok::<_, LoadCommitError>((commit.revision, resources))
        })
        .await
        .map_err(|e| LoadCommitError::Repository(format!("config store task failed: {e}")))??;
        let (revision, resources) = loaded;
        let resources = resources.map_err(|errors| LoadCommitError::Invalid {
            commit: revision.commit.clone(),
            errors,
        })?;
        Ok(Arc::new(Snapshot { revision, resources }))
    }

    /// Serve `wanted`'s commit instead of the branch tip, or the tip again
    /// (`None`). Idempotent: the override follower calls it on every change
    /// of the stored override and periodically. A commit this instance
    /// cannot load is reported in the status and retried on the next call;
    /// the instance keeps serving what it served.
    pub async fn apply_override(&self, wanted: Option<ActiveOverride>) {
        let _serial = self.shared.override_lock.lock().await;
        let current = lock(&self.shared.status).override_.clone();
        let shared = &self.shared;
        match (wanted, current) {
            (None, None) => {}
            (None, Some(old)) => {
                let mut st = lock(&shared.status);
                st.override_ = None;
                let tip = lock(&shared.tip).clone();
                st.serving = tip.as_ref().map(|t| t.revision.clone());
                if let Some(m) = shared.options.metrics.as_deref() {
                    m.config_override(None, tip.as_ref().map(|t| t.revision.commit.as_str()));
                }
                for e in lock(&shared.history).iter_mut() {
                    if e.outcome == HistoryOutcome::HeldByOverride {
                        e.outcome = HistoryOutcome::Served;
                    }
                }
                tracing::info!(commit = %old.active.commit, serving = tip.as_ref().map(|t| t.revision.commit.as_str()).unwrap_or("nothing"),
                    "The emergency config override was cleared; serving the branch again.");
                drop(st);
                shared.snapshot.send_replace(tip);
            }
            (Some(w), Some(c)) if c.active == w && c.applied => {}
            (Some(w), _) => match self.checked_commit(&w.commit).await {
                Ok(snapshot) => {
                    let mut st = lock(&shared.status);
                    st.override_ = Some(OverrideStatus {
                        active: w.clone(),
                        applied: true,
                        error: None,
                    });
                    st.serving = Some(snapshot.revision.clone());
                    if let Some(m) = shared.options.metrics.as_deref() {
                        m.config_override(Some(&snapshot.revision.commit), Some(&snapshot.revision.commit));
                    }
                    for e in lock(&shared.history).iter_mut() {
                        if e.outcome == HistoryOutcome::Served {
                            e.outcome = HistoryOutcome::HeldByOverride;
                        }
                    }
                    tracing::warn!(commit = %w.commit, set_by = %w.set_by, reason = %w.reason,
                        "Serving an earlier config commit: an emergency override is set.");
                    drop(st);
                    shared.snapshot.send_replace(Some(snapshot));
                }
                Err(e) => {
                    let msg = e.to_string();
                    let mut st = lock(&shared.status);
                    let known = st.override_.as_ref().and_then(|o| o.error.clone());
                    if known.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(commit = %w.commit, error = %msg, "Cannot serve the emergency config override on this instance.");
                    }
                    let applied = st.override_.as_ref().is_some_and(|o| o.applied);
                    st.override_ = Some(OverrideStatus {
                        active: w,
                        applied,
                        error: Some(msg),
                    });
                }
            },
        }
    }

    /// Stop the watcher and poller (also when the last handle is dropped).
    pub fn stop(&self) {
        self.shared.interrupt.store(true, Ordering::SeqCst);
        for t in lock(&self.tasks.0).drain(..) {
            t.abort();
        }
    }

    /// `stop`, and wait until the reload loop has ended (a fetch in
    /// progress is interrupted; `run` returns only after this).
    pub async fn stop_and_wait(&self) {
        self.shared.interrupt.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = lock(&self.tasks.0).drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn reload_loop(
    shared: Arc<Shared>,
    mut wake: mpsc::Receiver<()>,
    poll: Duration,
    // Owned here so the watcher lives exactly as long as the loop.
    _watch: Option<super::watch::Watch>,
) {
    let is_remote = matches!(shared.source.location, Location::Remote { .. });
    // A remote fetches at once; a local repository was just loaded.
    let first = if is_remote {
        tokio::time::Instant::now()
    } else {
        tokio::time::Instant::now() + poll
    };
    let mut tick = tokio::time::interval_at(first, poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            w = wake.recv() => {
                if w.is_none() {
                    // Cannot happen while `shared` holds a sender; be safe.
                    tick.tick().await;
                }
            }
        }
        check(&shared, is_remote).await;
    }
}

/// What one look at the repository found.
// One value per look, moved once: boxing the loaded resources buys nothing.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    /// The tip is the commit checked last time.
    Unchanged,
    Loaded {
        revision: Revision,
        result: Result<Resources, Vec<ValidationError>>,
        elapsed: Duration,
    },
    NoBranch,
    RepositoryError(String),
}

/// Fetch (remote, if asked), read the tip and load it if new; apply the
/// outcome.
async fn check(shared: &Arc<Shared>, fetch: bool) {
    let last = lock(&shared.status)
        .last_attempt
        .as_ref()
        .map(|a| a.revision.commit.clone());
    let s = shared.clone();
    let joined = tokio::task::spawn_blocking(move || look(&s, fetch, last)).await;
    let (fetched, mut outcome) = match joined {
        Ok(r) => r,
        Err(e) => (None, Outcome::RepositoryError(format!("config store task failed: {e}"))),
    };
    if let (
        Some(validator),
        Outcome::Loaded {
            revision,
            result: result @ Ok(_),
            elapsed,
        },
    ) = (&shared.validator, &mut outcome)
    {
        // After our own rules pass (a commit they refuse is not worth a
        // collector run). Child processes, awaited: no runtime thread blocks.
        let start = Instant::now();
        if let Ok(resources) = result {
            let verdict = validator.check_commit(resources, &revision.commit).await;
            tracing::debug!(commit = %revision.commit, renders = verdict.checked, refused = verdict.errors.len(),
                "Checked the commit's renders with the collector.");
            if !verdict.errors.is_empty() {
                *result = Err(verdict.errors);
            }
        }
        *elapsed += start.elapsed();
    }
    apply(shared, fetched, outcome);
}

/// Blocking part: gix work and parsing.
fn look(shared: &Shared, fetch: bool, last: Option<String>) -> (Option<Result<(), String>>, Outcome) {
    let src = &shared.source;
    let credentials = match (&src.location, &src.credentials_file) {
        (Location::Remote { scheme, .. }, Some(path)) => match Credentials::load(path, *scheme) {
            Ok(c) => Some(c),
            Err(e) => {
                return (
                    fetch.then(|| Err(e.to_string())),
                    Outcome::RepositoryError(e.to_string()),
                )
            }
        },
        _ => None,
    };
    let overrides = credentials
        .as_ref()
        .map(Credentials::config_overrides)
        .unwrap_or_default();
    let repo = match git::open(&src.repo_path, overrides) {
        Ok(r) => r,
        Err(e) => return (None, Outcome::RepositoryError(e.to_string())),
    };
    let mut fetched = None;
    if let (true, Location::Remote { url, .. }) = (fetch, &src.location) {
        let r = git::fetch(&repo, url, &src.branch, credentials, &shared.interrupt);
        fetched = Some(r.map_err(|e| e.to_string()));
    }
    let tip = match git::branch_tip(&repo, &src.branch) {
        Ok(Some(t)) => t,
        Ok(None) => return (fetched, Outcome::NoBranch),
        Err(e) => return (fetched, Outcome::RepositoryError(e.to_string())),
    };
    if last.as_deref() == Some(tip.to_string().as_str()) {
        return (fetched, Outcome::Unchanged);
    }
    let start = Instant::now();
    let commit = match git::read_commit(&repo, tip, src.dir.as_deref()) {
        Ok(c) => c,
        Err(e) => return (fetched, Outcome::RepositoryError(e.to_string())),
    };
    let result = commit.files.map_err(|e| vec![e]).and_then(|files| load_files(&files));
    (
        fetched,
        Outcome::Loaded {
            revision: commit.revision,
            result,
            elapsed: start.elapsed(),
        },
    )
}

fn apply(shared: &Shared, fetched: Option<Result<(), String>>, outcome: Outcome) {
    let now = shared.options.clock.now();
    let metrics = shared.options.metrics.as_deref();
    let mut st = lock(&shared.status);
    if let Some(f) = fetched {
        let prev_error = st.last_fetch.as_ref().and_then(|f| f.error.clone());
        let last_success = match &f {
            Ok(()) => Some(now),
            Err(_) => st.last_fetch.as_ref().and_then(|f| f.last_success),
        };
        match &f {
            Err(e) if prev_error.as_ref() != Some(e) => {
                tracing::warn!(url = %st.url, error = %e, "Fetching the config repository failed; serving the last mirrored commit.")
            }
            Ok(()) if prev_error.is_some() => {
                tracing::info!(url = %st.url, "Fetching the config repository works again.")
            }
            _ => {}
        }
        st.last_fetch = Some(FetchStatus {
            at: now,
            error: f.err(),
            last_success,
        });
    }
    match outcome {
        Outcome::Unchanged => st.repository_error = None,
        Outcome::NoBranch => {
            let waiting = st.mode == "mirror" && st.last_fetch.as_ref().is_none_or(|f| f.last_success.is_none());
            let msg = if waiting {
                format!("branch {:?} not mirrored yet (waiting for the first fetch)", st.branch)
            } else {
                format!("branch {:?} not found in the config repository", st.branch)
            };
            set_repository_error(&mut st, msg);
        }
        Outcome::RepositoryError(e) => set_repository_error(&mut st, e),
        Outcome::Loaded {
            revision,
            result,
            elapsed,
        } => {
            st.repository_error = None;
            let span = tracing::info_span!("config_reload", commit = %revision.commit);
            let _enter = span.enter();
            let load_ms = elapsed.as_millis() as u64;
            match result {
                Ok(resources) => {
                    let count = resources.len();
                    st.last_attempt = Some(Attempt {
                        revision: revision.clone(),
                        valid: true,
                        errors: Vec::new(),
                        checked_at: now,
                        load_ms,
                        resources: count,
                    });
                    st.reloads += 1;
                    let held = st.override_.as_ref().is_some_and(|o| o.applied);
                    record(
                        shared,
                        HistoryEntry {
                            revision: revision.clone(),
                            outcome: if held {
                                HistoryOutcome::HeldByOverride
                            } else {
                                HistoryOutcome::Served
                            },
                            errors: Vec::new(),
                            superseded_by: None,
                            considered_at: now,
                            load_ms,
                        },
                    );
                    let snapshot = Arc::new(Snapshot {
                        revision: revision.clone(),
                        resources,
                    });
                    *lock(&shared.tip) = Some(snapshot.clone());
                    if held {
                        tracing::info!(commit = %revision.commit, resources = count, load_ms,
                            "A new valid config commit is held back: an emergency override is set.");
                        return;
                    }
                    st.serving = Some(revision.clone());
                    if let Some(m) = metrics {
                        m.config_serving(&revision.commit);
                    }
                    tracing::info!(commit = %revision.commit, resources = count, load_ms, author = %revision.author,
                        "Serving a new config commit.");
                    // Swap after releasing the status lock: a subscriber that
                    // holds a borrow of the snapshot and asks for the status
                    // must not wait on us while we wait on its borrow.
                    drop(st);
                    shared.snapshot.send_replace(Some(snapshot));
                }
                Err(errors) => {
                    let serving = st.serving.as_ref().map(|r| r.commit.clone());
                    tracing::warn!(commit = %revision.commit, errors = errors.len(), first = %errors.first().map(ToString::to_string).unwrap_or_default(),
                        serving = serving.as_deref().unwrap_or("nothing"),
                        "Refused an invalid config commit; keeping the last valid one.");
                    for e in &errors {
                        tracing::debug!(commit = %revision.commit, file = %e.file, key = %e.key, "{}", e.message);
                    }
                    record(
                        shared,
                        HistoryEntry {
                            revision: revision.clone(),
                            outcome: HistoryOutcome::Refused,
                            errors: errors.clone(),
                            superseded_by: None,
                            considered_at: now,
                            load_ms,
                        },
                    );
                    st.last_attempt = Some(Attempt {
                        revision,
                        valid: false,
                        errors,
                        checked_at: now,
                        load_ms,
                        resources: 0,
                    });
                    st.reload_failures += 1;
                    if let Some(m) = metrics {
                        m.config_reload_failed();
                    }
                }
            }
        }
    }
}

/// Add a considered commit to the history. A valid one supersedes the
/// commits served or held before it.
fn record(shared: &Shared, entry: HistoryEntry) {
    let mut h = lock(&shared.history);
    if entry.outcome != HistoryOutcome::Refused {
        for e in h.iter_mut() {
            if matches!(
                e.outcome,
                HistoryOutcome::Served | HistoryOutcome::HeldByOverride | HistoryOutcome::RollingOut
            ) {
                e.outcome = HistoryOutcome::Superseded;
                e.superseded_by = Some(entry.revision.commit.clone());
            }
        }
    }
    h.push_front(entry);
    h.truncate(HISTORY_LEN);
}

fn set_repository_error(st: &mut StoreStatus, msg: String) {
    if st.repository_error.as_deref() != Some(msg.as_str()) {
        tracing::warn!(url = %st.url, error = %msg, "Cannot read the config repository.");
    }
    st.repository_error = Some(msg);
}
