//! Authentication of people and automation: login sessions (UI cookie) and
//! API tokens (bearer). Both resolve to an `Actor` whose role is the user's
//! current role, so disabling or demoting a user takes effect at once.

use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth_cache::{Kind, Lookup};
use super::enrollment::paginate;
use super::secrets::{self, SecretKind};
use super::users::{hash_password, verify_password};
use super::{page_limit, Actor, ApiToken, Domain, DomainError, Page, Role, Session, User};
use crate::clock::Timestamp;
use crate::storage::{Expect, Op, Scan};

/// Result of a successful login.
pub struct LoginResult {
    /// The cookie value (shown once, stored hashed).
    pub cookie: String,
    pub username: String,
    pub role: Role,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiToken {
    pub name: String,
    /// Lifetime, e.g. "30d" (default `auth.api_token_ttl`).
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>, example = "30d")]
    pub expires_in: Option<Duration>,
    /// The most the token may do: `viewer`, `editor` or `admin`, no higher
    /// than your own role (default: your role). It never acts above its
    /// owner's current role either.
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiTokenView {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// The token's role; absent for a token made before tokens had roles
    /// (it acts with its owner's role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A created API token: the secret is shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiTokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub view: ApiTokenView,
}

fn token_view(t: &ApiToken) -> ApiTokenView {
    ApiTokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        owner: t.owner.clone(),
        role: t.role,
        created_at: t.created_at,
        expires_at: t.expires_at,
    }
}

/// A hash to verify against when the user does not exist, so a login for
/// an unknown name costs the same time as one with a wrong password.
static DUMMY_HASH: OnceLock<String> = OnceLock::new();

impl Domain {
    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResult, DomainError> {
        let bad = || DomainError::Unauthenticated("wrong user name or password".into());
        let user = self.store.get::<User>(username).await?;
        let hash = match &user {
            Some(u) => u.value.password_hash.clone(),
            None => match DUMMY_HASH.get() {
                Some(h) => h.clone(),
                None => {
                    let h = hash_password(uuid::Uuid::new_v4().to_string()).await?;
                    DUMMY_HASH.get_or_init(|| h).clone()
                }
            },
        };
        let ok = verify_password(password.to_string(), hash).await;
        let actor = Actor::User {
            name: username.into(),
            role: Role::Viewer,
        };
        let user = match user {
            Some(u) if ok && !u.value.disabled => u.value,
            _ => {
                self.audit_only(&actor, "auth.login", username, "refused", serde_json::Value::Null)
                    .await;
                return Err(bad());
            }
        };
        let now = self.clock.now();
        let secret = secrets::generate(SecretKind::Session);
        let session = Session {
            id: secret.id.clone(),
            username: user.username.clone(),
            secret_hash: secret.hash,
            created_at: now,
            expires_at: now.plus(self.settings.session_ttl),
        };
        let actor = Actor::User {
            name: user.username.clone(),
            role: user.role,
        };
        self.store
            .commit(vec![
                Op::put(&session.id, &session, Expect::Absent)?,
                self.audit_op(&actor, "auth.login", &user.username, "ok", serde_json::Value::Null)?,
            ])
            .await?;
        Ok(LoginResult {
            cookie: secret.token,
            username: user.username,
            role: user.role,
            expires_at: session.expires_at,
        })
    }

    pub async fn logout(&self, cookie: &str) -> Result<(), DomainError> {
        if let Some((id, random)) = secrets::parse(SecretKind::Session, cookie) {
            if let Some(s) = self.store.get::<Session>(id).await? {
                if secrets::verify(random, &s.value.secret_hash) {
                    self.store.commit(vec![Op::delete::<Session>(id, Expect::Any)]).await?;
                }
            }
        }
        Ok(())
    }

    /// The user behind a session cookie.
    pub async fn authenticate_session(&self, cookie: &str) -> Result<Actor, DomainError> {
        let unauth = || DomainError::Unauthenticated("session expired or unknown; log in again".into());
        let (id, random) = secrets::parse(SecretKind::Session, cookie).ok_or_else(unauth)?;
        let now = self.clock.now();
        let seen = match self.verified.lookup(Kind::Session, id, random, now) {
            Lookup::Hit(actor) => return Ok(actor),
            Lookup::Miss(seen) => seen,
        };
        let s = self.store.get::<Session>(id).await?.ok_or_else(unauth)?;
        if !secrets::verify(random, &s.value.secret_hash) || now >= s.value.expires_at {
            return Err(unauth());
        }
        let user = self.active_user(&s.value.username).await.map_err(|_| unauth())?;
        if user.sessions_valid_after.is_some_and(|t| s.value.created_at <= t) {
            return Err(unauth());
        }
        let actor = Actor::User {
            name: user.username,
            role: user.role,
        };
        self.verified.insert(
            seen,
            Kind::Session,
            id,
            &s.value.secret_hash,
            s.value.expires_at,
            &s.value.username,
            &actor,
            now,
        );
        Ok(actor)
    }

    /// The owner behind an API token. A token verified before is answered
    /// from memory (`auth_cache`: revocations and user changes reach it
    /// through the change feed), so a request pays no store read for it.
    pub async fn authenticate_api_token(&self, bearer: &str) -> Result<Actor, DomainError> {
        let unauth = || DomainError::Unauthenticated("unknown, expired or revoked API token".into());
        let (id, random) = secrets::parse(SecretKind::Api, bearer).ok_or_else(unauth)?;
        let now = self.clock.now();
        let seen = match self.verified.lookup(Kind::ApiToken, id, random, now) {
            Lookup::Hit(actor) => return Ok(actor),
            Lookup::Miss(seen) => seen,
        };
        let t = self.store.get::<ApiToken>(id).await?.ok_or_else(unauth)?;
        if !secrets::verify(random, &t.value.secret_hash) || now >= t.value.expires_at {
            return Err(unauth());
        }
        let user = self.active_user(&t.value.owner).await.map_err(|_| unauth())?;
        // The lower of the two: a token never outgrows its owner, and a
        // narrow token stays narrow when its owner is promoted.
        let role = t.value.role.map_or(user.role, |r| r.min(user.role));
        let actor = Actor::ApiToken {
            id: t.value.id,
            owner: user.username,
            role,
        };
        self.verified.insert(
            seen,
            Kind::ApiToken,
            id,
            &t.value.secret_hash,
            t.value.expires_at,
            &t.value.owner,
            &actor,
            now,
        );
        Ok(actor)
    }

    async fn active_user(&self, username: &str) -> Result<User, DomainError> {
        match self.store.get::<User>(username).await? {
            Some(u) if !u.value.disabled => Ok(u.value),
            _ => Err(DomainError::Unauthenticated("user disabled or deleted".into())),
        }
    }

    /// Any user may create tokens acting as themselves, with a role no
    /// higher than the one they act with now (for a token creating a token:
    /// that token's role).
    pub async fn create_api_token(&self, actor: &Actor, req: NewApiToken) -> Result<ApiTokenCreated, DomainError> {
        let (Some(owner), Some(own_role)) = (actor.username(), actor.role()) else {
            return Err(DomainError::Forbidden("only users own API tokens".into()));
        };
        if req.name.trim().is_empty() || req.name.len() > 200 {
            return Err(DomainError::invalid("name", "must be 1-200 characters"));
        }
        let role = req.role.unwrap_or(own_role);
        if role > own_role {
            return Err(DomainError::Forbidden(format!(
                "role: an API token's role can be no higher than yours ({}); asked for {}",
                own_role.as_str(),
                role.as_str()
            )));
        }
        let now = self.clock.now();
        let secret = secrets::generate(SecretKind::Api);
        let token = ApiToken {
            id: secret.id.clone(),
            name: req.name.trim().into(),
            owner: owner.into(),
            role: Some(role),
            secret_hash: secret.hash,
            created_at: now,
            expires_at: now.plus(req.expires_in.unwrap_or(self.settings.api_token_ttl)),
        };
        self.store
            .commit(vec![
                Op::put(&token.id, &token, Expect::Absent)?,
                self.audit_op(
                    actor,
                    "api_token.create",
                    &token.id,
                    "ok",
                    serde_json::json!({ "name": token.name, "role": role, "expires_at": token.expires_at }),
                )?,
            ])
            .await?;
        Ok(ApiTokenCreated {
            token: secret.token,
            view: token_view(&token),
        })
    }

    /// Admins see every token; others their own.
    pub async fn list_api_tokens(
        &self,
        actor: &Actor,
        cursor: Option<String>,
        limit: Option<usize>,
    ) -> Result<Page<ApiTokenView>, DomainError> {
        let owner = actor
            .username()
            .ok_or_else(|| DomainError::Forbidden("only users own API tokens".into()))?;
        let is_admin = actor.role() == Some(Role::Admin);
        let limit = page_limit(limit);
        let mut rows = self
            .store
            .scan::<ApiToken>(Scan {
                after: cursor,
                limit: if is_admin { limit + 1 } else { 0 },
                ..Default::default()
            })
            .await?;
        if !is_admin {
            rows.retain(|t| t.value.owner == owner);
        }
        Ok(paginate(rows, limit, token_view))
    }

    pub async fn revoke_api_token(&self, actor: &Actor, id: &str) -> Result<(), DomainError> {
        let t = self
            .store
            .get::<ApiToken>(id)
            .await?
            .ok_or_else(|| DomainError::NotFound {
                what: "API token",
                id: id.into(),
            })?;
        if actor.username() != Some(t.value.owner.as_str()) {
            actor.require(Role::Admin)?;
        }
        self.store
            .commit(vec![
                Op::delete::<ApiToken>(id, Expect::Any),
                self.audit_op(
                    actor,
                    "api_token.revoke",
                    id,
                    "ok",
                    serde_json::json!({ "owner": t.value.owner }),
                )?,
            ])
            .await?;
        Ok(())
    }

    /// Delete expired sessions; called periodically.
    pub async fn sweep_sessions(&self) -> Result<usize, DomainError> {
        let now = self.clock.now();
        let mut removed = 0;
        let mut after = None;
        loop {
            let batch = self
                .store
                .scan::<Session>(Scan {
                    after: after.clone(),
                    limit: 500,
                    ..Default::default()
                })
                .await?;
            let done = batch.len() < 500;
            after = batch.last().map(|s| s.key.clone());
            let ops: Vec<Op> = batch
                .iter()
                .filter(|s| s.value.expires_at <= now)
                .map(|s| Op::delete::<Session>(&s.key, Expect::Version(s.version)))
                .collect();
            removed += ops.len();
            if !ops.is_empty() {
                self.store.commit(ops).await?;
            }
            if done {
                return Ok(removed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{AuthSettings, NewUser, UserUpdate};
    use crate::storage::Store;

    const PW: &str = "a-long-enough-password";

    fn token(name: &str, role: Option<Role>) -> NewApiToken {
        NewApiToken {
            name: name.into(),
            expires_in: None,
            role,
        }
    }

    #[tokio::test]
    async fn an_api_token_acts_with_the_lower_of_its_role_and_its_owners() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("db.redb")).await.unwrap();
        let settings = AuthSettings {
            session_ttl: Duration::from_secs(3600),
            api_token_ttl: Duration::from_secs(3600),
            enrollment_token_ttl: Duration::from_secs(3600),
        };
        let d = Domain::new(
            store,
            ManualClock::new(Timestamp(1_800_000_000_000)),
            "test".into(),
            settings,
        );
        let root = Actor::User {
            name: "root".into(),
            role: Role::Admin,
        };
        d.create_user(
            &root,
            NewUser {
                username: "ed".into(),
                password: PW.into(),
                role: Role::Editor,
            },
        )
        .await
        .unwrap();
        let ed = Actor::User {
            name: "ed".into(),
            role: Role::Editor,
        };

        // Higher than the creator's role: refused, naming the field, nothing stored.
        let err = d
            .create_api_token(&ed, token("too much", Some(Role::Admin)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DomainError::Forbidden(m) if m.starts_with("role:") && m.contains("editor")),
            "{err}"
        );
        assert!(d.list_api_tokens(&root, None, None).await.unwrap().items.is_empty());

        // Default: the creator's role, stored as such.
        let default = d.create_api_token(&ed, token("ci", None)).await.unwrap();
        assert_eq!(default.view.role, Some(Role::Editor));
        let narrow = d
            .create_api_token(&ed, token("dashboards", Some(Role::Viewer)))
            .await
            .unwrap();
        let acting = d.authenticate_api_token(&narrow.token).await.unwrap();
        assert_eq!(acting.role(), Some(Role::Viewer));
        // A viewer token cannot mint an editor token.
        assert!(matches!(
            d.create_api_token(&acting, token("escalate", Some(Role::Editor))).await,
            Err(DomainError::Forbidden(_))
        ));

        // Promoting the owner does not widen a narrow token; demoting narrows every token.
        let v = d.get_user(&root, "ed").await.unwrap().version;
        let v = d
            .update_user(
                &root,
                "ed",
                UserUpdate {
                    role: Some(Role::Admin),
                    password: None,
                    disabled: None,
                    version: Some(v),
                },
            )
            .await
            .unwrap()
            .version;
        assert_eq!(
            d.authenticate_api_token(&narrow.token).await.unwrap().role(),
            Some(Role::Viewer)
        );
        assert_eq!(
            d.authenticate_api_token(&default.token).await.unwrap().role(),
            Some(Role::Editor)
        );
        d.update_user(
            &root,
            "ed",
            UserUpdate {
                role: Some(Role::Viewer),
                password: None,
                disabled: None,
                version: Some(v),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            d.authenticate_api_token(&default.token).await.unwrap().role(),
            Some(Role::Viewer)
        );
    }

    #[tokio::test]
    async fn a_verified_token_is_refused_once_it_expires_and_a_wrong_secret_never_hits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("db.redb")).await.unwrap();
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let settings = AuthSettings {
            session_ttl: Duration::from_secs(3600),
            api_token_ttl: Duration::from_secs(3600),
            enrollment_token_ttl: Duration::from_secs(3600),
        };
        let d = Domain::new(store.clone(), clock.clone(), "test".into(), settings);
        d.create_user(
            &Actor::System,
            NewUser {
                username: "ci".into(),
                password: PW.into(),
                role: Role::Editor,
            },
        )
        .await
        .unwrap();
        let ci = Actor::User {
            name: "ci".into(),
            role: Role::Editor,
        };
        let mut req = token("short", None);
        req.expires_in = Some(Duration::from_secs(600));
        let t = d.create_api_token(&ci, req).await.unwrap();
        d.authenticate_api_token(&t.token).await.unwrap();
        assert_eq!(d.verified.held(), 1);

        // Held in memory: answered while the store cannot read tokens...
        store.fail_reads_of(Some(crate::storage::Table::ApiTokens));
        d.authenticate_api_token(&t.token).await.unwrap();
        // ...but not for another secret with the same id.
        let (id, _) = secrets::parse(SecretKind::Api, &t.token).unwrap();
        let forged = format!("lma_{id}_{}", "A".repeat(43));
        assert!(d.authenticate_api_token(&forged).await.is_err());
        store.fail_reads_of(None);
        assert!(matches!(
            d.authenticate_api_token(&forged).await,
            Err(DomainError::Unauthenticated(_))
        ));

        // Expired: refused from memory as from the store.
        clock.advance(Duration::from_secs(601));
        store.fail_reads_of(Some(crate::storage::Table::ApiTokens));
        assert!(d.authenticate_api_token(&t.token).await.is_err());
        store.fail_reads_of(None);
        assert!(matches!(
            d.authenticate_api_token(&t.token).await,
            Err(DomainError::Unauthenticated(_))
        ));
    }
}
