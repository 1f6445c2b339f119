//! Connection settings offered to an agent that reports
//! AcceptsOpAMPConnectionSettings: its own credential as the Authorization
//! header for OpAMP (first contact with an enrollment token, or an
//! operator's rotation), and where to send its own metrics
//! (`<server.public_url>/v1/metrics`) with that credential.
//!
//! The credential is issued here, on the instance holding the session, so
//! its secret is only ever in this reply; the store keeps its hash.
//!
//! It must not decide whether a credential is valid (`crate::domain`).

use sha2::{Digest, Sha256};

use super::registry::Ctx;
use super::Fleet;
use crate::domain::credentials::ACCEPTS_OPAMP_CONNECTION_SETTINGS;
use crate::domain::Domain;
use crate::proto::opamp_msgs as pb;

impl Fleet {
    /// The offer to attach to this reply, if one is due.
    pub(super) async fn connection_offer(&self, ctx: &mut Ctx) -> Option<pb::ConnectionSettingsOffers> {
        if ctx.agent.status.capabilities & ACCEPTS_OPAMP_CONNECTION_SETTINGS == 0 {
            return None;
        }
        let rotation = ctx.collector.rotation_requested_at.is_some();
        let due = rotation || (Domain::wants_credential_offer(&ctx.collector) && !ctx.credential_offered);
        if !due {
            return None;
        }
        let offered = match self.inner.domain.issue_offered_credential(&ctx.collector.id).await {
            Ok(o) => o,
            Err(e) => {
                // Offered again with a later message.
                tracing::warn!(collector_id = %ctx.collector.id, error = %e, "Could not issue a credential to offer.");
                return None;
            }
        };
        ctx.collector = offered.collector.value;
        ctx.credential_offered = true;
        tracing::info!(collector_id = %ctx.collector.id, credential_id = %offered.credential_id, "Offered the collector a credential of its own.");
        Some(self.offers_for(&offered.credential))
    }

    fn offers_for(&self, credential: &str) -> pb::ConnectionSettingsOffers {
        let headers = || {
            Some(pb::Headers {
                headers: vec![pb::Header {
                    key: "Authorization".into(),
                    value: format!("Bearer {credential}"),
                }],
            })
        };
        let base = self
            .inner
            .settings
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_string());
        // The agent keeps the endpoint it uses when the offer names none
        // that we know (no public_url: we cannot tell how it reached us).
        let opamp = pb::OpAmpConnectionSettings {
            destination_endpoint: base.as_ref().map(|b| format!("{b}/v1/opamp")).unwrap_or_default(),
            headers: headers(),
            ..Default::default()
        };
        let own_metrics = base.as_ref().map(|b| pb::TelemetryConnectionSettings {
            destination_endpoint: format!("{b}/v1/metrics"),
            headers: headers(),
            ..Default::default()
        });
        let mut hasher = Sha256::new();
        hasher.update(opamp.destination_endpoint.as_bytes());
        hasher.update([0]);
        hasher.update(credential.as_bytes());
        pb::ConnectionSettingsOffers {
            hash: hasher.finalize().to_vec(),
            opamp: Some(opamp),
            own_metrics,
            ..Default::default()
        }
    }
}
