//! The stored record types. Field changes that old servers could not read
//! bump the record's `FORMAT` (see `storage::Record`).

use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// Enrolled on first contact by presenting the enrollment token (not
    /// through `POST /enroll`): while `credential_adopted_at` is unset, the
    /// agent with this uid may keep authenticating with that token.
    #[serde(default)]
    pub enrolled_on_first_contact: bool,
    /// When the agent first connected with a credential of its own (offered
    /// over OpAMP connection settings): from then on the token path for this
    /// uid is closed.
    #[serde(default)]
    pub credential_adopted_at: Option<Timestamp>,
    /// Credentials replaced by a newer one but still valid during the
    /// rotation overlap (until the agent connects with the newest one or the
    /// window in `CollectorCredential::valid_until` ends).
    #[serde(default)]
    pub superseded_credential_ids: Vec<String>,
    /// An operator asked for a new credential to be delivered over OpAMP
    /// connection settings; the instance holding the agent's session issues
    /// it (the secret never passes through the store) and clears this.
    #[serde(default)]
    pub rotation_requested_at: Option<Timestamp>,
}
impl Collector {
    /// Whether the agent may (still) authenticate with its enrollment token.
    pub fn token_path_open(&self) -> bool {
        self.enrolled_on_first_contact && self.credential_adopted_at.is_none()
    }
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
    /// End of the rotation overlap: a superseded credential is refused from
    /// then on even if the agent never connected with its successor.
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
}
impl Record for CollectorCredential {
    const TABLE: Table = Table::CollectorCredentials;
}

/// Last reported status of a collector, written by the fleet module of the
/// instance holding its connection; keyed by collector id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CollectorStatus {
    pub collector_id: String,
    /// Connected to `instance` (see `ServerInstance` for whether that
    /// instance is itself alive).
    pub connected: bool,
    /// The instance holding (or last holding) the connection.
    pub instance: String,
    /// `grpc`, `websocket` or `http`.
    pub transport: String,
    pub connected_at: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// AgentCapabilities bits the collector reported.
    pub capabilities: u64,
    /// Shared, like the history: a session hands its status to the status
    /// writer on every change, and this part rarely changes.
    #[schema(value_type = AgentDescriptionView)]
    pub description: Arc<AgentDescriptionView>,
    pub health: Option<HealthView>,
    pub effective_config: Option<EffectiveConfigView>,
    pub remote_config: Option<RemoteConfigView>,
    /// The last [`CONFIG_HISTORY_LEN`] remote-config status transitions,
    /// newest first. Kept on the status record because it changes exactly
    /// when the status does (no extra write, never one per heartbeat).
    ///
    /// Shared (`Arc`): a session hands a copy of its status to the status
    /// writer on every change, and copying twenty transitions (two strings
    /// each) was most of that copy's allocations. Changed with
    /// `Arc::make_mut`, which copies only while the writer still holds the
    /// previous one.
    #[serde(default)]
    #[schema(value_type = Vec<ConfigTransition>)]
    pub config_history: Arc<Vec<ConfigTransition>>,
    /// The component types the collector can run (AgentCapabilities
    /// ReportsAvailableComponents); absent when it never reported them.
    /// Written only when they change (their hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_components: Option<AvailableComponentsView>,
}
impl Record for CollectorStatus {
    const TABLE: Table = Table::CollectorStatus;
}

/// AgentDescription attributes, rendered as strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentDescriptionView {
    #[schema(value_type = BTreeMap<String, String>)]
    pub identifying: Attributes,
    #[schema(value_type = BTreeMap<String, String>)]
    pub non_identifying: Attributes,
}

/// Attribute name -> value, sorted by name, each name once (the last value
/// given wins, as when collecting into a map); a JSON object on the wire
/// and in the store.
///
/// A boxed slice rather than a `BTreeMap`: every connected collector's
/// session holds two of these, and a map's first node takes ~540 bytes
/// however few attributes it holds (an agent reports a handful): 1 KiB per
/// collector for a typical description, measured with heaptrack.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes(Box<[(Box<str>, Box<str>)]>);

impl Attributes {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.into_iter()
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut all: Vec<(Box<str>, Box<str>)> = items.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        // Stable: of equal names the last given stays last, and is kept.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(all.len());
        for kv in all {
            match kept.last_mut() {
                Some(last) if last.0 == kv.0 => *last = kv,
                _ => kept.push(kv),
            }
        }
        Attributes(kept.into_boxed_slice())
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a str, &'a str);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (Box<str>, Box<str>)>, fn(&'a (Box<str>, Box<str>)) -> (&'a str, &'a str)>;

    fn into_iter(self) -> Self::IntoIter {
        fn pair(kv: &(Box<str>, Box<str>)) -> (&str, &str) {
            (&kv.0, &kv.1)
        }
        self.0.iter().map(pair)
    }
}

impl Serialize for Attributes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(d)?.into_iter().collect())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    pub healthy: bool,
    pub status: String,
    pub last_error: String,
    pub start_time: Option<Timestamp>,
    #[serde(default)]
    #[schema(no_recursion)]
    pub components: BTreeMap<String, HealthView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EffectiveConfigView {
    /// SHA-256 (hex) over the reported files, in name order.
    pub hash: String,
    /// File name -> body (as text, cut at 256 KiB). Shared: every
    /// collector that reports running the config this server pushed it
    /// holds the same bodies (`fleet::desired::Desired::as_effective`).
    /// Empty in a stored status: the bodies are stored once per hash
    /// ([`EffectiveConfigBodies`]); statuses stored before that carry them.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub files: Arc<BTreeMap<String, String>>,
}

/// The bodies of one effective config, keyed by its hash (the
/// `EffectiveConfigView::hash` statuses name): stored once however many
/// collectors report running it (`fleet::bodies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectiveConfigBodies {
    pub files: Arc<BTreeMap<String, String>>,
    /// When an instance last stored them: the sweep of bodies no status
    /// names spares recent ones, which a status writer may name without
    /// storing them again.
    pub stored_at: Timestamp,
}
impl Record for EffectiveConfigBodies {
    const TABLE: Table = Table::EffectiveConfigs;
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RemoteConfigView {
    /// `APPLIED`, `APPLYING`, `FAILED` or `UNSET`.
    #[schema(value_type = super::RemoteConfigState)]
    pub status: String,
    /// Hash (hex) of the remote config the status is about.
    pub hash: String,
    pub error_message: String,
}

/// How many config-status transitions a status record keeps.
pub const CONFIG_HISTORY_LEN: usize = 20;

/// One change of a collector's reported remote-config status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigTransition {
    /// `APPLIED`, `APPLYING`, `FAILED` or `UNSET`. Shared text (like the
    /// hash): copying a history copies no string.
    #[schema(value_type = String)]
    pub status: Arc<str>,
    /// Hash (hex) of the remote config it is about.
    #[schema(value_type = String)]
    pub hash: Arc<str>,
    pub error_message: String,
    /// When this instance received the report.
    pub at: Timestamp,
}

impl CollectorStatus {
    /// Record a newly reported remote-config status; a repeat of the
    /// current one (every heartbeat carries it) adds nothing.
    pub fn report_remote_config(&mut self, r: RemoteConfigView, at: Timestamp) {
        if self.remote_config.as_ref() != Some(&r) {
            let history = Arc::make_mut(&mut self.config_history);
            history.truncate(CONFIG_HISTORY_LEN - 1);
            // Grow as a Vec does, but never past the bound: inserting into
            // a full history doubled it to 32 and then 40 slots (80 bytes
            // each, per connected collector), only to truncate it again.
            if history.len() == history.capacity() {
                let want = (history.capacity() * 2).clamp(4, CONFIG_HISTORY_LEN);
                history.reserve_exact(want - history.len());
            }
            history.insert(
                0,
                ConfigTransition {
                    status: r.status.as_str().into(),
                    hash: r.hash.as_str().into(),
                    error_message: r.error_message.clone(),
                    at,
                },
            );
        }
        self.remote_config = Some(r);
    }
}

/// AvailableComponents as reported: kind (`receivers`, `processors`,
/// `exporters`, `extensions`, `connectors`) -> component types.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AvailableComponentsView {
    /// The agent's hash (hex) of what it reported.
    pub hash: String,
    pub components: BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// A config pinned to one collector (key: its id), or the fleet default
/// (key: `_default`) for collectors nothing else configures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfigAssignment {
    /// File name -> file.
    pub files: BTreeMap<String, AssignedFile>,
    pub updated_at: Timestamp,
    pub updated_by: String,
}
impl Record for ConfigAssignment {
    const TABLE: Table = Table::ConfigAssignments;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssignedFile {
    pub body: String,
    /// e.g. `application/yaml`.
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_content_type() -> String {
    "application/yaml".into()
}

/// Presence of a server instance; refreshed every few seconds, so a stale
/// row means the instance is gone (and its collectors are not connected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerInstance {
    pub name: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    pub connected_collectors: u64,
}
impl Record for ServerInstance {
    const TABLE: Table = Table::ServerInstances;
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
    /// Agents enrolled with this token must switch to a credential of their
    /// own: first contact is refused for agents that cannot accept OpAMP
    /// connection settings (they enroll through `POST /enroll` instead).
    #[serde(default)]
    pub require_own_credential: bool,
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

impl Role {
    /// The name used in the API, config and pages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
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
    /// Login sessions started before this are void (set when the password
    /// changes: a leaked session does not survive a password reset).
    #[serde(default)]
    pub sessions_valid_after: Option<Timestamp>,
}
impl Record for User {
    const TABLE: Table = Table::Users;
}

/// An API token. It acts as its owner, with `role` or the owner's current
/// role, whichever is lower (a demoted owner's tokens are demoted at once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// The most this token may do, chosen at creation (no higher than the
    /// creator's role then). Absent on tokens made before roles existed:
    /// those act with the owner's current role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_a_sorted_map_with_the_last_value_of_a_repeated_name() {
        let a: Attributes = [("os.type", "linux"), ("host.name", "a"), ("host.name", "b")]
            .into_iter()
            .collect();
        assert_eq!(a.iter().collect::<Vec<_>>(), [("host.name", "b"), ("os.type", "linux")]);
        // The same JSON as the map it replaced, both ways.
        let map: BTreeMap<&str, &str> = [("host.name", "b"), ("os.type", "linux")].into();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        assert_eq!(serde_json::from_str::<Attributes>(&json).unwrap(), a);
        assert!(serde_json::from_str::<Attributes>(r#"{"k": 1}"#).is_err());
    }
}
