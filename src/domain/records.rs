//! The stored record types. Field changes that old servers could not read
//! bump the record's `FORMAT` (see `storage::Record`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clock::Timestamp;
use crate::storage::{Record, Table};

pub type Labels = BTreeMap<String, String>;

/// An enrolled collector. Its id is the OpAMP instance_uid it enrolled with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Collector {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub enrolled_at: Timestamp,
    /// The enrollment token it enrolled with.
    pub enrollment_token_id: String,
    /// Its credentials (the current one and any not yet purged). Kept here,
    /// not found by a scan, so that the deregistration cascade knows every
    /// child inside its transaction; adding one bumps this record's version.
    pub credential_ids: Vec<String>,
}
impl Record for Collector {
    const TABLE: Table = Table::Collectors;
}

/// A collector's own bearer credential, bound to its instance_uid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectorCredential {
    pub id: String,
    pub collector_id: String,
    pub secret_hash: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}
impl Record for CollectorCredential {
    const TABLE: Table = Table::CollectorCredentials;
}

/// Last reported status of a collector (written by the fleet module);
/// keyed by collector id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectorStatus {
    pub collector_id: String,
    pub updated_at: Timestamp,
    #[serde(default)]
    pub detail: serde_json::Value,
}
impl Record for CollectorStatus {
    const TABLE: Table = Table::CollectorStatus;
}

/// Commands waiting for a collector (restart, …); one document per
/// collector, keyed by its id, so the cascade deletes it by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCommands {
    pub collector_id: String,
    pub items: Vec<Command>,
}
impl Record for PendingCommands {
    const TABLE: Table = Table::Commands;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    pub kind: String,
    pub created_at: Timestamp,
}

/// An enrollment token. Only the hash of its secret is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub expires_at: Timestamp,
    pub max_uses: Option<u32>,
    pub uses: u32,
    /// Labels given to every collector that enrolls with it.
    pub labels: Labels,
    pub revoked_at: Option<Timestamp>,
}
impl Record for EnrollmentToken {
    const TABLE: Table = Table::EnrollmentTokens;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

/// A UI/API user. Keyed by user name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
impl Record for User {
    const TABLE: Table = Table::Users;
}

/// An API token. It acts as its owner, with the owner's current role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub secret_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}
impl Record for ApiToken {
    const TABLE: Table = Table::ApiTokens;
}

/// A UI login session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub username: String,
    pub secret_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}
impl Record for Session {
    const TABLE: Table = Table::Sessions;
}

/// The routing canvas: a free-form JSON document the UI edits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canvas {
    pub document: serde_json::Value,
    pub updated_at: Timestamp,
    pub updated_by: String,
}
impl Record for Canvas {
    const TABLE: Table = Table::Canvas;
}

/// One audited mutation. Keyed by a UUIDv7, so keys sort by time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub id: String,
    pub at: Timestamp,
    /// Who: `user:<name>`, `token:<id>`, `collector:<id>`, `system`.
    pub actor: String,
    /// What, as `area.verb`, e.g. `user.update`, `collector.enroll`.
    pub action: String,
    /// The record acted on.
    pub target: String,
    /// Whether it was allowed (refusals of credentials are audited too).
    pub outcome: String,
    /// The instance that handled it.
    pub instance: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}
impl Record for AuditEvent {
    const TABLE: Table = Table::AuditEvents;
}
