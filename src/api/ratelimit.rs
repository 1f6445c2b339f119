//! Per-client-address rate limits (login, enrollment) and the client address
//! itself, which behind a load balancer is not the TCP peer.
//!
//! A limiter is a token bucket per address: `n` requests at once, then one
//! more every `60 s / n`. Over the limit a caller gets 429 with
//! `Retry-After`. Nothing here knows which route it guards: a handler (or a
//! transport, for first-contact enrollment) calls [`RateLimiter::check`]
//! with a [`ClientAddr`].
//!
//! Limits are per instance: behind a load balancer spreading over N
//! instances a client gets up to N times the configured rate, which still
//! bounds password guessing; sharing counters through the store would cost a
//! write per attempt.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::time::Instant;

use super::error::ApiError;
use super::AppState;
use crate::config::{canonical_ip, IpNet};

/// Most addresses tracked at once; beyond it buckets that have refilled are
/// dropped first (they carry no information), and if every one is still
/// draining a new address goes untracked rather than growing memory without
/// bound under a flood from many addresses.
const MAX_TRACKED: usize = 100_000;

/// One token bucket per client address.
pub struct RateLimiter {
    burst: f64,
    per_token: Duration,
    // std Mutex: held for a hash lookup and some arithmetic, never across an
    // await, so an async lock would only add overhead.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Refused by a limiter: try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub retry_after: Duration,
}

impl RateLimiter {
    /// `n` requests per minute per address, `n` at once (`n` ≥ 1).
    pub fn per_minute(n: u32) -> Self {
        let n = n.max(1);
        RateLimiter {
            burst: f64::from(n),
            per_token: Duration::from_secs(60) / n,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Count one request from `client`; refuse it when its bucket is empty.
    pub fn check(&self, client: ClientAddr) -> Result<(), RateLimited> {
        self.take_at(client, Instant::now(), 1.0)
    }

    /// Refuse `client` while its bucket is empty, without counting this
    /// request; [`charge`](Self::charge) counts it once it has failed. With
    /// the pair only failed attempts count: enrollment is limited against
    /// token guessing, while a fleet rolling out behind one NAT address with
    /// a valid token enrolls at full speed.
    pub fn admit(&self, client: ClientAddr) -> Result<(), RateLimited> {
        self.take_at(client, Instant::now(), 0.0)
    }

    /// Count a failed attempt from `client` (after [`admit`](Self::admit)).
    pub fn charge(&self, client: ClientAddr) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(&client.0) {
            let now = Instant::now();
            b.tokens = (self.refilled(b, now) - 1.0).max(0.0);
            b.at = now;
        }
    }

    #[cfg(test)]
    fn check_at(&self, client: ClientAddr, now: Instant) -> Result<(), RateLimited> {
        self.take_at(client, now, 1.0)
    }

    /// Refuse when fewer than one token is left, else take `cost` (0 or 1).
    fn take_at(&self, client: ClientAddr, now: Instant, cost: f64) -> Result<(), RateLimited> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client.0) {
            buckets.retain(|_, b| self.refilled(b, now) < self.burst);
            if buckets.len() >= MAX_TRACKED {
                return Ok(());
            }
        }
        let bucket = buckets.entry(client.0).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= cost;
            return Ok(());
        }
        let missing = 1.0 - bucket.tokens;
        Err(RateLimited {
            retry_after: self.per_token.mul_f64(missing),
        })
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed / self.per_token.as_secs_f64()).min(self.burst)
    }
}

impl RateLimited {
    /// Whole seconds to wait, rounded up (at least 1): retrying at the
    /// advertised time succeeds.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }

    fn message(&self) -> String {
        format!(
            "too many attempts from your address; retry in {} s",
            self.retry_after_secs()
        )
    }
}

impl IntoResponse for RateLimited {
    fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        let mut resp = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", self.message()).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}

/// The same refusal over gRPC: `RESOURCE_EXHAUSTED`, the wait in the
/// message and in `retry-after` metadata (seconds, as the HTTP header).
impl From<RateLimited> for tonic::Status {
    fn from(r: RateLimited) -> Self {
        let mut status = tonic::Status::resource_exhausted(r.message());
        status.metadata_mut().insert(
            "retry-after",
            tonic::metadata::MetadataValue::from(r.retry_after_secs()),
        );
        status
    }
}

/// The limiters of one instance and how it finds a client's address.
pub struct Limits {
    pub login: RateLimiter,
    /// Refused enrollments: `POST /api/v1/enroll`, gRPC `Enroll` and first
    /// contact over OpAMP share it (`crate::transport::FirstContactLimit`),
    /// so one budget per address whichever way it tries.
    pub enroll: Arc<RateLimiter>,
    pub trusted_proxies: Arc<[IpNet]>,
}

/// The address a request comes from, as rate limits count it: the TCP peer,
/// or — when the peer is a trusted proxy — the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy. IPv6 clients count
/// per /64 (one host usually owns a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Self {
        let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
        // Without a peer address (a router served without connect info)
        // every request shares one bucket: limited, never unlimited.
        let peer = peer.map(canonical_ip).unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let mut client = peer;
        if is_trusted(peer) {
            // Each proxy appends the address it received from, so read from
            // the right and stop at the first hop we do not trust: anything
            // left of it was written by the client and proves nothing.
            let hops = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect::<Vec<_>>();
            for hop in hops.into_iter().rev() {
                let Ok(ip) = hop.parse::<IpAddr>() else { break };
                client = canonical_ip(ip);
                if !is_trusted(client) {
                    break;
                }
            }
        }
        ClientAddr(per_host(client))
    }
}

fn per_host(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

impl FromRequestParts<Arc<AppState>> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0 .0.ip());
        Ok(ClientAddr::resolve(peer, &parts.headers, &state.limits.trusted_proxies))
    }
}

/// The TCP peer's address, when the server was started with connect info
/// (for handlers whose state is not the API's: the OpAMP transports).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(
            parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0 .0.ip()),
        ))
    }
}

/// The TCP peer of a connection, for `into_make_service_with_connect_info`
/// on both the plain and the TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> ClientAddr {
        ClientAddr(s.parse().unwrap())
    }

    #[test]
    fn a_burst_then_one_per_interval_per_address() {
        let l = RateLimiter::per_minute(3);
        let t0 = Instant::now();
        let a = addr("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(l.check_at(a, t0), Ok(()));
        }
        let refused = l.check_at(a, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        // Another address has its own bucket.
        assert_eq!(l.check_at(addr("192.0.2.2"), t0), Ok(()));
        // Half an interval later: still refused, with the rest to wait.
        let r = l.check_at(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(10));
        // After the advertised wait one more request passes, then none.
        assert_eq!(l.check_at(a, t0 + Duration::from_secs(20)), Ok(()));
        assert!(l.check_at(a, t0 + Duration::from_secs(20)).is_err());
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check_at(a, later), Ok(()));
        }
        assert!(l.check_at(a, later).is_err());
    }

    #[test]
    fn admitted_requests_count_only_when_charged() {
        let l = RateLimiter::per_minute(2);
        let a = addr("192.0.2.7");
        // Successes (admitted, never charged) are unlimited.
        for _ in 0..100 {
            assert_eq!(l.admit(a), Ok(()));
        }
        // Two failures empty the bucket: the next attempt is refused.
        l.charge(a);
        l.charge(a);
        assert!(l.admit(a).is_err());
        assert!(l.check(a).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let resp = RateLimited {
            retry_after: Duration::from_millis(2100),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.9, 203.0.113.5, 10.1.2.3"),
        );
        // From the proxy: the last untrusted hop, not what the client wrote first.
        let via_proxy = ClientAddr::resolve(Some("10.0.0.2".parse().unwrap()), &h, &trusted);
        assert_eq!(via_proxy, addr("203.0.113.5"));
        // Directly from the internet: the header is the client's own claim.
        let direct = ClientAddr::resolve(Some("203.0.113.77".parse().unwrap()), &h, &trusted);
        assert_eq!(direct, addr("203.0.113.77"));
        // Without trusted proxies the header never matters.
        let none = ClientAddr::resolve(Some("10.0.0.2".parse().unwrap()), &h, &[]);
        assert_eq!(none, addr("10.0.0.2"));
        // Garbage in the header stops the walk at the proxy's own view.
        h.insert("x-forwarded-for", HeaderValue::from_static("nonsense"));
        let junk = ClientAddr::resolve(Some("10.0.0.2".parse().unwrap()), &h, &trusted);
        assert_eq!(junk, addr("10.0.0.2"));
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a = ClientAddr::resolve(Some("2001:db8:1:2::1".parse().unwrap()), &HeaderMap::new(), &[]);
        let b = ClientAddr::resolve(Some("2001:db8:1:2:ffff::9".parse().unwrap()), &HeaderMap::new(), &[]);
        assert_eq!(a, b);
        let mapped = ClientAddr::resolve(Some("::ffff:192.0.2.1".parse().unwrap()), &HeaderMap::new(), &[]);
        assert_eq!(mapped, addr("192.0.2.1"));
    }
}
