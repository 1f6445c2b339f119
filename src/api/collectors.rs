//! Enrollment (public: the enrollment token is the credential) and the
//! collector records.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, Auth, IfMatch};
use super::ratelimit::ClientAddr;
use super::AppState;
use crate::domain::{EnrollRequest, Enrolled, RotatedCredential};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(enroll))
        .routes(routes!(deregister_collector))
        .routes(routes!(rotate_credential))
}

/// Enroll a collector with an enrollment token; returns its own credential
/// (shown once). 401 for an unknown token, 403 for an expired, revoked or
/// used-up one, 409 when the instance_uid is already enrolled.
#[utoipa::path(post, path = "/api/v1/enroll", tag = "collectors", request_body = EnrollRequest,
    responses((status = 201, body = Enrolled), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem),
        (status = 429, body = Problem, description = "Too many attempts; see `Retry-After`", headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn enroll(
    State(s): State<Arc<AppState>>,
    client: ClientAddr,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    // Only refused attempts count (token guessing); a valid token enrolls
    // a whole fleet from one address at full speed.
    if let Err(limited) = s.limits.enroll.admit(client) {
        return Ok(limited.into_response());
    }
    match s.domain.enroll(req).await {
        Ok(enrolled) => Ok((StatusCode::CREATED, Json(enrolled)).into_response()),
        Err(e) => {
            if !matches!(e, crate::domain::DomainError::Storage(_)) {
                s.limits.enroll.charge(client);
            }
            Err(e.into())
        }
    }
}

/// Deregister a collector (editor): the collector, its credentials, status
/// and pending commands are deleted in one transaction.
#[utoipa::path(delete, path = "/api/v1/collectors/{id}", tag = "collectors", params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn deregister_collector(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
    if_match: IfMatch,
) -> Result<StatusCode, ApiError> {
    s.domain.deregister_collector(&a, &id, if_match.0).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate a collector's credential (editor): a new credential is issued and
/// the old ones revoked in one transaction. The new one is shown once.
#[utoipa::path(post, path = "/api/v1/collectors/{id}/rotate-credential", tag = "collectors", params(("id" = String, Path)),
    responses((status = 200, body = RotatedCredential), (status = 404, body = Problem), (status = 409, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn rotate_credential(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RotatedCredential>, ApiError> {
    Ok(Json(s.fleet.rotate_credential(&a, &id).await?))
}
