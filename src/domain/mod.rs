//! Domain services: the rules of enrollment, credentials, collectors, users,
//! sessions and API tokens, the routing canvas and the audit log. Each
//! multi-record write is one `Store::commit` (all-or-nothing) that carries
//! its audit event; read-modify-write paths carry the version they read.
//!
//! Nothing here knows HTTP or gRPC: `api` and `transport` map `DomainError`
//! to their status codes.

mod audit;
mod auth;
pub mod auth_cache;
mod canvas;
mod collectors;
mod config_override;
pub mod credentials;
mod enrollment;
mod instances;
mod onboarding;
pub mod records;
pub mod rollout;
pub mod secrets;
pub mod states;
mod users;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use audit::{parse_time, AuditQuery};
pub use auth::{ApiTokenCreated, ApiTokenView, LoginResult, NewApiToken};
pub use canvas::CanvasDoc;
pub use collectors::{CollectorView, DEFAULT_ASSIGNMENT};
pub use config_override::{follow_config_override, ConfigOverride};
pub use credentials::{OfferedCredential, RotatedCredential};
pub use enrollment::{
    EnrollRequest, Enrolled, EnrollmentTokenCreated, EnrollmentTokenView, FirstContact, NewEnrollmentToken,
};
pub use instances::InstanceView;
pub use onboarding::{EnrolledCollector, EnrollmentProgress};
pub use records::*;
pub use states::{ConfigState, HealthState, RemoteConfigState, StoreMode, TokenState};
pub use users::{NewUser, UserUpdate, UserView, MIN_PASSWORD_LEN};

use crate::clock::Clock;
use crate::storage::{Expect, Op, StorageError, Store};

/// Who performs an action; checked against roles, written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A logged-in user (UI session).
    User { name: String, role: Role },
    /// An API token, acting as its owner with the owner's role.
    ApiToken { id: String, owner: String, role: Role },
    /// A collector with its own credential.
    Collector { id: String },
    /// Someone presenting an enrollment token.
    Enrollment { token_id: String },
    /// The server itself (bootstrap, sweeps).
    System,
}

impl Actor {
    pub fn audit_name(&self) -> String {
        match self {
            Actor::User { name, .. } => format!("user:{name}"),
            Actor::ApiToken { id, owner, .. } => format!("token:{id}(user:{owner})"),
            Actor::Collector { id } => format!("collector:{id}"),
            Actor::Enrollment { token_id } => format!("enrollment_token:{token_id}"),
            Actor::System => "system".into(),
        }
    }

    /// The role of a human actor (users and their API tokens).
    pub fn role(&self) -> Option<Role> {
        match self {
            Actor::User { role, .. } | Actor::ApiToken { role, .. } => Some(*role),
            Actor::System => Some(Role::Admin),
            _ => None,
        }
    }

    /// The user behind a human actor.
    pub fn username(&self) -> Option<&str> {
        match self {
            Actor::User { name, .. } => Some(name),
            Actor::ApiToken { owner, .. } => Some(owner),
            _ => None,
        }
    }

    /// Refuse unless the actor has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), DomainError> {
        match self.role() {
            Some(r) if r >= role => Ok(()),
            _ => Err(DomainError::Forbidden(
                format!("this needs the {role:?} role").to_lowercase(),
            )),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DomainError {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    /// Optimistic concurrency: the version sent is not the stored one.
    #[error("{what} was changed by someone else; reload it (current version: {current:?})")]
    Conflict { what: &'static str, current: Option<u64> },
    /// A read-modify-write came without the version it was based on.
    #[error("send the version you read (If-Match header or `version` field)")]
    PreconditionRequired,
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// An enrollment or credential that is known but not usable.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl DomainError {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A page of a list, with the cursor of the next page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

pub fn page_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// Settings the domain takes from `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub session_ttl: Duration,
    pub api_token_ttl: Duration,
    pub enrollment_token_ttl: Duration,
}

/// How collectors get and keep their own credentials (`[auth]`).
#[derive(Debug, Clone)]
pub struct CredentialPolicy {
    /// Every enrollment token behaves as if `require_own_credential` were
    /// set: no agent stays on the shared token.
    pub require_own_credential: bool,
    /// How long a credential replaced over OpAMP connection settings stays
    /// valid if the agent does not reconnect with its successor.
    pub rotation_overlap: Duration,
}

impl Default for CredentialPolicy {
    fn default() -> Self {
        CredentialPolicy {
            require_own_credential: false,
            rotation_overlap: Duration::from_secs(3600),
        }
    }
}

/// The domain services of one instance.
#[derive(Clone)]
pub struct Domain {
    store: Store,
    clock: Arc<dyn Clock>,
    instance: String,
    settings: AuthSettings,
    policy: CredentialPolicy,
    /// Enrollments waiting for this instance's next group commit (see
    /// `enrollment::enroll_with`).
    enrolling: Arc<enrollment::EnrollQueue>,
    /// API tokens and sessions verified before (see `auth_cache`).
    verified: Arc<auth_cache::VerifiedCache>,
}

/// How often a commit whose precondition lost a race is retried, for
/// operations that re-check their rules on each attempt (enrollment).
const MAX_ATTEMPTS: usize = 256;

impl Domain {
    pub fn new(store: Store, clock: Arc<dyn Clock>, instance: String, settings: AuthSettings) -> Self {
        let verified = Arc::new(auth_cache::VerifiedCache::new(&store));
        Domain {
            store,
            clock,
            instance,
            settings,
            policy: CredentialPolicy::default(),
            enrolling: Arc::default(),
            verified,
        }
    }

    /// Replace the default credential policy (from `[auth]`).
    pub fn with_credential_policy(mut self, policy: CredentialPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn credential_policy(&self) -> &CredentialPolicy {
        &self.policy
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether the store answers (readiness probes ask this, not the store).
    pub async fn ping(&self) -> Result<(), DomainError> {
        Ok(self.store.ping().await?)
    }

    /// The audit event of a mutation, to put in the same commit.
    fn audit_op(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) -> Result<Op, DomainError> {
        let at = self.clock.now();
        let id = audit::event_key(at);
        let event = AuditEvent {
            id: id.clone(),
            at,
            actor: actor.audit_name(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            instance: self.instance.clone(),
            detail,
        };
        Ok(Op::put(id, &event, Expect::Absent)?)
    }

    /// Audit something that changes nothing else (a refusal).
    pub async fn audit_only(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) {
        let op = match self.audit_op(actor, action, target, outcome, detail) {
            Ok(op) => op,
            Err(e) => return tracing::warn!(error = %e, "Could not encode an audit event."),
        };
        if let Err(e) = self.store.commit(vec![op]).await {
            tracing::warn!(error = %e, action, target, "Could not write an audit event.");
        }
    }
}

/// Map a storage conflict on a versioned record to a domain conflict.
pub(crate) fn conflict_as(what: &'static str) -> impl Fn(StorageError) -> DomainError {
    move |e| match e {
        StorageError::Conflict { current, .. } => DomainError::Conflict { what, current },
        other => DomainError::Storage(other),
    }
}

/// Labels: keys like Kubernetes label keys, values up to 255 characters.
pub(crate) fn validate_labels(field: &str, labels: &Labels) -> Result<(), DomainError> {
    for (k, v) in labels {
        let key_ok =
            !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
        if !key_ok {
            return Err(DomainError::invalid(
                &format!("{field}.{k}"),
                "label keys are 1-128 characters of a-z, A-Z, 0-9, '.', '_', '-', '/'",
            ));
        }
        if v.len() > 255 {
            return Err(DomainError::invalid(
                &format!("{field}.{k}"),
                "label values are at most 255 bytes",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod first_contact_tests;
