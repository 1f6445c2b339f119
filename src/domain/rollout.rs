//! Staged rollouts as stored: one record (`rollouts`) holds the current
//! rollout (what the fleet is served) and the last finished ones; one
//! lease record (`rollout-lease`) names the instance allowed to advance
//! it. Both are in the config-control table and written with optimistic
//! concurrency, so any instance can take over and no two advance at once.
//!
//! Here: the records, the operator actions (pause, resume, abort, promote:
//! role-checked, audited in the same commit) and the lease. Deciding when
//! a wave passes is `crate::rollout`'s job; what a collector is served
//! follows from the record in `crate::fleet::resolve`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, Domain, DomainError, Role};
use crate::clock::Timestamp;
use crate::configstore::RolloutPolicy;
use crate::storage::{Expect, Op, Record, StorageError, Table, Versioned};

pub const ROLLOUTS_KEY: &str = "rollouts";
pub const LEASE_KEY: &str = "rollout-lease";
/// Finished rollouts kept in the record (newest first).
pub const PAST_ROLLOUTS: usize = 20;

/// The rollout record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollouts {
    /// What the fleet is served now; absent before the first commit.
    pub current: Option<Rollout>,
    /// Finished (completed, aborted, superseded) rollouts, newest first.
    pub past: Vec<Rollout>,
}
impl Record for Rollouts {
    const TABLE: Table = Table::ConfigControl;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Waves are being reached one after another.
    Running,
    /// An operator paused it: no further wave is reached.
    Paused,
    /// A gate failed: that wave was rolled back, earlier waves keep the new
    /// config, later ones were not touched. Resume retries the wave; abort
    /// reverts everything.
    Halted,
    /// Every wave passed: the whole fleet is on `commit`.
    Completed,
    /// An operator aborted it: the whole fleet is back on `baseline`.
    Aborted,
    /// A newer commit replaced it before it completed.
    Superseded,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
            RolloutState::Superseded => "superseded",
        }
    }

    /// Still deciding what its collectors get.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::Running | RolloutState::Paused | RolloutState::Halted
        )
    }
}

/// One commit going out to the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub id: String,
    /// The commit being rolled out.
    pub commit: String,
    /// What collectors not (or no longer) reached are served: the last
    /// commit that completed a rollout. Absent for the first commit.
    pub baseline: Option<String>,
    pub state: RolloutState,
    /// The policy of `commit` (so every instance uses the same waves).
    pub policy: Option<RolloutPolicy>,
    /// Index of the wave being rolled out; waves before it passed.
    pub wave: usize,
    pub waves: Vec<WaveProgress>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Why it halted, was aborted or superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    Pending,
    /// Reached: its collectors are offered the new config.
    RollingOut,
    /// Every gate passed; waiting out the bake time.
    Baking,
    Passed,
    /// A gate failed; its collectors are back on the baseline.
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WaveProgress {
    pub name: String,
    pub state: WaveState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_at: Option<Timestamp>,
    /// When its gates first all passed (the bake starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates_passed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_at: Option<Timestamp>,
    /// An operator skipped the rest of the bake.
    #[serde(default)]
    pub promoted: bool,
    /// Collectors in the wave at the last check, and how they stand.
    #[serde(default)]
    pub counts: WaveCounts,
    /// The last evaluation of each gate.
    #[serde(default)]
    pub gates: Vec<GateResult>,
    /// Exporter figures of the wave's collectors when it was reached (the
    /// "before" of the send-failure gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_baseline: Option<SendFigures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<GateFailure>,
}

impl WaveProgress {
    pub fn pending(name: String) -> Self {
        WaveProgress {
            name,
            state: WaveState::Pending,
            reached_at: None,
            gates_passed_at: None,
            passed_at: None,
            promoted: false,
            counts: WaveCounts::default(),
            gates: Vec::new(),
            send_baseline: None,
            failure: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WaveCounts {
    pub collectors: u64,
    pub connected: u64,
    pub applied: u64,
    pub failed: u64,
    pub unhealthy: u64,
}

/// Exporter send totals (sent, failed) summed over collectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SendFigures {
    pub sent: f64,
    pub failed: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateResult {
    /// `applied`, `healthy` or `send_failures`.
    pub gate: String,
    /// `passed`, `waiting` or `failed`.
    pub result: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateFailure {
    pub gate: String,
    pub message: String,
    /// The collectors that failed it (at most 50 listed).
    pub collectors: Vec<String>,
    pub at: Timestamp,
}

/// Who may advance rollouts now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutLease {
    pub holder: String,
    pub expires_at: Timestamp,
}
impl Record for RolloutLease {
    const TABLE: Table = Table::ConfigControl;
}

/// An operator action on the current rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl RolloutAction {
    fn name(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
            RolloutAction::Promote => "promote",
        }
    }
}

/// How often an operator action re-reads after losing a race with the
/// instance advancing the rollout (the action is still meant).
const ACTION_ATTEMPTS: usize = 5;

impl Domain {
    /// The rollout record (viewer).
    pub async fn rollouts(&self, actor: &Actor) -> Result<Option<Versioned<Rollouts>>, DomainError> {
        actor.require(Role::Viewer)?;
        Ok(self.store.get::<Rollouts>(ROLLOUTS_KEY).await?)
    }

    /// The rollout record without a role check (the driver, the resolver).
    pub async fn rollouts_record(&self) -> Result<Option<Versioned<Rollouts>>, DomainError> {
        Ok(self.store.get::<Rollouts>(ROLLOUTS_KEY).await?)
    }

    /// Write the rollout record read at `version` (0 = absent).
    pub async fn put_rollouts(&self, value: &Rollouts, version: u64) -> Result<u64, DomainError> {
        let expect = if version == 0 {
            Expect::Absent
        } else {
            Expect::Version(version)
        };
        let v = self
            .store
            .commit(vec![Op::put(ROLLOUTS_KEY, value, expect)?])
            .await
            .map_err(super::conflict_as("the rollout"))?;
        Ok(v.first().copied().unwrap_or(version + 1))
    }

    /// Pause, resume, abort or promote the current rollout `id` (editor;
    /// audited with the rollout's commit).
    pub async fn rollout_action(
        &self,
        actor: &Actor,
        id: &str,
        action: RolloutAction,
        reason: Option<&str>,
    ) -> Result<Versioned<Rollouts>, DomainError> {
        actor.require(Role::Editor)?;
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if reason.is_some_and(|r| r.len() > 500) {
            return Err(DomainError::invalid("reason", "at most 500 bytes"));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(mut rec) = self.store.get::<Rollouts>(ROLLOUTS_KEY).await? else {
                return Err(DomainError::NotFound {
                    what: "rollout",
                    id: id.into(),
                });
            };
            let now = self.clock.now();
            let Some(cur) = rec.value.current.as_mut().filter(|c| c.id == id) else {
                return Err(if rec.value.past.iter().any(|p| p.id == id) {
                    DomainError::invalid(
                        "id",
                        format!("rollout {id} is finished; only the current rollout can be changed"),
                    )
                } else {
                    DomainError::NotFound {
                        what: "rollout",
                        id: id.into(),
                    }
                });
            };
            let from = cur.state;
            apply_action(cur, action, now, actor, reason)?;
            cur.updated_at = now;
            let (commit, wave) = (cur.commit.clone(), cur.wave);
            let ops = vec![
                Op::put(ROLLOUTS_KEY, &rec.value, Expect::Version(rec.version))?,
                self.audit_op(
                    actor,
                    &format!("rollout.{}", action.name()),
                    &commit,
                    "ok",
                    serde_json::json!({ "rollout": id, "from": from.as_str(), "wave": wave, "reason": reason }),
                )?,
            ];
            match self.store.commit(ops).await {
                Ok(v) => {
                    rec.version = v.first().copied().unwrap_or(rec.version + 1);
                    return Ok(rec);
                }
                Err(StorageError::Conflict { .. }) if attempt < ACTION_ATTEMPTS => continue,
                Err(e) => return Err(super::conflict_as("the rollout")(e)),
            }
        }
    }

    /// Take or renew the rollout lease for `holder` until `now + ttl`;
    /// `false` when another instance holds an unexpired lease.
    pub async fn take_rollout_lease(&self, holder: &str, ttl: std::time::Duration) -> Result<bool, DomainError> {
        let now = self.clock.now();
        let current = self.store.get::<RolloutLease>(LEASE_KEY).await?;
        let expect = match &current {
            None => Expect::Absent,
            Some(l) if l.value.holder == holder || l.value.expires_at <= now => Expect::Version(l.version),
            Some(_) => return Ok(false),
        };
        let lease = RolloutLease {
            holder: holder.into(),
            expires_at: now.plus(ttl),
        };
        match self.store.commit(vec![Op::put(LEASE_KEY, &lease, expect)?]).await {
            Ok(_) => Ok(true),
            // Another instance took it between our read and write.
            Err(StorageError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the lease up (graceful stop), so another instance takes over at
    /// once instead of after the expiry.
    pub async fn release_rollout_lease(&self, holder: &str) -> Result<(), DomainError> {
        if let Some(l) = self.store.get::<RolloutLease>(LEASE_KEY).await? {
            if l.value.holder == holder {
                match self
                    .store
                    .commit(vec![Op::delete::<RolloutLease>(LEASE_KEY, Expect::Version(l.version))])
                    .await
                {
                    Ok(_) | Err(StorageError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

fn apply_action(
    cur: &mut Rollout,
    action: RolloutAction,
    now: Timestamp,
    actor: &Actor,
    reason: Option<&str>,
) -> Result<(), DomainError> {
    let refuse = |why: &str| {
        Err(DomainError::invalid(
            "state",
            format!(
                "cannot {} a rollout that is {}: {why}",
                action.name(),
                cur.state.as_str()
            ),
        ))
    };
    match (action, cur.state) {
        (RolloutAction::Pause, RolloutState::Running) => cur.state = RolloutState::Paused,
        (RolloutAction::Pause, _) => return refuse("only a running rollout can be paused"),
        (RolloutAction::Resume, RolloutState::Paused) => cur.state = RolloutState::Running,
        (RolloutAction::Resume, RolloutState::Halted) => {
            // Retry the wave that failed: its collectors get the new config
            // again and its gates start over.
            if let Some(w) = cur.waves.get_mut(cur.wave) {
                w.state = WaveState::RollingOut;
                w.reached_at = Some(now);
                w.gates_passed_at = None;
                w.failure = None;
                w.gates.clear();
                w.send_baseline = None;
            }
            cur.state = RolloutState::Running;
            cur.reason = None;
        }
        (RolloutAction::Resume, _) => return refuse("only a paused or halted rollout can be resumed"),
        (RolloutAction::Abort, s) if s.is_active() => {
            cur.state = RolloutState::Aborted;
            cur.finished_at = Some(now);
            cur.reason = Some(match reason {
                Some(r) => format!("aborted by {}: {r}", actor.audit_name()),
                None => format!("aborted by {}", actor.audit_name()),
            });
        }
        (RolloutAction::Abort, _) => return refuse("it no longer changes what collectors get"),
        (RolloutAction::Promote, RolloutState::Running | RolloutState::Paused) => {
            if let Some(w) = cur.waves.get_mut(cur.wave) {
                w.promoted = true;
            }
        }
        (RolloutAction::Promote, _) => return refuse("only a running or paused rollout can be promoted"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::AuthSettings;
    use crate::storage::Store;

    /// Two instances on one store and clock: the lease is exclusive until
    /// it expires, renewable by its holder, and taken by the other only
    /// once expired — which is how a crashed holder is replaced.
    #[tokio::test]
    async fn the_lease_passes_to_another_instance_only_once_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("db.redb")).await.unwrap();
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let settings = AuthSettings {
            session_ttl: Duration::from_secs(60),
            api_token_ttl: Duration::from_secs(60),
            enrollment_token_ttl: Duration::from_secs(3600),
        };
        let d = Domain::new(
            store,
            clock.clone() as Arc<dyn crate::clock::Clock>,
            "test".into(),
            settings,
        );
        let ttl = Duration::from_secs(15);
        assert!(d.take_rollout_lease("a", ttl).await.unwrap());
        assert!(!d.take_rollout_lease("b", ttl).await.unwrap());
        clock.advance(Duration::from_secs(10));
        // The holder renews: the expiry moves to 10 s + 15 s.
        assert!(d.take_rollout_lease("a", ttl).await.unwrap());
        clock.advance(Duration::from_secs(14));
        assert!(
            !d.take_rollout_lease("b", ttl).await.unwrap(),
            "24 s: a's renewed lease holds"
        );
        clock.advance(Duration::from_secs(1));
        assert!(
            d.take_rollout_lease("b", ttl).await.unwrap(),
            "25 s: expired, b takes it"
        );
        assert!(!d.take_rollout_lease("a", ttl).await.unwrap(), "a lost it");
        let lease = d.store.get::<RolloutLease>(LEASE_KEY).await.unwrap().unwrap().value;
        assert_eq!(lease.holder, "b");
        // A graceful stop gives it up at once; releasing someone else's
        // lease does nothing.
        d.release_rollout_lease("a").await.unwrap();
        assert!(!d.take_rollout_lease("a", ttl).await.unwrap());
        d.release_rollout_lease("b").await.unwrap();
        assert!(d.take_rollout_lease("a", ttl).await.unwrap());
    }
}
