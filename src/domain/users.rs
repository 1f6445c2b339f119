//! Users: roles, argon2id password hashes, edits with optimistic
//! concurrency, and the bootstrap admin.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::enrollment::paginate;
use super::{conflict_as, page_limit, Actor, Domain, DomainError, Page, Role, User};
use crate::clock::Timestamp;
use crate::config::Secret;
use crate::storage::{Expect, Op, Scan, Versioned};

pub const MIN_PASSWORD_LEN: usize = 12;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    /// At least 12 characters.
    pub password: String,
    pub role: Role,
}

/// A partial update; `version` (or `If-Match`) is required.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    pub role: Option<Role>,
    pub password: Option<String>,
    pub disabled: Option<bool>,
    /// The version you read.
    pub version: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the password was last reset or changed (absent: the one set
    /// at creation). Sessions from before it are no longer valid.
    pub password_changed_at: Option<Timestamp>,
    pub version: u64,
}

impl UserView {
    fn of(u: &User, version: u64) -> Self {
        UserView {
            username: u.username.clone(),
            role: u.role,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
            password_changed_at: u.sessions_valid_after,
            version,
        }
    }
}

fn validate_username(name: &str) -> Result<(), DomainError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "username",
            "1-64 characters of a-z, 0-9, '.', '_', '-', '@'",
        ))
    }
}

fn validate_password(pw: &str) -> Result<(), DomainError> {
    if pw.chars().count() < MIN_PASSWORD_LEN {
        return Err(DomainError::invalid(
            "password",
            format!("must be at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// argon2id with the crate's defaults (19 MiB, 2 passes). CPU-heavy, so it
/// runs on the blocking pool.
pub(crate) async fn hash_password(password: String) -> Result<String, DomainError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| DomainError::invalid("password", e.to_string()))
    })
    .await
    .map_err(|e| DomainError::invalid("password", e.to_string()))?
}

pub(crate) async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

impl Domain {
    /// Create the first admin when the store has no user at all. Racing
    /// instances both try; the key precondition lets exactly one win.
    pub async fn bootstrap_admin(&self, username: &str, password: &Secret) -> Result<bool, DomainError> {
        let any = self
            .store
            .scan::<User>(Scan {
                limit: 1,
                ..Default::default()
            })
            .await?;
        if !any.is_empty() {
            return Ok(false);
        }
        let req = NewUser {
            username: username.into(),
            password: password.expose().into(),
            role: Role::Admin,
        };
        match self.create_user(&Actor::System, req).await {
            Ok(_) => Ok(true),
            Err(DomainError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn create_user(&self, actor: &Actor, req: NewUser) -> Result<UserView, DomainError> {
        actor.require(Role::Admin)?;
        validate_username(&req.username)?;
        validate_password(&req.password)?;
        let now = self.clock.now();
        let user = User {
            username: req.username.clone(),
            role: req.role,
            password_hash: hash_password(req.password).await?,
            disabled: false,
            created_at: now,
            updated_at: now,
            sessions_valid_after: None,
        };
        let ops = vec![
            Op::put(&user.username, &user, Expect::Absent)?,
            self.audit_op(
                actor,
                "user.create",
                &user.username,
                "ok",
                serde_json::json!({ "role": user.role }),
            )?,
        ];
        match self.store.commit(ops).await {
            Ok(v) => Ok(UserView::of(&user, v[0])),
            Err(crate::storage::StorageError::Conflict { .. }) => Err(DomainError::AlreadyExists {
                what: "user",
                id: req.username,
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_user(&self, actor: &Actor, username: &str) -> Result<UserView, DomainError> {
        if actor.username() != Some(username) {
            actor.require(Role::Admin)?;
        }
        let u = self.load_user(username).await?;
        Ok(UserView::of(&u.value, u.version))
    }

    pub(crate) async fn load_user(&self, username: &str) -> Result<Versioned<User>, DomainError> {
        self.store
            .get::<User>(username)
            .await?
            .ok_or_else(|| DomainError::NotFound {
                what: "user",
                id: username.into(),
            })
    }

    pub async fn list_users(
        &self,
        actor: &Actor,
        cursor: Option<String>,
        limit: Option<usize>,
    ) -> Result<Page<UserView>, DomainError> {
        actor.require(Role::Admin)?;
        let limit = page_limit(limit);
        let rows = self
            .store
            .scan::<User>(Scan {
                after: cursor,
                limit: limit + 1,
                ..Default::default()
            })
            .await?;
        let versions: std::collections::HashMap<String, u64> =
            rows.iter().map(|r| (r.key.clone(), r.version)).collect();
        Ok(paginate(rows, limit, |u: &User| {
            UserView::of(u, versions.get(&u.username).copied().unwrap_or(0))
        }))
    }

    /// Edit a user with optimistic concurrency: the update applies only on
    /// top of the version the editor read; otherwise `Conflict` with the
    /// current version. Users may change their own password; everything
    /// else needs admin.
    pub async fn update_user(&self, actor: &Actor, username: &str, upd: UserUpdate) -> Result<UserView, DomainError> {
        let own_password_only = actor.username() == Some(username) && upd.role.is_none() && upd.disabled.is_none();
        if !own_password_only {
            actor.require(Role::Admin)?;
        }
        let version = upd.version.ok_or(DomainError::PreconditionRequired)?;
        if actor.username() == Some(username)
            && (upd.disabled == Some(true)
                || upd.role.is_some_and(|r| r < Role::Admin) && actor.role() == Some(Role::Admin))
        {
            return Err(DomainError::invalid(
                "role",
                "you cannot disable or demote yourself; ask another admin",
            ));
        }
        let cur = self.load_user(username).await?;
        if cur.version != version {
            return Err(DomainError::Conflict {
                what: "user",
                current: Some(cur.version),
            });
        }
        let mut user = cur.value;
        let mut changed = Vec::new();
        if let Some(role) = upd.role {
            user.role = role;
            changed.push("role");
        }
        if let Some(disabled) = upd.disabled {
            user.disabled = disabled;
            changed.push("disabled");
        }
        if let Some(pw) = upd.password {
            validate_password(&pw)?;
            user.password_hash = hash_password(pw).await?;
            user.sessions_valid_after = Some(self.clock.now());
            changed.push("password");
        }
        user.updated_at = self.clock.now();
        let ops = vec![
            Op::put(username, &user, Expect::Version(version))?,
            self.audit_op(
                actor,
                "user.update",
                username,
                "ok",
                serde_json::json!({ "changed": changed, "role": user.role, "disabled": user.disabled }),
            )?,
        ];
        let v = self.store.commit(ops).await.map_err(conflict_as("user"))?;
        Ok(UserView::of(&user, v[0]))
    }

    pub async fn delete_user(&self, actor: &Actor, username: &str, version: Option<u64>) -> Result<(), DomainError> {
        actor.require(Role::Admin)?;
        if actor.username() == Some(username) {
            return Err(DomainError::invalid(
                "username",
                "you cannot delete yourself; ask another admin",
            ));
        }
        let cur = self.load_user(username).await?;
        let expect = Expect::Version(version.unwrap_or(cur.version));
        let ops = vec![
            Op::delete::<User>(username, expect),
            self.audit_op(actor, "user.delete", username, "ok", serde_json::Value::Null)?,
        ];
        self.store.commit(ops).await.map_err(conflict_as("user"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::domain::AuthSettings;
    use crate::storage::Store;

    async fn domain(dir: &std::path::Path) -> (Domain, Arc<ManualClock>) {
        let store = Store::open_embedded(&dir.join("db.redb")).await.unwrap();
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let settings = AuthSettings {
            session_ttl: Duration::from_secs(3600),
            api_token_ttl: Duration::from_secs(3600),
            enrollment_token_ttl: Duration::from_secs(3600),
        };
        (Domain::new(store, clock.clone(), "test".into(), settings), clock)
    }

    fn user(name: &str, role: Role) -> Actor {
        Actor::User {
            name: name.into(),
            role,
        }
    }

    const PW: &str = "a-long-enough-password";

    #[tokio::test]
    async fn admins_edit_users_under_their_version_and_stale_edits_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let (d, clock) = domain(dir.path()).await;
        let root = user("root", Role::Admin);
        let v = d
            .create_user(
                &root,
                NewUser {
                    username: "alice".into(),
                    password: PW.into(),
                    role: Role::Viewer,
                },
            )
            .await
            .unwrap();
        assert_eq!(v.password_changed_at, None);
        let session = d.login("alice", PW).await.unwrap().cookie;

        // Two admins read version v; the first edit wins, the second conflicts.
        let promoted = d
            .update_user(
                &root,
                "alice",
                UserUpdate {
                    role: Some(Role::Editor),
                    version: Some(v.version),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(promoted.role, Role::Editor);
        let stale = d
            .update_user(
                &root,
                "alice",
                UserUpdate {
                    disabled: Some(true),
                    version: Some(v.version),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(stale, DomainError::Conflict { current: Some(c), .. } if c == promoted.version),
            "{stale:?}"
        );
        assert!(
            !d.get_user(&root, "alice").await.unwrap().disabled,
            "the stale edit changed nothing"
        );

        // A reset password ends the sessions opened before it.
        clock.advance(Duration::from_secs(1));
        let reset = d
            .update_user(
                &root,
                "alice",
                UserUpdate {
                    password: Some("another-long-password".into()),
                    version: Some(promoted.version),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(reset.password_changed_at, Some(clock.now()));
        assert!(d.authenticate_session(&session).await.is_err());
        assert!(d.login("alice", PW).await.is_err());
        let session = d.login("alice", "another-long-password").await.unwrap().cookie;

        // Disabled: the open session stops working and login is refused.
        d.update_user(
            &root,
            "alice",
            UserUpdate {
                disabled: Some(true),
                version: Some(reset.version),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(d.authenticate_session(&session).await.is_err());
        assert!(d.login("alice", "another-long-password").await.is_err());
    }

    #[tokio::test]
    async fn only_admins_manage_users_and_nobody_locks_themselves_out() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = domain(dir.path()).await;
        let root = user("root", Role::Admin);
        for (name, role) in [("root", Role::Admin), ("ed", Role::Editor)] {
            d.create_user(
                &Actor::System,
                NewUser {
                    username: name.into(),
                    password: PW.into(),
                    role,
                },
            )
            .await
            .unwrap();
        }
        let ed = user("ed", Role::Editor);
        let new = || NewUser {
            username: "mallory".into(),
            password: PW.into(),
            role: Role::Admin,
        };
        assert!(matches!(
            d.create_user(&ed, new()).await,
            Err(DomainError::Forbidden(_))
        ));
        assert!(matches!(
            d.list_users(&ed, None, None).await,
            Err(DomainError::Forbidden(_))
        ));
        let ed_v = d.get_user(&ed, "ed").await.unwrap().version;
        let promote = UserUpdate {
            role: Some(Role::Admin),
            version: Some(ed_v),
            ..Default::default()
        };
        assert!(matches!(
            d.update_user(&ed, "ed", promote).await,
            Err(DomainError::Forbidden(_))
        ));
        let short = NewUser {
            password: "short".into(),
            ..new()
        };
        assert!(
            matches!(d.create_user(&root, short).await, Err(DomainError::Invalid { ref field, .. }) if field == "password")
        );

        let root_v = d.get_user(&root, "root").await.unwrap().version;
        for upd in [
            UserUpdate {
                disabled: Some(true),
                version: Some(root_v),
                ..Default::default()
            },
            UserUpdate {
                role: Some(Role::Viewer),
                version: Some(root_v),
                ..Default::default()
            },
        ] {
            let e = d.update_user(&root, "root", upd).await.unwrap_err();
            assert!(
                matches!(e, DomainError::Invalid { ref field, .. } if field == "role"),
                "{e:?}"
            );
        }
    }
}
