//! Collectors: their view, labels, commands, pinned configs and the
//! deregistration cascade. Credentials live in `credentials`.

use serde::Serialize;
use utoipa::ToSchema;

use super::{
    conflict_as, Actor, Collector, CollectorCredential, CollectorStatus, Command, ConfigAssignment, Domain,
    DomainError, PendingCommands, Role,
};
use crate::clock::Timestamp;
use crate::storage::{Expect, Op, StorageError, Versioned};

/// A collector as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CollectorView {
    pub id: String,
    pub name: String,
    pub labels: super::Labels,
    pub enrolled_at: Timestamp,
    pub enrollment_token_id: String,
    pub version: u64,
}

impl CollectorView {
    fn of(c: &Versioned<Collector>) -> Self {
        CollectorView {
            id: c.value.id.clone(),
            name: c.value.name.clone(),
            labels: c.value.labels.clone(),
            enrolled_at: c.value.enrolled_at,
            enrollment_token_id: c.value.enrollment_token_id.clone(),
            version: c.version,
        }
    }
}

impl Domain {
    /// Deregister a collector: the collector, all its credentials, its
    /// status and pending commands go in one transaction with the audit
    /// event. `expected_version`, when given, guards against deleting a
    /// collector that changed since it was read.
    pub async fn deregister_collector(
        &self,
        actor: &Actor,
        collector_id: &str,
        expected_version: Option<u64>,
    ) -> Result<(), DomainError> {
        actor.require(Role::Editor)?;
        for _ in 0..super::MAX_ATTEMPTS {
            let Some(cur) = self.store.get::<Collector>(collector_id).await? else {
                return Err(DomainError::NotFound {
                    what: "collector",
                    id: collector_id.into(),
                });
            };
            if let Some(v) = expected_version {
                if v != cur.version {
                    return Err(DomainError::Conflict {
                        what: "collector",
                        current: Some(cur.version),
                    });
                }
            }
            let mut ops = vec![Op::delete::<Collector>(collector_id, Expect::Version(cur.version))];
            for cred in &cur.value.credential_ids {
                ops.push(Op::delete::<CollectorCredential>(cred, Expect::Any));
            }
            ops.push(Op::delete::<CollectorStatus>(collector_id, Expect::Any));
            ops.push(Op::delete::<PendingCommands>(collector_id, Expect::Any));
            ops.push(Op::delete::<ConfigAssignment>(collector_id, Expect::Any));
            // Its own-telemetry rollup (crate::owntelemetry), by table: the
            // domain does not depend on that module.
            ops.push(Op::Delete {
                table: crate::storage::Table::CollectorTelemetry,
                key: collector_id.to_string(),
                expect: Expect::Any,
            });
            ops.push(self.audit_op(
                actor,
                "collector.deregister",
                collector_id,
                "ok",
                serde_json::json!({ "name": cur.value.name, "credentials": cur.value.credential_ids }),
            )?);
            match self.store.commit(ops).await {
                Ok(_) => return Ok(()),
                // Changed under us (labels, rotation): without an explicit
                // expected version the operator wants it gone anyway.
                Err(StorageError::Conflict { .. }) if expected_version.is_none() => continue,
                Err(e) => return Err(conflict_as("collector")(e)),
            }
        }
        Err(DomainError::Conflict {
            what: "collector",
            current: None,
        })
    }
}

impl Domain {
    /// Replace a collector's labels on top of the version the editor read.
    pub async fn update_labels(
        &self,
        actor: &Actor,
        collector_id: &str,
        version: Option<u64>,
        labels: super::Labels,
    ) -> Result<CollectorView, DomainError> {
        actor.require(Role::Editor)?;
        let version = version.ok_or(DomainError::PreconditionRequired)?;
        super::validate_labels("labels", &labels)?;
        let Some(cur) = self.store.get::<Collector>(collector_id).await? else {
            return Err(DomainError::NotFound {
                what: "collector",
                id: collector_id.into(),
            });
        };
        if cur.version != version {
            return Err(DomainError::Conflict {
                what: "collector",
                current: Some(cur.version),
            });
        }
        let mut c = cur.value;
        let before = std::mem::replace(&mut c.labels, labels);
        let ops = vec![
            Op::put(collector_id, &c, Expect::Version(version))?,
            self.audit_op(
                actor,
                "collector.update_labels",
                collector_id,
                "ok",
                serde_json::json!({ "before": before, "after": c.labels }),
            )?,
        ];
        let v = self.store.commit(ops).await.map_err(conflict_as("collector"))?;
        Ok(CollectorView::of(&Versioned {
            key: collector_id.into(),
            version: v[0],
            value: c,
        }))
    }

    /// Queue a command (e.g. `restart`) for a collector. Whichever instance
    /// holds its connection delivers it (it learns of it from the change
    /// feed).
    pub async fn queue_command(&self, actor: &Actor, collector_id: &str, kind: &str) -> Result<Command, DomainError> {
        actor.require(Role::Editor)?;
        let command = Command {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.into(),
            created_at: self.clock.now(),
        };
        for _ in 0..super::MAX_ATTEMPTS {
            let cur = self.store.get::<PendingCommands>(collector_id).await?;
            let (mut pending, expect) = match cur {
                Some(p) => (p.value, Expect::Version(p.version)),
                None => (
                    PendingCommands {
                        collector_id: collector_id.into(),
                        items: vec![],
                    },
                    Expect::Absent,
                ),
            };
            pending.items.push(command.clone());
            let ops = vec![
                Op::check::<Collector>(collector_id, Expect::Present),
                Op::put(collector_id, &pending, expect)?,
                self.audit_op(
                    actor,
                    &format!("collector.{kind}"),
                    collector_id,
                    "queued",
                    serde_json::Value::Null,
                )?,
            ];
            match self.store.commit(ops).await {
                Ok(_) => return Ok(command),
                Err(StorageError::Conflict {
                    table: crate::storage::Table::Collectors,
                    ..
                }) => {
                    return Err(DomainError::NotFound {
                        what: "collector",
                        id: collector_id.into(),
                    })
                }
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DomainError::Conflict {
            what: "pending commands",
            current: None,
        })
    }

    /// The commands queued for a collector, oldest first. They stay queued
    /// until the caller has delivered them (`commands_delivered`), so a
    /// delivery that fails loses nothing.
    pub async fn pending_commands(&self, collector_id: &str) -> Result<Vec<Command>, DomainError> {
        Ok(self
            .store
            .get::<PendingCommands>(collector_id)
            .await?
            .map(|p| p.value.items)
            .unwrap_or_default())
    }

    /// Remove delivered commands; commands queued meanwhile stay.
    pub async fn commands_delivered(&self, collector_id: &str, ids: &[String]) -> Result<(), DomainError> {
        for _ in 0..super::MAX_ATTEMPTS {
            let Some(cur) = self.store.get::<PendingCommands>(collector_id).await? else {
                return Ok(());
            };
            let mut rest = cur.value.clone();
            rest.items.retain(|c| !ids.contains(&c.id));
            if rest.items.len() == cur.value.items.len() {
                return Ok(());
            }
            let expect = Expect::Version(cur.version);
            let op = if rest.items.is_empty() {
                Op::delete::<PendingCommands>(collector_id, expect)
            } else {
                Op::put(collector_id, &rest, expect)?
            };
            match self.store.commit(vec![op]).await {
                Ok(_) => return Ok(()),
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DomainError::Conflict {
            what: "pending commands",
            current: None,
        })
    }

    /// Pin a config to a collector, or (`target` = `_default`) set the
    /// fleet default.
    pub async fn set_assignment(
        &self,
        actor: &Actor,
        target: &str,
        files: std::collections::BTreeMap<String, super::AssignedFile>,
    ) -> Result<(), DomainError> {
        actor.require(Role::Editor)?;
        if files.is_empty() {
            return Err(DomainError::invalid(
                "files",
                "give at least one file (DELETE removes the assignment)",
            ));
        }
        let assignment = ConfigAssignment {
            files,
            updated_at: self.clock.now(),
            updated_by: actor.audit_name(),
        };
        let mut ops = vec![];
        if target != DEFAULT_ASSIGNMENT {
            ops.push(Op::check::<Collector>(target, Expect::Present));
        }
        ops.push(Op::put(target, &assignment, Expect::Any)?);
        ops.push(self.audit_op(actor, "config.assign", target, "ok", serde_json::Value::Null)?);
        match self.store.commit(ops).await {
            Err(StorageError::Conflict { .. }) => Err(DomainError::NotFound {
                what: "collector",
                id: target.into(),
            }),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn delete_assignment(&self, actor: &Actor, target: &str) -> Result<(), DomainError> {
        actor.require(Role::Editor)?;
        self.store
            .commit(vec![
                Op::delete::<ConfigAssignment>(target, Expect::Any),
                self.audit_op(actor, "config.unassign", target, "ok", serde_json::Value::Null)?,
            ])
            .await?;
        Ok(())
    }
}

/// Key of the fleet-wide default assignment.
pub const DEFAULT_ASSIGNMENT: &str = "_default";
