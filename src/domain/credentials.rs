//! A collector's own credentials: checking one, rotating them, issuing one
//! to deliver over OpAMP connection settings, and the overlap during which
//! the replaced credential still works (until the agent connected with the
//! new one, or `CredentialPolicy::rotation_overlap` ends).

use serde::Serialize;
use utoipa::ToSchema;

use super::secrets::{self, SecretKind};
use super::{conflict_as, Actor, Collector, CollectorCredential, CollectorStatus, Domain, DomainError, Role};
use crate::storage::{Expect, Op, StorageError, Versioned};

/// AgentCapabilities_AcceptsOpAMPConnectionSettings.
pub const ACCEPTS_OPAMP_CONNECTION_SETTINGS: u64 = 0x100;

/// The answer to a rotation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RotatedCredential {
    pub collector_id: String,
    /// The new credential, shown once, when the operator installs it
    /// (`delivery` = `response`). Absent when the server delivers it to the
    /// agent itself.
    pub credential: Option<String>,
    /// `response`: the old credentials are revoked now and the new one is
    /// in this answer. `connection_settings`: the agent accepts OpAMP
    /// connection settings, so the server offers it a new credential on its
    /// session (now, or when it next connects); the old one stays valid until
    /// the agent connected with the new one or the overlap window ends.
    pub delivery: String,
    /// Version of the collector record after the rotation.
    pub version: u64,
}

/// A credential issued to be offered to the agent on its session.
#[derive(Debug, Clone)]
pub struct OfferedCredential {
    pub credential_id: String,
    /// The bearer secret (goes into the offer's Authorization header).
    pub credential: String,
    pub collector: Versioned<Collector>,
}

impl Domain {
    /// Check a collector's bearer credential; returns the collector. Refusals
    /// are audited (an unknown credential hammering the endpoint shows up).
    pub async fn authenticate_collector(&self, token: &str) -> Result<Versioned<Collector>, DomainError> {
        let unauth = || DomainError::Unauthenticated("unknown or revoked collector credential".into());
        let Some((id, random)) = secrets::parse(SecretKind::Collector, token) else {
            return Err(unauth());
        };
        let refused = |why: &'static str| async move {
            self.audit_only(
                &Actor::System,
                "collector.authenticate",
                &format!("credential:{id}"),
                why,
                serde_json::Value::Null,
            )
            .await;
            Err(unauth())
        };
        let Some(cred) = self.store.get::<CollectorCredential>(id).await? else {
            return refused("refused: unknown credential").await;
        };
        if !secrets::verify(random, &cred.value.secret_hash) {
            return refused("refused: bad secret").await;
        }
        if cred.value.revoked_at.is_some() {
            return refused("refused: revoked credential").await;
        }
        if cred.value.valid_until.is_some_and(|t| self.clock.now() >= t) {
            return refused("refused: replaced credential past its overlap window").await;
        }
        match self.store.get::<Collector>(&cred.value.collector_id).await? {
            Some(c) => Ok(c),
            None => refused("refused: collector deregistered").await,
        }
    }

    /// Who may rotate a collector's credential: an editor, or the
    /// collector itself.
    pub fn may_rotate(actor: &Actor, collector_id: &str) -> Result<(), DomainError> {
        match actor {
            Actor::Collector { id } if id == collector_id => Ok(()),
            _ => Ok(actor.require(Role::Editor)?),
        }
    }

    /// Rotate a collector's credential. An agent that (last) reported
    /// AcceptsOpAMPConnectionSettings gets the new one delivered on its
    /// session with an overlap; for any other the new credential is returned
    /// and the old ones are revoked at once (the operator installs it).
    /// `live_capabilities`: those of its session on this instance, if any
    /// (`Fleet::rotate_credential`); else those of its stored status.
    pub async fn rotate_credential(
        &self,
        actor: &Actor,
        collector_id: &str,
        live_capabilities: Option<u64>,
    ) -> Result<RotatedCredential, DomainError> {
        Self::may_rotate(actor, collector_id)?;
        let Some(cur) = self.store.get::<Collector>(collector_id).await? else {
            return Err(DomainError::NotFound {
                what: "collector",
                id: collector_id.into(),
            });
        };
        let capabilities = match live_capabilities {
            Some(c) => c,
            None => self
                .store
                .get::<CollectorStatus>(collector_id)
                .await?
                .map_or(0, |s| s.value.capabilities),
        };
        let accepts = capabilities & ACCEPTS_OPAMP_CONNECTION_SETTINGS != 0;
        if accepts {
            return self.request_delivered_rotation(actor, cur).await;
        }
        let now = self.clock.now();
        let new = secrets::generate(SecretKind::Collector);
        let mut ops = Vec::new();
        let mut collector = cur.value.clone();
        // Old credentials are revoked now: the record stays (revoked) so a
        // presented old secret is recognised as rotated away in the audit
        // log, and the cascade still deletes it.
        for old_id in &cur.value.credential_ids {
            if let Some(old) = self.store.get::<CollectorCredential>(old_id).await? {
                if old.value.revoked_at.is_none() {
                    let mut revoked = old.value.clone();
                    revoked.revoked_at = Some(now);
                    ops.push(Op::put(old_id, &revoked, Expect::Version(old.version))?);
                }
            }
        }
        collector.credential_ids.push(new.id.clone());
        collector.superseded_credential_ids.clear();
        collector.rotation_requested_at = None;
        let credential = CollectorCredential {
            id: new.id.clone(),
            collector_id: collector_id.into(),
            secret_hash: new.hash,
            created_at: now,
            revoked_at: None,
            valid_until: None,
        };
        ops.push(Op::put(collector_id, &collector, Expect::Version(cur.version))?);
        let collector_index = ops.len() - 1;
        ops.push(Op::put(&new.id, &credential, Expect::Absent)?);
        ops.push(self.audit_op(
            actor,
            "collector.rotate_credential",
            collector_id,
            "ok",
            serde_json::json!({ "new_credential_id": new.id, "delivery": "response" }),
        )?);
        let versions = self.store.commit(ops).await.map_err(conflict_as("collector"))?;
        Ok(RotatedCredential {
            collector_id: collector_id.into(),
            credential: Some(new.token),
            delivery: "response".into(),
            version: versions[collector_index],
        })
    }

    /// Mark the rotation as wanted; the instance holding the agent's session
    /// learns of it from the change feed and issues the credential there, so
    /// its secret never passes through the store.
    async fn request_delivered_rotation(
        &self,
        actor: &Actor,
        cur: Versioned<Collector>,
    ) -> Result<RotatedCredential, DomainError> {
        let mut collector = cur.value.clone();
        collector.rotation_requested_at = Some(self.clock.now());
        let ops = vec![
            Op::put(&cur.key, &collector, Expect::Version(cur.version))?,
            self.audit_op(
                actor,
                "collector.rotate_credential",
                &cur.key,
                "requested",
                serde_json::json!({ "delivery": "connection_settings" }),
            )?,
        ];
        let versions = self.store.commit(ops).await.map_err(conflict_as("collector"))?;
        Ok(RotatedCredential {
            collector_id: cur.key,
            credential: None,
            delivery: "connection_settings".into(),
            version: versions[0],
        })
    }

    /// Whether the session of this collector should be offered a credential
    /// of its own: it is on the token path, or a rotation was requested.
    pub fn wants_credential_offer(collector: &Collector) -> bool {
        collector.token_path_open() || collector.rotation_requested_at.is_some()
    }

    /// Issue a credential to offer on the agent's session. The credentials
    /// it replaces stay valid for the overlap window (or until the agent
    /// connects with the new one, see `credential_connected`).
    pub async fn issue_offered_credential(&self, collector_id: &str) -> Result<OfferedCredential, DomainError> {
        for _ in 0..super::MAX_ATTEMPTS {
            let Some(cur) = self.store.get::<Collector>(collector_id).await? else {
                return Err(DomainError::NotFound {
                    what: "collector",
                    id: collector_id.into(),
                });
            };
            let now = self.clock.now();
            let until = now.plus(self.policy.rotation_overlap);
            let new = secrets::generate(SecretKind::Collector);
            let mut collector = cur.value.clone();
            let mut ops = Vec::new();
            for old_id in &cur.value.credential_ids {
                let Some(old) = self.store.get::<CollectorCredential>(old_id).await? else {
                    continue;
                };
                if old.value.revoked_at.is_some() {
                    continue;
                }
                if !collector.superseded_credential_ids.contains(old_id) {
                    collector.superseded_credential_ids.push(old_id.clone());
                }
                if old.value.valid_until.is_none_or(|t| t > until) {
                    let mut limited = old.value.clone();
                    limited.valid_until = Some(until);
                    ops.push(Op::put(old_id, &limited, Expect::Version(old.version))?);
                }
            }
            let reason = if collector.rotation_requested_at.is_some() {
                "rotation"
            } else {
                "first_contact"
            };
            collector.rotation_requested_at = None;
            collector.credential_ids.push(new.id.clone());
            let credential = CollectorCredential {
                id: new.id.clone(),
                collector_id: collector_id.into(),
                secret_hash: new.hash,
                created_at: now,
                revoked_at: None,
                valid_until: None,
            };
            ops.push(Op::put(collector_id, &collector, Expect::Version(cur.version))?);
            let collector_index = ops.len() - 1;
            ops.push(Op::put(&new.id, &credential, Expect::Absent)?);
            ops.push(self.audit_op(
                &Actor::System,
                "collector.credential_offered",
                collector_id,
                "ok",
                serde_json::json!({ "credential_id": new.id, "reason": reason, "old_valid_until": until }),
            )?);
            match self.store.commit(ops).await {
                Ok(versions) => {
                    return Ok(OfferedCredential {
                        credential_id: new.id,
                        credential: new.token,
                        collector: Versioned {
                            key: collector_id.into(),
                            version: versions[collector_index],
                            value: collector,
                        },
                    })
                }
                // Labels edited or a rotation requested meanwhile: redo.
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DomainError::Conflict {
            what: "collector",
            current: None,
        })
    }

    /// A session was opened with `credential_id`. When it is the newest
    /// credential and older ones (or the enrollment token) were still
    /// allowed, the agent has switched: the others are revoked and the token
    /// path for its uid closes. Writes nothing in the common case.
    pub async fn credential_connected(
        &self,
        collector: &Versioned<Collector>,
        credential_id: &str,
    ) -> Result<Option<Versioned<Collector>>, DomainError> {
        let c = &collector.value;
        let newest = c.credential_ids.last().is_some_and(|id| id == credential_id);
        let switching = c.token_path_open() || !c.superseded_credential_ids.is_empty();
        if !newest || !switching {
            return Ok(None);
        }
        let now = self.clock.now();
        let mut updated = c.clone();
        let mut ops = Vec::new();
        for old_id in &c.superseded_credential_ids {
            if let Some(old) = self.store.get::<CollectorCredential>(old_id).await? {
                if old.value.revoked_at.is_none() {
                    let mut revoked = old.value.clone();
                    revoked.revoked_at = Some(now);
                    ops.push(Op::put(old_id, &revoked, Expect::Version(old.version))?);
                }
            }
        }
        updated.superseded_credential_ids.clear();
        if updated.credential_adopted_at.is_none() {
            updated.credential_adopted_at = Some(now);
        }
        ops.push(Op::put(&collector.key, &updated, Expect::Version(collector.version))?);
        let collector_index = ops.len() - 1;
        ops.push(self.audit_op(
            &Actor::Collector {
                id: collector.key.clone(),
            },
            "collector.credential_adopted",
            &collector.key,
            "ok",
            serde_json::json!({ "credential_id": credential_id, "revoked": c.superseded_credential_ids }),
        )?);
        match self.store.commit(ops).await {
            Ok(versions) => {
                tracing::info!(collector_id = %collector.key, credential_id, "The collector switched to its new credential.");
                Ok(Some(Versioned {
                    key: collector.key.clone(),
                    version: versions[collector_index],
                    value: updated,
                }))
            }
            // Changed meanwhile (another instance saw the same reconnect):
            // the next connection re-checks.
            Err(StorageError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
