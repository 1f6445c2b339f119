//! Who sent a request: the collector whose credential it carries. The
//! credential check is the domain's (the same one the OpAMP transports
//! use); this only maps its outcome to what an OTLP sender should do.

use axum::http::HeaderMap;

use crate::domain::{Domain, DomainError};
use crate::transport::bearer_token;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credential, or one that is unknown or revoked: 401, do not retry.
    Unauthenticated(String),
    /// The store could not be asked: 503, the sender retries later. The
    /// reason stays in the server log, never in the reply.
    Unavailable,
}

/// The id of the collector the request's `Authorization: Bearer lmc_…`
/// belongs to.
pub async fn collector_of(domain: &Domain, headers: &HeaderMap) -> Result<String, AuthError> {
    let Some(token) = bearer_token(headers) else {
        return Err(AuthError::Unauthenticated(
            "send the collector's own credential as `Authorization: Bearer <credential>`".into(),
        ));
    };
    match domain.authenticate_collector(token).await {
        Ok(c) => Ok(c.key),
        Err(DomainError::Storage(e)) => {
            tracing::warn!(error = %e, "Cannot check a collector credential for own telemetry.");
            Err(AuthError::Unavailable)
        }
        Err(e) => Err(AuthError::Unauthenticated(e.to_string())),
    }
}
