//! Settings: enrollment tokens (list with state and uses, revoke) and API
//! tokens (list, create with the secret shown once, revoke). Both call the
//! same domain functions as `/api/v1/enrollment-tokens` and
//! `/api/v1/api-tokens`; the domain decides who may do what (a viewer's
//! forged POST is refused there), the pages only hide controls.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::addcollector::parse_lifetime;
use super::assets;
use super::layout::{encode_query, render, Layout, UiError, Viewer};
use super::users::{parse_role, ROLES};
use super::view::TimeView;
use crate::api::AppState;
use crate::domain::{ApiTokenView, DomainError, EnrollmentTokenView, Labels, NewApiToken, Role};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/settings/enrollment-tokens", get(enrollment_list))
        .route("/settings/enrollment-tokens/{id}/revoke", post(enrollment_revoke))
        .route("/settings/api-tokens", get(api_list).post(api_create))
        .route("/settings/api-tokens/{id}/revoke", post(api_revoke))
}

pub fn labels_text(l: &Labels) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// An enrollment token as a table row shows it.
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub state: String,
    pub uses: u32,
    /// "3" or "unlimited".
    pub max_uses: String,
    pub labels: String,
    pub expires: TimeView,
    pub created: TimeView,
    pub created_by: String,
}

impl TokenRow {
    pub fn new(t: &EnrollmentTokenView) -> Self {
        TokenRow {
            id: t.id.clone(),
            name: t.name.clone(),
            state: t.state.replace('_', " "),
            uses: t.uses,
            max_uses: t.max_uses.map(|m| m.to_string()).unwrap_or_else(|| "unlimited".into()),
            labels: labels_text(&t.labels),
            expires: TimeView::new(t.expires_at),
            created: TimeView::new(t.created_at),
            created_by: t.created_by.clone(),
        }
    }
    /// Only a token that still works is worth revoking.
    pub fn revocable(&self) -> bool {
        self.state != "revoked"
    }
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    cursor: Option<String>,
    /// Set by the redirect after a revocation, to say it happened.
    revoked: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "enrollment_tokens.html")]
struct EnrollmentPage {
    layout: Layout,
    rows: Vec<TokenRow>,
    notice: Option<String>,
    first_page: bool,
    next: Option<String>,
}

async fn enrollment_list(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Query(q): Query<ListQuery>,
) -> Result<Response, UiError> {
    let first_page = q.cursor.is_none();
    let page = s.domain.list_enrollment_tokens(&v.actor, q.cursor, Some(100)).await?;
    let mut rows: Vec<TokenRow> = page.items.iter().map(TokenRow::new).collect();
    // Keys are random ids: within a page, newest first reads best.
    rows.sort_by(|a, b| b.created.iso.cmp(&a.created.iso));
    let notice = q
        .revoked
        .map(|id| format!("Enrollment token {id} is revoked: no new collector can enroll with it."));
    Ok(render(&EnrollmentPage {
        layout: v.layout("Enrollment tokens", "enrollment"),
        rows,
        notice,
        first_page,
        next: page
            .next_cursor
            .map(|c| format!("/settings/enrollment-tokens?cursor={}", encode_query(&c))),
    })?
    .into_response())
}

async fn enrollment_revoke(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    s.domain.revoke_enrollment_token(&v.actor, &id).await?;
    Ok(Redirect::to(&format!("/settings/enrollment-tokens?revoked={}", encode_query(&id))).into_response())
}

struct ApiRow {
    t: ApiTokenView,
    /// Its role, or "owner's role" for a token made before tokens had one.
    role: &'static str,
    created: TimeView,
    expires: TimeView,
    expired: bool,
}

#[derive(Debug, Default, Deserialize)]
struct ApiForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_in: String,
    /// `viewer`, `editor` or `admin`; the form offers up to the user's own.
    #[serde(default)]
    role: String,
}

impl ApiForm {
    /// An empty form: 30 days, the user's own role.
    fn fresh(role: Role) -> Self {
        ApiForm {
            name: String::new(),
            expires_in: "30d".into(),
            role: role.as_str().into(),
        }
    }
}

#[derive(askama::Template)]
#[template(path = "api_tokens.html")]
struct ApiPage {
    layout: Layout,
    script: String,
    rows: Vec<ApiRow>,
    notice: Option<String>,
    form: ApiForm,
    error: Option<(&'static str, String)>,
    /// The token just created: (name, secret), shown this once.
    created: Option<(String, String)>,
    first_page: bool,
    next: Option<String>,
}

impl ApiPage {
    /// The roles a token of this user may have: up to the user's own.
    fn roles(&self) -> Vec<&'static str> {
        ROLES
            .iter()
            .filter(|r| **r <= self.layout.role)
            .map(|r| r.as_str())
            .collect()
    }
    fn error_for(&self, field: &str) -> Option<&str> {
        self.error
            .as_ref()
            .filter(|(f, _)| *f == field)
            .map(|(_, m)| m.as_str())
    }
}

async fn api_page(s: &AppState, v: &Viewer, cursor: Option<String>, form: ApiForm) -> Result<ApiPage, UiError> {
    let first_page = cursor.is_none();
    let page = s.domain.list_api_tokens(&v.actor, cursor, Some(100)).await?;
    let now = s.domain.clock().now();
    let mut rows: Vec<ApiRow> = page
        .items
        .into_iter()
        .map(|t| ApiRow {
            role: t.role.map_or("owner's role", Role::as_str),
            created: TimeView::new(t.created_at),
            expires: TimeView::new(t.expires_at),
            expired: now >= t.expires_at,
            t,
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.t.created_at));
    Ok(ApiPage {
        layout: v.layout("API tokens", "api-tokens"),
        script: assets::url("onboarding.js"),
        rows,
        notice: None,
        form,
        error: None,
        created: None,
        first_page,
        next: page
            .next_cursor
            .map(|c| format!("/settings/api-tokens?cursor={}", encode_query(&c))),
    })
}

async fn api_list(State(s): State<Arc<AppState>>, v: Viewer, Query(q): Query<ListQuery>) -> Result<Response, UiError> {
    let mut p = api_page(&s, &v, q.cursor, ApiForm::fresh(v.role)).await?;
    p.notice = q
        .revoked
        .map(|id| format!("API token {id} is revoked: requests with it are refused from now on."));
    Ok(render(&p)?.into_response())
}

async fn api_create(State(s): State<Arc<AppState>>, v: Viewer, Form(form): Form<ApiForm>) -> Result<Response, UiError> {
    // No role in the form (a scripted POST): the user's own, as in the API.
    let role = match form.role.trim() {
        "" => Ok(None),
        r => parse_role(r).map(Some),
    };
    let req = match (parse_lifetime("expires_in", &form.expires_in), role) {
        (Err(fe), _) => Err((fe.field, fe.message)),
        (_, Err(_)) => Err(("role", "choose viewer, editor or admin".to_string())),
        (Ok(expires_in), Ok(role)) => Ok(NewApiToken {
            name: form.name.clone(),
            expires_in,
            role,
        }),
    };
    let outcome = match req {
        Err(e) => Err(e),
        Ok(req) => match s.domain.create_api_token(&v.actor, req).await {
            Ok(c) => Ok(c),
            Err(DomainError::Invalid { message, .. }) => Err(("name", message)),
            // A role above the user's own is refused by the domain (the
            // form never offers one); the page answers 403 like the API.
            Err(e) => return Err(e.into()),
        },
    };
    match outcome {
        Ok(created) => {
            let mut p = api_page(&s, &v, None, ApiForm::fresh(v.role)).await?;
            p.created = Some((created.view.name, created.token));
            let mut resp = render(&p)?.into_response();
            // The secret must not come back from a cache or the back button.
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        Err(error) => {
            let mut p = api_page(&s, &v, None, form).await?;
            p.error = Some(error);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)?).into_response())
        }
    }
}

async fn api_revoke(State(s): State<Arc<AppState>>, v: Viewer, Path(id): Path<String>) -> Result<Response, UiError> {
    s.domain.revoke_api_token(&v.actor, &id).await?;
    Ok(Redirect::to(&format!("/settings/api-tokens?revoked={}", encode_query(&id))).into_response())
}
