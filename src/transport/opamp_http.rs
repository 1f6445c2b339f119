//! OpAMP over plain HTTP (`POST /v1/opamp`): one AgentToServer per request,
//! one ServerToAgent per response, protobuf bodies. Request bodies may be
//! gzip-compressed; the response is compressed only when the agent accepts
//! it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::write::GzEncoder;
use prost::Message;

use super::{bearer_token, OpampState};
use crate::api::body::{self, Limit};
use crate::api::error::ApiError;
use crate::api::ratelimit::PeerAddr;
use crate::proto::opamp_msgs as pb;

pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// Responses smaller than this are not worth compressing.
const GZIP_MIN: usize = 1024;

/// The AgentToServer a request body carries, its `Content-Encoding` undone
/// within `limit` bytes (`crate::api::body`, shared with OTLP).
pub(crate) fn agent_message(headers: &HeaderMap, body: &[u8], limit: usize) -> Result<pb::AgentToServer, ApiError> {
    let raw = body::decoded(headers, body, Limit::max_request_bytes(limit))
        .map_err(|e| ApiError::new(e.status(), "invalid-body", e.to_string()))?;
    pb::AgentToServer::decode(raw.as_ref())
        .map_err(|e| ApiError::bad_request(format!("not an AgentToServer message: {e}")))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name == "gzip" || name == "*") && !q_zero
        })
}

/// OpAMP HTTP transport: POST a protobuf AgentToServer, get a ServerToAgent.
#[utoipa::path(post, path = "/v1/opamp", tag = "opamp",
    request_body(content = Vec<u8>, content_type = "application/x-protobuf", description = "opamp.proto.AgentToServer (gzip allowed)"),
    params(("Authorization" = String, Header, description = "Bearer <collector credential>")),
    responses((status = 200, content_type = "application/x-protobuf", body = Vec<u8>, description = "opamp.proto.ServerToAgent"),
        (status = 401, description = "unknown or revoked credential"), (status = 403, description = "refused (expired, revoked or used-up enrollment token, uid bound to another credential)"),
        (status = 413, description = "body too large"),
        (status = 429, description = "too many refused first contacts from this address; see `Retry-After`", headers(("Retry-After" = u64, description = "Seconds to wait")))))]
pub async fn post(State(s): State<OpampState>, peer: PeerAddr, headers: HeaderMap, body: Bytes) -> Response {
    let attempt = match s.attempt(peer, &headers) {
        Ok(a) => a,
        Err(limited) => return limited.into_response(),
    };
    // Who is calling comes before what it sent: an unknown or refused
    // sender gets its 401/403 without the server inflating or decoding
    // the body (the web server's body limit already bounded the read).
    let presented = match attempt.outcome(s.fleet.authenticate(bearer_token(&headers)).await) {
        Ok(p) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let msg = agent_message(&headers, &body, s.max_request_bytes);
    s.metrics.collector_body_decoded("opamp_http", msg.is_ok());
    let msg = match msg {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let reply = match attempt.outcome(s.fleet.handle_poll(presented, msg).await) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let encoded = reply.encode_to_vec();
    if encoded.len() >= GZIP_MIN && accepts_gzip(&headers) {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if std::io::Write::write_all(&mut enc, &encoded).is_ok() {
            if let Ok(gz) = enc.finish() {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, CONTENT_TYPE), (header::CONTENT_ENCODING, "gzip")],
                    gz,
                )
                    .into_response();
            }
        }
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], encoded).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_used_only_when_accepted() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, "br, gzip;q=0.5".parse().unwrap());
        assert!(accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, "gzip;q=0".parse().unwrap());
        assert!(!accepts_gzip(&h));
    }
}
