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

use axum::http::{header, HeaderMap};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::fleet::Fleet;

/// What the OpAMP HTTP and WebSocket handlers share.
#[derive(Clone)]
pub struct OpampState {
    pub fleet: Fleet,
    /// Largest request body or WebSocket message, after decompression.
    pub max_request_bytes: usize,
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
