//! Enrollment tokens and enrollment: a token turns into a collector record
//! plus the collector's own credential, in one transaction that also counts
//! the use and writes the audit event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::secrets::{self, SecretKind};
use super::{
    page_limit, validate_labels, Actor, Collector, CollectorCredential, Domain, DomainError, EnrollmentToken, Labels,
    Page, Role,
};
use crate::clock::Timestamp;
use crate::storage::{Expect, Op, Scan, StorageError, Table, Versioned};
use crate::tasks::Tasks;

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
    /// Agents that present this token on first contact must switch to a
    /// credential of their own (delivered over OpAMP connection settings);
    /// agents that cannot accept connection settings are refused and enroll
    /// through `POST /api/v1/enroll` instead.
    #[serde(default)]
    pub require_own_credential: bool,
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
    pub require_own_credential: bool,
    /// `active`, `expired`, `used_up` or `revoked`.
    #[schema(value_type = super::TokenState)]
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
    use super::TokenState;
    if t.revoked_at.is_some() {
        TokenState::Revoked
    } else if now >= t.expires_at {
        TokenState::Expired
    } else if t.max_uses.is_some_and(|m| t.uses >= m) {
        TokenState::UsedUp
    } else {
        TokenState::Active
    }
    .as_str()
}

/// Normalise an OpAMP instance_uid to the hyphenated lowercase UUID form.
pub(crate) fn normalize_uid(uid: &str) -> Result<String, DomainError> {
    uuid::Uuid::parse_str(uid.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| DomainError::invalid("instance_uid", "must be a UUID (16 bytes, as in OpAMP)"))
}

impl Domain {
    pub(super) fn token_view(&self, t: &EnrollmentToken) -> EnrollmentTokenView {
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
            require_own_credential: t.require_own_credential,
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
            require_own_credential: req.require_own_credential,
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

    /// Enroll a collector (`POST /enroll`, gRPC Enroll): it gets its own
    /// credential in the answer.
    pub async fn enroll(&self, req: EnrollRequest) -> Result<Enrolled, DomainError> {
        let collector_id = match &req.instance_uid {
            Some(uid) => normalize_uid(uid)?,
            None => uuid::Uuid::now_v7().hyphenated().to_string(),
        };
        validate_labels("labels", &req.labels)?;
        let (token_id, record) = self.verified_token(&req.token, &collector_id).await?;
        let joined = self
            .enroll_with(
                (token_id.to_string(), record),
                &collector_id,
                req.name,
                req.labels,
                Joining::Explicit,
            )
            .await?;
        Ok(Enrolled {
            collector_id,
            credential: joined.credential.unwrap_or_default(),
            labels: joined.collector.value.labels,
        })
    }

    /// An agent presented an enrollment token as its bearer on its first
    /// message (OpAMP WebSocket, OpAMP HTTP, gRPC) with `instance_uid`
    /// (normalised by the caller; `None` when empty or malformed, and the
    /// server picks one). A new uid is enrolled in the same transaction as
    /// `enroll`; the uid this token enrolled earlier resumes its collector
    /// without counting a use (a restart before it switched to its own
    /// credential); any other existing uid is refused: never a takeover.
    ///
    /// Expiry and `max_uses` limit *new* enrollments only: an agent that
    /// cannot take connection settings keeps using the token for its bound
    /// uid until the token is revoked (revocation cuts them all off).
    pub async fn first_contact(
        &self,
        token: &str,
        instance_uid: Option<String>,
        accepts_connection_settings: bool,
        name: Option<String>,
    ) -> Result<FirstContact, DomainError> {
        let (collector_id, assigned_uid) = match instance_uid {
            Some(uid) => (uid, false),
            None => (uuid::Uuid::now_v7().hyphenated().to_string(), true),
        };
        let actor_for = |token_id: &str| Actor::Enrollment {
            token_id: token_id.to_string(),
        };
        let (token_id, record) = self.verified_token(token, &collector_id).await?;
        let token_id = token_id.to_string();
        let require_own = record.value.require_own_credential || self.policy.require_own_credential;
        if require_own && !accepts_connection_settings {
            let why = "this enrollment token requires each agent to switch to its own credential, and the \
                       agent does not accept OpAMP connection settings (AcceptsOpAMPConnectionSettings); \
                       enroll it through POST /api/v1/enroll instead";
            self.audit_only(
                &actor_for(&token_id),
                "collector.enroll",
                &collector_id,
                "refused: agent cannot take its own credential",
                serde_json::Value::Null,
            )
            .await;
            return Err(DomainError::Refused(why.into()));
        }
        if let Some(existing) = self.store.get::<Collector>(&collector_id).await? {
            let c = &existing.value;
            if c.enrollment_token_id == token_id && c.token_path_open() {
                if record.value.revoked_at.is_some() {
                    self.audit_only(
                        &actor_for(&token_id),
                        "collector.resume",
                        &collector_id,
                        "refused: revoked",
                        serde_json::Value::Null,
                    )
                    .await;
                    return Err(DomainError::Refused("enrollment token is revoked".into()));
                }
                return Ok(FirstContact {
                    collector: existing,
                    token_id,
                    enrolled: false,
                    assigned_uid,
                });
            }
            let why = if c.enrollment_token_id == token_id {
                "refused: uid switched to its own credential"
            } else {
                "refused: uid bound to another token"
            };
            self.audit_only(
                &actor_for(&token_id),
                "collector.enroll",
                &collector_id,
                why,
                serde_json::Value::Null,
            )
            .await;
            return Err(DomainError::Refused(format!(
                "instance_uid {collector_id} is already enrolled with another credential; \
                 connect with that credential (a uid is never taken over)"
            )));
        }
        let joined = self
            .enroll_with(
                (token_id.clone(), record),
                &collector_id,
                name,
                Labels::new(),
                Joining::FirstContact,
            )
            .await;
        match joined {
            Ok(j) => Ok(FirstContact {
                collector: j.collector,
                token_id,
                enrolled: true,
                assigned_uid,
            }),
            // Two first messages of one agent raced (HTTP retries): the
            // other one enrolled it; resume that.
            Err(DomainError::AlreadyExists { .. }) => match self.store.get::<Collector>(&collector_id).await? {
                Some(c) if c.value.enrollment_token_id == token_id && c.value.token_path_open() => Ok(FirstContact {
                    collector: c,
                    token_id,
                    enrolled: false,
                    assigned_uid,
                }),
                _ => Err(DomainError::Refused(format!(
                    "instance_uid {collector_id} is already enrolled with another credential"
                ))),
            },
            Err(e) => Err(e),
        }
    }

    /// Check an enrollment token presented as a bearer before an agent's
    /// first message (WebSocket upgrade, gRPC stream): known, right secret,
    /// not revoked. Whether it may enroll a new uid is decided on the first
    /// message (`first_contact`), which knows the uid.
    pub async fn check_enrollment_token(&self, token: &str) -> Result<(), DomainError> {
        let (_, record) = self.verified_token(token, "").await?;
        if record.value.revoked_at.is_some() {
            return Err(DomainError::Refused("enrollment token is revoked".into()));
        }
        Ok(())
    }

    /// Find the token and check its secret (refusals audited).
    async fn verified_token<'t>(
        &self,
        token: &'t str,
        collector_id: &str,
    ) -> Result<(&'t str, Versioned<EnrollmentToken>), DomainError> {
        let Some((token_id, random)) = secrets::parse(SecretKind::Enrollment, token) else {
            return Err(DomainError::Unauthenticated("not an enrollment token".into()));
        };
        let actor = Actor::Enrollment {
            token_id: token_id.to_string(),
        };
        let found = self.store.get::<EnrollmentToken>(token_id).await?;
        let outcome = match &found {
            None => "refused: unknown token",
            Some(t) if !secrets::verify(random, &t.value.secret_hash) => "refused: bad secret",
            Some(_) => "",
        };
        match found {
            Some(t) if outcome.is_empty() => Ok((token_id, t)),
            _ => {
                self.audit_only(
                    &actor,
                    "collector.enroll",
                    collector_id,
                    outcome,
                    serde_json::Value::Null,
                )
                .await;
                Err(DomainError::Unauthenticated("unknown enrollment token".into()))
            }
        }
    }

    /// The enrollment transaction: the token is re-validated and its use
    /// counted, the collector (and, for explicit enrollment, its credential)
    /// is created, the event is audited. Concurrent enrollments of this
    /// instance are committed together (`EnrollQueue`); the answer comes
    /// once the commit holding this one is durable. Racing enrollments of
    /// other instances retry on the token's version, so `max_uses` holds
    /// exactly.
    ///
    /// First-contact enrollment creates no credential: its secret could not
    /// be handed to an agent that has no way to receive it. The credential
    /// is issued when it can be delivered (OpAMP connection settings).
    async fn enroll_with(
        &self,
        (token_id, _verified): (String, Versioned<EnrollmentToken>),
        collector_id: &str,
        name: Option<String>,
        reported_labels: Labels,
        joining: Joining,
    ) -> Result<Joined, DomainError> {
        let name = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| collector_id.to_string());
        let (answer, mut answered) = oneshot::channel();
        self.enrolling.waiting().push_back(Wanted {
            token_id,
            collector_id: collector_id.to_string(),
            name,
            reported_labels,
            joining,
            answer,
        });
        loop {
            let leading = self.enrolling.leader.clone().lock_owned().await;
            match answered.try_recv() {
                Ok(r) => return r,
                Err(oneshot::error::TryRecvError::Closed) => return Err(not_committed()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let group = {
                let mut waiting = self.enrolling.waiting();
                let n = waiting.len().min(group_limit(self));
                waiting.drain(..n).collect::<Vec<_>>()
            };
            // The group is committed on a task of its own, holding the
            // leader's lock: an enrollment whose caller went away (a
            // client that hung up) must not take the others' answers, or a
            // commit half-answered, with it. It is one of the instance's
            // tasks, and not cut short when the instance stops: its callers
            // wait for their answers and `run` waits for it, one commit.
            let domain = self.clone();
            let (done, finished) = oneshot::channel::<()>();
            self.enrolling
                .tasks
                .spawn_graceful("enrollment group commit", move |_stop| async move {
                    domain.commit_group(group).await;
                    drop(leading);
                    drop(done);
                });
            tokio::select! {
                r = &mut answered => return r.unwrap_or_else(|_| Err(not_committed())),
                // This one was not in that group (more were waiting than
                // one commit takes): lead or wait again.
                _ = finished => continue,
            }
        }
    }

    /// Commit a group of enrollments and answer each: re-read each token
    /// once, admit in arrival order while each token's rules hold (a use
    /// counted per admission, so `max_uses` holds across the group), write
    /// everything in one commit. A token changed by another instance
    /// meanwhile re-runs the group on its new version; a collector that
    /// already exists is answered and left out.
    async fn commit_group(&self, mut group: Vec<Wanted>) {
        for _ in 0..super::MAX_ATTEMPTS {
            let plan = match self.plan_group(&group).await {
                Ok(plan) => plan,
                Err(e) => return answer_all(group, &e),
            };
            match self.store.commit(plan.ops).await {
                Ok(versions) => {
                    for (w, verdict) in group.into_iter().zip(plan.verdicts) {
                        let r = match verdict {
                            Verdict::Refused(e) => Err(e),
                            Verdict::Admitted {
                                at,
                                collector,
                                credential,
                            } => {
                                tracing::info!(
                                    collector_id = %w.collector_id,
                                    token_id = %w.token_id,
                                    via = w.joining.name(),
                                    "Collector enrolled."
                                );
                                Ok(Joined {
                                    collector: Versioned {
                                        key: w.collector_id.clone(),
                                        version: versions.get(at).copied().unwrap_or(1),
                                        value: collector,
                                    },
                                    credential,
                                })
                            }
                        };
                        let _ = w.answer.send(r);
                    }
                    return;
                }
                // Another instance used a token meanwhile: re-check.
                Err(StorageError::Conflict {
                    table: Table::EnrollmentTokens,
                    ..
                }) => tokio::task::yield_now().await,
                Err(StorageError::Conflict {
                    table: Table::Collectors,
                    key,
                    ..
                }) => {
                    let (taken, rest): (Vec<_>, Vec<_>) = group.into_iter().partition(|w| w.collector_id == key);
                    answer_all(
                        taken,
                        &DomainError::AlreadyExists {
                            what: "collector",
                            id: key,
                        },
                    );
                    group = rest;
                }
                Err(e) => return answer_all(group, &DomainError::Storage(e)),
            }
            if group.is_empty() {
                return;
            }
        }
        answer_all(
            group,
            &DomainError::Refused("enrollment token is too contended; try again".into()),
        );
    }

    /// One group's commit and what each of its enrollments gets if it
    /// commits, from the tokens as stored now.
    async fn plan_group(&self, group: &[Wanted]) -> Result<Plan, DomainError> {
        let mut tokens: HashMap<&str, Option<Versioned<EnrollmentToken>>> = HashMap::new();
        for w in group {
            if !tokens.contains_key(w.token_id.as_str()) {
                let t = self.store.get::<EnrollmentToken>(&w.token_id).await?;
                tokens.insert(&w.token_id, t);
            }
        }
        let base: HashMap<&str, u32> = tokens
            .iter()
            .filter_map(|(id, t)| Some((*id, t.as_ref()?.value.uses)))
            .collect();
        let now = self.clock.now();
        let mut ops = Vec::new();
        let mut verdicts = Vec::with_capacity(group.len());
        let mut ids = HashSet::new();
        for w in group {
            let actor = Actor::Enrollment {
                token_id: w.token_id.clone(),
            };
            let Some(token) = tokens.get_mut(w.token_id.as_str()).and_then(|t| t.as_mut()) else {
                verdicts.push(Verdict::Refused(DomainError::Unauthenticated(
                    "unknown enrollment token".into(),
                )));
                continue;
            };
            let token = &mut token.value;
            match state_of(token, now) {
                "active" => {}
                state => {
                    let why = state.replace('_', " ");
                    ops.push(self.audit_op(
                        &actor,
                        "collector.enroll",
                        &w.collector_id,
                        &format!("refused: {why}"),
                        serde_json::Value::Null,
                    )?);
                    verdicts.push(Verdict::Refused(DomainError::Refused(format!(
                        "enrollment token is {why}"
                    ))));
                    continue;
                }
            }
            // Two first messages of one agent in one group: the first
            // enrolls it, the other is told it exists (and resumes it).
            if !ids.insert(w.collector_id.as_str()) {
                verdicts.push(Verdict::Refused(DomainError::AlreadyExists {
                    what: "collector",
                    id: w.collector_id.clone(),
                }));
                continue;
            }
            token.uses += 1;
            let mut labels = w.reported_labels.clone();
            labels.extend(token.labels.clone());
            let cred = match w.joining {
                Joining::Explicit => Some(secrets::generate(SecretKind::Collector)),
                Joining::FirstContact => None,
            };
            let collector = Collector {
                id: w.collector_id.clone(),
                name: w.name.clone(),
                labels: labels.clone(),
                enrolled_at: now,
                enrollment_token_id: token.id.clone(),
                credential_ids: cred.iter().map(|c| c.id.clone()).collect(),
                enrolled_on_first_contact: w.joining == Joining::FirstContact,
                credential_adopted_at: None,
                superseded_credential_ids: vec![],
                rotation_requested_at: None,
            };
            let at = ops.len();
            ops.push(Op::put(&w.collector_id, &collector, Expect::Absent)?);
            if let Some(cred) = &cred {
                let credential = CollectorCredential {
                    id: cred.id.clone(),
                    collector_id: w.collector_id.clone(),
                    secret_hash: cred.hash.clone(),
                    created_at: now,
                    revoked_at: None,
                    valid_until: None,
                };
                ops.push(Op::put(&cred.id, &credential, Expect::Absent)?);
            }
            ops.push(self.audit_op(
                &actor,
                "collector.enroll",
                &w.collector_id,
                "ok",
                serde_json::json!({ "name": w.name, "labels": labels, "via": w.joining.name() }),
            )?);
            verdicts.push(Verdict::Admitted {
                at,
                collector,
                credential: cred.map(|c| c.token),
            });
        }
        // Each token whose uses were counted, on the version read: a use
        // counted elsewhere meanwhile makes the whole group re-check.
        for (id, t) in &tokens {
            if let Some(t) = t.as_ref().filter(|t| base.get(id) != Some(&t.value.uses)) {
                ops.push(Op::put(*id, &t.value, Expect::Version(t.version))?);
            }
        }
        Ok(Plan { ops, verdicts })
    }
}

/// How many enrollments one commit takes: each writes up to four records
/// (collector, credential, audit event, and its share of the token), kept
/// within what one commit of the store should carry.
fn group_limit(domain: &Domain) -> usize {
    (domain.store.batch_hint() / 4).max(1)
}

fn not_committed() -> DomainError {
    DomainError::Storage(StorageError::Backend(
        "the enrollment's commit did not finish; try again".into(),
    ))
}

fn answer_all(group: Vec<Wanted>, e: &DomainError) {
    for w in group {
        let _ = w.answer.send(Err(e.clone()));
    }
}

/// Enrollments of this instance waiting to be committed, and the lock of
/// the one that commits them (group commit). Every enrollment writes its
/// token's use count, so one commit per enrollment serialized them on the
/// token and on the store's single writer, each paying a durable commit
/// (fsync) of its own; gathered, a burst of agents sharing one token (a
/// fleet rolled out with it) pays one per group.
#[derive(Default)]
pub(super) struct EnrollQueue {
    // std Mutex: held to push or drain, never across an await.
    waiting: Mutex<VecDeque<Wanted>>,
    // tokio Mutex: held by the group being committed, across its store
    // reads and its commit; whoever takes it next leads the next group.
    leader: Arc<tokio::sync::Mutex<()>>,
    /// Where group commits run: the instance's tasks (`Domain::with_tasks`),
    /// or a set of their own for a domain outside `run` (tools, tests).
    tasks: Tasks,
}

impl Domain {
    /// Run this domain's background work (enrollment group commits) on the
    /// instance's tasks, so `run` owns it and waits for it.
    pub fn with_tasks(mut self, tasks: &Tasks) -> Self {
        self.enrolling = Arc::new(EnrollQueue {
            tasks: tasks.clone(),
            ..Default::default()
        });
        self
    }
}

impl EnrollQueue {
    fn waiting(&self) -> MutexGuard<'_, VecDeque<Wanted>> {
        // Every section is one push or drain: a poisoned queue is consistent.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One enrollment waiting for its group's commit.
struct Wanted {
    token_id: String,
    collector_id: String,
    name: String,
    reported_labels: Labels,
    joining: Joining,
    answer: oneshot::Sender<Result<Joined, DomainError>>,
}

/// A group's commit, and per enrollment (in the group's order) what it
/// gets once that commit is durable.
struct Plan {
    ops: Vec<Op>,
    verdicts: Vec<Verdict>,
}

enum Verdict {
    /// `at`: the collector's op in the commit (its version).
    Admitted {
        at: usize,
        collector: Collector,
        credential: Option<String>,
    },
    Refused(DomainError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joining {
    /// `POST /enroll` or gRPC Enroll: the credential is in the answer.
    Explicit,
    /// The enrollment token on an agent's first OpAMP message.
    FirstContact,
}

impl Joining {
    fn name(self) -> &'static str {
        match self {
            Joining::Explicit => "explicit",
            Joining::FirstContact => "first_contact",
        }
    }
}

struct Joined {
    collector: Versioned<Collector>,
    credential: Option<String>,
}

/// The outcome of an agent's first message with an enrollment token.
#[derive(Debug, Clone)]
pub struct FirstContact {
    pub collector: Versioned<Collector>,
    pub token_id: String,
    /// Newly enrolled (a use was counted) rather than resumed.
    pub enrolled: bool,
    /// The agent's uid was empty or malformed and the server picked
    /// `collector.key`; tell the agent (`AgentIdentification`).
    pub assigned_uid: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::AuthSettings;
    use crate::storage::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_hang_up_lose_no_other_answer_and_the_instance_stops_clean() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("s.redb")).await.unwrap();
        let hour = Duration::from_secs(3600);
        let settings = AuthSettings {
            session_ttl: hour,
            api_token_ttl: hour,
            enrollment_token_ttl: hour,
        };
        let tasks = Tasks::new();
        let d = Domain::new(store.clone(), Arc::new(SystemClock), "t".into(), settings).with_tasks(&tasks);
        let admin = Actor::User {
            name: "admin".into(),
            role: Role::Admin,
        };
        let new = NewEnrollmentToken {
            name: "fleet".into(),
            ..Default::default()
        };
        let token = d.create_enrollment_token(&admin, new).await.unwrap().token;
        let calls: Vec<_> = (0..60)
            .map(|_| {
                let (d, token) = (d.clone(), token.clone());
                let uid = uuid::Uuid::now_v7().to_string();
                let call = tokio::spawn(async move {
                    d.enroll(EnrollRequest {
                        token,
                        instance_uid: Some(uid),
                        name: None,
                        labels: Labels::new(),
                    })
                    .await
                });
                (call.abort_handle(), call)
            })
            .collect();
        // Every third caller hangs up while the others queue, lead or wait
        // for their group's commit.
        tokio::task::yield_now().await;
        for (abort, _) in calls.iter().step_by(3) {
            abort.abort();
        }
        let mut acknowledged = HashSet::new();
        for (i, (_, call)) in calls.into_iter().enumerate() {
            match call.await {
                Ok(r) => {
                    acknowledged.insert(r.unwrap_or_else(|e| panic!("caller {i}: {e}")).collector_id);
                }
                Err(e) => assert!(e.is_cancelled() && i % 3 == 0, "caller {i}: {e}"),
            }
        }
        assert!(acknowledged.len() >= 40, "every caller that waited was answered");
        // Nothing outlives the instance's tasks; every answer is durable,
        // and what was stored was counted as a use.
        tasks.stop().await;
        assert!(tasks.is_empty());
        let stored: HashSet<String> = store
            .scan::<Collector>(Scan::default())
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.key)
            .collect();
        assert!(stored.is_superset(&acknowledged));
        let uses = store.scan::<EnrollmentToken>(Scan::default()).await.unwrap()[0]
            .value
            .uses;
        assert_eq!(uses as usize, stored.len());
    }
}
