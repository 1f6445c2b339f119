//! Verified bearer secrets of people and automation (API tokens, UI session
//! cookies), kept so that an authenticated request does not read the store
//! twice (the secret's record and its owner) before it does anything else.
//!
//! What makes it safe:
//! - An entry is found by the secret's public id and holds only the stored
//!   SHA-256 of its random part: the plaintext is never kept, and every hit
//!   is checked again with `secrets::verify` (constant time).
//! - The expiry is checked on every hit against the instance's clock.
//! - Before every lookup the cache applies the change feed: a token revoked,
//!   a session ended, a user disabled, demoted or deleted — on this instance
//!   or on another one (MongoDB change streams) — drops the entries it
//!   concerns before the next request is answered. A feed that lagged or was
//!   restarted drops everything.
//! - A store read that began before an invalidation is not cached (the
//!   generation check in `insert`), so a revocation racing with a miss
//!   cannot leave the revoked secret behind.
//! - Entries are re-read after `MAX_AGE` whatever the feed says, and there
//!   are at most `CAPACITY` of them.
//!
//! It must not hold a lock across an await: one std mutex, taken briefly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;

use super::secrets;
use super::Actor;
use crate::clock::Timestamp;
use crate::storage::{ChangeFeed, Store, Table};

/// How many verified secrets are kept (more live tokens and sessions than
/// that only cost a store read for the least recently verified).
pub const CAPACITY: usize = 10_000;

/// How long an entry is trusted without the store being asked again, in
/// case a change never reached the feed.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Which kind of bearer secret an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ApiToken,
    Session,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The stored SHA-256 (hex) of the secret's random part.
    secret_hash: String,
    expires_at: Timestamp,
    /// Whose secret it is: a change to that user drops the entry.
    owner: String,
    /// Who the secret acts as, resolved from the token and its owner.
    actor: Actor,
    verified_at: Timestamp,
}

/// What a caller learns before reading the store on a miss: pass it back to
/// `insert`, which refuses to cache a read that an invalidation overtook.
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

/// A lookup's answer.
pub enum Lookup {
    /// The secret was verified before and still holds.
    Hit(Actor),
    /// Not known (or no longer trusted): read the store.
    Miss(Generation),
}

struct State {
    feed: ChangeFeed,
    entries: HashMap<(Kind, String), Entry>,
    /// Bumped by every invalidation.
    generation: u64,
}

pub struct VerifiedCache {
    store: Store,
    state: Mutex<State>,
}

impl VerifiedCache {
    pub fn new(store: &Store) -> Self {
        VerifiedCache {
            state: Mutex::new(State {
                feed: store.subscribe(),
                entries: HashMap::new(),
                generation: 0,
            }),
            store: store.clone(),
        }
    }

    /// The actor behind `id`'s secret if it was verified before, its random
    /// part still matches and it has not expired.
    pub fn lookup(&self, kind: Kind, id: &str, random: &str, now: Timestamp) -> Lookup {
        let Ok(mut st) = self.state.lock() else {
            return Lookup::Miss(Generation(u64::MAX));
        };
        self.apply_feed(&mut st);
        let key = (kind, id.to_string());
        let fresh = st.entries.get(&key).and_then(|e| {
            let trusted = now < e.expires_at && now.0.saturating_sub(e.verified_at.0) < MAX_AGE.as_millis() as u64;
            trusted.then(|| (secrets::verify(random, &e.secret_hash), e.actor.clone()))
        });
        match fresh {
            Some((true, actor)) => Lookup::Hit(actor),
            // A wrong random part for a known id is refused by the caller
            // after reading the store; the entry stays (it is still right).
            Some((false, _)) => Lookup::Miss(Generation(st.generation)),
            None => {
                st.entries.remove(&key);
                Lookup::Miss(Generation(st.generation))
            }
        }
    }

    /// Remember a secret the store has just verified, unless an
    /// invalidation happened since the lookup that missed.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        seen: Generation,
        kind: Kind,
        id: &str,
        secret_hash: &str,
        expires_at: Timestamp,
        owner: &str,
        actor: &Actor,
        now: Timestamp,
    ) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        self.apply_feed(&mut st);
        if st.generation != seen.0 {
            return;
        }
        if st.entries.len() >= CAPACITY {
            // The least recently verified goes; scanning is fine at this
            // size and happens only with more live secrets than CAPACITY.
            if let Some(oldest) = st
                .entries
                .iter()
                .min_by_key(|(_, e)| e.verified_at)
                .map(|(k, _)| k.clone())
            {
                st.entries.remove(&oldest);
            }
        }
        st.entries.insert(
            (kind, id.to_string()),
            Entry {
                secret_hash: secret_hash.to_string(),
                expires_at,
                owner: owner.to_string(),
                actor: actor.clone(),
                verified_at: now,
            },
        );
    }

    /// How many secrets are held (tests, metrics).
    pub fn held(&self) -> usize {
        self.state.lock().map(|st| st.entries.len()).unwrap_or(0)
    }

    /// Drop what the changes committed since the last call concern.
    fn apply_feed(&self, st: &mut State) {
        loop {
            match st.feed.try_recv() {
                Ok(change) => {
                    let key = change.key;
                    match change.table {
                        Table::ApiTokens => st.invalidate(|(kind, id), _| *kind == Kind::ApiToken && *id == key),
                        Table::Sessions => st.invalidate(|(kind, id), _| *kind == Kind::Session && *id == key),
                        Table::Users => st.invalidate(|_, e| e.owner == key),
                        _ => {}
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
                Err(TryRecvError::Lagged(_)) => {
                    // Changes were missed: trust nothing, and start again
                    // at the feed's head rather than replaying its backlog.
                    st.entries.clear();
                    st.generation += 1;
                    st.feed = self.store.subscribe();
                    return;
                }
            }
        }
    }
}

impl State {
    fn invalidate(&mut self, drop: impl Fn(&(Kind, String), &Entry) -> bool) {
        self.entries.retain(|k, e| !drop(k, e));
        // Even when nothing was held: a miss reading the store right now
        // may have read the record before this change.
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    #[tokio::test]
    async fn it_holds_at_most_capacity_and_keeps_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("db.redb")).await.unwrap();
        let cache = VerifiedCache::new(&store);
        let actor = Actor::User {
            name: "u".into(),
            role: Role::Viewer,
        };
        let far = Timestamp(u64::MAX);
        for i in 0..CAPACITY + 5 {
            let Lookup::Miss(seen) = cache.lookup(Kind::Session, &i.to_string(), "r", Timestamp(i as u64)) else {
                panic!("{i} was never inserted");
            };
            let hash = secrets::hash_secret("r");
            cache.insert(
                seen,
                Kind::Session,
                &i.to_string(),
                &hash,
                far,
                "u",
                &actor,
                Timestamp(i as u64),
            );
        }
        assert_eq!(cache.held(), CAPACITY);
        let now = Timestamp(CAPACITY as u64 + 5);
        assert!(matches!(cache.lookup(Kind::Session, "0", "r", now), Lookup::Miss(_)));
        let last = (CAPACITY + 4).to_string();
        assert!(matches!(cache.lookup(Kind::Session, &last, "r", now), Lookup::Hit(_)));
        // Trusted for MAX_AGE only.
        let later = Timestamp(now.0 + MAX_AGE.as_millis() as u64);
        assert!(matches!(
            cache.lookup(Kind::Session, &last, "r", later),
            Lookup::Miss(_)
        ));
    }
}
