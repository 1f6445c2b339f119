//! Collectors: listing, the credential a collector authenticates with, its
//! rotation, and the deregistration cascade.

use serde::Serialize;
use utoipa::ToSchema;

use super::secrets::{self, SecretKind};
use super::{
    conflict_as, page_limit, Actor, Collector, CollectorCredential, CollectorStatus, Domain, DomainError, Page,
    PendingCommands, Role,
};
use crate::clock::Timestamp;
use crate::storage::{Expect, Op, Scan, StorageError, Versioned};

/// Filters of the collector list.
#[derive(Debug, Clone, Default)]
pub struct CollectorQuery {
    /// Only collectors carrying all these labels.
    pub labels: super::Labels,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// A new credential, shown once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RotatedCredential {
    pub collector_id: String,
    pub credential: String,
    /// Version of the collector record after the rotation.
    pub version: u64,
}

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
    pub async fn get_collector(&self, actor: &Actor, id: &str) -> Result<CollectorView, DomainError> {
        actor.require(Role::Viewer)?;
        self.store
            .get::<Collector>(id)
            .await?
            .map(|c| CollectorView::of(&c))
            .ok_or_else(|| DomainError::NotFound {
                what: "collector",
                id: id.into(),
            })
    }

    pub async fn list_collectors(&self, actor: &Actor, q: CollectorQuery) -> Result<Page<CollectorView>, DomainError> {
        actor.require(Role::Viewer)?;
        let limit = page_limit(q.limit);
        // Filtering happens after the scan; keep scanning until the page is
        // full so a selective filter still returns full pages.
        let mut out: Vec<Versioned<Collector>> = Vec::new();
        let mut after = q.cursor.clone();
        loop {
            let batch = self
                .store
                .scan::<Collector>(Scan {
                    after: after.clone(),
                    limit: 1000,
                    ..Default::default()
                })
                .await?;
            let done = batch.len() < 1000;
            after = batch.last().map(|c| c.key.clone());
            out.extend(
                batch
                    .into_iter()
                    .filter(|c| q.labels.iter().all(|(k, v)| c.value.labels.get(k) == Some(v))),
            );
            if done || out.len() > limit {
                break;
            }
        }
        let more = out.len() > limit;
        out.truncate(limit);
        let next_cursor = if more { out.last().map(|c| c.key.clone()) } else { None };
        Ok(Page {
            items: out.iter().map(CollectorView::of).collect(),
            next_cursor,
        })
    }

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
        match self.store.get::<Collector>(&cred.value.collector_id).await? {
            Some(c) => Ok(c),
            None => refused("refused: collector deregistered").await,
        }
    }

    /// Issue a new credential and revoke the old ones, atomically. The
    /// collector record is rewritten too (its credential list changes), so
    /// a concurrent cascade or rotation conflicts instead of missing a child.
    pub async fn rotate_credential(&self, actor: &Actor, collector_id: &str) -> Result<RotatedCredential, DomainError> {
        match actor {
            Actor::Collector { id } if id == collector_id => {}
            _ => actor.require(Role::Editor)?,
        }
        let Some(cur) = self.store.get::<Collector>(collector_id).await? else {
            return Err(DomainError::NotFound {
                what: "collector",
                id: collector_id.into(),
            });
        };
        let now = self.clock.now();
        let new = secrets::generate(SecretKind::Collector);
        let mut ops = Vec::new();
        let mut collector = cur.value.clone();
        // Old credentials are revoked now and purged from the list: the
        // record stays (revoked) so a presented old secret is recognised as
        // rotated away in the audit log, and the cascade still deletes it.
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
        let credential = CollectorCredential {
            id: new.id.clone(),
            collector_id: collector_id.into(),
            secret_hash: new.hash,
            created_at: now,
            revoked_at: None,
        };
        ops.push(Op::put(collector_id, &collector, Expect::Version(cur.version))?);
        let collector_index = ops.len() - 1;
        ops.push(Op::put(&new.id, &credential, Expect::Absent)?);
        ops.push(self.audit_op(
            actor,
            "collector.rotate_credential",
            collector_id,
            "ok",
            serde_json::json!({ "new_credential_id": new.id }),
        )?);
        let versions = self.store.commit(ops).await.map_err(conflict_as("collector"))?;
        Ok(RotatedCredential {
            collector_id: collector_id.into(),
            credential: new.token,
            version: versions[collector_index],
        })
    }

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
