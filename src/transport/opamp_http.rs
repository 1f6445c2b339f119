//! OpAMP over plain HTTP (`POST /v1/opamp`): one AgentToServer per request,
//! one ServerToAgent per response, protobuf bodies. Request bodies may be
//! gzip-compressed; the response is compressed only when the agent accepts
//! it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;
use std::io::Read;

use super::{bearer_token, OpampState};
use crate::api::error::ApiError;
use crate::api::ratelimit::PeerAddr;
use crate::proto::opamp_msgs as pb;

pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// Responses smaller than this are not worth compressing.
const GZIP_MIN: usize = 1024;

/// The body, decompressed if needed, never larger than `limit`.
pub(crate) fn decode_body(headers: &HeaderMap, body: &Bytes, limit: usize) -> Result<Vec<u8>, (StatusCode, String)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match encoding.trim() {
        "identity" | "" => Ok(body.to_vec()),
        "gzip" => {
            let mut out = Vec::new();
            // Read one byte past the limit to tell "too large" from "fits".
            let read = GzDecoder::new(body.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut out);
            match read {
                Ok(n) if n > limit => Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("decompressed body exceeds {limit} bytes"),
                )),
                Ok(_) => Ok(out),
                Err(e) => Err((StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}"))),
            }
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {other:?}"),
        )),
    }
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
    let bearer = bearer_token(&headers);
    let raw = match decode_body(&headers, &body, s.max_request_bytes) {
        Ok(raw) => raw,
        Err((status, msg)) => return ApiError::new(status, "invalid-body", msg).into_response(),
    };
    let msg = match pb::AgentToServer::decode(raw.as_slice()) {
        Ok(m) => m,
        Err(e) => return ApiError::bad_request(format!("not an AgentToServer message: {e}")).into_response(),
    };
    let result = match s.fleet.authenticate(bearer).await {
        Ok(auth) => s.fleet.handle_poll(auth, msg).await,
        Err(e) => Err(e),
    };
    let reply = match attempt.outcome(result) {
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

    #[test]
    fn gzip_bodies_are_bounded_after_decompression() {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![0u8; 100_000]).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(
            decode_body(&h, &gz, 1_000).unwrap_err().0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(decode_body(&h, &gz, 200_000).unwrap().len(), 100_000);
    }
}
