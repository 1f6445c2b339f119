//! Fleet status as the API shows it: each collector joined with its
//! status, the liveness of the instance holding it, and how its reported
//! config compares with the desired one. The list and the summary read the
//! in-memory fleet index (`index`), never a table of the fleet's size; one
//! collector in full reads the store. The summary reads the index's
//! maintained counts (one judgement per label set and per holding
//! instance), not its rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::desired::Desired;
use super::index::{health_slot, CollectorDigest, Reported, Row, StatusDigest, Tables};
use super::{Fleet, PRESENCE_STALE};
use crate::clock::Timestamp;
use crate::domain::rollout::RolloutState;
use crate::domain::{
    Collector, CollectorStatus, ConfigAssignment, DomainError, Labels, Page, ServerInstance, DEFAULT_ASSIGNMENT,
};
use crate::domain::{ConfigState, HealthState, RemoteConfigState};
use crate::storage::Scan;

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
    #[schema(value_type = HealthState)]
    pub health: String,
    /// `applied`, `applying`, `failed`, `pending` (not yet acknowledged),
    /// `incompatible` (names component types the collector lacks: not
    /// pushed) or `none` (nothing to apply).
    #[schema(value_type = ConfigState)]
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
    /// What it reports about itself (own telemetry: totals and rates per
    /// component and signal), added by the API from `crate::owntelemetry`.
    pub telemetry: Option<crate::owntelemetry::CollectorTelemetry>,
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
    /// The sort key of a row, which is also the cursor after it.
    fn key(self, id: &str, c: &CollectorDigest, s: Option<&StatusDigest>) -> String {
        match self {
            FleetSort::Id => id.to_string(),
            // U+001F sorts before any printable character: "ab" < "abc".
            FleetSort::Name => format!("{}\u{1f}{}", c.name.to_lowercase(), id),
            FleetSort::LastSeen => {
                let seen = s.and_then(|s| s.last_seen).map_or(0, |t| t.0);
                format!("{:020}\u{1f}{}", u64::MAX - seen, id)
            }
        }
    }
}

/// The health states by `index::health_slot`.
const HEALTH: [HealthState; 3] = [HealthState::Healthy, HealthState::Unhealthy, HealthState::Unknown];

fn health_of(s: Option<&StatusDigest>) -> &'static str {
    HEALTH[health_slot(s)].as_str()
}

/// A collector's config state from what it reported (hash, status) and
/// the component types it can run, against its desired config; with the
/// missing types when incompatible (the list shows them; counting needs
/// only the state).
fn config_state(
    remote: Option<(&str, &str)>,
    available: Option<&crate::domain::AvailableComponentsView>,
    desired: Option<&Desired>,
) -> (ConfigState, Option<Vec<String>>) {
    let Some(d) = desired else {
        return (ConfigState::None, None);
    };
    if remote.is_none_or(|(hash, _)| hash != d.hash_hex) {
        // Not pushed at all (`compat`): say why.
        let missing = super::compat::missing(d, available);
        if !missing.is_empty() {
            return (ConfigState::Incompatible, Some(missing));
        }
    }
    match remote {
        Some((hash, status)) if hash == d.hash_hex => match RemoteConfigState::parse(status) {
            Some(RemoteConfigState::Applied) => (ConfigState::Applied, None),
            Some(RemoteConfigState::Failed) => (ConfigState::Failed, None),
            _ => (ConfigState::Applying, None),
        },
        _ => (ConfigState::Pending, None),
    }
}

fn config_of(s: Option<&StatusDigest>, desired: Option<&Desired>) -> (&'static str, Option<String>) {
    let remote = s.and_then(|s| s.remote.as_ref());
    let (state, missing) = config_state(
        remote.map(|(h, st, _)| (h.as_str(), st.as_str())),
        s.and_then(|s| s.available.as_deref()),
        desired,
    );
    let detail = match state {
        ConfigState::Incompatible => missing.map(|m| super::compat::describe(&m)),
        ConfigState::Failed => remote.map(|(_, _, error)| error.clone()),
        _ => None,
    };
    (state.as_str(), detail)
}

/// `config_state` of a counted group.
fn reported_state(r: &Reported, desired: Option<&Desired>) -> &'static str {
    let remote = r.remote.as_ref().map(|(h, s)| (h.as_str(), s.as_str()));
    config_state(remote, r.available.as_ref().map(|a| &*a.0), desired)
        .0
        .as_str()
}

/// The rows after `after` in id order: every row, or those named in a
/// label's set of ids.
fn candidates<'a>(
    rows: &'a BTreeMap<String, Row>,
    narrowest: Option<&'a BTreeSet<String>>,
    after: Bound<&str>,
) -> Box<dyn Iterator<Item = (&'a String, &'a Row)> + 'a> {
    match narrowest {
        Some(ids) => Box::new(
            ids.range::<str, _>((after, Bound::Unbounded))
                .filter_map(|id| rows.get_key_value(id.as_str())),
        ),
        None => Box::new(rows.range::<str, _>((after, Bound::Unbounded))),
    }
}

/// The small tables every view needs besides the index: pinned configs
/// (few collectors have one), the fleet default, and which instances are
/// alive. Cheap to read per request; the live view keeps one per tick.
#[derive(Debug, Default)]
pub struct ViewContext {
    pinned: HashMap<String, Arc<Desired>>,
    default: Option<Arc<Desired>>,
    alive: HashMap<String, bool>,
}

/// One distinct label set in a summary pass: its desired config (without
/// a pin or a rollout), the set, and how many collectors carry it.
type LabelSet = (Option<Arc<Desired>>, Arc<Labels>, usize);

impl Fleet {
    async fn view_context(&self) -> Result<ViewContext, DomainError> {
        let tables = match self.inner.index.tables() {
            Ok(kept) => kept,
            Err(generation) => {
                let read = Arc::new(self.read_tables().await?);
                self.inner.index.keep_tables(generation, read.clone());
                read
            }
        };
        let now = self.domain().clock().now();
        let alive = tables
            .heartbeats
            .iter()
            .map(|(i, at)| {
                (
                    i.clone(),
                    now.0.saturating_sub(at.0) < PRESENCE_STALE.as_millis() as u64,
                )
            })
            .collect();
        Ok(ViewContext {
            pinned: tables.pinned.clone(),
            default: tables.default.clone(),
            alive,
        })
    }

    /// The small tables of a view context, from the store.
    async fn read_tables(&self) -> Result<Tables, DomainError> {
        let store = self.domain().store();
        let mut pinned = HashMap::new();
        let mut default = None;
        for a in store.scan::<ConfigAssignment>(Scan::default()).await? {
            if a.key == DEFAULT_ASSIGNMENT {
                default = Some(Arc::new(Desired::from((&a.value, "default"))));
            } else {
                pinned.insert(a.key.clone(), Arc::new(Desired::from((&a.value, "assignment"))));
            }
        }
        let heartbeats = store
            .scan::<ServerInstance>(Scan::default())
            .await?
            .into_iter()
            .map(|i| (i.key, i.value.heartbeat_at))
            .collect();
        Ok(Tables {
            pinned,
            default,
            heartbeats,
        })
    }

    /// Rebuild the fleet index from the store (start-up, a lagging change
    /// feed), then lay over it the statuses of sessions held here: they may
    /// have changed while the scan ran.
    pub(super) async fn rebuild_index(&self) -> Result<(), DomainError> {
        let store = self.domain().store();
        let collectors = store.scan::<Collector>(Scan::default()).await?;
        let statuses = store.scan::<CollectorStatus>(Scan::default()).await?;
        self.inner.index.rebuild(collectors, statuses);
        for (id, ctx, _) in self.inner.sessions.all() {
            let status = ctx.lock().await.agent.status.clone();
            self.inner.index.put_status(&id, Some(&status));
        }
        Ok(())
    }

    /// Before a view reads the index: build it if start-up could not, and
    /// apply the changes already committed here but not yet followed, so a
    /// list read right after an enrollment shows the new collector.
    async fn index_current(&self) -> Result<(), DomainError> {
        if !self.inner.index.is_ready() {
            self.rebuild_index().await?;
        }
        self.catch_up_index().await;
        Ok(())
    }

    /// Whether collectors an instance says it holds are connected now: this
    /// instance holds its sessions; another one while its presence is fresh.
    fn holds(&self, instance: &str, alive: &HashMap<String, bool>) -> bool {
        instance == self.instance() || alive.get(instance).copied().unwrap_or(false)
    }

    /// Whether a status means connected now: the holder says so and is
    /// itself alive (this instance: it holds the session).
    fn is_connected(&self, id: &str, s: &StatusDigest, alive: &HashMap<String, bool>) -> bool {
        if !s.connected {
            return false;
        }
        if s.instance == self.instance() {
            return self.inner.sessions.contains(id);
        }
        alive.get(&s.instance).copied().unwrap_or(false)
    }

    fn summarize(
        &self,
        id: &str,
        c: &CollectorDigest,
        s: Option<&StatusDigest>,
        desired: Option<Arc<Desired>>,
        alive: &HashMap<String, bool>,
    ) -> FleetCollector {
        let (config_status, config_error) = config_of(s, desired.as_deref());
        FleetCollector {
            id: id.to_string(),
            name: c.name.clone(),
            labels: (*c.labels).clone(),
            version: c.version,
            enrolled_at: c.enrolled_at,
            connected: s.is_some_and(|s| self.is_connected(id, s, alive)),
            instance: s.map(|s| s.instance.clone()),
            transport: s.map(|s| s.transport.clone()),
            last_seen: s.and_then(|s| s.last_seen),
            health: health_of(s).into(),
            config_status: config_status.into(),
            config_error,
            desired_hash: desired.map(|d| d.hash_hex.clone()),
        }
    }

    /// The push path's resolver, on what the context holds.
    fn desired_in(&self, id: &str, labels: &Labels, cx: &ViewContext) -> Option<Arc<Desired>> {
        self.inner
            .resolver
            .pick_by(cx.pinned.get(id).cloned(), id, labels, cx.default.clone())
    }

    /// One row's view, if the index knows its collector.
    fn view_of(&self, id: &str, row: &Row, cx: &ViewContext) -> Option<FleetCollector> {
        let c = row.collector.as_ref()?;
        let desired = self.desired_in(id, &c.labels, cx);
        Some(self.summarize(id, c, row.status.as_ref(), desired, &cx.alive))
    }

    /// One page after the cursor, from the index. By id it walks the
    /// index's own order from the cursor and stops once the page is full;
    /// by name or last seen it sorts the rows whose labels match (keys
    /// only, in memory), then judges rows from the cursor on until the
    /// page is full. A label filter walks only the collectors carrying its
    /// rarest label (`Indexed::narrowest`).
    pub async fn list(&self, q: FleetQuery) -> Result<Page<FleetCollector>, DomainError> {
        let cx = self.view_context_current().await?;
        let limit = crate::domain::page_limit(q.limit);
        let mut items = Vec::new();
        let mut next_cursor = None;
        let ix = self.inner.index.read();
        let rows = &ix.rows;
        let labels_match = |row: &Row| {
            row.collector
                .as_ref()
                .is_some_and(|c| q.labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
        };
        let mut take = |key: String, id: &str, row: &Row| -> bool {
            let Some(v) = self.view_of(id, row, &cx) else {
                return true;
            };
            if q.connected.is_some_and(|want| want != v.connected)
                || q.health.as_ref().is_some_and(|h| *h != v.health)
                || q.config_status.as_ref().is_some_and(|cs| *cs != v.config_status)
            {
                return true;
            }
            if items.len() == limit {
                // The cursor is the key of the last item shown.
                next_cursor = items.last().map(|(k, _): &(String, FleetCollector)| k.clone());
                return false;
            }
            items.push((key, v));
            true
        };
        // With a label filter, only the collectors carrying its rarest
        // label are candidates (in id order, like the rows).
        let narrowest = ix.narrowest(&q.labels);
        let from = |after| candidates(rows, narrowest, after);
        if q.sort == FleetSort::Id {
            let after = match &q.cursor {
                Some(cur) => Bound::Excluded(cur.as_str()),
                None => Bound::Unbounded,
            };
            for (id, row) in from(after) {
                if labels_match(row) && !take(id.clone(), id, row) {
                    break;
                }
            }
        } else {
            let mut order: Vec<(String, &String, &Row)> = from(Bound::Unbounded)
                .filter(|(_, row)| labels_match(row))
                .filter_map(|(id, row)| Some((q.sort.key(id, row.collector.as_ref()?, row.status.as_ref()), id, row)))
                .filter(|(key, _, _)| q.cursor.as_deref().is_none_or(|cur| key.as_str() > cur))
                .collect();
            order.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (key, id, row) in order {
                if !take(key, id, row) {
                    break;
                }
            }
        }
        drop(ix);
        Ok(Page {
            items: items.into_iter().map(|(_, v)| v).collect(),
            next_cursor,
        })
    }

    /// The summary with a context already read (the live view keeps one
    /// per tick), and each distinct label set with how many collectors
    /// carry it. From the index's maintained counts: each label set's
    /// desired config is resolved once and judged against each distinct
    /// report of that set, each holding instance is judged alive once, and
    /// the few pinned collectors are moved to their own config's state. No
    /// row is read but the pinned ones', so it costs the same at 100 and
    /// 100,000 collectors.
    ///
    /// While a staged rollout is under way a collector's config depends on
    /// its id (its wave), which no count can know: then it is one pass over
    /// the rows (`summary_pass`), as it is for the minutes a rollout runs.
    pub fn summary_in(&self, cx: &ViewContext) -> (FleetSummary, Vec<(Arc<Labels>, usize)>) {
        if self.rollout_under_way() {
            return self.summary_pass(cx);
        }
        let ix = self.inner.index.read();
        let counts = &ix.counts;
        let mut sum = FleetSummary {
            total: counts.total,
            ..Default::default()
        };
        for (instance, n) in &counts.claimed {
            if self.holds(instance, &cx.alive) {
                sum.connected += n;
                sum.instances.insert(instance.clone(), *n);
            }
        }
        sum.disconnected = sum.total.saturating_sub(sum.connected);
        for (state, n) in HEALTH.iter().zip(counts.health) {
            if n > 0 {
                sum.health.insert(state.as_str().into(), n);
            }
        }
        let mut label_sets = Vec::with_capacity(counts.reports.len());
        for (labels, reports) in &counts.reports {
            let desired = self.desired_in("", labels, cx);
            let mut carried = 0;
            for (r, n) in reports {
                *sum.config
                    .entry(reported_state(r, desired.as_deref()).into())
                    .or_default() += n;
                carried += n;
            }
            label_sets.push((labels.clone(), carried as usize));
        }
        for (id, pin) in &cx.pinned {
            let Some((c, s)) = ix
                .rows
                .get(id)
                .and_then(|r| Some((r.collector.as_ref()?, r.status.as_ref())))
            else {
                continue;
            };
            let r = Reported::of(s);
            let counted = reported_state(&r, self.desired_in("", &c.labels, cx).as_deref());
            if let Some(n) = sum.config.get_mut(counted) {
                *n -= 1;
                if *n == 0 {
                    sum.config.remove(counted);
                }
            }
            *sum.config.entry(reported_state(&r, Some(pin)).into()).or_default() += 1;
        }
        (sum, label_sets)
    }

    /// Whether a rollout makes the desired config depend on the collector's
    /// id: only while its waves advance (completed, every collector gets
    /// its commit; aborted or superseded, none does).
    fn rollout_under_way(&self) -> bool {
        self.inner.resolver.rollouts().get().is_some_and(|a| {
            matches!(
                a.rollout.state,
                RolloutState::Running | RolloutState::Paused | RolloutState::Halted
            )
        })
    }

    /// The summary as one pass over the rows, each distinct label set
    /// resolved once unless a rollout is under way.
    fn summary_pass(&self, cx: &ViewContext) -> (FleetSummary, Vec<(Arc<Labels>, usize)>) {
        let mut sum = FleetSummary::default();
        let per_id = self.rollout_under_way();
        // Keyed by the shared label set's address (the index interns them).
        let mut by_labels: HashMap<*const Labels, LabelSet> = HashMap::new();
        let ix = self.inner.index.read();
        for (id, row) in ix.rows.iter() {
            let Some(c) = &row.collector else { continue };
            let entry = by_labels
                .entry(Arc::as_ptr(&c.labels))
                .or_insert_with(|| (self.desired_in("", &c.labels, cx), c.labels.clone(), 0));
            entry.2 += 1;
            let desired = match cx.pinned.get(id) {
                Some(p) => Some(p.clone()),
                None if per_id => self.desired_in(id, &c.labels, cx),
                None => entry.0.clone(),
            };
            let s = row.status.as_ref();
            sum.total += 1;
            match s {
                Some(s) if self.is_connected(id, s, &cx.alive) => {
                    sum.connected += 1;
                    *sum.instances.entry(s.instance.clone()).or_default() += 1;
                }
                _ => sum.disconnected += 1,
            }
            *sum.health.entry(health_of(s).into()).or_default() += 1;
            *sum.config.entry(config_of(s, desired.as_deref()).0.into()).or_default() += 1;
        }
        let label_sets = by_labels.into_values().map(|(_, l, n)| (l, n)).collect();
        (sum, label_sets)
    }

    pub async fn summary(&self) -> Result<FleetSummary, DomainError> {
        let cx = self.view_context_current().await?;
        Ok(self.summary_in(&cx).0)
    }

    /// The context of a view, with the index brought up to date first.
    pub async fn view_context_current(&self) -> Result<ViewContext, DomainError> {
        self.index_current().await?;
        self.view_context().await
    }

    /// The views of the given collectors (the console's live rows), from
    /// the index; a collector it does not know is absent.
    pub fn views_of(&self, ids: &[String], cx: &ViewContext) -> HashMap<String, FleetCollector> {
        let ix = self.inner.index.read();
        ids.iter()
            .filter_map(|id| Some((id.clone(), self.view_of(id, ix.rows.get(id)?, cx)?)))
            .collect()
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
            None => {
                let mut status = store.get::<CollectorStatus>(id).await?.map(|s| s.value);
                if let Some(s) = status.as_mut() {
                    super::bodies::fill(store, s).await?;
                }
                (status, self.desired_for(&c.value).await?)
            }
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
        let digest = CollectorDigest {
            name: c.value.name.clone(),
            labels: Arc::new(c.value.labels.clone()),
            version: c.version,
            enrolled_at: c.value.enrolled_at,
        };
        let s = status.as_ref().map(StatusDigest::of);
        let summary = self.summarize(id, &digest, s.as_ref(), desired.clone(), &alive);
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
            telemetry: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::domain::{AvailableComponentsView, HealthView, RemoteConfigView};
    use crate::storage::Versioned;

    fn desired(body: &str, source: &str) -> Arc<Desired> {
        let files = [(
            "c.yaml".to_string(),
            (body.as_bytes().to_vec(), "application/yaml".to_string()),
        )]
        .into();
        Arc::new(Desired::from_files(files, source.into()))
    }

    fn collector(id: &str, shard: u32) -> Versioned<Collector> {
        let c: Collector = serde_json::from_value(serde_json::json!({
            "id": id,
            "name": id,
            "labels": { "shard": shard.to_string() },
            "enrolled_at": Timestamp(0),
            "enrollment_token_id": "t",
            "credential_ids": [],
        }))
        .unwrap();
        Versioned {
            key: id.into(),
            version: 1,
            value: c,
        }
    }

    /// The summary from the maintained counts equals one pass over every
    /// row, whatever the fleet went through: holders alive, dead and this
    /// instance; every health; configs applied, failed, applying, pending,
    /// incompatible (a component set without `otlp`), a pinned config and
    /// the fleet default.
    #[tokio::test]
    async fn summary_from_counts_equals_a_pass_over_every_row() {
        let f = super::super::testing::fleet().await;
        let fleet = &f.fleet;
        let default = desired("receivers: {otlp: {}}\n", "default");
        let pin = desired("receivers: {filelog: {}}\n", "assignment");
        let hashes = [default.hash_hex.clone(), pin.hash_hex.clone(), "00".repeat(32)];
        let without_otlp = AvailableComponentsView {
            hash: "no-otlp".into(),
            components: [("receivers".to_string(), ["filelog".to_string()].into())].into(),
        };
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let cx = ViewContext {
                pinned: [("c3".to_string(), pin.clone()), ("c-gone".to_string(), pin.clone())].into(),
                default: Some(default.clone()),
                alive: [("a".to_string(), true), ("b".to_string(), false)].into(),
            };
            let ix = &fleet.inner.index;
            for step in 0..120 {
                let id = format!("c{}", rng.random_range(0..8));
                match rng.random_range(0..10) {
                    0..=2 => ix.put_collector(&collector(&id, rng.random_range(0..3))),
                    3 => ix.remove(&id),
                    _ => {
                        let bits: u32 = rng.random();
                        let s = CollectorStatus {
                            collector_id: id.clone(),
                            connected: bits & 1 == 1,
                            // Only holders whose sessions need no registry:
                            // this instance is judged by its sessions in the
                            // pass and by what its statuses claim in the
                            // counts, which agree once a close is written.
                            instance: ["a", "b"][(bits >> 1) as usize % 2].into(),
                            health: ((bits >> 2) % 3 != 0).then(|| HealthView {
                                healthy: (bits >> 2) % 3 == 1,
                                ..Default::default()
                            }),
                            remote_config: ((bits >> 4) % 4 != 0).then(|| RemoteConfigView {
                                hash: hashes[(bits >> 4) as usize % 3].clone(),
                                status: ["APPLIED", "FAILED", "APPLYING"][(bits >> 6) as usize % 3].into(),
                                error_message: "boom".into(),
                            }),
                            available_components: ((bits >> 8) % 2 == 1).then(|| without_otlp.clone()),
                            ..Default::default()
                        };
                        ix.put_status(&id, Some(&s));
                    }
                }
                let (counted, mut sets) = fleet.summary_in(&cx);
                let (passed, mut pass_sets) = fleet.summary_pass(&cx);
                assert_eq!(
                    serde_json::to_value(&counted).unwrap(),
                    serde_json::to_value(&passed).unwrap(),
                    "seed {seed}, step {step}"
                );
                sets.sort();
                pass_sets.sort();
                assert_eq!(sets, pass_sets, "seed {seed}, step {step}");
            }
            for i in 0..8 {
                ix.remove(&format!("c{i}"));
            }
        }
    }
}
