//! Which collector is talking: a bearer credential, a verified client
//! certificate (mTLS), or both naming the same collector. Refusals are
//! audited.
//!
//! It must not open sessions or parse transport headers (the transports hand
//! over the bearer token, `crate::transport::bearer`).

use super::registry::{Push, SharedCtx};
use super::{Fleet, FleetError};
use crate::domain::credentials::ACCEPTS_OPAMP_CONNECTION_SETTINGS;
use crate::domain::secrets::{self, SecretKind};
use crate::domain::{Collector, DomainError, EnrollmentToken};
use crate::proto::opamp_msgs as pb;
use crate::storage::Versioned;

/// A collector that presented a valid credential (or was admitted with an
/// enrollment token on its first message).
pub struct Authenticated {
    pub collector: Versioned<Collector>,
    /// Empty for mTLS and for the enrollment-token path.
    pub credential_id: String,
    /// The agent's uid was empty or malformed: the server picked one, and
    /// the first reply carries it (`AgentIdentification`).
    pub uid_assigned: bool,
    /// The enrollment token it connects with (the token path): revoking
    /// that token closes the session.
    pub enrollment_token: Option<String>,
}

/// What a connecting agent presented, before its first message. Lives only
/// until the session opens, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Presented {
    /// Its own credential (or client certificate).
    Collector(Authenticated),
    /// An enrollment token (checked: known, not revoked). The agent is
    /// enrolled or resumed on its first message, which carries its uid.
    EnrollmentToken(String),
}

impl Presented {
    pub fn is_enrollment_token(&self) -> bool {
        matches!(self, Presented::EnrollmentToken(_))
    }
}

impl Fleet {
    /// Identify a collector by its bearer credential and/or the client
    /// certificate it presented (mTLS; already verified against
    /// `tls.client_ca_file`). With both, they must name the same collector.
    pub async fn authenticate_with_cert(
        &self,
        bearer: Option<&str>,
        cert_collector: Option<String>,
    ) -> Result<Presented, FleetError> {
        let Some(cert_id) = cert_collector else {
            return self.authenticate(bearer).await;
        };
        if bearer.is_some() {
            let Presented::Collector(auth) = self.authenticate(bearer).await? else {
                return Err(self
                    .refuse_cert(&cert_id, "with a client certificate, send no enrollment token")
                    .await);
            };
            if auth.collector.key != cert_id {
                return Err(self
                    .refuse_cert(&cert_id, "client certificate is for another collector")
                    .await);
            }
            return Ok(Presented::Collector(auth));
        }
        match self
            .inner
            .domain
            .store()
            .get::<Collector>(&cert_id)
            .await
            .map_err(DomainError::from)?
        {
            Some(collector) => Ok(Presented::Collector(Authenticated {
                collector,
                credential_id: String::new(),
                uid_assigned: false,
                enrollment_token: None,
            })),
            None => Err(self
                .refuse_cert(&cert_id, "client certificate names no enrolled collector")
                .await),
        }
    }

    async fn refuse_cert(&self, cert_id: &str, why: &str) -> FleetError {
        let actor = crate::domain::Actor::Collector {
            id: cert_id.to_string(),
        };
        self.inner
            .domain
            .audit_only(
                &actor,
                "collector.authenticate",
                cert_id,
                &format!("refused: {why}"),
                serde_json::Value::Null,
            )
            .await;
        FleetError::Domain(DomainError::Unauthenticated(why.to_string()))
    }

    /// Check a collector's bearer: its own credential, or an enrollment
    /// token (`lme_…`) for first-contact enrollment. Connecting with the
    /// newest credential after it was offered completes the switch to it
    /// (older credentials revoked, the token path for the uid closed).
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Presented, FleetError> {
        let token = bearer.ok_or_else(|| {
            DomainError::Unauthenticated(
                "send the collector credential or an enrollment token as a bearer token".into(),
            )
        })?;
        let domain = &self.inner.domain;
        if secrets::parse(SecretKind::Enrollment, token).is_some() {
            domain.check_enrollment_token(token).await?;
            return Ok(Presented::EnrollmentToken(token.to_string()));
        }
        let collector = domain.authenticate_collector(token).await?;
        let credential_id = secrets::parse(SecretKind::Collector, token)
            .map(|(id, _)| id.to_string())
            .unwrap_or_default();
        let collector = match domain.credential_connected(&collector, &credential_id).await? {
            Some(switched) => switched,
            None => collector,
        };
        Ok(Presented::Collector(Authenticated {
            collector,
            credential_id,
            uid_assigned: false,
            enrollment_token: None,
        }))
    }

    /// Turn what the agent presented into a session identity, given its
    /// first message: an enrollment token enrolls (or resumes) the uid the
    /// message carries, in one transaction with the token's use and audit.
    pub async fn admit(&self, presented: Presented, first: &pb::AgentToServer) -> Result<Authenticated, FleetError> {
        let token = match presented {
            Presented::Collector(auth) => return Ok(auth),
            Presented::EnrollmentToken(token) => token,
        };
        let uid = super::session::valid_uid(first);
        let accepts = first.capabilities & ACCEPTS_OPAMP_CONNECTION_SETTINGS != 0;
        let name = first.agent_description.as_ref().and_then(|d| {
            d.non_identifying_attributes
                .iter()
                .chain(&d.identifying_attributes)
                .find(|kv| kv.key == "host.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    pb::any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
        });
        let contact = self.inner.domain.first_contact(&token, uid, accepts, name).await?;
        Ok(Authenticated {
            collector: contact.collector,
            credential_id: String::new(),
            uid_assigned: contact.assigned_uid,
            enrollment_token: Some(contact.token_id),
        })
    }

    /// An enrollment token changed, on any instance (a use counted, or it
    /// was revoked). Revoked: the sessions still on its path (agents that
    /// never switched to their own credential) are told so and closed;
    /// collectors on their own credential are not affected. One read per
    /// change, and the sessions are looked through only on a revocation,
    /// which happens once per token (every enrollment changes the token).
    pub(super) async fn token_changed(&self, token_id: &str) {
        let revoked = match self.inner.domain.store().get::<EnrollmentToken>(token_id).await {
            Ok(Some(t)) => t.value.revoked_at.is_some(),
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, token_id, "Could not read a changed enrollment token; its sessions stay open until they next report.");
                return;
            }
        };
        if !revoked {
            return;
        }
        let holders: Vec<(String, SharedCtx, Push)> = self
            .inner
            .sessions
            .lock()
            .iter()
            .filter(|(_, e)| e.enrollment_token.as_deref() == Some(token_id))
            .map(|(k, e)| (k.clone(), e.ctx.clone(), e.push.clone()))
            .collect();
        for (id, ctx, push) in holders {
            // Streams are told why before they close (OpAMP error
            // response); an HTTP agent hears it on its next poll, refused.
            // Never wait for room: a stuck agent must not stall the feed.
            if let Some(push) = push {
                let uid = ctx.lock().await.agent.uid.to_vec();
                let _ = push.try_send(Box::new(super::session::refusal(
                    uid,
                    pb::ServerErrorResponseType::BadRequest,
                    TOKEN_REVOKED.into(),
                )));
            }
            self.kick(&id, "its enrollment token was revoked");
        }
    }
}

/// What an agent on a revoked token's path is told.
const TOKEN_REVOKED: &str = "the enrollment token this agent connects with was revoked; \
                             connect with a credential of its own or a new enrollment token";
