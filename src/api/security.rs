//! Headers and checks that every response and every request gets, API and
//! console alike: a strict Content-Security-Policy and framing/sniffing
//! headers on every response, and an Origin check (CSRF) on every mutation
//! that a browser could send with the session cookie.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::{cookie_value, SESSION_COOKIE};
use super::AppState;
use crate::transport::bearer_token;

/// No inline script or style anywhere: every script and stylesheet is an
/// embedded asset served from this origin, so an injected `<script>` or
/// `style=` attribute does nothing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every response.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    resp
}

/// Refuses a cross-site mutation. The session cookie is SameSite=Strict,
/// which already keeps it off cross-site requests in current browsers; the
/// Origin check is the second lock (older browsers, sibling subdomains).
///
/// - Any unsafe request whose `Origin` names another host is refused.
/// - An unsafe request carrying the session cookie (and no bearer token)
///   must carry an `Origin`: every browser sends one on POST/PUT/PATCH/DELETE,
///   so a missing one means a client that should use an API token instead.
///
/// Requests with a bearer token or no cookie (API automation, collectors)
/// are not affected unless they send a foreign Origin.
pub async fn origin_check(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if is_safe(req.method()) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let cookie_auth = cookie_value(headers, SESSION_COOKIE).is_some() && bearer_token(headers).is_none();
    match headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("")) {
        Some(origin) if !same_origin(origin, headers, s.public_url.as_deref()) => {
            tracing::warn!(origin, method = %req.method(), path = req.uri().path(), "Refused a cross-origin mutation.");
            forbidden("the request comes from another site (Origin does not match this server)")
        }
        None if cookie_auth => forbidden(
            "a request authenticated by the session cookie must carry an Origin header; \
             automation should use an API token (Authorization: Bearer)",
        ),
        _ => next.run(req).await,
    }
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn forbidden(detail: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "cross-origin", detail).into_response()
}

/// The host (and port) of an origin or URL: `https://a.example:8443/x` ->
/// `a.example:8443`.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map(|(_, r)| r)?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The Origin names this server: the host the browser addressed (`Host`),
/// or the configured `server.public_url` (behind a proxy that rewrites
/// Host). Only the authority is compared: a TLS-terminating load balancer
/// makes the scheme the browser used differ from what this process sees.
fn same_origin(origin: &str, headers: &HeaderMap, public_url: Option<&str>) -> bool {
    let Some(o) = authority(origin) else { return false };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|h| h.eq_ignore_ascii_case(o))
        || public_url
            .and_then(authority)
            .is_some_and(|p| p.eq_ignore_ascii_case(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    #[test]
    fn origin_must_name_the_addressed_host_or_the_public_url() {
        assert!(same_origin("http://127.0.0.1:8080", &host("127.0.0.1:8080"), None));
        assert!(same_origin(
            "https://lm.example",
            &host("10.0.0.5:8080"),
            Some("https://lm.example/")
        ));
        assert!(!same_origin("http://evil.example", &host("127.0.0.1:8080"), None));
        assert!(!same_origin("http://127.0.0.1:9999", &host("127.0.0.1:8080"), None));
        assert!(!same_origin("null", &host("127.0.0.1:8080"), None));
    }
}
