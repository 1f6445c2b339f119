//! Onboarding progress: which collectors have enrolled with an enrollment
//! token, for the console's "waiting for the first collector" panel.
//!
//! Kept cheap because a browser asks every few seconds while it waits: one
//! key read of the token answers "nobody yet" (its `uses` is 0). Only once
//! the token has been used are the enrollments looked up, in the audit
//! trail written by the enrollment transaction itself — audit ids are
//! UUIDv7, so the scan starts at the token's creation time and reads only
//! what happened since, never the whole fleet (collectors carry the token
//! id, but there is no index on it).

use serde::Serialize;

use super::{AuditEvent, Collector, Domain, DomainError, EnrollmentToken, EnrollmentTokenView, Role};
use crate::storage::Scan;

/// How many collectors the progress lists (the rest are counted in `uses`).
const LISTED: usize = 10;
/// Audit events read per request at most: a token used long after a flood
/// of other events still answers quickly (with `uses` but fewer names).
const SCAN_BUDGET: usize = 4096;
const SCAN_PAGE: usize = 512;
/// Audit ids come from the system clock, the token's `created_at` from the
/// domain clock; start a little earlier so a small skew loses nothing.
const CLOCK_SLACK_MS: u64 = 60_000;

/// A collector that enrolled with the token.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EnrolledCollector {
    pub id: String,
    pub name: String,
}

/// The token (never its secret) and the first collectors that used it.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollmentProgress {
    pub token: EnrollmentTokenView,
    /// In enrollment order; at most 10, still registered.
    pub collectors: Vec<EnrolledCollector>,
}

/// The smallest UUIDv7 string of the millisecond `ms`: a scan cursor that
/// starts at that time (audit keys sort by time).
fn v7_floor(ms: u64) -> String {
    uuid::Builder::from_unix_timestamp_millis(ms, &[0u8; 10])
        .into_uuid()
        .hyphenated()
        .to_string()
}

impl Domain {
    pub async fn enrollment_progress(
        &self,
        actor: &super::Actor,
        token_id: &str,
    ) -> Result<EnrollmentProgress, DomainError> {
        actor.require(Role::Viewer)?;
        let Some(token) = self.store.get::<EnrollmentToken>(token_id).await? else {
            return Err(DomainError::NotFound {
                what: "enrollment token",
                id: token_id.into(),
            });
        };
        let token = token.value;
        let mut collectors = Vec::new();
        if token.uses > 0 {
            let who = format!("enrollment_token:{}", token.id);
            let mut after = Some(v7_floor(token.created_at.0.saturating_sub(CLOCK_SLACK_MS)));
            let mut read = 0;
            'scan: while read < SCAN_BUDGET {
                let rows = self
                    .store
                    .scan::<AuditEvent>(Scan {
                        after: after.clone(),
                        limit: SCAN_PAGE,
                        ..Default::default()
                    })
                    .await?;
                read += rows.len();
                let done = rows.len() < SCAN_PAGE;
                after = rows.last().map(|r| r.key.clone());
                for ev in rows {
                    let e = ev.value;
                    if e.action != "collector.enroll" || e.outcome != "ok" || e.actor != who {
                        continue;
                    }
                    // Deregistered since: not worth a link.
                    if let Some(c) = self.store.get::<Collector>(&e.target).await? {
                        collectors.push(EnrolledCollector {
                            id: c.value.id,
                            name: c.value.name,
                        });
                        if collectors.len() >= LISTED {
                            break 'scan;
                        }
                    }
                }
                if done {
                    break;
                }
            }
        }
        Ok(EnrollmentProgress {
            token: self.token_view(&token),
            collectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::{ManualClock, Timestamp};
    use crate::domain::{Actor, AuthSettings, EnrollRequest, NewEnrollmentToken};
    use crate::storage::Store;

    async fn enroll(d: &Domain, token: &str, name: &str) -> Result<String, DomainError> {
        d.enroll(EnrollRequest {
            token: token.into(),
            instance_uid: None,
            name: Some(name.into()),
            labels: Default::default(),
        })
        .await
        .map(|e| e.collector_id)
    }

    #[tokio::test]
    async fn progress_lists_the_collectors_of_this_token_only_in_enrollment_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(&dir.path().join("db.redb")).await.unwrap();
        let settings = AuthSettings {
            session_ttl: Duration::from_secs(60),
            api_token_ttl: Duration::from_secs(60),
            enrollment_token_ttl: Duration::from_secs(3600),
        };
        let d = Domain::new(
            store,
            ManualClock::new(Timestamp(1_700_000_000_000)),
            "test".into(),
            settings,
        );
        let new = |name: &str| NewEnrollmentToken {
            name: name.into(),
            max_uses: Some(5),
            ..Default::default()
        };
        let mine = d.create_enrollment_token(&Actor::System, new("mine")).await.unwrap();
        let other = d.create_enrollment_token(&Actor::System, new("other")).await.unwrap();
        let viewer = Actor::User {
            name: "v".into(),
            role: Role::Viewer,
        };

        let p = d.enrollment_progress(&viewer, &mine.view.id).await.unwrap();
        assert_eq!((p.token.uses, p.collectors.len()), (0, 0));

        let a = enroll(&d, &mine.token, "a").await.unwrap();
        enroll(&d, &other.token, "not-mine").await.unwrap();
        let forged = format!("{}x", mine.token);
        assert!(enroll(&d, &forged, "forged").await.is_err());
        let b = enroll(&d, &mine.token, "b").await.unwrap();

        let p = d.enrollment_progress(&viewer, &mine.view.id).await.unwrap();
        assert_eq!(p.token.uses, 2);
        assert_eq!(
            p.collectors,
            vec![
                EnrolledCollector {
                    id: a,
                    name: "a".into()
                },
                EnrolledCollector {
                    id: b,
                    name: "b".into()
                }
            ]
        );
        assert!(matches!(
            d.enrollment_progress(&viewer, "et_nope").await,
            Err(DomainError::NotFound { .. })
        ));
    }

    #[test]
    fn the_cursor_sorts_before_every_id_of_its_millisecond_and_after_earlier_ones() {
        let ms = 1_764_580_527_000;
        let floor = v7_floor(ms);
        let same = uuid::Builder::from_unix_timestamp_millis(ms, &[0xff; 10])
            .into_uuid()
            .to_string();
        let earlier = uuid::Builder::from_unix_timestamp_millis(ms - 1, &[0xff; 10])
            .into_uuid()
            .to_string();
        assert!(floor < same, "{floor} < {same}");
        assert!(earlier < floor, "{earlier} < {floor}");
    }
}
