//! Reading the audit log (events are written by each mutation, in its own
//! transaction; see `Domain::audit_op`), and the keys events are stored
//! under.
//!
//! An event's key is a UUIDv7 whose time part is the event's `at` (from
//! the domain clock), so a time range is a key range: a query with `from`
//! / `to` scans only the keys inside it, never the whole log. Filters
//! without an index (actor, action) scan at most [`SCAN_BUDGET`] events
//! per request; a page that hit the budget ends with a cursor, so the
//! caller continues where the scan stopped instead of one request reading
//! an unbounded log.

use std::sync::Mutex;

use super::{page_limit, Actor, AuditEvent, Domain, DomainError, Page, Role};
use crate::clock::Timestamp;
use crate::storage::Scan;

/// Events one request reads at most when filters drop some of them.
pub const SCAN_BUDGET: usize = 10_000;
/// Events read per store round trip while filtering.
const BATCH: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    /// Only events whose action starts with this (e.g. `collector.`).
    pub action_prefix: Option<String>,
    /// Only events of this actor: an exact actor (`user:alice`,
    /// `collector:<id>`, `system`), or a user name (`alice`), which also
    /// matches that user's API tokens.
    pub actor: Option<String>,
    /// Only events at or after this time.
    pub from: Option<Timestamp>,
    /// Only events before this time.
    pub to: Option<Timestamp>,
}

impl AuditQuery {
    /// The one rule between parameters: `from` must come before `to`.
    /// Returns the offending parameter and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match (self.from, self.to) {
            (Some(f), Some(t)) if f >= t => Err(("from", format!("must be before `to` ({f} is not before {t})"))),
            _ => Ok(()),
        }
    }

    fn matches(&self, e: &AuditEvent) -> bool {
        let action = self.action_prefix.as_deref().is_none_or(|p| e.action.starts_with(p));
        let actor = self.actor.as_deref().is_none_or(|a| {
            e.actor == a || e.actor.strip_prefix("user:") == Some(a) || e.actor.ends_with(&format!("(user:{a})"))
        });
        action && actor
    }
}

/// A time in a query: RFC 3339 in UTC (`2026-12-01T09:15:00Z`); a time
/// without a zone (`2026-12-01T09:15`, what an HTML `datetime-local` input
/// sends) is taken as UTC. Offsets other than `Z` are refused, so a
/// wrong zone never silently shifts a range.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    let t = text.trim();
    let full = match t.len() {
        // YYYY-MM-DDTHH:MM
        16 => format!("{t}:00Z"),
        _ if t.ends_with('Z') || t.ends_with('z') => t.to_string(),
        _ if t.get(19..).is_some_and(|rest| !rest.contains(['+', '-'])) => format!("{t}Z"),
        _ => t.to_string(),
    };
    humantime::parse_rfc3339(&full.replacen(' ', "T", 1))
        .map(Timestamp::from_system_time)
        .map_err(|_| format!("{t:?} is not a UTC time like 2026-12-01T09:15:00Z"))
}

/// The smallest key an event at `t` can have: keys of events at `t` or
/// later sort at or after it, earlier ones before it.
fn key_floor(t: Timestamp) -> String {
    let ms = t.0 & 0xFFFF_FFFF_FFFF;
    format!("{:08x}-{:04x}-0000-0000-000000000000", ms >> 16, ms & 0xFFFF)
}

/// A new event key for time `now`: a UUIDv7 carrying `now` (so time ranges
/// are key ranges) and a counter that keeps keys of one process in the
/// order they were made even when the clock does not move between events
/// (a test clock, or several events in one millisecond).
pub(super) fn event_key(now: Timestamp) -> String {
    // A plain mutex: held for a few instructions, never across an await.
    static LAST: Mutex<(u64, u16)> = Mutex::new((0, 0));
    let (ms, counter) = {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let ms = now.0 & 0xFFFF_FFFF_FFFF;
        *last = if ms > last.0 {
            (ms, 0)
        } else if last.1 < 0x0FFF {
            (last.0, last.1 + 1)
        } else {
            // 4096 events in one millisecond: borrow the next one.
            (last.0 + 1, 0)
        };
        *last
    };
    let mut b = *uuid::Uuid::new_v4().as_bytes();
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | (counter >> 8) as u8;
    b[7] = (counter & 0xFF) as u8;
    b[8] = 0x80 | (b[8] & 0x3F);
    uuid::Uuid::from_bytes(b).to_string()
}

impl Domain {
    /// Newest first. See the module comment for what is scanned.
    pub async fn list_audit(&self, actor: &Actor, q: AuditQuery) -> Result<Page<AuditEvent>, DomainError> {
        actor.require(Role::Admin)?;
        if let Err((field, message)) = q.check() {
            return Err(DomainError::invalid(field, message));
        }
        let limit = page_limit(q.limit);
        let filtered = q.action_prefix.as_deref().is_some_and(|p| !p.is_empty()) || q.actor.is_some();
        // Newest first = a reverse scan below the upper bound: the cursor
        // or `to`, whichever is earlier.
        let mut after = match (q.cursor.clone(), q.to.map(key_floor)) {
            (Some(c), Some(t)) => Some(c.min(t)),
            (c, t) => c.or(t),
        };
        let floor = q.from.map(key_floor);
        let mut out: Vec<(String, AuditEvent)> = Vec::new();
        let mut scanned = 0;
        loop {
            let want = if filtered {
                BATCH.min(SCAN_BUDGET - scanned)
            } else {
                limit + 1 - out.len()
            };
            let batch = self
                .store
                .scan::<AuditEvent>(Scan {
                    after: after.clone(),
                    limit: want,
                    reverse: true,
                    ..Default::default()
                })
                .await?;
            let exhausted = batch.len() < want;
            for row in batch {
                if floor.as_ref().is_some_and(|f| row.key < *f) {
                    return Ok(page(out, limit, None));
                }
                scanned += 1;
                after = Some(row.key.clone());
                if q.matches(&row.value) {
                    out.push((row.key, row.value));
                    if out.len() > limit {
                        return Ok(page(out, limit, None));
                    }
                }
            }
            if exhausted {
                return Ok(page(out, limit, None));
            }
            if scanned >= SCAN_BUDGET {
                // Continue from the last event read, not the last match.
                return Ok(page(out, limit, after));
            }
        }
    }
}

/// `out` holds up to `limit + 1` matches; one more than the page means
/// there is a next page after the last one shown.
fn page(mut out: Vec<(String, AuditEvent)>, limit: usize, resume: Option<String>) -> Page<AuditEvent> {
    let more = out.len() > limit;
    out.truncate(limit);
    let next_cursor = if more {
        out.last().map(|(k, _)| k.clone())
    } else {
        resume
    };
    Page {
        items: out.into_iter().map(|(_, e)| e).collect(),
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{AuthSettings, NewUser};
    use crate::storage::Store;

    const T0: u64 = 1_800_000_000_000;

    async fn domain(dir: &std::path::Path) -> (Domain, Arc<ManualClock>) {
        let store = Store::open_embedded(&dir.join("db.redb")).await.unwrap();
        let clock = ManualClock::new(Timestamp(T0));
        let settings = AuthSettings {
            session_ttl: Duration::from_secs(60),
            api_token_ttl: Duration::from_secs(60),
            enrollment_token_ttl: Duration::from_secs(3600),
        };
        (Domain::new(store, clock.clone(), "test".into(), settings), clock)
    }

    fn targets(p: &Page<AuditEvent>) -> Vec<&str> {
        p.items.iter().map(|e| e.target.as_str()).collect()
    }

    #[test]
    fn keys_sort_by_time_then_by_creation_and_floors_bound_them() {
        let a = event_key(Timestamp(T0));
        let b = event_key(Timestamp(T0));
        let c = event_key(Timestamp(T0 + 1));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(key_floor(Timestamp(T0)) <= a && a < key_floor(Timestamp(T0 + 1)));
        assert!(key_floor(Timestamp(T0 + 1)) <= c);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
        let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, T0);
    }

    #[test]
    fn query_times_are_utc_and_name_what_is_wrong() {
        let t = Timestamp(1_764_580_500_000); // 2025-12-01T09:15:00Z
        assert_eq!(parse_time("2025-12-01T09:15:00Z"), Ok(t));
        assert_eq!(parse_time("2025-12-01T09:15"), Ok(t));
        assert_eq!(parse_time("2025-12-01T09:15:00"), Ok(t));
        assert_eq!(parse_time("2025-12-01T09:15:00.000Z"), Ok(t));
        assert!(parse_time("2025-12-01T09:15:00+02:00").is_err());
        assert_eq!(
            parse_time("yesterday").unwrap_err(),
            "\"yesterday\" is not a UTC time like 2026-12-01T09:15:00Z"
        );
    }

    #[tokio::test]
    async fn filters_by_actor_action_and_time_range_with_paging() {
        let dir = tempfile::tempdir().unwrap();
        let (d, clock) = domain(dir.path()).await;
        let admin = Actor::User {
            name: "root".into(),
            role: Role::Admin,
        };
        // Minute 0: system creates u0; minute 1: root creates u1; minute 2: u2; …
        for i in 0..6 {
            let actor = if i == 0 { Actor::System } else { admin.clone() };
            let req = NewUser {
                username: format!("u{i}"),
                password: "long-enough-password".into(),
                role: Role::Viewer,
            };
            d.create_user(&actor, req).await.unwrap();
            clock.advance(Duration::from_secs(60));
        }
        d.audit_only(&admin, "collector.restart", "c1", "ok", serde_json::Value::Null)
            .await;
        let all = |q: AuditQuery| d.list_audit(&admin, q);

        let p = all(AuditQuery::default()).await.unwrap();
        assert_eq!(targets(&p), ["c1", "u5", "u4", "u3", "u2", "u1", "u0"]);

        let q = AuditQuery {
            action_prefix: Some("user.".into()),
            actor: Some("root".into()),
            limit: Some(2),
            ..Default::default()
        };
        let p1 = all(q.clone()).await.unwrap();
        assert_eq!(targets(&p1), ["u5", "u4"]);
        let p2 = all(AuditQuery {
            cursor: p1.next_cursor.clone(),
            ..q.clone()
        })
        .await
        .unwrap();
        assert_eq!(targets(&p2), ["u3", "u2"]);
        let p3 = all(AuditQuery {
            cursor: p2.next_cursor.clone(),
            ..q.clone()
        })
        .await
        .unwrap();
        assert_eq!(targets(&p3), ["u1"]);
        assert_eq!(p3.next_cursor, None);

        let p = all(AuditQuery {
            actor: Some("system".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(targets(&p), ["u0"]);

        // [minute 2, minute 4): u2 and u3 only; `from` inclusive, `to` not.
        let p = all(AuditQuery {
            from: Some(Timestamp(T0 + 120_000)),
            to: Some(Timestamp(T0 + 240_000)),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(targets(&p), ["u3", "u2"]);
        assert_eq!(p.next_cursor, None);

        let e = all(AuditQuery {
            from: Some(Timestamp(T0 + 240_000)),
            to: Some(Timestamp(T0 + 120_000)),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert!(
            matches!(e, DomainError::Invalid { ref field, .. } if field == "from"),
            "{e:?}"
        );

        let viewer = Actor::User {
            name: "v".into(),
            role: Role::Viewer,
        };
        assert!(matches!(
            d.list_audit(&viewer, AuditQuery::default()).await,
            Err(DomainError::Forbidden(_))
        ));
    }

    #[tokio::test]
    async fn a_filter_that_matches_little_stops_at_the_scan_budget_with_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _clock) = domain(dir.path()).await;
        let ops: Vec<_> = (0..SCAN_BUDGET + 5)
            .map(|i| {
                d.audit_op(
                    &Actor::System,
                    "noise.tick",
                    &i.to_string(),
                    "ok",
                    serde_json::Value::Null,
                )
                .unwrap()
            })
            .collect();
        for chunk in ops.chunks(2000) {
            d.store.commit(chunk.to_vec()).await.unwrap();
        }
        let q = AuditQuery {
            action_prefix: Some("user.".into()),
            ..Default::default()
        };
        let p = d.list_audit(&Actor::System, q.clone()).await.unwrap();
        assert!(p.items.is_empty());
        let cursor = p.next_cursor.expect("the budget ran out: a cursor to go on");
        let p = d
            .list_audit(
                &Actor::System,
                AuditQuery {
                    cursor: Some(cursor),
                    ..q
                },
            )
            .await
            .unwrap();
        assert!(p.items.is_empty());
        assert_eq!(p.next_cursor, None, "the rest of the log fits in a second request");
    }
}
