//! Which collector is talking: a bearer credential, a verified client
//! certificate (mTLS), or both naming the same collector. Refusals are
//! audited.
//!
//! It must not open sessions or parse transport headers (the transports hand
//! over the bearer token, `crate::transport::bearer`).

use super::{Fleet, FleetError};
use crate::domain::secrets::{self, SecretKind};
use crate::domain::{Collector, DomainError};
use crate::storage::Versioned;

/// A collector that presented a valid credential.
pub struct Authenticated {
    pub collector: Versioned<Collector>,
    pub credential_id: String,
}

impl Fleet {
    /// Identify a collector by its bearer credential and/or the client
    /// certificate it presented (mTLS; already verified against
    /// `tls.client_ca_file`). With both, they must name the same collector.
    pub async fn authenticate_with_cert(
        &self,
        bearer: Option<&str>,
        cert_collector: Option<String>,
    ) -> Result<Authenticated, FleetError> {
        let Some(cert_id) = cert_collector else {
            return self.authenticate(bearer).await;
        };
        if bearer.is_some() {
            let auth = self.authenticate(bearer).await?;
            if auth.collector.key != cert_id {
                return Err(self
                    .refuse_cert(&cert_id, "client certificate is for another collector")
                    .await);
            }
            return Ok(auth);
        }
        match self
            .inner
            .domain
            .store()
            .get::<Collector>(&cert_id)
            .await
            .map_err(DomainError::from)?
        {
            Some(collector) => Ok(Authenticated {
                collector,
                credential_id: String::new(),
            }),
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

    /// Check a collector's bearer credential.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Authenticated, FleetError> {
        let token = bearer
            .ok_or_else(|| DomainError::Unauthenticated("send the collector credential as a bearer token".into()))?;
        let collector = self.inner.domain.authenticate_collector(token).await?;
        let credential_id = secrets::parse(SecretKind::Collector, token)
            .map(|(id, _)| id.to_string())
            .unwrap_or_default();
        Ok(Authenticated {
            collector,
            credential_id,
        })
    }
}
