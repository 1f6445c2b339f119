//! `POST /v1/metrics`: the OTLP/HTTP metrics receiver (thin: authenticate,
//! then decompress and decode, ingest, reply the way OTLP senders expect).
//! Nothing of the body is inflated or decoded for an unknown sender.
//!
//! Replies follow the OTLP/HTTP specification: success is an
//! `ExportMetricsServiceResponse` (with `partial_success` when points were
//! refused), failures carry a `google.rpc.Status` in the request's
//! encoding, and only 503 invites a retry.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsPartialSuccess, ExportMetricsServiceResponse};
use prost::Message;

use super::auth::{self, AuthError};
use super::decode::{self, DecodeError, Encoding};
use crate::api::body::{self, BodyError, Limit};
use crate::api::AppState;

/// `google.rpc.Status`, the error body of OTLP/HTTP (only the fields
/// senders read; field numbers from google/rpc/status.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// gRPC status codes used in `RpcStatus.code`.
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

fn failure(encoding: Encoding, status: StatusCode, code: i32, message: String) -> Response {
    let body = match encoding {
        Encoding::Protobuf => RpcStatus { code, message }.encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": code, "message": message })
            .to_string()
            .into_bytes(),
    };
    let mut resp = (status, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
    }
    resp
}

fn success(encoding: Encoding, rejected: u64, reasons: &[String]) -> Response {
    let message = match reasons {
        [] if rejected > 0 => {
            "points refused (too many series for one collector, or a changed metric type)".to_string()
        }
        _ => reasons.join("; "),
    };
    let body = match encoding {
        Encoding::Protobuf => ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected as i64,
                error_message: message,
            }),
        }
        .encode_to_vec(),
        Encoding::Json => {
            let v = if rejected > 0 {
                // int64 is a string in OTLP JSON.
                serde_json::json!({ "partialSuccess": { "rejectedDataPoints": rejected.to_string(), "errorMessage": message } })
            } else {
                serde_json::json!({})
            };
            v.to_string().into_bytes()
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

/// Own metrics of a collector (OTLP/HTTP, protobuf or JSON, gzip allowed),
/// authenticated with the collector's own credential. The figures are
/// always the authenticated collector's, whatever the resource says.
#[utoipa::path(post, path = "/v1/metrics", tag = "telemetry",
    request_body(content = Vec<u8>, content_type = "application/x-protobuf",
        description = "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest (protobuf or OTLP JSON; Content-Encoding gzip allowed)"),
    params(("Authorization" = String, Header, description = "Bearer <collector credential>")),
    responses(
        (status = 200, content_type = "application/x-protobuf", body = Vec<u8>, description = "ExportMetricsServiceResponse; partial_success names refused points"),
        (status = 400, description = "not a valid OTLP metrics request (google.rpc.Status with the reason)"),
        (status = 401, description = "no, unknown or revoked collector credential"),
        (status = 413, description = "body (or decompressed body) too large"),
        (status = 415, description = "not application/x-protobuf or application/json, or an unsupported Content-Encoding"),
        (status = 503, description = "storage unavailable; retry")))]
pub async fn export_metrics(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let header_str = |name| headers.get(name).and_then(|v: &header::HeaderValue| v.to_str().ok());
    let encoding = Encoding::from_content_type(header_str(header::CONTENT_TYPE));
    // Who is calling comes first: a caller without a credential is told
    // 401 whatever it sent (in protobuf when its media type is unknown).
    let reply_in = *encoding.as_ref().unwrap_or(&Encoding::Protobuf);
    let collector_id = match auth::collector_of(&s.domain, &headers).await {
        Ok(id) => id,
        Err(AuthError::Unauthenticated(m)) => return failure(reply_in, StatusCode::UNAUTHORIZED, UNAUTHENTICATED, m),
        Err(AuthError::Unavailable) => {
            return failure(
                reply_in,
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
                "the server cannot check credentials right now; retry later".into(),
            )
        }
    };
    let encoding = match encoding {
        Ok(e) => e,
        Err(e) => {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                e.to_string(),
            )
                .into_response()
        }
    };
    let decoded = match body::decoded(&headers, &body, Limit::max_request_bytes(s.max_request_bytes)) {
        Ok(raw) => decode::decode(encoding, &raw),
        Err(e) => {
            s.metrics.collector_body_decoded("otlp_metrics", false);
            // OTLP senders read only the HTTP status and the message.
            let code = match e {
                BodyError::TooLarge(_) => RESOURCE_EXHAUSTED,
                BodyError::InvalidGzip(_) | BodyError::UnsupportedEncoding(_) => INVALID_ARGUMENT,
            };
            return failure(encoding, e.status(), code, e.to_string());
        }
    };
    s.metrics.collector_body_decoded("otlp_metrics", decoded.is_ok());
    let decoded = match decoded {
        Ok(d) => d,
        Err(e @ DecodeError::UnsupportedMediaType(_)) => {
            return failure(
                encoding,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_ARGUMENT,
                e.to_string(),
            )
        }
        Err(e @ DecodeError::BadRequest(_)) => {
            return failure(encoding, StatusCode::BAD_REQUEST, INVALID_ARGUMENT, e.to_string())
        }
    };
    let rejected = s.own_telemetry.ingest(&collector_id, &decoded);
    success(encoding, rejected, &decoded.reasons)
}
