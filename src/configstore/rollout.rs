//! The rollout policy of a fleet config repository: `rollout.toml` at the
//! top of the config directory says how a new commit reaches the fleet —
//! ordered waves (a label selector and/or a percentage of the collectors
//! no earlier wave took), a bake time per wave, and the gates a wave must
//! pass before the next one starts. No `rollout.toml` = every collector
//! gets a new commit at once.
//!
//! Parsed and validated with the rest of the commit (errors name the file
//! and key); which wave a collector is in is decided here, from its id and
//! labels alone, so every instance computes the same waves without a list
//! of the fleet. Running a rollout is `crate::rollout`'s job.
//! Documented for users in docs/config-store.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::schema::Selector;
use super::{SourceFile, ValidationError};

/// The file the policy lives in, relative to the config directory.
pub const POLICY_FILE: &str = "rollout.toml";

/// The most waves a policy may name (each one is a step operators follow).
const MAX_WAVES: usize = 20;

/// A repository's rollout policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// Checked for every wave before the next one starts.
    #[serde(default)]
    pub gates: Gates,
    /// In order. Collectors no wave selects form one last wave, `rest`.
    #[serde(default)]
    pub waves: Vec<Wave>,
}

/// One step of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Shown in the API and metrics; unique within the policy.
    pub name: String,
    /// Which collectors may be in this wave; absent = any collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Which share (1-100) of the selected collectors that no earlier wave
    /// took; absent = all of them. Chosen from the collector id, so every
    /// instance (and every rollout) picks the same collectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// How long the wave must keep passing its gates (after all of its
    /// collectors applied) before the next wave starts, e.g. `"10m"`.
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = String, example = "10m")]
    pub bake: Duration,
}

/// What a wave must show before the rollout moves on. A wave fails at once
/// when one of its collectors reports FAILED for the new config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// How long the connected collectors of a wave have to report APPLIED
    /// before the wave fails, e.g. `"10m"`.
    #[serde(default = "default_apply_timeout", with = "humantime_serde")]
    #[schema(value_type = String, example = "10m")]
    pub apply_timeout: Duration,
    /// Every connected collector of the wave must report itself healthy.
    #[serde(default = "default_true")]
    pub healthy: bool,
    /// The share of failed exporter sends (from the collectors' own
    /// telemetry) of the wave may rise by at most this much (0.0-1.0,
    /// absolute) over its share before the wave started. Absent = no
    /// send-failure gate. Collectors that send no own telemetry are not
    /// counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_send_failure_increase: Option<f64>,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            apply_timeout: default_apply_timeout(),
            healthy: true,
            max_send_failure_increase: None,
        }
    }
}

fn default_apply_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_true() -> bool {
    true
}

/// The name of the implicit last wave (collectors no wave selects).
pub const REST_WAVE: &str = "rest";

impl RolloutPolicy {
    /// The waves a rollout runs: the policy's, then `rest`.
    pub fn wave_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.waves.iter().map(|w| w.name.clone()).collect();
        names.push(REST_WAVE.to_string());
        names
    }

    /// The index of the wave a collector is in (`waves.len()` = `rest`).
    ///
    /// Each collector has a fixed point `u` in [0, 1) from its id. A wave
    /// whose selector matches takes the collector when `u` falls in the
    /// wave's share of what is left, `[lo, lo + (1 - lo) * percent)`;
    /// otherwise `lo` moves up to the end of that share. Among the
    /// collectors a wave's selector matches and no earlier wave took, it
    /// takes about `percent` of them, without knowing the others.
    pub fn wave_of(&self, collector_id: &str, labels: &BTreeMap<String, String>) -> usize {
        let u = unit_point(collector_id);
        let mut lo = 0.0_f64;
        for (i, w) in self.waves.iter().enumerate() {
            if !w.selector.as_ref().is_none_or(|s| s.matches(labels)) {
                continue;
            }
            let share = w.percent.unwrap_or(100.0).clamp(0.0, 100.0) / 100.0;
            let hi = lo + (1.0 - lo) * share;
            if u < hi {
                return i;
            }
            lo = hi;
        }
        self.waves.len()
    }
}

/// A point in [0, 1) from a collector id: the first 8 bytes of its SHA-256.
fn unit_point(id: &str) -> f64 {
    let d = Sha256::digest(id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // 53 bits: exactly representable in an f64, so the point is < 1.
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Parse `rollout.toml`; problems go to `errors` with the file and key.
pub(crate) fn parse(f: &SourceFile, errors: &mut Vec<ValidationError>) -> Option<RolloutPolicy> {
    let text = match std::str::from_utf8(&f.bytes) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ValidationError::new(&f.path, "", format!("not UTF-8: {e}")));
            return None;
        }
    };
    let value: toml::Value = match toml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(ValidationError::new(
                &f.path,
                "",
                format!("TOML syntax: {}", e.message().trim_end()),
            ));
            return None;
        }
    };
    let policy = match serde_path_to_error::deserialize::<_, RolloutPolicy>(value) {
        Ok(p) => p,
        Err(e) => {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            errors.push(ValidationError::new(&f.path, key, e.into_inner().message().to_string()));
            return None;
        }
    };
    let before = errors.len();
    check(&f.path, &policy, errors);
    (errors.len() == before).then_some(policy)
}

fn check(file: &str, p: &RolloutPolicy, errors: &mut Vec<ValidationError>) {
    let mut err = |key: String, msg: String| errors.push(ValidationError::new(file, key, msg));
    if p.waves.is_empty() {
        err(
            "waves".into(),
            "a rollout policy needs at least one [[waves]] entry".into(),
        );
    }
    if p.waves.len() > MAX_WAVES {
        err("waves".into(), format!("at most {MAX_WAVES} waves"));
    }
    let mut names = BTreeSet::new();
    for (i, w) in p.waves.iter().enumerate() {
        let at = format!("waves[{i}]");
        let name_ok = !w.name.is_empty()
            && w.name.len() <= 63
            && w.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            err(
                format!("{at}.name"),
                "1-63 characters of letters, digits, '-', '_', '.'".into(),
            );
        } else if w.name == REST_WAVE {
            err(
                format!("{at}.name"),
                format!("{REST_WAVE:?} is the wave of the collectors no wave selects; pick another name"),
            );
        } else if !names.insert(w.name.as_str()) {
            err(format!("{at}.name"), format!("duplicate wave name {:?}", w.name));
        }
        if let Some(pc) = w.percent {
            if !(pc > 0.0 && pc <= 100.0) {
                err(format!("{at}.percent"), format!("{pc} is not a share in (0, 100]"));
            }
        }
        if let Some(s) = &w.selector {
            for (path, msg) in s.problems() {
                err(format!("{at}.selector.{path}"), msg);
            }
        }
    }
    if let Some(x) = p.gates.max_send_failure_increase {
        if !(0.0..=1.0).contains(&x) {
            err(
                "gates.max_send_failure_increase".into(),
                format!("{x} is not a share in [0, 1]"),
            );
        }
    }
    if p.gates.apply_timeout.is_zero() {
        err(
            "gates.apply_timeout".into(),
            "must be longer than zero (collectors need time to apply)".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Option<RolloutPolicy>, Vec<ValidationError>) {
        let f = SourceFile {
            path: POLICY_FILE.into(),
            bytes: text.as_bytes().to_vec(),
        };
        let mut errors = Vec::new();
        (parse(&f, &mut errors), errors)
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let (p, errors) =
            parsed("[[waves]]\nname = \"canary\"\npercent = 150\n[[waves]]\nname = \"canary\"\nbake = \"soon\"\n");
        assert!(p.is_none());
        let keys: Vec<_> = errors.iter().map(|e| (e.file.as_str(), e.key.as_str())).collect();
        assert_eq!(keys, [("rollout.toml", "waves[1].bake")], "{errors:?}");
        let (_, errors) = parsed(
            "[gates]\nmax_send_failure_increase = 2.0\n[[waves]]\nname = \"canary\"\npercent = 150\n[[waves]]\nname = \"canary\"\nselector.match_labels = { \"bad key!\" = \"x\" }\n",
        );
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "waves[0].percent",
                "waves[1].name",
                "waves[1].selector.match_labels.\"bad key!\"",
                "gates.max_send_failure_increase"
            ],
            "{errors:?}"
        );
        let (_, errors) = parsed("[[waves]]\nname = \"a\"\ncolour = 1\n");
        assert_eq!(errors[0].key, "waves[0].colour", "{errors:?}");
    }

    #[test]
    fn waves_are_deterministic_and_take_their_share_of_what_is_left() {
        let (p, errors) = parsed(
            "[[waves]]\nname = \"canary\"\npercent = 10\n[[waves]]\nname = \"staging\"\nselector.match_labels = { env = \"staging\" }\n[[waves]]\nname = \"half\"\npercent = 50\n",
        );
        let p = p.unwrap_or_else(|| panic!("{errors:?}"));
        let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let staging = BTreeMap::from([("env".to_string(), "staging".to_string())]);
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            let id = format!("collector-{i}");
            let w = p.wave_of(&id, &prod);
            assert_eq!(w, p.wave_of(&id, &prod), "same id, same wave");
            assert_ne!(w, 1, "the staging wave takes no prod collector");
            counts[w] += 1;
            assert!(
                p.wave_of(&id, &staging) <= 1,
                "staging collectors are all in the first two waves"
            );
        }
        // 10% canary; half of the remaining 90%; the rest.
        assert!((900..1100).contains(&counts[0]), "{counts:?}");
        assert!((4300..4700).contains(&counts[2]), "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), 10_000);
        assert_eq!(p.wave_names(), ["canary", "staging", "half", "rest"]);
    }
}
