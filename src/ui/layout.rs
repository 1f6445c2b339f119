//! What every page shares: the authenticated viewer, the base layout and
//! navigation, rendering, and the error page.

use std::sync::Arc;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::assets;
use crate::api::error::ApiError;
use crate::api::extract::{cookie_value, SESSION_COOKIE};
use crate::api::AppState;
use crate::domain::{Actor, DomainError, Role};

/// One entry of the main navigation: (key, label, href, group).
pub struct NavItem {
    pub key: &'static str,
    pub label: &'static str,
    pub href: &'static str,
    /// Entries of a group are listed under its heading (Settings).
    pub group: &'static str,
}

const fn nav(key: &'static str, label: &'static str, href: &'static str, group: &'static str) -> NavItem {
    NavItem {
        key,
        label,
        href,
        group,
    }
}

/// The navigation operators know (see the product's UI conventions):
/// collect, route, onboard, settings, audit, health.
pub const NAV: &[NavItem] = &[
    nav("overview", "Overview", "/", ""),
    nav("collectors", "Collectors", "/collectors", ""),
    nav("config", "Config", "/config", ""),
    nav("routing", "Routing", "/routing", ""),
    nav("rollouts", "Rollouts", "/rollouts", ""),
    nav("add", "Add collector", "/add-collector", ""),
    nav(
        "enrollment",
        "Enrollment tokens",
        "/settings/enrollment-tokens",
        "Settings",
    ),
    nav("api-tokens", "API tokens", "/settings/api-tokens", "Settings"),
    nav("users", "Users", "/settings/users", "Settings"),
    nav("audit", "Audit", "/audit", ""),
    nav("health", "Server health", "/health", ""),
];

/// The base layout's data; every page template has a `layout` field.
pub struct Layout {
    pub title: String,
    pub active: &'static str,
    pub username: String,
    pub role: Role,
}

impl Layout {
    pub fn nav(&self) -> &'static [NavItem] {
        NAV
    }
    /// Whether to show editing controls (the server checks again).
    pub fn can_edit(&self) -> bool {
        self.role >= Role::Editor
    }
    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }
    pub fn role_name(&self) -> &'static str {
        self.role.as_str()
    }
    pub fn css(&self) -> String {
        assets::url("app.css")
    }
    pub fn js(&self) -> String {
        assets::url("app.js")
    }
}

/// The logged-in user of a page request, from the session cookie. Without
/// a valid session the request is redirected to `/login?next=<path>`;
/// pages never accept API tokens (a browser has none).
pub struct Viewer {
    pub actor: Actor,
    pub username: String,
    pub role: Role,
}

impl Viewer {
    pub fn layout(&self, title: impl Into<String>, active: &'static str) -> Layout {
        Layout {
            title: title.into(),
            active,
            username: self.username.clone(),
            role: self.role,
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Response> {
        let to_login = || {
            let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            Redirect::to(&format!("/login?next={}", encode_query(path))).into_response()
        };
        let Some(cookie) = cookie_value(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        match state.domain.authenticate_session(cookie).await {
            Ok(actor) => {
                let (Some(username), Some(role)) = (actor.username().map(String::from), actor.role()) else {
                    return Err(to_login());
                };
                Ok(Viewer { actor, username, role })
            }
            Err(DomainError::Unauthenticated(_)) => Err(to_login()),
            Err(e) => Err(UiError::from(e).into_response()),
        }
    }
}

/// Percent-encode for a query value (paths only contain ASCII).
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Render a page template.
pub fn render<T: Template>(page: &T) -> Result<Html<String>, UiError> {
    page.render().map(Html).map_err(|e| {
        tracing::error!(error = %e, "Rendering a page failed.");
        UiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the page could not be rendered".into(),
        }
    })
}

/// A failed page request, shown as a small HTML page that says what to do.
#[derive(Debug)]
pub struct UiError {
    pub status: StatusCode,
    pub message: String,
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        UiError {
            status,
            message: message.into(),
        }
    }
}

impl From<DomainError> for UiError {
    fn from(e: DomainError) -> Self {
        let message = match &e {
            DomainError::Storage(_) => "the store could not complete the request; try again".to_string(),
            other => other.to_string(),
        };
        // The API's mapping decides the status (and logs storage failures).
        UiError {
            status: ApiError::from(e).status(),
            message,
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/login").into_response();
        }
        let page = ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or("Error"),
            message: &self.message,
        };
        let body = page.render().unwrap_or_else(|_| self.message.clone());
        (self.status, Html(body)).into_response()
    }
}
