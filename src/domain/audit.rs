//! Reading the audit log (events are written by each mutation, in its own
//! transaction; see `Domain::audit_op`).

use super::enrollment::paginate;
use super::{page_limit, Actor, AuditEvent, Domain, DomainError, Page, Role};
use crate::storage::Scan;

#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    /// Only events whose action starts with this (e.g. `collector.`).
    pub action_prefix: Option<String>,
}

impl Domain {
    /// Newest first.
    pub async fn list_audit(&self, actor: &Actor, q: AuditQuery) -> Result<Page<AuditEvent>, DomainError> {
        actor.require(Role::Admin)?;
        let limit = page_limit(q.limit);
        let Some(prefix) = q.action_prefix.filter(|p| !p.is_empty()) else {
            let rows = self
                .store
                .scan::<AuditEvent>(Scan {
                    after: q.cursor,
                    limit: limit + 1,
                    reverse: true,
                    ..Default::default()
                })
                .await?;
            return Ok(paginate(rows, limit, AuditEvent::clone));
        };
        let mut out = Vec::new();
        let mut after = q.cursor;
        loop {
            let batch = self
                .store
                .scan::<AuditEvent>(Scan {
                    after: after.clone(),
                    limit: 1000,
                    reverse: true,
                    ..Default::default()
                })
                .await?;
            let done = batch.len() < 1000;
            after = batch.last().map(|e| e.key.clone());
            out.extend(batch.into_iter().filter(|e| e.value.action.starts_with(&prefix)));
            if done || out.len() > limit {
                return Ok(paginate(out, limit, AuditEvent::clone));
            }
        }
    }
}
