//! The rollout task `run` owns, one per instance. Every instance follows
//! the stored record into its view (and re-resolves its sessions when it
//! changes); the one instance holding the lease also writes the record:
//! starts a rollout for a new commit, reaches the next wave once the
//! current one passed its gates and baked, halts and rolls back a wave
//! whose gate failed, and supersedes a rollout when a newer commit is
//! served.
//!
//! Supersede rule: a rollout always goes from the baseline — the last
//! commit that completed a rollout — to the newest valid commit. A newer
//! commit replaces a running, paused or halted rollout at once: the new
//! rollout starts again at the first wave, and collectors of the old one's
//! reached waves go back to the baseline until the new rollout reaches
//! them. So no collector ever runs a commit whose rollout did not reach its
//! wave.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::configstore::{ConfigStoreHandle, HistoryOutcome, RolloutPolicy, Snapshot};
use crate::domain::rollout::{
    GateFailure, GateResult, Rollout, RolloutState, Rollouts, SendFigures, WaveCounts, WaveProgress, WaveState,
    PAST_ROLLOUTS, ROLLOUTS_KEY,
};
use crate::domain::{
    Collector, CollectorStatus, ConfigAssignment, Domain, DomainError, ServerInstance, DEFAULT_ASSIGNMENT,
};
use crate::fleet::desired::Desired;
use crate::fleet::{Fleet, PRESENCE_STALE};
use crate::owntelemetry::{ComponentKind, Measure, TelemetryRollup};
use crate::storage::{Scan, Table};
use crate::telemetry::Metrics;

use super::{Active, RolloutView};

/// How long a lease lasts without renewal: another instance takes over at
/// most this long after the holder died.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the task looks (besides waking on a change of the record or
/// a new snapshot): gates are re-evaluated at this pace.
const TICK: Duration = Duration::from_millis(500);
/// Collectors named in a gate failure.
const MAX_NAMED: usize = 50;

pub struct Driver {
    domain: Domain,
    config_store: ConfigStoreHandle,
    fleet: Fleet,
    metrics: Arc<Metrics>,
    instance: String,
    view: RolloutView,
    /// Snapshots of commits the record names, by commit id (only the ones
    /// in use are kept).
    snapshots: HashMap<String, Arc<Snapshot>>,
    /// Until when this instance's lease is known to hold.
    lease_until: Option<Timestamp>,
    /// The last "cannot load" message, so it is logged once.
    load_error: Option<String>,
}

impl Driver {
    pub fn new(domain: Domain, config_store: ConfigStoreHandle, fleet: Fleet, metrics: Arc<Metrics>) -> Driver {
        Driver {
            instance: fleet.instance().to_string(),
            view: fleet.rollout_view(),
            domain,
            config_store,
            fleet,
            metrics,
            snapshots: HashMap::new(),
            lease_until: None,
            load_error: None,
        }
    }

    /// Follow the stored record into the view (call once before serving
    /// collectors, so none is resolved without it).
    pub async fn follow(&mut self) {
        match self.follow_inner().await {
            Ok(true) => self.fleet.rollout_changed().await,
            Ok(false) => {}
            Err(e) => {
                let msg = e.to_string();
                if self.load_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "Cannot follow the stored rollout yet; collectors keep what they were served.");
                    self.load_error = Some(msg);
                }
                // The mirror may not have the commit yet.
                self.config_store.refresh();
            }
        }
    }

    async fn follow_inner(&mut self) -> Result<bool, DomainError> {
        let record = self.domain.rollouts_record().await?;
        let Some((version, cur)) = record.and_then(|r| r.value.current.map(|c| (r.version, c))) else {
            return Ok(false);
        };
        if self.view.get().is_some_and(|a| a.version == version) {
            return Ok(false);
        }
        let target = self.snapshot(&cur.commit).await?;
        let baseline = match &cur.baseline {
            Some(b) => Some(self.snapshot(b).await?),
            None => None,
        };
        self.snapshots
            .retain(|c, _| *c == cur.commit || cur.baseline.as_ref() == Some(c));
        self.load_error = None;
        match cur.state {
            RolloutState::Halted | RolloutState::Aborted => {
                self.config_store.mark_history(&cur.commit, HistoryOutcome::RolledBack)
            }
            RolloutState::Running | RolloutState::Paused => {
                self.config_store.mark_history(&cur.commit, HistoryOutcome::RollingOut)
            }
            RolloutState::Completed => self.config_store.mark_history(&cur.commit, HistoryOutcome::Served),
            RolloutState::Superseded => {}
        }
        self.metrics.rollout(cur.state.as_str(), cur.wave);
        self.view.set(Some(Arc::new(Active {
            version,
            rollout: cur,
            target,
            baseline,
        })));
        Ok(true)
    }

    async fn snapshot(&mut self, commit: &str) -> Result<Arc<Snapshot>, DomainError> {
        if let Some(s) = self.snapshots.get(commit) {
            return Ok(s.clone());
        }
        let s = match self.config_store.current() {
            Some(s) if s.revision.commit == commit => s,
            _ => self
                .config_store
                .load_commit(commit)
                .await
                .map_err(|e| DomainError::invalid("commit", e.to_string()))?,
        };
        self.snapshots.insert(commit.to_string(), s.clone());
        Ok(s)
    }

    /// Loop until aborted by `run`.
    pub async fn run(mut self) {
        let mut feed = self.domain.store().subscribe();
        let mut snapshots = self.config_store.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                c = feed.recv() => match c {
                    Ok(c) if c.table == Table::ConfigControl && c.key == ROLLOUTS_KEY => {}
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                r = snapshots.changed() => if r.is_err() { return },
            }
            self.follow().await;
            if self.hold_lease().await {
                match self.step().await {
                    Ok(true) => self.follow().await,
                    Ok(false) => {}
                    Err(DomainError::Conflict { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "Could not advance the rollout; retrying."),
                }
            }
        }
    }

    /// Take or renew the lease when less than half of it is left.
    async fn hold_lease(&mut self) -> bool {
        let now = self.domain.clock().now();
        if self.lease_until.is_some_and(|u| now.plus(LEASE_TTL / 2) < u) {
            return true;
        }
        let held = match self.domain.take_rollout_lease(&self.instance, LEASE_TTL).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot take the rollout lease.");
                false
            }
        };
        if held && self.lease_until.is_none() {
            tracing::info!(instance = %self.instance, "This instance now advances rollouts (holds the rollout lease).");
        }
        self.lease_until = held.then(|| now.plus(LEASE_TTL));
        self.metrics.rollout_lease(held);
        held
    }

    /// Give the lease up on a graceful stop.
    pub async fn release(domain: &Domain, instance: &str) {
        if let Err(e) = domain.release_rollout_lease(instance).await {
            tracing::warn!(error = %e, "Could not release the rollout lease; another instance takes over when it expires.");
        }
    }

    /// One look as the lease holder; `true` when the record was written.
    async fn step(&mut self) -> Result<bool, DomainError> {
        let Some(served) = self.config_store.current() else {
            return Ok(false);
        };
        // During an emergency override rollouts wait: the override decides.
        if self.config_store.override_applied() {
            return Ok(false);
        }
        let record = self.domain.rollouts_record().await?;
        let (version, mut value) = record.map_or((0, Rollouts::default()), |r| (r.version, r.value));
        let now = self.domain.clock().now();
        let changed = match value.current.take() {
            None => {
                // The first commit this fleet serves: nothing to roll out
                // from, so it is served to all.
                value.current = Some(self.new_rollout(&served, None, now).await);
                true
            }
            Some(mut cur) if cur.commit == served.revision.commit => {
                let changed = cur.state == RolloutState::Running && self.advance(&mut cur, now).await?;
                value.current = Some(cur);
                changed
            }
            Some(mut cur) => {
                // Move on only from a commit this instance has: otherwise
                // its repository lags behind the instance that started it.
                if self.snapshot(&cur.commit).await.is_err() {
                    value.current = Some(cur);
                    false
                } else {
                    let baseline = match cur.state {
                        RolloutState::Completed => Some(cur.commit.clone()),
                        _ => cur.baseline.clone(),
                    };
                    let next = self.new_rollout(&served, baseline, now).await;
                    if cur.state.is_active() {
                        tracing::info!(commit = %cur.commit, by = %served.revision.commit, "A newer commit supersedes the running rollout.");
                        cur.state = RolloutState::Superseded;
                        cur.finished_at = Some(now);
                        cur.updated_at = now;
                        cur.superseded_by = Some(served.revision.commit.clone());
                        cur.reason = Some(format!("superseded by commit {}", short(&served.revision.commit)));
                    }
                    value.past.insert(0, cur);
                    value.past.truncate(PAST_ROLLOUTS);
                    value.current = Some(next);
                    true
                }
            }
        };
        if changed {
            self.domain.put_rollouts(&value, version).await?;
        }
        Ok(changed)
    }

    async fn new_rollout(&mut self, served: &Snapshot, baseline: Option<String>, now: Timestamp) -> Rollout {
        let policy = served.resources.rollout.clone();
        let mut r = Rollout {
            id: uuid::Uuid::now_v7().to_string(),
            commit: served.revision.commit.clone(),
            baseline: baseline.clone(),
            state: RolloutState::Completed,
            policy: policy.clone(),
            wave: 0,
            waves: Vec::new(),
            started_at: now,
            updated_at: now,
            finished_at: Some(now),
            reason: None,
            superseded_by: None,
        };
        match (&policy, baseline) {
            // No policy: today's behaviour, all at once. No baseline: the
            // first commit, served to all.
            (None, _) | (_, None) => {}
            (Some(p), Some(_)) => {
                r.state = RolloutState::Running;
                r.finished_at = None;
                r.waves = p.wave_names().into_iter().map(WaveProgress::pending).collect();
                self.reach(&mut r, 0, now).await;
                tracing::info!(commit = %r.commit, waves = r.waves.len(), "Starting a staged rollout.");
            }
        }
        r
    }

    /// Reach wave `i`: its collectors are offered the new config.
    async fn reach(&mut self, r: &mut Rollout, i: usize, now: Timestamp) {
        r.wave = i;
        let wants_send_gate = r
            .policy
            .as_ref()
            .is_some_and(|p| p.gates.max_send_failure_increase.is_some());
        let send_baseline = if wants_send_gate {
            match (r.policy.clone(), self.members(r, i).await) {
                (Some(_), Ok(m)) => self.send_figures(&m).await.ok(),
                _ => None,
            }
        } else {
            None
        };
        if let Some(w) = r.waves.get_mut(i) {
            w.state = WaveState::RollingOut;
            w.reached_at = Some(now);
            w.send_baseline = send_baseline;
        }
    }

    /// The collectors of wave `i` (without a pinned config: theirs does
    /// not come from the config store), with their status.
    async fn members(&self, r: &Rollout, i: usize) -> Result<Vec<(Collector, Option<CollectorStatus>)>, DomainError> {
        let Some(policy) = &r.policy else {
            return Ok(Vec::new());
        };
        let store = self.domain.store();
        let pinned: BTreeSet<String> = store
            .scan::<ConfigAssignment>(Scan::default())
            .await?
            .into_iter()
            .map(|a| a.key)
            .filter(|k| k != DEFAULT_ASSIGNMENT)
            .collect();
        // A status says "connected" as its holder last stored it; a holder
        // that died (killed, no graceful stop) never corrected it. As in the
        // fleet views, a collector counts as connected only while the
        // instance holding it is alive, so the gates do not wait for
        // collectors that are connected nowhere.
        let now = self.domain.clock().now();
        let alive: BTreeSet<String> = store
            .scan::<ServerInstance>(Scan::default())
            .await?
            .into_iter()
            .filter(|i| now.0.saturating_sub(i.value.heartbeat_at.0) < PRESENCE_STALE.as_millis() as u64)
            .map(|i| i.key)
            .collect();
        let mut statuses: HashMap<String, CollectorStatus> = store
            .scan::<CollectorStatus>(Scan::default())
            .await?
            .into_iter()
            .map(|mut s| {
                if s.value.instance != self.instance && !alive.contains(&s.value.instance) {
                    s.value.connected = false;
                }
                (s.key, s.value)
            })
            .collect();
        Ok(store
            .scan::<Collector>(Scan::default())
            .await?
            .into_iter()
            .filter(|c| !pinned.contains(&c.key) && policy.wave_of(&c.value.id, &c.value.labels) == i)
            .map(|c| {
                let s = statuses.remove(&c.key);
                (c.value, s)
            })
            .collect())
    }

    /// Exporter sends of these collectors, from their stored own telemetry.
    async fn send_figures(&self, members: &[(Collector, Option<CollectorStatus>)]) -> Result<SendFigures, DomainError> {
        Ok(self
            .send_figures_by_collector(members)
            .await?
            .into_iter()
            .fold(SendFigures::default(), |mut f, (_, c)| {
                f.sent += c.sent;
                f.failed += c.failed;
                f
            }))
    }

    /// The same per collector (those that send own telemetry only).
    async fn send_figures_by_collector(
        &self,
        members: &[(Collector, Option<CollectorStatus>)],
    ) -> Result<Vec<(String, SendFigures)>, DomainError> {
        let ids: BTreeSet<&str> = members.iter().map(|(c, _)| c.id.as_str()).collect();
        let mut out = Vec::new();
        for r in self.domain.store().scan::<TelemetryRollup>(Scan::default()).await? {
            if !ids.contains(r.value.collector_id.as_str()) {
                continue;
            }
            let mut f = SendFigures::default();
            for c in r
                .value
                .components
                .iter()
                .filter(|c| c.component.kind == ComponentKind::Exporter)
            {
                f.sent += c.counters.get(&Measure::Sent).map_or(0.0, |x| x.total);
                f.failed += c.counters.get(&Measure::SendFailed).map_or(0.0, |x| x.total);
            }
            out.push((r.value.collector_id, f));
        }
        Ok(out)
    }

    /// Evaluate the current wave's gates; reach the next wave, halt or
    /// complete. `true` when anything changed.
    async fn advance(&mut self, r: &mut Rollout, now: Timestamp) -> Result<bool, DomainError> {
        let before = r.clone();
        let Some(policy) = r.policy.clone() else {
            return Ok(false);
        };
        let i = r.wave;
        let target = self.snapshot(&r.commit).await?;
        let members = self.members(r, i).await?;
        let send_now = match policy.gates.max_send_failure_increase {
            Some(_) => Some(self.send_figures_by_collector(&members).await?),
            None => None,
        };
        let Some(wave) = r.waves.get_mut(i) else {
            return Ok(false);
        };
        let verdict = evaluate(&policy, wave, &target, &members, send_now, now);
        wave.counts = verdict.counts;
        wave.gates = verdict.results;
        if let Some(failure) = verdict.failure {
            let gate = gate_name(&failure.gate);
            tracing::warn!(commit = %r.commit, wave = %wave.name, gate, collectors = failure.collectors.len(), reason = %failure.message,
                "A rollout gate failed; halting and rolling the wave back.");
            self.metrics.rollout_gate_failed(gate);
            r.reason = Some(format!(
                "wave {}: gate {} failed: {}",
                wave.name, failure.gate, failure.message
            ));
            wave.state = WaveState::RolledBack;
            wave.failure = Some(failure);
            r.state = RolloutState::Halted;
        } else if verdict.passed {
            let passed_at = *wave.gates_passed_at.get_or_insert(now);
            wave.state = WaveState::Baking;
            let bake = policy.waves.get(i).map_or(Duration::ZERO, |w| w.bake);
            if wave.promoted || wave.counts.collectors == 0 || now >= passed_at.plus(bake) {
                wave.state = WaveState::Passed;
                wave.passed_at = Some(now);
                tracing::info!(commit = %r.commit, wave = %wave.name, collectors = wave.counts.collectors, "A rollout wave passed.");
                if i + 1 >= r.waves.len() {
                    r.state = RolloutState::Completed;
                    r.finished_at = Some(now);
                    tracing::info!(commit = %r.commit, "The rollout completed: the whole fleet is on the commit.");
                } else {
                    self.reach(r, i + 1, now).await;
                }
            }
        }
        let changed = *r != before;
        if changed {
            r.updated_at = now;
        }
        Ok(changed)
    }
}

/// The bounded metric label of a gate.
fn gate_name(gate: &str) -> &'static str {
    match gate {
        "healthy" => "healthy",
        "send_failures" => "send_failures",
        _ => "applied",
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

struct Verdict {
    counts: WaveCounts,
    results: Vec<GateResult>,
    failure: Option<GateFailure>,
    passed: bool,
}

/// The gates of one wave, on what its collectors last reported. Only
/// connected collectors must apply (one that is offline gets the config
/// when it reconnects); a FAILED report for the new config fails the
/// wave at once, connected or not.
fn evaluate(
    policy: &RolloutPolicy,
    wave: &WaveProgress,
    target: &Snapshot,
    members: &[(Collector, Option<CollectorStatus>)],
    send_now: Option<Vec<(String, SendFigures)>>,
    now: Timestamp,
) -> Verdict {
    let mut counts = WaveCounts::default();
    let (mut failed, mut pending, mut unhealthy) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_error = String::new();
    let mut renders: HashMap<&crate::domain::Labels, Option<String>> = HashMap::new();
    for (c, s) in members {
        let want = renders
            .entry(&c.labels)
            .or_insert_with(|| {
                let r = target.render(&c.labels);
                (!r.pipelines.is_empty()).then(|| Desired::from_rendered(&r).hash_hex)
            })
            .clone();
        // Nothing routed to it: the config store sends it nothing.
        let Some(want) = want else { continue };
        counts.collectors += 1;
        let connected = s.as_ref().is_some_and(|s| s.connected);
        let rc = s.as_ref().and_then(|s| s.remote_config.as_ref());
        let on_target = rc.is_some_and(|rc| rc.hash == want);
        if connected {
            counts.connected += 1;
        }
        if on_target && rc.is_some_and(|rc| rc.status == "FAILED") {
            counts.failed += 1;
            if first_error.is_empty() {
                first_error = rc.map(|rc| rc.error_message.clone()).unwrap_or_default();
            }
            failed.push(c.id.clone());
        } else if on_target && rc.is_some_and(|rc| rc.status == "APPLIED") {
            counts.applied += 1;
            let sick = s.as_ref().and_then(|s| s.health.as_ref()).is_some_and(|h| !h.healthy);
            if connected && sick {
                counts.unhealthy += 1;
                unhealthy.push(c.id.clone());
            }
        } else if connected {
            pending.push(c.id.clone());
        }
    }
    let mut results = Vec::new();
    let mut failure = None;
    let mut fail = |gate: &str, message: String, collectors: &[String]| {
        if failure.is_none() {
            failure = Some(GateFailure {
                gate: gate.into(),
                message: message.clone(),
                collectors: collectors.iter().take(MAX_NAMED).cloned().collect(),
                at: now,
            });
        }
        GateResult {
            gate: gate.into(),
            result: "failed".into(),
            detail: message,
        }
    };
    let result = |gate: &str, result: &str, detail: String| GateResult {
        gate: gate.into(),
        result: result.into(),
        detail,
    };
    // applied
    let reached = wave.reached_at.unwrap_or(now);
    if !failed.is_empty() {
        let msg = format!(
            "{} collector(s) reported FAILED for the new config: {}",
            failed.len(),
            if first_error.is_empty() {
                "(no message)"
            } else {
                &first_error
            }
        );
        results.push(fail("applied", msg, &failed));
    } else if !pending.is_empty() && now >= reached.plus(policy.gates.apply_timeout) {
        let msg = format!(
            "{} connected collector(s) did not apply the new config within {}",
            pending.len(),
            humantime::format_duration(policy.gates.apply_timeout)
        );
        results.push(fail("applied", msg, &pending));
    } else if !pending.is_empty() {
        results.push(result(
            "applied",
            "waiting",
            format!(
                "{} of {} connected collector(s) applied",
                counts.applied, counts.connected
            ),
        ));
    } else {
        results.push(result(
            "applied",
            "passed",
            format!("{} collector(s) applied", counts.applied),
        ));
    }
    if policy.gates.healthy {
        if unhealthy.is_empty() {
            results.push(result(
                "healthy",
                "passed",
                "every collector that applied is healthy".into(),
            ));
        } else {
            let msg = format!(
                "{} collector(s) unhealthy after applying the new config",
                unhealthy.len()
            );
            results.push(fail("healthy", msg, &unhealthy));
        }
    }
    if let (Some(max), Some(by_collector)) = (policy.gates.max_send_failure_increase, send_now) {
        let now_f = by_collector.iter().fold(SendFigures::default(), |mut f, (_, c)| {
            f.sent += c.sent;
            f.failed += c.failed;
            f
        });
        let base = wave.send_baseline.unwrap_or_default();
        let ratio = |f: f64, s: f64| if f + s > 0.0 { f / (f + s) } else { 0.0 };
        let before = ratio(base.failed, base.sent);
        let (df, ds) = ((now_f.failed - base.failed).max(0.0), (now_f.sent - base.sent).max(0.0));
        let since = ratio(df, ds);
        if df + ds > 0.0 && since - before > max {
            let msg = format!(
                "failed exporter sends rose from {:.1}% to {:.1}% (allowed: +{:.1} points)",
                before * 100.0,
                since * 100.0,
                max * 100.0
            );
            // The figure is the wave's; name the collectors that report
            // exporter sends, most failed sends first (those without own
            // telemetry add nothing to it).
            let mut by_failed: Vec<&(String, SendFigures)> = by_collector.iter().collect();
            by_failed.sort_by(|a, b| b.1.failed.total_cmp(&a.1.failed).then_with(|| a.0.cmp(&b.0)));
            let ids: Vec<String> = by_failed.into_iter().map(|(id, _)| id.clone()).collect();
            results.push(fail("send_failures", msg, &ids));
        } else {
            results.push(result(
                "send_failures",
                "passed",
                format!(
                    "{:.1}% failed since the wave started ({:.1}% before)",
                    since * 100.0,
                    before * 100.0
                ),
            ));
        }
    }
    let passed = failure.is_none() && results.iter().all(|r| r.result == "passed");
    Verdict {
        counts,
        results,
        failure,
        passed,
    }
}
