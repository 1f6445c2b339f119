//! Login and logout pages. The session is the same HttpOnly, SameSite=Strict
//! cookie the API's login sets; a plain form POST works without scripts.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::assets;
use super::layout::{render, UiError};
use crate::api::auth::{clear_session_cookie, session_cookie};
use crate::api::extract::{cookie_value, SESSION_COOKIE};
use crate::api::AppState;
use crate::domain::DomainError;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    css: String,
    next: String,
    username: String,
    error: Option<String>,
}

#[derive(Deserialize)]
struct NextParam {
    next: Option<String>,
}

/// Only a path on this server: `/x` but not `//evil.example` or
/// `https://…` (no open redirect through the login form).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".into(),
    }
}

async fn login_page(Query(q): Query<NextParam>) -> Result<Response, UiError> {
    let page = LoginPage {
        css: assets::url("app.css"),
        next: safe_next(q.next.as_deref()),
        username: String::new(),
        error: None,
    };
    Ok(render(&page)?.into_response())
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn login(State(s): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Result<Response, UiError> {
    let next = safe_next(f.next.as_deref());
    match s.domain.login(&f.username, &f.password).await {
        Ok(r) => Ok((
            [(header::SET_COOKIE, session_cookie(&s, &r.cookie))],
            Redirect::to(&next),
        )
            .into_response()),
        Err(DomainError::Unauthenticated(_)) => {
            let page = LoginPage {
                css: assets::url("app.css"),
                next,
                username: f.username,
                error: Some("Wrong user name or password.".into()),
            };
            Ok((StatusCode::UNAUTHORIZED, render(&page)?).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

async fn logout(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, UiError> {
    if let Some(c) = cookie_value(&headers, SESSION_COOKIE) {
        s.domain.logout(c).await?;
    }
    Ok(([(header::SET_COOKIE, clear_session_cookie())], Redirect::to("/login")).into_response())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(
            safe_next(Some("/collectors?selector=env%3Dprod")),
            "/collectors?selector=env%3Dprod"
        );
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
