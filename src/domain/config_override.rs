//! The emergency config override: an admin makes the whole fleet serve an
//! earlier commit of the config repository until the override is cleared
//! (for incidents when the repository cannot be changed quickly).
//!
//! One store record, so every instance obeys the same override; each
//! instance runs [`follow_config_override`], which hands the record to its
//! own config store at start and on every change. Setting and clearing are
//! audited in the same commit as the record.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, Domain, DomainError, Role};
use crate::clock::Timestamp;
use crate::configstore::{ActiveOverride, ConfigStoreHandle};
use crate::storage::{Expect, Op, Record, Table, Versioned};

const OVERRIDE_KEY: &str = "override";

/// The stored override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigOverride {
    /// Full id of the commit every instance serves while it is set.
    pub commit: String,
    /// Why (the incident); shown wherever the override is.
    pub reason: String,
    /// Who set it (audit name).
    pub set_by: String,
    pub set_at: Timestamp,
}
impl Record for ConfigOverride {
    const TABLE: Table = Table::ConfigControl;
}

impl From<&ConfigOverride> for ActiveOverride {
    fn from(o: &ConfigOverride) -> Self {
        ActiveOverride {
            commit: o.commit.clone(),
            reason: o.reason.clone(),
            set_by: o.set_by.clone(),
            set_at: o.set_at,
        }
    }
}

impl Domain {
    /// The override in force, if any (viewer).
    pub async fn config_override(&self, actor: &Actor) -> Result<Option<Versioned<ConfigOverride>>, DomainError> {
        actor.require(Role::Viewer)?;
        Ok(self.store.get::<ConfigOverride>(OVERRIDE_KEY).await?)
    }

    /// Set (or replace) the override (admin). `commit` is a full commit id
    /// the caller has checked is a valid config commit.
    pub async fn set_config_override(
        &self,
        actor: &Actor,
        commit: String,
        reason: &str,
    ) -> Result<Versioned<ConfigOverride>, DomainError> {
        actor.require(Role::Admin)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(DomainError::invalid(
                "reason",
                "say why (the incident): it is shown wherever the override is",
            ));
        }
        if reason.len() > 500 {
            return Err(DomainError::invalid("reason", "at most 500 bytes"));
        }
        let previous = self.store.get::<ConfigOverride>(OVERRIDE_KEY).await?;
        let value = ConfigOverride {
            commit: commit.clone(),
            reason: reason.to_string(),
            set_by: actor.audit_name(),
            set_at: self.clock.now(),
        };
        // Replacing an override is fine, but not one set concurrently
        // since we read it: the audit trail must say what was replaced.
        let expect = previous.as_ref().map_or(Expect::Absent, |p| Expect::Version(p.version));
        let ops = vec![
            Op::put(OVERRIDE_KEY, &value, expect)?,
            self.audit_op(
                actor,
                "config.override.set",
                &commit,
                "ok",
                serde_json::json!({ "reason": reason, "replaced": previous.map(|p| p.value.commit) }),
            )?,
        ];
        let versions = self
            .store
            .commit(ops)
            .await
            .map_err(super::conflict_as("the config override"))?;
        Ok(Versioned {
            key: OVERRIDE_KEY.into(),
            version: versions.first().copied().unwrap_or(1),
            value,
        })
    }

    /// Clear the override (admin); `false` when none was set.
    pub async fn clear_config_override(&self, actor: &Actor) -> Result<bool, DomainError> {
        actor.require(Role::Admin)?;
        let Some(current) = self.store.get::<ConfigOverride>(OVERRIDE_KEY).await? else {
            return Ok(false);
        };
        let ops = vec![
            Op::delete::<ConfigOverride>(OVERRIDE_KEY, Expect::Version(current.version)),
            self.audit_op(
                actor,
                "config.override.clear",
                &current.value.commit,
                "ok",
                serde_json::json!({ "reason": current.value.reason, "set_by": current.value.set_by }),
            )?,
        ];
        self.store
            .commit(ops)
            .await
            .map_err(super::conflict_as("the config override"))?;
        Ok(true)
    }
}

/// How often the record is re-read even without a change: retries an
/// override this instance could not apply yet (its mirror may not have
/// fetched the commit).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// Apply the stored override to this instance's config store, now and on
/// every change of the record (change feed; re-read when the feed lagged).
/// Owned by `run`; ends when aborted.
pub async fn follow_config_override(domain: Domain, config_store: ConfigStoreHandle) {
    let mut feed = domain.store.subscribe();
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match domain.store.get::<ConfigOverride>(OVERRIDE_KEY).await {
            Ok(record) => {
                let wanted = record.as_ref().map(|r| ActiveOverride::from(&r.value));
                config_store.apply_override(wanted).await;
            }
            Err(e) => tracing::warn!(error = %e, "Cannot read the config override; keeping the current one."),
        }
        // Wait for a change of the record (or a lag, or the recheck tick).
        loop {
            tokio::select! {
                _ = tick.tick() => break,
                c = feed.recv() => match c {
                    Ok(c) if c.table == Table::ConfigControl && c.key == OVERRIDE_KEY => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
