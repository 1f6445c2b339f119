//! The routing canvas: one JSON document the UI edits, saved with
//! optimistic concurrency (two editors never silently overwrite each other),
//! and the collectors a route draft's impact is computed for.

use serde::Serialize;
use utoipa::ToSchema;

use std::collections::BTreeSet;

use super::{conflict_as, Actor, Canvas, Collector, ConfigAssignment, Domain, DomainError, Role, DEFAULT_ASSIGNMENT};
use crate::clock::Timestamp;
use crate::configstore::draft::Target;
use crate::storage::{Expect, Op, Record, Scan};

const CANVAS_KEY: &str = "default";
/// Largest canvas document accepted, serialized.
pub const MAX_CANVAS_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CanvasDoc {
    /// 0 when nothing was saved yet.
    pub version: u64,
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    pub updated_at: Option<Timestamp>,
    pub updated_by: Option<String>,
}

impl Domain {
    pub async fn get_canvas(&self, actor: &Actor) -> Result<CanvasDoc, DomainError> {
        actor.require(Role::Viewer)?;
        Ok(match self.store.get::<Canvas>(CANVAS_KEY).await? {
            Some(c) => CanvasDoc {
                version: c.version,
                document: c.value.document,
                updated_at: Some(c.value.updated_at),
                updated_by: Some(c.value.updated_by),
            },
            None => CanvasDoc {
                version: 0,
                document: serde_json::json!({}),
                updated_at: None,
                updated_by: None,
            },
        })
    }

    /// Save the canvas on top of `version` (0 = the first save).
    pub async fn save_canvas(
        &self,
        actor: &Actor,
        version: Option<u64>,
        document: serde_json::Value,
    ) -> Result<CanvasDoc, DomainError> {
        actor.require(Role::Editor)?;
        let version = version.ok_or(DomainError::PreconditionRequired)?;
        if !document.is_object() {
            return Err(DomainError::invalid("document", "must be a JSON object"));
        }
        if serde_json::to_vec(&document).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_CANVAS_BYTES {
            return Err(DomainError::invalid(
                "document",
                format!("larger than {MAX_CANVAS_BYTES} bytes"),
            ));
        }
        let canvas = Canvas {
            document,
            updated_at: self.clock.now(),
            updated_by: actor.audit_name(),
        };
        let expect = if version == 0 {
            Expect::Absent
        } else {
            Expect::Version(version)
        };
        let ops = vec![
            Op::put(CANVAS_KEY, &canvas, expect)?,
            self.audit_op(
                actor,
                "canvas.save",
                CANVAS_KEY,
                "ok",
                serde_json::json!({ "based_on": version }),
            )?,
        ];
        let v = self.store.commit(ops).await.map_err(conflict_as("canvas"))?;
        Ok(CanvasDoc {
            version: v[0],
            document: canvas.document,
            updated_at: Some(canvas.updated_at),
            updated_by: Some(canvas.updated_by),
        })
    }
}

/// Rows per storage read when walking a whole table.
const SCAN_BATCH: usize = 1000;

impl Domain {
    /// Every registered collector with its labels and whether a config is
    /// pinned to it: what route match counts and a draft's impact are
    /// computed over (viewer: the same facts the collectors list shows).
    pub async fn route_targets(&self, actor: &Actor) -> Result<Vec<Target>, DomainError> {
        actor.require(Role::Viewer)?;
        let pinned: BTreeSet<String> = self
            .scan_all::<ConfigAssignment>()
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|k| k != DEFAULT_ASSIGNMENT)
            .collect();
        Ok(self
            .scan_all::<Collector>()
            .await?
            .into_iter()
            .map(|(_, c)| Target {
                pinned: pinned.contains(&c.id),
                id: c.id,
                name: c.name,
                labels: c.labels,
            })
            .collect())
    }

    /// A whole table, in key order, read in batches.
    async fn scan_all<T: Record>(&self) -> Result<Vec<(String, T)>, DomainError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let batch = self
                .store
                .scan::<T>(Scan {
                    after: after.clone(),
                    limit: SCAN_BATCH,
                    ..Default::default()
                })
                .await?;
            let done = batch.len() < SCAN_BATCH;
            after = batch.last().map(|r| r.key.clone());
            out.extend(batch.into_iter().map(|r| (r.key, r.value)));
            if done {
                return Ok(out);
            }
        }
    }
}
