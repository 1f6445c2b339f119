//! Collector transports: thin adapters that move OpAMP messages between the
//! wire and `crate::fleet`. gRPC has its own listener; OpAMP over HTTP and
//! WebSocket share `/v1/opamp` on the web listener, mounted by the API from
//! `routes()` with a state of their own.
//!
//! Transports must not know the API's state, decide anything about a
//! session (that is `crate::fleet`), or word their own refusals: errors go
//! through `crate::api::error::ApiError`, the one mapping to HTTP and gRPC.

pub mod codec;
pub mod grpc;
pub mod opamp_http;
pub mod opamp_ws;

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ratelimit::{ClientAddr, PeerAddr, RateLimited, RateLimiter};
use crate::config::IpNet;
use crate::domain::secrets::{self, SecretKind};
use crate::domain::DomainError;
use crate::fleet::{Fleet, FleetError};

/// What the OpAMP HTTP and WebSocket handlers share.
#[derive(Clone)]
pub struct OpampState {
    pub fleet: Fleet,
    /// Largest request body or WebSocket message, after decompression.
    pub max_request_bytes: usize,
    pub first_contact: FirstContactLimit,
    /// Bodies decoded (`crate::telemetry::Metrics::collector_body_decoded`).
    pub metrics: Arc<crate::telemetry::Metrics>,
}

impl OpampState {
    /// The first-contact rate limit for an OpAMP HTTP request (a poll or
    /// the WebSocket upgrade).
    fn attempt(&self, peer: PeerAddr, headers: &HeaderMap) -> Result<Attempt, RateLimited> {
        self.first_contact.admit(bearer_token(headers), |trusted| {
            ClientAddr::resolve(peer.0, headers, trusted)
        })
    }
}

/// The rate limit of enrollment on the transports: first contact with an
/// enrollment token (WebSocket upgrade, OpAMP HTTP, gRPC stream) and gRPC
/// `Enroll`. It is the limiter of `POST /api/v1/enroll`, so an address has
/// one budget whichever way it tries, with the same rule: only refused
/// attempts count (token guessing is cut off; a fleet behind one NAT
/// address enrolling with a valid token is not slowed down). An agent
/// presenting a credential of its own never consults it.
#[derive(Clone)]
pub struct FirstContactLimit {
    pub limiter: Arc<RateLimiter>,
    /// Whose `X-Forwarded-For` names the client (`server.trusted_proxies`).
    pub trusted_proxies: Arc<[IpNet]>,
}

/// One enrollment attempt that was let through: counted against its
/// address if it is refused.
pub struct Attempt {
    counted: Option<(Arc<RateLimiter>, ClientAddr)>,
}

impl FirstContactLimit {
    /// Refuse an agent presenting an enrollment token while its address is
    /// over the limit (before anything is looked up); let anything else
    /// through uncounted. `client` finds the address (only called for
    /// an enrollment token).
    pub fn admit(
        &self,
        bearer: Option<&str>,
        client: impl FnOnce(&[IpNet]) -> ClientAddr,
    ) -> Result<Attempt, RateLimited> {
        let token_path = bearer.is_some_and(|b| secrets::parse(SecretKind::Enrollment, b).is_some());
        if token_path {
            return self.enroll(client(&self.trusted_proxies));
        }
        Ok(Attempt { counted: None })
    }

    /// An explicit enrollment (gRPC `Enroll`): always counted if refused.
    pub fn enroll(&self, client: ClientAddr) -> Result<Attempt, RateLimited> {
        self.limiter.admit(client)?;
        Ok(Attempt {
            counted: Some((self.limiter.clone(), client)),
        })
    }
}

impl Attempt {
    /// The attempt was refused: count it, unless the refusal is the
    /// server's own trouble (storage), which says nothing about the agent.
    pub fn refused(&self, e: &FleetError) {
        let agents_fault = !matches!(e, FleetError::Domain(DomainError::Storage(_)) | FleetError::Closed);
        if let (Some((limiter, client)), true) = (&self.counted, agents_fault) {
            limiter.charge(*client);
        }
    }

    /// Count the refusal of `result`, if it is one; pass it on.
    pub fn outcome<T>(&self, result: Result<T, FleetError>) -> Result<T, FleetError> {
        if let Err(e) = &result {
            self.refused(e);
        }
        result
    }
}

/// `/v1/opamp` (HTTP polling and the WebSocket upgrade), ready to merge into
/// a router of any state.
pub fn routes<S: Clone + Send + Sync + 'static>(state: OpampState) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(opamp_http::post, opamp_ws::upgrade))
        .with_state(state)
}

/// The token of an `Authorization: Bearer <token>` value: the one parser for
/// API tokens and collector credentials, in HTTP headers and gRPC metadata.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The bearer token of an HTTP request.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("abc"), None);
    }
}
