//! Bearer secrets: generation, hashing at rest, constant-time verification.
//!
//! A secret handed out looks like `<prefix>_<id>_<random>`: the id finds the
//! record without a scan, the random part is checked against its stored
//! SHA-256. The random part has 256 bits of entropy, so a fast hash is the
//! right tool (argon2 is for low-entropy passwords); what matters is that the
//! store never holds a usable secret and that comparison takes the same time
//! whatever matches.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The kinds of secret, by prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Enrollment token.
    Enrollment,
    /// A collector's own credential.
    Collector,
    /// API token for automation.
    Api,
    /// UI session cookie.
    Session,
}

impl SecretKind {
    fn prefix(self) -> &'static str {
        match self {
            SecretKind::Enrollment => "lme",
            SecretKind::Collector => "lmc",
            SecretKind::Api => "lma",
            SecretKind::Session => "lms",
        }
    }
}

/// A freshly generated secret: `id` names the record, `token` goes to the
/// client once, `hash` is what gets stored.
pub struct NewSecret {
    pub id: String,
    pub token: String,
    pub hash: String,
}

pub fn generate(kind: SecretKind) -> NewSecret {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let random = URL_SAFE_NO_PAD.encode(raw);
    let hash = hash_secret(&random);
    NewSecret {
        token: format!("{}_{id}_{random}", kind.prefix()),
        id,
        hash,
    }
}

/// Split a presented token into (id, random part), if it has the shape of
/// `kind`. Says nothing about validity.
pub fn parse(kind: SecretKind, token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(kind.prefix())?.strip_prefix('_')?;
    let (id, random) = rest.split_once('_')?;
    let well_formed = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !random.is_empty();
    well_formed.then_some((id, random))
}

pub fn hash_secret(random: &str) -> String {
    hex::encode(Sha256::digest(random.as_bytes()))
}

/// Constant-time check of a presented random part against a stored hash.
pub fn verify(random: &str, stored_hash: &str) -> bool {
    let presented = hash_secret(random);
    presented.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = generate(SecretKind::Api);
        let (id, random) = parse(SecretKind::Api, &s.token).unwrap();
        assert_eq!(id, s.id);
        assert!(verify(random, &s.hash));
        assert!(!verify(&format!("{random}x"), &s.hash));
        assert!(parse(SecretKind::Collector, &s.token).is_none());
        assert!(parse(SecretKind::Api, "lma_nothex_abc").is_none());
    }
}
