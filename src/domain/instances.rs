//! The server instances sharing this store, from their presence rows
//! (written by `fleet::presence`): what every instance can know about the
//! others without asking them.

use std::time::Duration;

use super::{Actor, Domain, DomainError, Role, ServerInstance};
use crate::clock::Timestamp;
use crate::storage::Scan;

/// One instance as the store knows it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub name: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    /// Collectors it held at its last heartbeat.
    pub connected_collectors: u64,
    /// Its heartbeat is younger than the staleness limit.
    pub alive: bool,
}

impl Domain {
    /// Every presence row, by name. `stale` is the age past which a row
    /// means the instance is gone (the fleet's presence rule).
    pub async fn list_instances(&self, actor: &Actor, stale: Duration) -> Result<Vec<InstanceView>, DomainError> {
        actor.require(Role::Viewer)?;
        let now = self.clock.now();
        // One row per instance: a handful, never paged.
        let rows = self.store.scan::<ServerInstance>(Scan::default()).await?;
        Ok(rows
            .into_iter()
            .map(|r| InstanceView {
                alive: now.0.saturating_sub(r.value.heartbeat_at.0) < stale.as_millis() as u64,
                name: r.value.name,
                started_at: r.value.started_at,
                heartbeat_at: r.value.heartbeat_at,
                connected_collectors: r.value.connected_collectors,
            })
            .collect())
    }
}
