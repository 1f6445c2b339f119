//! Fleet status as the API shows it: each collector joined with its stored
//! status, the liveness of the instance holding it, and how its reported
//! config compares with the desired one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::desired::Desired;
use super::{Fleet, PRESENCE_STALE};
use crate::clock::Timestamp;
use crate::domain::{
    Collector, CollectorStatus, ConfigAssignment, DomainError, Labels, Page, ServerInstance, DEFAULT_ASSIGNMENT,
};
use crate::storage::{Scan, Versioned};

/// One collector in the fleet list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetCollector {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    /// Version of the collector record (for label edits).
    pub version: u64,
    pub enrolled_at: Timestamp,
    pub connected: bool,
    /// The instance holding (or last holding) its connection.
    pub instance: Option<String>,
    pub transport: Option<String>,
    pub last_seen: Option<Timestamp>,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health: String,
    /// `applied`, `applying`, `failed`, `pending` (not yet acknowledged),
    /// `incompatible` (names component types the collector lacks: not
    /// pushed) or `none` (nothing to apply).
    pub config_status: String,
    /// The collector's error message when `config_status` is `failed`; the
    /// missing component types when `incompatible`.
    pub config_error: Option<String>,
    pub desired_hash: Option<String>,
}

/// A collector in full.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CollectorDetail {
    #[serde(flatten)]
    pub summary: FleetCollector,
    pub status: Option<CollectorStatus>,
    pub desired: Option<DesiredView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DesiredView {
    pub hash: String,
    /// `assignment`, `default` or `config_store@<commit>`.
    pub source: String,
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct FleetSummary {
    pub total: u64,
    pub connected: u64,
    pub disconnected: u64,
    /// healthy / unhealthy / unknown -> count
    pub health: BTreeMap<String, u64>,
    /// applied / applying / failed / pending / none -> count
    pub config: BTreeMap<String, u64>,
    /// instance -> collectors it holds
    pub instances: BTreeMap<String, u64>,
}

/// Filters of the fleet list.
#[derive(Debug, Clone, Default)]
pub struct FleetQuery {
    pub labels: Labels,
    pub connected: Option<bool>,
    pub health: Option<String>,
    pub config_status: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    pub sort: FleetSort,
}

/// Order of the fleet list. A cursor is a position in one order (the sort
/// key of the last item), so it stays valid while collectors come and go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FleetSort {
    /// By id (enrollment order: ids are UUIDv7).
    #[default]
    Id,
    /// By name, case-insensitive.
    Name,
    /// Most recently seen first; never seen last.
    LastSeen,
}

impl FleetSort {
    fn key(self, c: &Versioned<Collector>, s: Option<&CollectorStatus>) -> String {
        match self {
            FleetSort::Id => c.key.clone(),
            // U+001F sorts before any printable character: "ab" < "abc".
            FleetSort::Name => format!("{}\u{1f}{}", c.value.name.to_lowercase(), c.key),
            FleetSort::LastSeen => {
                let seen = s.and_then(|s| s.last_seen).map_or(0, |t| t.0);
                format!("{:020}\u{1f}{}", u64::MAX - seen, c.key)
            }
        }
    }
}

fn health_of(s: Option<&CollectorStatus>) -> String {
    match s.and_then(|s| s.health.as_ref()) {
        Some(h) if h.healthy => "healthy",
        Some(_) => "unhealthy",
        None => "unknown",
    }
    .into()
}

fn config_of(s: Option<&CollectorStatus>, desired: Option<&Desired>) -> (String, Option<String>) {
    let Some(d) = desired else { return ("none".into(), None) };
    let reported = s.and_then(|s| s.remote_config.as_ref());
    if reported.is_none_or(|r| r.hash != d.hash_hex) {
        // Not pushed at all (`compat`): say why.
        let missing = super::compat::missing(d, s.and_then(|s| s.available_components.as_ref()));
        if !missing.is_empty() {
            return ("incompatible".into(), Some(super::compat::describe(&missing)));
        }
    }
    match reported {
        Some(r) if r.hash == d.hash_hex => match r.status.as_str() {
            "APPLIED" => ("applied".into(), None),
            "FAILED" => ("failed".into(), Some(r.error_message.clone())),
            _ => ("applying".into(), None),
        },
        _ => ("pending".into(), None),
    }
}

/// Everything needed to judge the fleet, read in a few scans.
struct Loaded {
    collectors: Vec<Versioned<Collector>>,
    statuses: HashMap<String, CollectorStatus>,
    pinned: HashMap<String, Arc<Desired>>,
    default: Option<Arc<Desired>>,
    alive: HashMap<String, bool>,
}

impl Fleet {
    async fn load(&self) -> Result<Loaded, DomainError> {
        let store = self.domain().store();
        let collectors = store.scan::<Collector>(Scan::default()).await?;
        let statuses = store
            .scan::<CollectorStatus>(Scan::default())
            .await?
            .into_iter()
            .map(|s| (s.key, s.value))
            .collect();
        let mut pinned = HashMap::new();
        let mut default = None;
        for a in store.scan::<ConfigAssignment>(Scan::default()).await? {
            if a.key == DEFAULT_ASSIGNMENT {
                default = Some(Arc::new(Desired::from((&a.value, "default"))));
            } else {
                pinned.insert(a.key.clone(), Arc::new(Desired::from((&a.value, "assignment"))));
            }
        }
        let now = self.domain().clock().now();
        let alive = store
            .scan::<ServerInstance>(Scan::default())
            .await?
            .into_iter()
            .map(|i| {
                (
                    i.key,
                    now.0.saturating_sub(i.value.heartbeat_at.0) < PRESENCE_STALE.as_millis() as u64,
                )
            })
            .collect();
        Ok(Loaded {
            collectors,
            statuses,
            pinned,
            default,
            alive,
        })
    }

    /// Whether a stored status means connected now: the holder says so and
    /// is itself alive (this instance: it holds the session).
    fn is_connected(&self, s: &CollectorStatus, alive: &HashMap<String, bool>) -> bool {
        if !s.connected {
            return false;
        }
        if s.instance == self.instance() {
            return self.inner.sessions.contains(&s.collector_id);
        }
        alive.get(&s.instance).copied().unwrap_or(false)
    }

    fn summarize(&self, c: &Versioned<Collector>, l: &Loaded) -> FleetCollector {
        let s = l.statuses.get(&c.key);
        // The push path's resolver, on what was read in bulk.
        let desired = self
            .inner
            .resolver
            .pick(l.pinned.get(&c.key).cloned(), &c.value, l.default.clone());
        let (config_status, config_error) = config_of(s, desired.as_deref());
        FleetCollector {
            id: c.value.id.clone(),
            name: c.value.name.clone(),
            labels: c.value.labels.clone(),
            version: c.version,
            enrolled_at: c.value.enrolled_at,
            connected: s.is_some_and(|s| self.is_connected(s, &l.alive)),
            instance: s.map(|s| s.instance.clone()),
            transport: s.map(|s| s.transport.clone()),
            last_seen: s.and_then(|s| s.last_seen),
            health: health_of(s),
            config_status,
            config_error,
            desired_hash: desired.map(|d| d.hash_hex.clone()),
        }
    }

    pub async fn list(&self, q: FleetQuery) -> Result<Page<FleetCollector>, DomainError> {
        let mut l = self.load().await?;
        self.overlay_live(&mut l).await;
        let limit = crate::domain::page_limit(q.limit);
        let mut items = Vec::new();
        let mut next_cursor = None;
        let mut order: Vec<(String, &Versioned<Collector>)> = l
            .collectors
            .iter()
            .map(|c| (q.sort.key(c, l.statuses.get(&c.key)), c))
            .collect();
        if q.sort != FleetSort::Id {
            order.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let mut last_key = None;
        for (key, c) in order {
            if q.cursor.as_deref().is_some_and(|cur| key.as_str() <= cur) {
                continue;
            }
            if !q.labels.iter().all(|(k, v)| c.value.labels.get(k) == Some(v)) {
                continue;
            }
            let v = self.summarize(c, &l);
            if q.connected.is_some_and(|want| want != v.connected)
                || q.health.as_ref().is_some_and(|h| *h != v.health)
                || q.config_status.as_ref().is_some_and(|cs| *cs != v.config_status)
            {
                continue;
            }
            if items.len() == limit {
                next_cursor = last_key;
                break;
            }
            items.push(v);
            last_key = Some(key);
        }
        Ok(Page { items, next_cursor })
    }

    pub async fn summary(&self) -> Result<FleetSummary, DomainError> {
        Ok(FleetSummary::of(&self.all().await?))
    }

    /// Every collector's view, from one load (the console's live watcher
    /// shares it between all open pages).
    pub async fn all(&self) -> Result<Vec<FleetCollector>, DomainError> {
        let mut l = self.load().await?;
        self.overlay_live(&mut l).await;
        Ok(l.collectors.iter().map(|c| self.summarize(c, &l)).collect())
    }
}

impl FleetSummary {
    pub fn of(all: &[FleetCollector]) -> FleetSummary {
        let mut sum = FleetSummary::default();
        for v in all {
            sum.total += 1;
            if v.connected {
                sum.connected += 1;
                if let Some(i) = &v.instance {
                    *sum.instances.entry(i.clone()).or_default() += 1;
                }
            } else {
                sum.disconnected += 1;
            }
            *sum.health.entry(v.health.clone()).or_default() += 1;
            *sum.config.entry(v.config_status.clone()).or_default() += 1;
        }
        sum
    }
}

impl Fleet {
    pub async fn detail(&self, id: &str) -> Result<CollectorDetail, DomainError> {
        let store = self.domain().store();
        let c = store.get::<Collector>(id).await?.ok_or_else(|| DomainError::NotFound {
            what: "collector",
            id: id.into(),
        })?;
        let (status, desired) = match self.live_status(id).await {
            Some((s, d)) => (Some(s), d),
            None => (
                store.get::<CollectorStatus>(id).await?.map(|s| s.value),
                self.desired_for(&c.value).await?,
            ),
        };
        let now = self.domain().clock().now();
        let mut alive = HashMap::new();
        if let Some(s) = &status {
            if let Some(i) = store.get::<ServerInstance>(&s.instance).await? {
                alive.insert(
                    s.instance.clone(),
                    now.0.saturating_sub(i.value.heartbeat_at.0) < PRESENCE_STALE.as_millis() as u64,
                );
            }
        }
        let l = Loaded {
            collectors: vec![],
            statuses: status.iter().map(|s| (id.to_string(), s.clone())).collect(),
            pinned: desired.iter().map(|d| (id.to_string(), d.clone())).collect(),
            default: None,
            alive,
        };
        let summary = self.summarize(&c, &l);
        let desired = desired.map(|d| DesiredView {
            hash: d.hash_hex.clone(),
            source: d.source.clone(),
            files: d
                .files
                .iter()
                .map(|(k, (b, _))| (k.clone(), String::from_utf8_lossy(b).into_owned()))
                .collect(),
        });
        Ok(CollectorDetail {
            summary,
            status,
            desired,
        })
    }

    /// Use the in-memory status of sessions held here (fresher than the
    /// store while a write is pending).
    async fn overlay_live(&self, l: &mut Loaded) {
        for (id, ctx, _) in self.inner.sessions.all() {
            let status = ctx.lock().await.agent.status.clone();
            l.statuses.insert(id, status);
        }
    }
}
