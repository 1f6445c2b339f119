//! The one error type at the boundary: every failure becomes an RFC 7807
//! `application/problem+json` body over HTTP (REST and OpAMP) and a
//! `tonic::Status` over gRPC, from the same mapping. Internal details
//! (storage errors) are logged, never sent — to users or to collectors.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::DomainError;
use crate::fleet::FleetError;
use crate::storage::StorageError;

/// RFC 7807 problem details.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URN naming the kind of problem, e.g. `urn:linkmesh:problem:conflict`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// On 409: the version currently stored, to reload and retry on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// On 422: the offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    detail: String,
    current_version: Option<u64>,
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            slug,
            detail: detail.into(),
            current_version: None,
            field: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    /// What the problem body's `detail` says.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let detail = e.to_string();
        match e {
            DomainError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not-found", detail),
            DomainError::AlreadyExists { .. } => ApiError::new(StatusCode::CONFLICT, "already-exists", detail),
            DomainError::Conflict { current, .. } => ApiError {
                current_version: current,
                ..ApiError::new(StatusCode::CONFLICT, "conflict", detail)
            },
            DomainError::PreconditionRequired => {
                ApiError::new(StatusCode::PRECONDITION_REQUIRED, "precondition-required", detail)
            }
            DomainError::Invalid { field, message } => ApiError {
                field: Some(field),
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            },
            DomainError::Unauthenticated(_) => ApiError::unauthenticated(detail),
            DomainError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail),
            DomainError::Refused(_) => ApiError::new(StatusCode::FORBIDDEN, "refused", detail),
            DomainError::Storage(e) => e.into(),
        }
    }
}

/// What collectors are told. A domain `NotFound` while authenticating a
/// collector is a refusal (403), not a missing resource.
impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Domain(DomainError::NotFound { .. }) => {
                ApiError::new(StatusCode::FORBIDDEN, "refused", e.to_string())
            }
            FleetError::Domain(d) => d.into(),
            FleetError::Session(s) => ApiError::new(StatusCode::FORBIDDEN, "wrong-instance", s.to_string()),
            FleetError::Closed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "session-closed", e.to_string()),
        }
    }
}

/// The same refusal over gRPC: the code follows the HTTP status, the
/// message is the problem's detail.
impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        use tonic::Code;
        let code = match (e.status, e.slug) {
            (StatusCode::UNAUTHORIZED, _) => Code::Unauthenticated,
            (StatusCode::FORBIDDEN, _) => Code::PermissionDenied,
            (StatusCode::NOT_FOUND, _) => Code::NotFound,
            (StatusCode::CONFLICT, "already-exists") => Code::AlreadyExists,
            (StatusCode::CONFLICT, _) => Code::Aborted,
            (StatusCode::SERVICE_UNAVAILABLE, _) => Code::Unavailable,
            (StatusCode::TOO_MANY_REQUESTS, _) => Code::ResourceExhausted,
            (StatusCode::PAYLOAD_TOO_LARGE, _) => Code::ResourceExhausted,
            (s, _) if s.is_client_error() => Code::InvalidArgument,
            _ => Code::Internal,
        };
        tonic::Status::new(code, e.detail)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "Storage failed while handling a request.");
        if let StorageError::OutcomeUnknown(_) = e {
            // The write may be there: a blind retry could apply it twice or
            // meet its own success as a conflict.
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-unknown",
                "the store did not confirm the write in time; it may have been applied: re-read before retrying",
            );
        }
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-unavailable",
            "the store could not complete the request; try again",
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), "invalid-body", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-path", r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("urn:linkmesh:problem:{}", self.slug),
            title: self.status.canonical_reason().unwrap_or("Error").to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            current_version: self.current_version,
            field: self.field,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
