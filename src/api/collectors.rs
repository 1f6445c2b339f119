//! Enrollment (public: the enrollment token is the credential) and the
//! collector records.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{with_etag, ApiJson, ApiPath, ApiQuery, Auth, IfMatch};
use super::AppState;
use crate::domain::{CollectorQuery, CollectorView, EnrollRequest, Enrolled, Page, RotatedCredential};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(enroll))
        .routes(routes!(list_collectors))
        .routes(routes!(get_collector, deregister_collector))
        .routes(routes!(rotate_credential))
}

/// Enroll a collector with an enrollment token; returns its own credential
/// (shown once). 401 for an unknown token, 403 for an expired, revoked or
/// used-up one, 409 when the instance_uid is already enrolled.
#[utoipa::path(post, path = "/api/v1/enroll", tag = "collectors", request_body = EnrollRequest,
    responses((status = 201, body = Enrolled), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
async fn enroll(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.domain.enroll(req).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CollectorListParams {
    /// Label selector `k=v,k2=v2`: collectors carrying all of them.
    pub selector: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

fn parse_selector(sel: &str) -> Result<BTreeMap<String, String>, ApiError> {
    sel.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| ApiError::bad_request(format!("selector: {p:?} is not key=value")))
        })
        .collect()
}

/// List collectors (viewer).
#[utoipa::path(get, path = "/api/v1/collectors", tag = "collectors", params(CollectorListParams),
    responses((status = 200, body = Page<CollectorView>)), security(("session" = []), ("bearer" = [])))]
async fn list_collectors(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(p): ApiQuery<CollectorListParams>,
) -> Result<Json<Page<CollectorView>>, ApiError> {
    let labels = parse_selector(p.selector.as_deref().unwrap_or(""))?;
    Ok(Json(
        s.domain
            .list_collectors(
                &a,
                CollectorQuery {
                    labels,
                    cursor: p.cursor,
                    limit: p.limit,
                },
            )
            .await?,
    ))
}

/// One collector (viewer). The `ETag` is its version.
#[utoipa::path(get, path = "/api/v1/collectors/{id}", tag = "collectors", params(("id" = String, Path)),
    responses((status = 200, body = CollectorView), (status = 404, body = Problem)), security(("session" = []), ("bearer" = [])))]
async fn get_collector(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let c = s.domain.get_collector(&a, &id).await?;
    Ok(with_etag(c.version, c))
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
    Ok(Json(s.domain.rotate_credential(&a, &id).await?))
}
