//! Fuzz entry points: one function per target in `fuzz/fuzz_targets/`, each
//! taking raw bytes and driving a public entry point with them. They live in
//! the crate (compiled only for tests and under cargo-fuzz's `--cfg
//! fuzzing`) so that a change to an API they use fails `cargo clippy
//! --all-targets` on the spot instead of breaking the fuzz build later, and
//! so the unit tests below replay every seed of `fuzz/corpus/` on each test
//! run.
//!
//! Each function panics only on a broken invariant — the thing a fuzzer
//! reports — never on bad input, which the code under test must refuse with
//! an error.

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap, HeaderValue};
use prost::Message;

use crate::api::body::{self, BodyError, Limit};
use crate::api::ratelimit::ClientAddr;
use crate::clock::Timestamp;
use crate::config::IpNet;
use crate::configstore::{Revision, Snapshot, SourceFile};
use crate::domain::secrets::{self, SecretKind};
use crate::domain::CollectorStatus;
use crate::fleet::desired::Desired;
use crate::fleet::session::{uid_string, AgentState};
use crate::owntelemetry::aggregate::{Aggregator, MAX_SERIES_PER_COLLECTOR};
use crate::owntelemetry::decode::{self, Encoding};
use crate::owntelemetry::{ComponentFigures, ComponentKey, Measure};
use crate::proto::opamp_msgs as pb;

/// Separates the TOML text from the environment overrides (`NAME=value`
/// lines) in a `config_load` input.
pub const ENV_MARKER: &str = "\n%%env\n";

/// Server config: TOML text, then `ENV_MARKER`, then `LINKMESH_…=value`
/// lines applied as environment overrides.
pub fn config_load(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (toml_text, env_text) = text.split_once(ENV_MARKER).unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match crate::config::load_str("fuzz.toml", toml_text, env) {
        Ok(config) => {
            // A secret that made it into the config never shows in its Debug
            // form (which is what a log line would print).
            if let Some(pw) = &config.auth.bootstrap_admin_password {
                let shown = format!("{:?}", config.auth);
                assert!(!shown.contains(pw.expose()), "the admin password shows in Debug output");
            }
        }
        Err(errs) => {
            assert!(!errs.errors.is_empty(), "a refused config names no problem");
            for e in &errs.errors {
                assert!(
                    !e.path.is_empty() && !e.message.is_empty(),
                    "an error without key or message: {e:?}"
                );
            }
        }
    }
}

/// Prefix of a line that starts a new file in a `fleet_config` input; the
/// rest of the line is its path. `## @labels` starts `key=value` lines of
/// the collector to render for.
pub const FILE_MARKER: &str = "## ";

/// Fleet config repository: files (`## path` lines start each) parsed and
/// validated as a whole; a valid set is rendered for the given labels.
pub fn fleet_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut files: Vec<SourceFile> = Vec::new();
    let mut labels = BTreeMap::new();
    let mut in_labels = false;
    let mut current: Option<SourceFile> = None;
    for line in text.split_inclusive('\n') {
        if let Some(path) = line.strip_prefix(FILE_MARKER) {
            files.extend(current.take());
            let path = path.trim_end();
            in_labels = path == "@labels";
            if !in_labels {
                current = Some(SourceFile {
                    path: path.to_string(),
                    bytes: Vec::new(),
                });
            }
        } else if in_labels {
            if let Some((k, v)) = line.trim_end().split_once('=') {
                labels.insert(k.to_string(), v.to_string());
            }
        } else {
            let file = current.get_or_insert_with(|| SourceFile {
                path: "fleet.toml".into(),
                bytes: Vec::new(),
            });
            file.bytes.extend_from_slice(line.as_bytes());
        }
    }
    files.extend(current);
    match crate::configstore::load_files(&files) {
        Ok(resources) => {
            let snapshot = Snapshot {
                revision: Revision {
                    commit: "0".repeat(40),
                    time: Timestamp(0),
                    author: "fuzz <fuzz@example.invalid>".into(),
                    message: "fuzz".into(),
                },
                resources,
            };
            let a = snapshot.render(&labels);
            let b = snapshot.render(&labels);
            assert_eq!(a.yaml, b.yaml, "rendering is not deterministic");
            assert_eq!(a.hash, b.hash, "the render hash is not deterministic");
            if !a.pipelines.is_empty() {
                assert!(
                    a.yaml.contains("service:"),
                    "a render with pipelines has no service section"
                );
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused config set names no problem");
            for e in &errors {
                assert!(!e.message.is_empty(), "an error without a message: {e:?}");
            }
        }
    }
}

/// Credential and token parsing: a presented bearer/cookie/header value.
pub fn credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for kind in [
        SecretKind::Enrollment,
        SecretKind::Collector,
        SecretKind::Api,
        SecretKind::Session,
    ] {
        if let Some((id, random)) = secrets::parse(kind, &text) {
            assert_eq!(id.len(), 32, "a parsed id of the wrong length");
            assert!(!random.is_empty());
            assert!(secrets::verify(random, &secrets::hash_secret(random)));
            assert!(!secrets::verify(random, &secrets::hash_secret(&format!("{random}x"))));
        }
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        headers.insert(header::AUTHORIZATION, v.clone());
        headers.insert(header::COOKIE, v.clone());
        headers.insert("x-forwarded-for", v);
    }
    if let Some(token) = crate::transport::bearer_token(&headers) {
        assert_eq!(token, token.trim(), "a bearer token keeps surrounding blanks");
    }
    let _ = crate::api::extract::cookie_value(&headers, crate::api::extract::SESSION_COOKIE);
    if let Ok(net) = text.parse::<IpNet>() {
        let again: IpNet = net
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("{net} does not parse back: {e}"));
        assert_eq!(net, again);
    }
    let trusted: Vec<IpNet> = ["10.0.0.0/8", "fd00::/8"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let _ = ClientAddr::resolve("10.0.0.1".parse().ok(), &headers, &trusted);
    // From an untrusted peer the header is the client's own claim: ignored.
    let peer = "203.0.113.1".parse().ok();
    let direct = ClientAddr::resolve(peer, &headers, &trusted);
    assert_eq!(Some(direct.0), peer, "an untrusted client chose its own address");
}

/// The bound uid of the collector the fuzzed session belongs to.
const COLLECTOR_ID: &str = "0192f7a4-5b6c-7d8e-9f00-112233445566";

/// Largest decoded body the HTTP target allows (small, so gzip bombs reach
/// the limit quickly).
const BODY_LIMIT: usize = 64 * 1024;

/// `Content-Encoding` values the body targets choose from with a byte of
/// their input (`None`: no header).
fn content_encoding(pick: u8) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let codings = ["identity", "gzip", "", " GZIP ", "br", "deflate", "x-gzip"];
    if let Some(coding) = codings.get(usize::from(pick & 7)) {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    headers
}

/// A body with its encoding undone (`crate::api::body`, what both HTTP
/// collector endpoints use): within the limit, or refused with a 4xx.
fn decoded_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
    match body::decoded(headers, body, Limit::max_request_bytes(BODY_LIMIT)) {
        Ok(raw) => {
            assert!(
                raw.len() <= BODY_LIMIT,
                "a decoded body of {} bytes passed the limit",
                raw.len()
            );
            Some(raw)
        }
        Err(e) => {
            assert!(e.status().is_client_error(), "refused with {}", e.status());
            if let BodyError::TooLarge(limit) = &e {
                assert!(e.to_string().contains(limit.setting), "a 413 that names no limit: {e}");
            }
            None
        }
    }
}

/// The OpAMP HTTP body path: the first byte picks the `Content-Encoding`,
/// the rest is the body; a decoded body must stay within the limit and is
/// then handled as one AgentToServer.
pub fn opamp_http_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Some(raw) = decoded_body(&content_encoding(pick), body) else {
        return;
    };
    if let Ok(msg) = pb::AgentToServer::decode(raw.as_ref()) {
        let mut state = new_state();
        let _ = state.process(msg, Some(&desired()), Timestamp(1));
    }
}

/// The OTLP/HTTP metrics body path (`POST /v1/metrics` after its
/// authentication): the first byte picks the `Content-Encoding` (low three
/// bits) and protobuf or JSON (bit 3), the rest is the body. Then decode,
/// and what the decoded points do to a collector's figures: ingested twice
/// (a sender retrying the same request), every total stays finite and never
/// goes backwards, rates are never negative, series stay bounded, and the
/// figures survive the JSON round trip of a rollup record.
pub fn otlp_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let encoding = if pick & 8 == 0 {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let Some(raw) = decoded_body(&content_encoding(pick), body) else {
        return;
    };
    let decoded = match decode::decode(encoding, &raw) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal without a reason");
            return;
        }
    };
    assert!(decoded.reasons.len() as u64 <= decoded.rejected, "{decoded:?}");
    for p in &decoded.points {
        assert!(
            p.value.is_finite() && (0.0..=decode::MAX_VALUE).contains(&p.value),
            "kept a value of {}",
            p.value
        );
        assert!(p.time_ns > 0 && !p.component.id.is_empty(), "kept {p:?}");
    }
    let mut figures = Aggregator::default();
    let mut before: BTreeMap<(ComponentKey, Measure), f64> = BTreeMap::new();
    for round in 1..=2 {
        let applied = figures.ingest("fuzz", &decoded.points, Timestamp(round));
        assert_eq!(
            applied.accepted + applied.rejected,
            decoded.points.len() as u64,
            "points neither applied nor refused"
        );
        let Some((_, components)) = figures.figures("fuzz") else {
            unreachable!("the collector just reported")
        };
        let series: usize = components.iter().map(|c| c.counters.len()).sum();
        assert!(series <= MAX_SERIES_PER_COLLECTOR, "{series} series kept");
        for c in &components {
            for (measure, f) in &c.counters {
                assert!(f.total.is_finite() && f.total >= 0.0, "total {} of {c:?}", f.total);
                assert!(f.rate.is_none_or(|r| r.is_finite() && r >= 0.0), "rate of {c:?}");
                let key = (c.component.clone(), *measure);
                let earlier = before.insert(key, f.total).unwrap_or(0.0);
                assert!(f.total >= earlier, "a total went back from {earlier} to {}", f.total);
            }
        }
        let json = serde_json::to_string(&components).unwrap_or_else(|e| panic!("figures not JSON: {e}"));
        if let Err(e) = serde_json::from_str::<Vec<ComponentFigures>>(&json) {
            panic!("a rollup of these figures could not be read back: {e}: {json}");
        }
    }
}

/// The session state machine over a sequence of AgentToServer messages,
/// each framed by a 2-byte big-endian length.
pub fn opamp_session(data: &[u8]) {
    let mut state = new_state();
    let desired = desired();
    let mut rest = data;
    let mut now = 1u64;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let frame = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let Ok(msg) = pb::AgentToServer::decode(frame) else {
            continue;
        };
        now += 1;
        let bound = msg.instance_uid.as_slice() == state.uid;
        match state.process(msg.clone(), Some(&desired), Timestamp(now)) {
            Ok(p) => {
                assert_eq!(p.reply.instance_uid, msg.instance_uid, "instance_uid not echoed");
                if !bound {
                    let id = p
                        .reply
                        .agent_identification
                        .as_ref()
                        .map(|a| uid_string(&a.new_instance_uid));
                    assert_eq!(
                        id.as_deref(),
                        Some(COLLECTOR_ID),
                        "an unbound uid kept without reassignment"
                    );
                }
                // The same message again changes nothing: no store write,
                // and the config already offered is not offered twice.
                now += 1;
                if let Ok(again) = state.process(msg, Some(&desired), Timestamp(now)) {
                    assert!(!again.status_changed, "a repeated message changed the stored status");
                    if p.reply.remote_config.is_some() {
                        assert!(again.reply.remote_config.is_none(), "the same config offered twice");
                    }
                }
            }
            Err(_) => assert!(!bound, "the bound uid was refused"),
        }
    }
}

fn new_state() -> AgentState {
    let status = CollectorStatus {
        collector_id: COLLECTOR_ID.into(),
        ..Default::default()
    };
    match AgentState::new(COLLECTOR_ID, status) {
        Some(s) => s,
        None => unreachable!("COLLECTOR_ID is a uuid"),
    }
}

fn desired() -> Desired {
    let files = [(
        "collector.yaml".to_string(),
        (b"receivers: {}\n".to_vec(), "application/yaml".to_string()),
    )]
    .into();
    Desired::from_files(files, "fuzz".into())
}

#[cfg(test)]
mod tests {
    //! Every seed of `fuzz/corpus/<target>/` (and every crash reproducer a
    //! fix was made for, kept there) runs through its target on each test
    //! run.
    use std::path::PathBuf;

    fn replay(target: &str, run: fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "fuzz seed {} fails", path.display());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn config_load_seeds() {
        replay("config_load", super::config_load);
    }

    #[test]
    fn fleet_config_seeds() {
        replay("fleet_config", super::fleet_config);
    }

    #[test]
    fn credentials_seeds() {
        replay("credentials", super::credentials);
    }

    #[test]
    fn opamp_http_body_seeds() {
        replay("opamp_http_body", super::opamp_http_body);
    }

    #[test]
    fn otlp_body_seeds() {
        replay("otlp_body", super::otlp_body);
    }

    #[test]
    fn opamp_session_seeds() {
        replay("opamp_session", super::opamp_session);
    }
}
