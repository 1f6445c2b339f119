//! The desired config of a collector and its deterministic hash. Where it
//! comes from, in order: a config pinned to the collector, the config store
//! rendered for its labels (when configured), the fleet default.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use prost::Message;

use sha2::{Digest, Sha256};

use crate::proto::opamp_msgs as pb;

/// Name of the file a config-store config is sent as.
pub const RENDERED_FILE: &str = "collector.yaml";

/// A config offer: named files and their hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// File name -> (body, content type), sorted by name.
    pub files: BTreeMap<String, (Vec<u8>, String)>,
    /// SHA-256 over the files in name order (name, content type, body, each
    /// length-prefixed), so equal configs hash equally on every instance.
    pub hash: Vec<u8>,
    pub hash_hex: String,
    /// Where it came from, for the API (`assignment`, `default`, `config_store@<commit>`).
    pub source: String,
    /// `to_proto` as ServerToAgent field 3, encoded on first use: a
    /// desired config is shared by every session it applies to (the
    /// resolver's caches), so a fleet-wide push encodes it once.
    encoded: Derived<Vec<u8>>,
    /// `as_effective`, made on first use.
    effective: Derived<(String, EffectiveFiles)>,
}

/// An effective config's files as text, shared (`EffectiveConfigView`).
pub type EffectiveFiles = Arc<BTreeMap<String, String>>;

/// Derived from the rest of `Desired` on first use, so never part of its
/// equality.
#[derive(Debug, Clone)]
struct Derived<T>(OnceLock<T>);

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Derived(OnceLock::new())
    }
}

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Desired {
    pub fn from_files(files: BTreeMap<String, (Vec<u8>, String)>, source: String) -> Self {
        let mut h = Sha256::new();
        for (name, (body, content_type)) in &files {
            for part in [name.as_bytes(), content_type.as_bytes(), body.as_slice()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
        }
        let hash = h.finalize().to_vec();
        Desired {
            hash_hex: hex::encode(&hash),
            hash,
            files,
            source,
            encoded: Derived::default(),
            effective: Derived::default(),
        }
    }

    /// A rendered config-store config: one YAML file whose hash is the
    /// renderer's (it leaves out the header naming the commit, so a commit
    /// that does not change this collector's config pushes nothing).
    pub fn from_rendered(r: &crate::configstore::Rendered) -> Self {
        let files = [(
            RENDERED_FILE.to_string(),
            (r.yaml.clone().into_bytes(), "application/yaml".to_string()),
        )]
        .into();
        let hash = hex::decode(&r.hash).unwrap_or_else(|_| r.hash.as_bytes().to_vec());
        let short: String = r.commit.chars().take(12).collect();
        Desired {
            hash_hex: hex::encode(&hash),
            hash,
            files,
            source: format!("config_store@{short}"),
            encoded: Derived::default(),
            effective: Derived::default(),
        }
    }

    /// Whether an agent's reported effective config is this config, file
    /// for file (names and bodies; content types are not reported back
    /// reliably). Comparing bytes is far cheaper than hashing them.
    pub fn is_reported_as(&self, e: &pb::EffectiveConfig) -> bool {
        let Some(map) = e.config_map.as_ref().map(|m| &m.config_map) else {
            return false;
        };
        map.len() == self.files.len()
            && self
                .files
                .iter()
                .all(|(name, (body, _))| map.get(name).is_some_and(|f| f.body == *body))
    }

    /// This config as an agent running it reports it: the effective-config
    /// hash (`session::effective_hash`) and the files as text, made once
    /// and shared by every collector reporting it, so an APPLIED storm
    /// neither hashes nor copies the bodies per collector.
    pub fn as_effective(&self) -> &(String, EffectiveFiles) {
        self.effective.0.get_or_init(|| {
            let files = || self.files.iter().map(|(name, (body, _))| (name, body.as_slice()));
            (
                super::session::effective_hash(files()),
                Arc::new(super::session::effective_text(files())),
            )
        })
    }

    /// `remote_config` (ServerToAgent field 3) with this config, encoded:
    /// key, length, AgentRemoteConfig.
    pub fn remote_config_field(&self) -> &[u8] {
        self.encoded.0.get_or_init(|| {
            let rc = self.to_proto();
            let mut out = Vec::with_capacity(rc.encoded_len() + 8);
            prost::encoding::message::encode(3, &rc, &mut out);
            out
        })
    }

    pub fn to_proto(&self) -> pb::AgentRemoteConfig {
        let config_map = self
            .files
            .iter()
            .map(|(name, (body, ct))| {
                (
                    name.clone(),
                    pb::AgentConfigFile {
                        body: body.clone(),
                        content_type: ct.clone(),
                    },
                )
            })
            .collect();
        pb::AgentRemoteConfig {
            config: Some(pb::AgentConfigMap { config_map }),
            config_hash: self.hash.clone(),
        }
    }
}

impl From<(&crate::domain::ConfigAssignment, &str)> for Desired {
    fn from((a, source): (&crate::domain::ConfigAssignment, &str)) -> Self {
        let files = a
            .files
            .iter()
            .map(|(k, f)| (k.clone(), (f.body.clone().into_bytes(), f.content_type.clone())))
            .collect();
        Desired::from_files(files, source.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_content_not_insertion_order() {
        let f = |n: &str, b: &str| (n.to_string(), (b.as_bytes().to_vec(), "text/yaml".to_string()));
        let a = Desired::from_files([f("a", "1"), f("b", "2")].into_iter().collect(), "x".into());
        let b = Desired::from_files([f("b", "2"), f("a", "1")].into_iter().collect(), "y".into());
        assert_eq!(a.hash, b.hash);
        let c = Desired::from_files([f("a", "12"), f("b", "")].into_iter().collect(), "x".into());
        assert_ne!(a.hash, c.hash, "length prefixes keep boundaries apart");
    }
}
