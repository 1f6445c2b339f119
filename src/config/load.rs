//! Loading: TOML file -> environment overrides -> typed config -> `*_file`
//! secrets -> validation. Every error found on the way is collected with its
//! key path, so one run of `check-config` lists them all.

use std::fmt;
use std::path::Path;

use serde_path_to_error::Segment;

use super::{validate, Config};

/// One problem in the config, named by its dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one config, in the order they were found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} has {} error(s):", self.source_name, self.errors.len())?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(super) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Prefix of environment overrides: `LINKMESH_<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "LINKMESH_";

/// Load a config file, overlaid with the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source_name: name.clone(),
        errors: vec![ConfigError::new("(file)", format!("cannot read {name}: {e}"))],
    })?;
    load_str(&name, &text, std::env::vars())
}

/// Load a config from TOML text and `(name, value)` environment pairs.
pub fn load_str(
    source_name: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        source_name: source_name.to_string(),
        errors,
    };
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return Err(fail(vec![ConfigError::new("(syntax)", e.to_string())])),
    };
    let mut errors = Vec::new();
    apply_env(&mut table, env, &mut errors);
    let config = deserialize_collecting(table, &mut errors);
    if let Some(mut config) = config {
        validate::resolve_and_validate(&mut config, &mut errors);
        if errors.is_empty() {
            return Ok(config);
        }
    }
    if errors.is_empty() {
        errors.push(ConfigError::new("(root)", "the config could not be read"));
    }
    Err(fail(errors))
}

/// Overlay `LINKMESH_A__B__C=value` onto `a.b.c`. Only names with `__` are
/// overrides, so unrelated variables like `LINKMESH_TEST_MONGODB_URI` are
/// left alone. The value is read as a TOML value when it parses as one
/// (numbers, booleans, arrays), else as a plain string.
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>, errors: &mut Vec<ConfigError>) {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let keys: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if keys.iter().any(|k| k.is_empty()) {
            errors.push(ConfigError::new(name, "malformed override name"));
            continue;
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        if let Err(k) = set_path(table, &keys, value) {
            errors.push(ConfigError::new(
                keys.join("."),
                format!("{name} overrides a key inside `{k}`, which is not a table"),
            ));
        }
    }
}

/// Set `keys` (a path of tables) to `value`, creating tables on the way;
/// fails with the key that exists but is not a table.
fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(first.clone()),
            }
        }
    }
}

/// Deserialize, and on each error record it, cut the offending key out and
/// try again, so that an unknown key, a wrong type and a missing field in
/// one file are all reported in one run (serde alone stops at the first).
fn deserialize_collecting(mut table: toml::Table, errors: &mut Vec<ConfigError>) -> Option<Config> {
    // Bounded: each round removes one key, so this ends; the bound guards
    // against a removal that does not change the outcome.
    for _ in 0..64 {
        let value = toml::Value::Table(table.clone());
        let err = match serde_path_to_error::deserialize::<_, Config>(value) {
            // With errors cut out, the rest still gets validated below.
            Ok(config) => return Some(config),
            Err(e) => e,
        };
        let mut segments: Vec<String> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                Segment::Map { key } => Some(key.clone()),
                Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        let message = clean_message(&err.inner().to_string());
        let mut remove_parent = false;
        if let Some(field) = backticked_after(&message, "unknown field `") {
            if segments.last() != Some(&field) {
                segments.push(field);
            }
        } else if let Some(field) = backticked_after(&message, "missing field `") {
            // A required key is missing: report it, then drop its table so
            // the rest of the file can still be checked.
            segments.push(field);
            remove_parent = true;
        }
        errors.push(ConfigError::new(dotted(&segments), message));
        let cut = if remove_parent {
            &segments[..segments.len() - 1]
        } else {
            &segments[..]
        };
        if cut.is_empty() || !remove_path(&mut table, cut) {
            return None;
        }
    }
    None
}

fn dotted(segments: &[String]) -> String {
    if segments.is_empty() {
        return "(root)".into();
    }
    // Keys that are not bare TOML keys (empty, dotted, spaced) are quoted,
    // so the path still names them (found by fuzzing: `"" = 0`).
    let bare = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    segments
        .iter()
        .map(|k| if bare(k) { k.clone() } else { format!("{k:?}") })
        .collect::<Vec<_>>()
        .join(".")
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// serde's messages are good; toml's carry a source snippet that refers to
/// the re-serialized table, not the user's file, so keep the first line.
fn clean_message(message: &str) -> String {
    message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim()
        .to_string()
}

fn remove_path(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur: &mut toml::Value = match parents.first() {
        None => return table.remove(last).is_some(),
        Some(first) => match table.get_mut(first) {
            Some(v) => v,
            None => return false,
        },
    };
    for seg in &parents[1..] {
        cur = match cur {
            toml::Value::Table(t) => match t.get_mut(seg) {
                Some(v) => v,
                None => return false,
            },
            toml::Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        toml::Value::Table(t) => t.remove(last).is_some(),
        toml::Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}
