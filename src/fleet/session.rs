//! The OpAMP session rules for one agent, independent of transport: what the
//! server learns from an AgentToServer and what it answers. Pure logic on
//! in-memory state; `fleet` decides what to store and push.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::compat;
use super::desired::{Desired, EffectiveFiles};
use crate::clock::Timestamp;
use crate::domain::{
    AgentDescriptionView, Attributes, CollectorStatus, EffectiveConfigView, HealthView, RemoteConfigView,
};
use crate::proto::opamp_msgs as pb;

/// AgentCapabilities bits the server looks at.
pub mod caps {
    pub const ACCEPTS_REMOTE_CONFIG: u64 = 0x2;
    pub const REPORTS_EFFECTIVE_CONFIG: u64 = 0x4;
    pub const ACCEPTS_RESTART_COMMAND: u64 = 0x400;
    pub const REPORTS_HEALTH: u64 = 0x800;
    pub const REPORTS_REMOTE_CONFIG: u64 = 0x1000;
}

/// What this server offers: status, remote config, effective config,
/// connection settings (own credential, own-metrics destination).
pub const SERVER_CAPABILITIES: u64 = 0x1 | 0x2 | 0x4 | 0x20;
const FLAG_REPORT_FULL_STATE: u64 = 0x1;
const FLAG_REPORT_AVAILABLE_COMPONENTS: u64 = 0x2;
const FLAG_REQUEST_INSTANCE_UID: u64 = 0x1;
/// Effective config bodies are stored for display; cut huge ones.
const MAX_STORED_BODY: usize = 256 * 1024;

/// In-memory state of one agent's session.
#[derive(Debug, Clone)]
pub struct AgentState {
    pub collector_id: String,
    pub uid: [u8; 16],
    last_seq: Option<u64>,
    /// The status as this session knows it (and as last handed out for
    /// storage, compared to decide whether a write is needed).
    pub status: CollectorStatus,
    have_description: bool,
    /// Hash of the remote config last sent on this session.
    sent_hash: Option<Vec<u8>>,
    /// The server picked this agent's uid (it presented an empty or
    /// malformed one on first contact): whatever it presents is answered
    /// with the picked uid until it uses it.
    pub uid_assigned: bool,
}

/// The outcome of one AgentToServer.
pub struct Processed {
    pub reply: pb::ServerToAgent,
    /// The status changed in a way worth storing.
    pub status_changed: bool,
    /// The bodies of a newly reported effective config, for the store
    /// only: the session keeps its hash (`AgentState::status` never holds
    /// bodies), so ten thousand sessions do not each hold a copy of the
    /// config they run. `None` = unchanged, the stored bodies stand.
    /// Shared with the pushed config's when it is that config.
    pub effective_files: Option<EffectiveFiles>,
    /// The agent said goodbye.
    pub disconnect: bool,
}

/// Problems with a message that are the agent's fault.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("instance_uid {presented} does not belong to this credential's collector {expected}")]
    WrongInstance { presented: String, expected: String },
}

pub fn uid_string(uid: &[u8]) -> String {
    match <[u8; 16]>::try_from(uid) {
        Ok(b) => uuid::Uuid::from_bytes(b).hyphenated().to_string(),
        Err(_) => hex::encode(uid),
    }
}

/// An OpAMP error response telling the agent (`uid`) why it is refused.
pub fn refusal(uid: Vec<u8>, kind: pb::ServerErrorResponseType, message: String) -> pb::ServerToAgent {
    pb::ServerToAgent {
        instance_uid: uid,
        error_response: Some(pb::ServerErrorResponse {
            r#type: kind as i32,
            error_message: message,
            details: None,
        }),
        ..Default::default()
    }
}

/// Whether `msg` may speak for the collector `collector_id` (uid `uid`):
/// its own uid, or — for an agent that asks for a uid, has none yet, or
/// was given one (`assigned`) — any, answered with the collector's uid.
/// Any other uid is refused.
pub fn check_uid(
    collector_id: &str,
    uid: &[u8; 16],
    assigned: bool,
    msg: &pb::AgentToServer,
) -> Result<(), SessionError> {
    let wants_uid = assigned || msg.flags & FLAG_REQUEST_INSTANCE_UID != 0 || msg.instance_uid.iter().all(|b| *b == 0);
    if msg.instance_uid.as_slice() == uid || wants_uid {
        return Ok(());
    }
    Err(SessionError::WrongInstance {
        presented: uid_string(&msg.instance_uid),
        expected: collector_id.to_string(),
    })
}

/// The instance_uid of `msg` when it is a usable one (16 bytes, not all
/// zero), hyphenated.
pub fn valid_uid(msg: &pb::AgentToServer) -> Option<String> {
    <[u8; 16]>::try_from(msg.instance_uid.as_slice())
        .ok()
        .filter(|b| b.iter().any(|x| *x != 0))
        .map(|b| uuid::Uuid::from_bytes(b).hyphenated().to_string())
}

impl AgentState {
    pub fn new(collector_id: &str, mut status: CollectorStatus) -> Option<Self> {
        let uid = *uuid::Uuid::parse_str(collector_id).ok()?.as_bytes();
        // Only the hash stays in memory (see `Processed::effective_files`).
        if let Some(e) = &mut status.effective_config {
            e.files = Arc::default();
        }
        // Decoded from the store with spare slots; it is held as long as
        // the collector stays connected.
        Arc::make_mut(&mut status.config_history).shrink_to_fit();
        // A stored status from an earlier session is a starting point, but
        // the agent is asked for its full state unless it sends it.
        Some(AgentState {
            collector_id: collector_id.to_string(),
            uid,
            last_seq: None,
            status,
            have_description: false,
            sent_hash: None,
            uid_assigned: false,
        })
    }

    /// Apply one message and build the answer (offering `desired`).
    pub fn process(
        &mut self,
        msg: pb::AgentToServer,
        desired: Option<&Desired>,
        now: Timestamp,
    ) -> Result<Processed, SessionError> {
        self.process_offering(msg, desired, desired, now)
    }

    /// `process`, offering `offer` (`None`: the caller offers it), with
    /// `pushed` the config this server wants the agent to run: an
    /// effective config that is that config shares its hash and bodies.
    pub fn process_offering(
        &mut self,
        msg: pb::AgentToServer,
        offer: Option<&Desired>,
        pushed: Option<&Desired>,
        now: Timestamp,
    ) -> Result<Processed, SessionError> {
        let mut reply = pb::ServerToAgent {
            instance_uid: msg.instance_uid.clone(),
            capabilities: SERVER_CAPABILITIES,
            ..Default::default()
        };
        if msg.instance_uid.as_slice() != self.uid {
            check_uid(&self.collector_id, &self.uid, self.uid_assigned, &msg)?;
            reply.agent_identification = Some(pb::AgentIdentification {
                new_instance_uid: self.uid.to_vec(),
            });
        } else {
            self.uid_assigned = false;
        }
        // Whether anything worth storing changed, tracked section by
        // section: a heartbeat must not clone and compare the whole status
        // (it cloned it three times before).
        let mut changed = false;
        let caps = msg.capabilities;
        changed |= replace(&mut self.status.capabilities, caps);

        // Sequence numbers: a jump forward means we missed a message; a
        // repeat or a restart at 0 is tolerated (some clients repeat).
        let gap = match self.last_seq {
            None => true,
            Some(last) => msg.sequence_num > last + 1,
        };
        self.last_seq = Some(msg.sequence_num);

        let mut omitted = false;
        let mut effective_files = None;
        match &msg.agent_description {
            Some(d) => {
                let d = describe(d);
                if *self.status.description != d {
                    self.status.description = d.into();
                    changed = true;
                }
                self.have_description = true;
            }
            None => omitted |= !self.have_description || gap,
        }
        match &msg.health {
            Some(h) => changed |= replace(&mut self.status.health, Some(health(h))),
            None => omitted |= caps & caps::REPORTS_HEALTH != 0 && (gap || self.status.health.is_none()),
        }
        match &msg.effective_config {
            Some(e) => {
                let known = pushed.filter(|d| d.is_reported_as(e)).map(|d| d.as_effective());
                let hash = match known {
                    Some((hash, _)) => hash.clone(),
                    None => effective_hash(reported_files(e)),
                };
                if self.status.effective_config.as_ref().map(|v| &v.hash) != Some(&hash) {
                    self.status.effective_config = Some(EffectiveConfigView {
                        hash,
                        files: Arc::default(),
                    });
                    effective_files = Some(match known {
                        Some((_, files)) => files.clone(),
                        None => Arc::new(effective_text(reported_files(e))),
                    });
                    changed = true;
                }
            }
            None => omitted |= caps & caps::REPORTS_EFFECTIVE_CONFIG != 0 && gap,
        }
        match &msg.remote_config_status {
            Some(r) => {
                let r = remote_status(r);
                changed |= self.status.remote_config.as_ref() != Some(&r);
                self.status.report_remote_config(r, now);
            }
            None => omitted |= caps & caps::REPORTS_REMOTE_CONFIG != 0 && gap,
        }
        if gap && omitted {
            reply.flags |= FLAG_REPORT_FULL_STATE;
        }
        if let Some(a) = &msg.available_components {
            // The agent may send only the hash of what it has: ask for the
            // list when it is not the one we hold.
            let known = self.status.available_components.as_ref().map(|v| v.hash.as_str());
            if !a.components.is_empty() {
                changed |= replace(
                    &mut self.status.available_components,
                    Some(compat::available_from_proto(a)),
                );
            } else if !a.hash.is_empty() && known != Some(hex::encode(&a.hash).as_str()) {
                reply.flags |= FLAG_REPORT_AVAILABLE_COMPONENTS;
            }
        }

        if let Some(offer) = self.offer(offer) {
            reply.remote_config = Some(offer);
        }
        let disconnect = msg.agent_disconnect.is_some();
        self.status.last_seen = Some(now);
        Ok(Processed {
            reply,
            status_changed: changed,
            effective_files,
            disconnect,
        })
    }

    /// The remote config to send, if the agent accepts one, has neither
    /// got nor been sent the desired one, and has every component type it
    /// names (`compat`; the views show it as incompatible otherwise).
    pub fn offer(&mut self, desired: Option<&Desired>) -> Option<pb::AgentRemoteConfig> {
        let desired = desired?;
        self.should_offer(desired).then(|| desired.to_proto())
    }

    /// `offer` without building the message: whether `desired` is to be
    /// sent now (and, if so, noted as sent).
    pub fn should_offer(&mut self, desired: &Desired) -> bool {
        if self.status.capabilities & caps::ACCEPTS_REMOTE_CONFIG == 0 {
            return false;
        }
        if !compat::missing(desired, self.status.available_components.as_ref()).is_empty() {
            return false;
        }
        let reported = self
            .status
            .remote_config
            .as_ref()
            .map(|r| r.hash.as_str())
            .unwrap_or("");
        if reported == desired.hash_hex || self.sent_hash.as_deref() == Some(desired.hash.as_slice()) {
            return false;
        }
        self.sent_hash = Some(desired.hash.clone());
        true
    }

    pub fn accepts_restart(&self) -> bool {
        self.status.capabilities & caps::ACCEPTS_RESTART_COMMAND != 0
    }
}

/// Set `slot` to `value`; whether that changed it.
fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}

fn any_value(v: &Option<pb::AnyValue>) -> String {
    use pb::any_value::Value;
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex::encode(b),
        Some(Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| any_value(&Some(v.clone()))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::KvlistValue(l)) => {
            let items: Vec<String> = l
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, any_value(&kv.value)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

fn attrs(kvs: &[pb::KeyValue]) -> Attributes {
    kvs.iter().map(|kv| (kv.key.clone(), any_value(&kv.value))).collect()
}

fn describe(d: &pb::AgentDescription) -> AgentDescriptionView {
    AgentDescriptionView {
        identifying: attrs(&d.identifying_attributes),
        non_identifying: attrs(&d.non_identifying_attributes),
    }
}

fn nanos(t: u64) -> Option<Timestamp> {
    (t > 0).then_some(Timestamp(t / 1_000_000))
}

fn health(h: &pb::ComponentHealth) -> HealthView {
    HealthView {
        healthy: h.healthy,
        status: h.status.clone(),
        last_error: h.last_error.clone(),
        start_time: nanos(h.start_time_unix_nano),
        components: h
            .component_health_map
            .iter()
            .map(|(k, v)| (k.clone(), health(v)))
            .collect(),
    }
}

fn effective_map(e: &pb::EffectiveConfig) -> BTreeMap<&String, &pb::AgentConfigFile> {
    e.config_map
        .as_ref()
        .map(|m| m.config_map.iter().collect())
        .unwrap_or_default()
}

/// The reported files (name, body) in name order.
fn reported_files(e: &pb::EffectiveConfig) -> impl Iterator<Item = (&String, &[u8])> {
    effective_map(e).into_iter().map(|(name, f)| (name, f.body.as_slice()))
}

/// SHA-256 (hex) over effective-config files (name, body) in name order,
/// each name and body length-prefixed.
pub(super) fn effective_hash<'a>(files: impl Iterator<Item = (&'a String, &'a [u8])>) -> String {
    let mut hasher = Sha256::new();
    for (name, body) in files {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((body.len() as u64).to_be_bytes());
        hasher.update(body);
    }
    hex::encode(hasher.finalize())
}

/// Effective-config files as text for display, each cut at
/// `MAX_STORED_BODY`.
pub(super) fn effective_text<'a>(files: impl Iterator<Item = (&'a String, &'a [u8])>) -> BTreeMap<String, String> {
    files
        .map(|(name, body)| {
            let body = &body[..body.len().min(MAX_STORED_BODY)];
            (name.clone(), String::from_utf8_lossy(body).into_owned())
        })
        .collect()
}

fn remote_status(r: &pb::RemoteConfigStatus) -> RemoteConfigView {
    let status = match pb::RemoteConfigStatuses::try_from(r.status) {
        Ok(pb::RemoteConfigStatuses::Applied) => "APPLIED",
        Ok(pb::RemoteConfigStatuses::Applying) => "APPLYING",
        Ok(pb::RemoteConfigStatuses::Failed) => "FAILED",
        _ => "UNSET",
    };
    RemoteConfigView {
        status: status.into(),
        hash: hex::encode(&r.last_remote_config_hash),
        error_message: r.error_message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0192f7a4-5b6c-7d8e-9f00-112233445566";

    fn state() -> AgentState {
        AgentState::new(UID, CollectorStatus::default()).unwrap()
    }

    fn msg(seq: u64) -> pb::AgentToServer {
        pb::AgentToServer {
            instance_uid: uuid::Uuid::parse_str(UID).unwrap().as_bytes().to_vec(),
            sequence_num: seq,
            capabilities: 0x1 | caps::ACCEPTS_REMOTE_CONFIG | caps::REPORTS_REMOTE_CONFIG,
            ..Default::default()
        }
    }

    fn full(seq: u64) -> pb::AgentToServer {
        pb::AgentToServer {
            agent_description: Some(pb::AgentDescription::default()),
            remote_config_status: Some(pb::RemoteConfigStatus::default()),
            ..msg(seq)
        }
    }

    fn desired() -> Desired {
        Desired::from_files(
            [(
                "collector.yaml".to_string(),
                (b"receivers: {}".to_vec(), "application/yaml".to_string()),
            )]
            .into(),
            "test".into(),
        )
    }

    #[test]
    fn full_state_is_requested_only_when_sections_are_missing_after_a_gap() {
        let mut s = state();
        let p = s.process(msg(5), None, Timestamp(1)).unwrap();
        assert_eq!(
            p.reply.flags & FLAG_REPORT_FULL_STATE,
            1,
            "first message without a description"
        );
        let p = s.process(full(6), None, Timestamp(2)).unwrap();
        assert_eq!(p.reply.flags, 0);
        // Heartbeats: consecutive, repeated, or restarted at 0.
        for seq in [7, 7, 8, 0] {
            let p = s.process(msg(seq), None, Timestamp(3)).unwrap();
            assert_eq!(p.reply.flags, 0, "seq {seq}");
            assert!(!p.status_changed, "a heartbeat that changes nothing writes nothing");
        }
        // A jump with omitted sections asks for the full state.
        let p = s.process(msg(1), None, Timestamp(4)).unwrap();
        assert_eq!(p.reply.flags, 0);
        let p = s.process(msg(9), None, Timestamp(4)).unwrap();
        assert_eq!(p.reply.flags & FLAG_REPORT_FULL_STATE, 1);
        // ... but not when the message carries everything.
        let p = s.process(full(20), None, Timestamp(4)).unwrap();
        assert_eq!(p.reply.flags, 0);
        assert_eq!(p.reply.instance_uid, msg(0).instance_uid, "the uid is echoed");
    }

    #[test]
    fn remote_config_is_offered_once_until_the_agent_reports_it() {
        let d = desired();
        let mut s = state();
        let p = s.process(full(1), Some(&d), Timestamp(1)).unwrap();
        assert_eq!(p.reply.remote_config.as_ref().unwrap().config_hash, d.hash);
        let p = s.process(msg(2), Some(&d), Timestamp(1)).unwrap();
        assert!(p.reply.remote_config.is_none(), "sent already on this session");
        let mut applied = msg(3);
        applied.remote_config_status = Some(pb::RemoteConfigStatus {
            last_remote_config_hash: d.hash.clone(),
            status: 1,
            error_message: String::new(),
        });
        let p = s.process(applied.clone(), Some(&d), Timestamp(7)).unwrap();
        assert!(p.status_changed);
        assert_eq!(s.status.remote_config.as_ref().unwrap().status, "APPLIED");
        // The transition is in the history once; repeating it adds nothing.
        applied.sequence_num = 4;
        let p = s.process(applied, Some(&d), Timestamp(9)).unwrap();
        assert!(!p.status_changed, "a repeated status is not a transition");
        let h: Vec<_> = s.status.config_history.iter().map(|t| (&*t.status, t.at)).collect();
        assert_eq!(h, [("APPLIED", Timestamp(7)), ("UNSET", Timestamp(1))]);
        // An agent that does not accept remote config is never sent one.
        let mut s = state();
        let mut m = full(1);
        m.capabilities = 0x1;
        assert!(s
            .process(m, Some(&d), Timestamp(1))
            .unwrap()
            .reply
            .remote_config
            .is_none());
    }

    #[test]
    fn a_foreign_instance_uid_is_refused_and_an_empty_one_is_assigned() {
        let mut s = state();
        let mut m = full(1);
        m.instance_uid = vec![7; 16];
        assert!(s.process(m.clone(), None, Timestamp(1)).is_err());
        m.flags = FLAG_REQUEST_INSTANCE_UID;
        let p = s.process(m, None, Timestamp(1)).unwrap();
        assert_eq!(p.reply.agent_identification.unwrap().new_instance_uid, s.uid.to_vec());
    }

    #[test]
    fn available_components_are_kept_and_a_bare_hash_asks_for_them() {
        let mut s = state();
        s.process(full(1), None, Timestamp(1)).unwrap();
        let mut exporters = pb::ComponentDetails::default();
        exporters
            .sub_component_map
            .insert("debug".into(), pb::ComponentDetails::default());
        let reported = pb::AvailableComponents {
            components: [("exporters".to_string(), exporters)].into(),
            hash: vec![9, 9],
        };
        let mut m = msg(2);
        m.available_components = Some(reported.clone());
        assert!(s.process(m, None, Timestamp(1)).unwrap().status_changed);
        let kept = s.status.available_components.clone().unwrap();
        assert_eq!((kept.hash.as_str(), kept.components["exporters"].len()), ("0909", 1));
        let mut m = msg(3);
        m.available_components = Some(reported);
        assert!(
            !s.process(m, None, Timestamp(1)).unwrap().status_changed,
            "unchanged components write nothing"
        );
        // Only a hash: the same one needs nothing, a new one is asked for.
        let mut m = msg(4);
        m.available_components = Some(pb::AvailableComponents {
            components: Default::default(),
            hash: vec![9, 9],
        });
        assert_eq!(s.process(m, None, Timestamp(1)).unwrap().reply.flags, 0);
        let mut m = msg(5);
        m.available_components = Some(pb::AvailableComponents {
            components: Default::default(),
            hash: vec![1],
        });
        assert_eq!(
            s.process(m, None, Timestamp(1)).unwrap().reply.flags & FLAG_REPORT_AVAILABLE_COMPONENTS,
            FLAG_REPORT_AVAILABLE_COMPONENTS
        );
    }

    #[test]
    fn an_effective_config_is_handed_over_once_and_only_its_hash_is_kept() {
        let mut s = state();
        let mut m = full(1);
        m.capabilities |= caps::REPORTS_EFFECTIVE_CONFIG;
        let body = "receivers: {}\n".repeat(100);
        m.effective_config = Some(pb::EffectiveConfig {
            config_map: Some(pb::AgentConfigMap {
                config_map: [(
                    "c.yaml".to_string(),
                    pb::AgentConfigFile {
                        body: body.clone().into_bytes(),
                        content_type: String::new(),
                    },
                )]
                .into(),
            }),
        });
        let p = s.process(m.clone(), None, Timestamp(1)).unwrap();
        assert!(p.status_changed);
        assert_eq!(p.effective_files.unwrap()["c.yaml"], body, "the body goes to the store");
        let kept = s.status.effective_config.clone().unwrap();
        assert!(kept.files.is_empty(), "the session keeps no body");
        assert_eq!(kept.hash.len(), 64);
        // The same config again: nothing to store, nothing handed over.
        m.sequence_num = 2;
        let p = s.process(m.clone(), None, Timestamp(2)).unwrap();
        assert!(!p.status_changed && p.effective_files.is_none());
        // A different one is.
        m.sequence_num = 3;
        m.effective_config
            .as_mut()
            .unwrap()
            .config_map
            .as_mut()
            .unwrap()
            .config_map
            .get_mut("c.yaml")
            .unwrap()
            .body = b"x".to_vec();
        let p = s.process(m, None, Timestamp(3)).unwrap();
        assert!(p.status_changed);
        assert_ne!(s.status.effective_config.unwrap().hash, kept.hash);
    }

    /// An agent reporting the config it was pushed gets the hash the
    /// bodies give (as for any report) and the pushed config's shared
    /// bodies; a report that differs in one byte is hashed and copied.
    #[test]
    fn an_effective_config_equal_to_the_pushed_one_shares_its_hash_and_bodies() {
        let d = desired();
        let report = |body: &[u8]| {
            let mut m = full(1);
            m.capabilities |= caps::REPORTS_EFFECTIVE_CONFIG;
            m.effective_config = Some(pb::EffectiveConfig {
                config_map: Some(pb::AgentConfigMap {
                    config_map: [(
                        "collector.yaml".to_string(),
                        pb::AgentConfigFile {
                            body: body.to_vec(),
                            content_type: String::new(),
                        },
                    )]
                    .into(),
                }),
            });
            m
        };
        let hash_of = |m: pb::AgentToServer| {
            let mut s = state();
            let p = s.process(m, None, Timestamp(1)).unwrap();
            (s.status.effective_config.unwrap().hash, p.effective_files.unwrap())
        };

        let mut s = state();
        let p = s
            .process_offering(report(b"receivers: {}"), None, Some(&d), Timestamp(1))
            .unwrap();
        let shared = p.effective_files.expect("a new effective config is handed over");
        assert!(
            Arc::ptr_eq(&shared, &d.as_effective().1),
            "the pushed bodies are shared"
        );
        let (hash, files) = hash_of(report(b"receivers: {}"));
        assert_eq!(
            s.status.effective_config.as_ref().unwrap().hash,
            hash,
            "same hash as hashing the report"
        );
        assert_eq!(*shared, *files);

        let mut s = state();
        let p = s
            .process_offering(report(b"receivers: {} "), None, Some(&d), Timestamp(1))
            .unwrap();
        let own = p.effective_files.unwrap();
        assert!(!Arc::ptr_eq(&own, &d.as_effective().1));
        assert_eq!(own["collector.yaml"], "receivers: {} ");
        assert_ne!(s.status.effective_config.unwrap().hash, hash);
    }

    #[test]
    fn the_config_history_keeps_the_last_transitions_in_bounded_memory() {
        let mut s = state();
        for seq in 1..=50u64 {
            let mut m = msg(seq);
            m.remote_config_status = Some(pb::RemoteConfigStatus {
                last_remote_config_hash: seq.to_be_bytes().to_vec(),
                status: 1,
                error_message: String::new(),
            });
            s.process(m, None, Timestamp(seq)).unwrap();
        }
        let h = &s.status.config_history;
        assert_eq!(h.len(), crate::domain::CONFIG_HISTORY_LEN);
        assert_eq!((h[0].at, h[19].at), (Timestamp(50), Timestamp(31)), "newest first");
        assert!(
            h.capacity() <= crate::domain::CONFIG_HISTORY_LEN,
            "capacity {}",
            h.capacity()
        );
    }

    #[test]
    fn failed_status_keeps_the_error_message() {
        let mut s = state();
        let mut m = full(1);
        m.remote_config_status = Some(pb::RemoteConfigStatus {
            last_remote_config_hash: vec![1, 2],
            status: 3,
            error_message: "bad exporter".into(),
        });
        s.process(m, None, Timestamp(1)).unwrap();
        let r = s.status.remote_config.unwrap();
        assert_eq!(
            (r.status.as_str(), r.error_message.as_str(), r.hash.as_str()),
            ("FAILED", "bad exporter", "0102")
        );
    }
}
