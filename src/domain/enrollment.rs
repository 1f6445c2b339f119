//! Enrollment tokens and enrollment: a token turns into a collector record
//! plus the collector's own credential, in one transaction that also counts
//! the use and writes the audit event.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::secrets::{self, SecretKind};
use super::{
    page_limit, validate_labels, Actor, Collector, CollectorCredential, Domain, DomainError, EnrollmentToken, Labels,
    Page, Role,
};
use crate::clock::Timestamp;
use crate::storage::{Expect, Op, Scan, StorageError, Table, Versioned};

/// Request to create an enrollment token.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    /// A name for operators ("eu-west edge nodes").
    pub name: String,
    /// Lifetime, e.g. "24h" (default `auth.enrollment_token_ttl`).
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>, example = "24h")]
    pub expires_in: Option<Duration>,
    /// How many collectors may enroll with it; absent = unlimited.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// Labels given to every collector that enrolls with it.
    #[serde(default)]
    pub labels: Labels,
}

/// An enrollment token as listed (never with its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnrollmentTokenView {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub expires_at: Timestamp,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub labels: Labels,
    pub revoked_at: Option<Timestamp>,
    /// `active`, `expired`, `used_up` or `revoked`.
    pub state: String,
}

/// A created token: the secret is shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnrollmentTokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub view: EnrollmentTokenView,
}

/// What a collector sends to enroll.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token.
    pub token: String,
    /// The collector's OpAMP instance_uid (a UUID); generated if absent.
    #[serde(default)]
    pub instance_uid: Option<String>,
    /// Display name (e.g. the host name).
    #[serde(default)]
    pub name: Option<String>,
    /// Labels the collector reports; the token's labels win on conflict.
    #[serde(default)]
    pub labels: Labels,
}

/// The result of enrollment: the collector's own credential, shown once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Enrolled {
    pub collector_id: String,
    pub credential: String,
    pub labels: Labels,
}

fn state_of(t: &EnrollmentToken, now: Timestamp) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if now >= t.expires_at {
        "expired"
    } else if t.max_uses.is_some_and(|m| t.uses >= m) {
        "used_up"
    } else {
        "active"
    }
}

/// Normalise an OpAMP instance_uid to the hyphenated lowercase UUID form.
pub(crate) fn normalize_uid(uid: &str) -> Result<String, DomainError> {
    uuid::Uuid::parse_str(uid.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| DomainError::invalid("instance_uid", "must be a UUID (16 bytes, as in OpAMP)"))
}

impl Domain {
    fn token_view(&self, t: &EnrollmentToken) -> EnrollmentTokenView {
        EnrollmentTokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            created_at: t.created_at,
            created_by: t.created_by.clone(),
            expires_at: t.expires_at,
            max_uses: t.max_uses,
            uses: t.uses,
            labels: t.labels.clone(),
            revoked_at: t.revoked_at,
            state: state_of(t, self.clock.now()).into(),
        }
    }

    pub async fn create_enrollment_token(
        &self,
        actor: &Actor,
        req: NewEnrollmentToken,
    ) -> Result<EnrollmentTokenCreated, DomainError> {
        actor.require(Role::Editor)?;
        if req.name.trim().is_empty() || req.name.len() > 200 {
            return Err(DomainError::invalid("name", "must be 1-200 characters"));
        }
        if req.max_uses == Some(0) {
            return Err(DomainError::invalid(
                "max_uses",
                "must be at least 1 (omit it for unlimited)",
            ));
        }
        validate_labels("labels", &req.labels)?;
        let now = self.clock.now();
        let secret = secrets::generate(SecretKind::Enrollment);
        let record = EnrollmentToken {
            id: secret.id.clone(),
            name: req.name.trim().to_string(),
            secret_hash: secret.hash,
            created_at: now,
            created_by: actor.audit_name(),
            expires_at: now.plus(req.expires_in.unwrap_or(self.settings.enrollment_token_ttl)),
            max_uses: req.max_uses,
            uses: 0,
            labels: req.labels,
            revoked_at: None,
        };
        let detail =
            serde_json::json!({ "name": record.name, "max_uses": record.max_uses, "expires_at": record.expires_at });
        self.store
            .commit(vec![
                Op::put(&record.id, &record, Expect::Absent)?,
                self.audit_op(actor, "enrollment_token.create", &record.id, "ok", detail)?,
            ])
            .await?;
        Ok(EnrollmentTokenCreated {
            token: secret.token,
            view: self.token_view(&record),
        })
    }

    pub async fn list_enrollment_tokens(
        &self,
        actor: &Actor,
        cursor: Option<String>,
        limit: Option<usize>,
    ) -> Result<Page<EnrollmentTokenView>, DomainError> {
        actor.require(Role::Viewer)?;
        let limit = page_limit(limit);
        let rows = self
            .store
            .scan::<EnrollmentToken>(Scan {
                after: cursor,
                limit: limit + 1,
                ..Default::default()
            })
            .await?;
        Ok(paginate(rows, limit, |t| self.token_view(t)))
    }

    pub async fn revoke_enrollment_token(&self, actor: &Actor, id: &str) -> Result<EnrollmentTokenView, DomainError> {
        actor.require(Role::Editor)?;
        loop {
            let Some(cur) = self.store.get::<EnrollmentToken>(id).await? else {
                return Err(DomainError::NotFound {
                    what: "enrollment token",
                    id: id.into(),
                });
            };
            let mut t = cur.value;
            if t.revoked_at.is_some() {
                return Ok(self.token_view(&t));
            }
            t.revoked_at = Some(self.clock.now());
            let ops = vec![
                Op::put(id, &t, Expect::Version(cur.version))?,
                self.audit_op(actor, "enrollment_token.revoke", id, "ok", serde_json::Value::Null)?,
            ];
            match self.store.commit(ops).await {
                Ok(_) => return Ok(self.token_view(&t)),
                // A concurrent enrollment counted a use: revoke again on top.
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Enroll a collector. Atomically: the token is re-validated and its use
    /// counted, the collector and its credential are created, the event is
    /// audited. Racing enrollments on one token retry on the token's version,
    /// so `max_uses` holds exactly.
    pub async fn enroll(&self, req: EnrollRequest) -> Result<Enrolled, DomainError> {
        let refuse = |why: &str| DomainError::Refused(format!("enrollment token {why}"));
        let Some((token_id, random)) = secrets::parse(SecretKind::Enrollment, &req.token) else {
            return Err(DomainError::Unauthenticated("not an enrollment token".into()));
        };
        let collector_id = match &req.instance_uid {
            Some(uid) => normalize_uid(uid)?,
            None => uuid::Uuid::now_v7().hyphenated().to_string(),
        };
        validate_labels("labels", &req.labels)?;
        let name = req
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| collector_id.clone());
        let actor = Actor::Enrollment {
            token_id: token_id.to_string(),
        };

        for _ in 0..super::MAX_ATTEMPTS {
            let Some(cur) = self.store.get::<EnrollmentToken>(token_id).await? else {
                self.audit_only(
                    &actor,
                    "collector.enroll",
                    &collector_id,
                    "refused: unknown token",
                    serde_json::Value::Null,
                )
                .await;
                return Err(DomainError::Unauthenticated("unknown enrollment token".into()));
            };
            let mut token = cur.value;
            if !secrets::verify(random, &token.secret_hash) {
                self.audit_only(
                    &actor,
                    "collector.enroll",
                    &collector_id,
                    "refused: bad secret",
                    serde_json::Value::Null,
                )
                .await;
                return Err(DomainError::Unauthenticated("unknown enrollment token".into()));
            }
            let now = self.clock.now();
            match state_of(&token, now) {
                "active" => {}
                state => {
                    let why = state.replace('_', " ");
                    self.audit_only(
                        &actor,
                        "collector.enroll",
                        &collector_id,
                        &format!("refused: {why}"),
                        serde_json::Value::Null,
                    )
                    .await;
                    return Err(refuse(&format!("is {why}")));
                }
            }
            token.uses += 1;
            let mut labels = req.labels.clone();
            labels.extend(token.labels.clone());
            let cred = secrets::generate(SecretKind::Collector);
            let collector = Collector {
                id: collector_id.clone(),
                name: name.clone(),
                labels: labels.clone(),
                enrolled_at: now,
                enrollment_token_id: token.id.clone(),
                credential_ids: vec![cred.id.clone()],
            };
            let credential = CollectorCredential {
                id: cred.id.clone(),
                collector_id: collector_id.clone(),
                secret_hash: cred.hash,
                created_at: now,
                revoked_at: None,
            };
            let ops = vec![
                Op::put(token_id, &token, Expect::Version(cur.version))?,
                Op::put(&collector_id, &collector, Expect::Absent)?,
                Op::put(&cred.id, &credential, Expect::Absent)?,
                self.audit_op(
                    &actor,
                    "collector.enroll",
                    &collector_id,
                    "ok",
                    serde_json::json!({ "name": name, "labels": labels }),
                )?,
            ];
            match self.store.commit(ops).await {
                Ok(_) => {
                    tracing::info!(collector_id, token_id, "Collector enrolled.");
                    return Ok(Enrolled {
                        collector_id,
                        credential: cred.token,
                        labels,
                    });
                }
                Err(StorageError::Conflict {
                    table: Table::EnrollmentTokens,
                    ..
                }) => {
                    // Another enrollment used the token meanwhile: re-check.
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(StorageError::Conflict {
                    table: Table::Collectors,
                    ..
                }) => {
                    return Err(DomainError::AlreadyExists {
                        what: "collector",
                        id: collector_id,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(DomainError::Refused(
            "enrollment token is too contended; try again".into(),
        ))
    }
}

/// Turn `limit + 1` scanned rows into a page: the extra row only says there
/// is a next page, whose cursor is the last key shown.
pub(crate) fn paginate<T, V>(mut rows: Vec<Versioned<T>>, limit: usize, view: impl Fn(&T) -> V) -> Page<V> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more { rows.last().map(|r| r.key.clone()) } else { None };
    Page {
        items: rows.iter().map(|r| view(&r.value)).collect(),
        next_cursor,
    }
}
