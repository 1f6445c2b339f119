//! Users and roles (`/settings/users`): admins list, create and edit users
//! (role, disable/enable, reset password); every edit carries the version
//! the admin loaded, and a stale save is a conflict that names what
//! changed meanwhile and keeps the admin's input. Passwords are never
//! echoed back into a page.
//!
//! Viewers and editors see only their own account, read-only: the user
//! list is admin data (the domain refuses it to them anyway), and changing
//! one's own role or access is an admin's decision.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use super::layout::{encode_query, render, Layout, UiError, Viewer};
use super::view::TimeView;
use crate::api::AppState;
use crate::domain::{DomainError, NewUser, Role, UserUpdate, UserView, MIN_PASSWORD_LEN};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/settings/users", get(list).post(create))
        .route("/settings/users/{name}", get(edit).post(save))
}

pub const ROLES: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

/// A user as the pages show it.
struct Row {
    u: UserView,
    role: &'static str,
    created: TimeView,
    updated: TimeView,
    password_changed: Option<TimeView>,
}

impl Row {
    fn of(u: UserView) -> Self {
        Row {
            role: u.role.as_str(),
            created: TimeView::new(u.created_at),
            updated: TimeView::new(u.updated_at),
            password_changed: u.password_changed_at.map(TimeView::new),
            u,
        }
    }
}

/// What the create form keeps after a refusal (never the password).
#[derive(Default)]
struct CreateInput {
    username: String,
    role: String,
}

#[derive(askama::Template)]
#[template(path = "users.html")]
struct ListPage {
    layout: Layout,
    rows: Vec<Row>,
    next: Option<String>,
    first_page: bool,
    notice: Option<String>,
    error: Option<String>,
    input: CreateInput,
    roles: [Role; 3],
    min_password: usize,
}

impl ListPage {
    fn role_name(&self, r: &Role) -> &'static str {
        r.as_str()
    }
}

#[derive(Deserialize, Default)]
struct ListParams {
    cursor: Option<String>,
    created: Option<String>,
}

async fn list_page(
    s: &AppState,
    v: &Viewer,
    cursor: Option<String>,
    notice: Option<String>,
    error: Option<String>,
    input: CreateInput,
) -> Result<ListPage, UiError> {
    let (rows, next) = if v.role >= Role::Admin {
        let page = s.domain.list_users(&v.actor, cursor, Some(50)).await?;
        let next = page
            .next_cursor
            .map(|c| format!("/settings/users?cursor={}", encode_query(&c)));
        (page.items.into_iter().map(Row::of).collect(), next)
    } else {
        let me = s.domain.get_user(&v.actor, &v.username).await?;
        (vec![Row::of(me)], None)
    };
    Ok(ListPage {
        layout: v.layout("Users", "users"),
        rows,
        next,
        first_page: true,
        notice,
        error,
        input,
        roles: ROLES,
        min_password: MIN_PASSWORD_LEN,
    })
}

async fn list(State(s): State<Arc<AppState>>, v: Viewer, Query(p): Query<ListParams>) -> Result<Html<String>, UiError> {
    let first_page = p.cursor.is_none();
    let notice = p
        .created
        .filter(|_| v.role >= Role::Admin)
        .map(|n| format!("User {n} created. Give them the initial password through a channel you trust."));
    let mut page = list_page(&s, &v, p.cursor, notice, None, CreateInput::default()).await?;
    page.first_page = first_page;
    render(&page)
}

#[derive(Deserialize)]
struct CreateForm {
    username: String,
    role: String,
    password: String,
}

pub(super) fn parse_role(s: &str) -> Result<Role, DomainError> {
    ROLES
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| DomainError::invalid("role", "choose viewer, editor or admin"))
}

/// A refusal the admin can fix on the same page, shown next to the form.
fn fixable(e: &DomainError) -> bool {
    matches!(
        e,
        DomainError::Invalid { .. } | DomainError::AlreadyExists { .. } | DomainError::Conflict { .. }
    )
}

async fn create(State(s): State<Arc<AppState>>, v: Viewer, Form(f): Form<CreateForm>) -> Result<Response, UiError> {
    let username = f.username.trim().to_string();
    let result = match parse_role(&f.role) {
        Ok(role) => {
            let req = NewUser {
                username: username.clone(),
                password: f.password,
                role,
            };
            s.domain.create_user(&v.actor, req).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(u) => Ok(Redirect::to(&format!("/settings/users?created={}", encode_query(&u.username))).into_response()),
        Err(e) if fixable(&e) => {
            let status = if matches!(e, DomainError::AlreadyExists { .. }) {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let msg =
                format!("The user was not created: {e}. Nothing was saved; the password was not kept, enter it again.");
            let input = CreateInput { username, role: f.role };
            let page = list_page(&s, &v, None, None, Some(msg), input).await?;
            Ok((status, render(&page)?).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// The admin's pending input on the edit page, kept across a refusal.
#[derive(Default)]
struct EditInput {
    /// The role the admin chose (the select keeps it).
    role: Option<Role>,
}

#[derive(askama::Template)]
#[template(path = "user.html")]
struct EditPage {
    layout: Layout,
    row: Row,
    error: Option<String>,
    notice: Option<String>,
    input: EditInput,
    roles: [Role; 3],
    min_password: usize,
    is_self: bool,
}

impl EditPage {
    fn role_name(&self, r: &Role) -> &'static str {
        r.as_str()
    }
    /// The role the select shows: the admin's pending choice, else the stored one.
    fn selected(&self, r: &Role) -> bool {
        self.input.role.unwrap_or(self.row.u.role) == *r
    }
    /// What the loaded record said about the password, for the conflict check.
    fn password_mark(&self) -> String {
        self.row
            .u
            .password_changed_at
            .map(|t| t.0.to_string())
            .unwrap_or_default()
    }
}

fn edit_page(v: &Viewer, u: UserView, error: Option<String>, notice: Option<String>, input: EditInput) -> EditPage {
    EditPage {
        layout: v.layout(format!("User {}", u.username), "users"),
        is_self: u.username == v.username,
        row: Row::of(u),
        error,
        notice,
        input,
        roles: ROLES,
        min_password: MIN_PASSWORD_LEN,
    }
}

#[derive(Deserialize, Default)]
struct EditParams {
    saved: Option<String>,
}

async fn edit(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Path(name): Path<String>,
    Query(p): Query<EditParams>,
) -> Result<Html<String>, UiError> {
    let u = s.domain.get_user(&v.actor, &name).await?;
    let notice = p.saved.map(|what| match what.as_str() {
        "role" => format!("Role saved: {} is now {}.", u.username, u.role.as_str()),
        "access" if u.disabled => format!(
            "{} is disabled: their sessions and API tokens stopped working.",
            u.username
        ),
        "access" => format!("{} is enabled again.", u.username),
        "password" => format!(
            "Password reset: {}'s existing sessions ended. Give them the new password through a channel you trust.",
            u.username
        ),
        _ => "Saved.".to_string(),
    });
    render(&edit_page(&v, u, None, notice, EditInput::default()))
}

#[derive(Deserialize)]
struct EditForm {
    /// The record version the page was rendered from.
    version: u64,
    /// What the page showed, to say what someone else changed meanwhile.
    loaded_role: String,
    loaded_disabled: String,
    #[serde(default)]
    loaded_password: String,
    action: String,
    role: Option<String>,
    disabled: Option<String>,
    password: Option<String>,
}

/// What differs between what the admin loaded and the stored user now.
fn changes_since(f: &EditForm, cur: &UserView) -> Vec<String> {
    let mut out = Vec::new();
    if f.loaded_role != cur.role.as_str() {
        out.push(format!("role {} → {}", f.loaded_role, cur.role.as_str()));
    }
    let was_disabled = f.loaded_disabled == "true";
    if was_disabled != cur.disabled {
        out.push(if cur.disabled {
            "disabled".into()
        } else {
            "enabled again".into()
        });
    }
    let pw = cur.password_changed_at.map(|t| t.0.to_string()).unwrap_or_default();
    if f.loaded_password != pw {
        out.push("password reset".into());
    }
    out
}

async fn save(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    Path(name): Path<String>,
    Form(f): Form<EditForm>,
) -> Result<Response, UiError> {
    let mut upd = UserUpdate {
        version: Some(f.version),
        ..Default::default()
    };
    let mut input = EditInput::default();
    let parsed: Result<(), DomainError> = match f.action.as_str() {
        "role" => parse_role(f.role.as_deref().unwrap_or_default()).map(|r| {
            input.role = Some(r);
            upd.role = Some(r);
        }),
        "access" => match f.disabled.as_deref() {
            Some(d @ ("true" | "false")) => {
                upd.disabled = Some(d == "true");
                Ok(())
            }
            _ => Err(DomainError::invalid("disabled", "send true or false")),
        },
        "password" => {
            upd.password = Some(f.password.clone().unwrap_or_default());
            Ok(())
        }
        _ => Err(DomainError::invalid("action", "send role, access or password")),
    };
    let result = match parsed {
        Ok(()) => s.domain.update_user(&v.actor, &name, upd).await,
        Err(e) => Err(e),
    };
    let error = match result {
        Ok(u) => {
            let to = format!(
                "/settings/users/{}?saved={}",
                encode_query(&u.username),
                encode_query(&f.action)
            );
            return Ok(Redirect::to(&to).into_response());
        }
        Err(e) if fixable(&e) => e,
        Err(e) => return Err(e.into()),
    };
    let cur = s.domain.get_user(&v.actor, &name).await?;
    let (status, msg) = match &error {
        DomainError::Conflict { .. } => {
            let changed = changes_since(&f, &cur);
            let what = if changed.is_empty() {
                "it was saved again".to_string()
            } else {
                changed.join(", ")
            };
            let kept = match f.action.as_str() {
                "password" => "Nothing was saved. The new password was not kept: enter it again to reset the password.",
                "access" => "Nothing was saved. Check the current state below, then disable or enable again.",
                _ => "Nothing was saved. Your choice is kept below; check the current values and save again.",
            };
            (
                StatusCode::CONFLICT,
                format!(
                    "Conflict: someone else changed {name} after you loaded it (version {} → {}): {what}. {kept}",
                    f.version, cur.version
                ),
            )
        }
        other => (StatusCode::UNPROCESSABLE_ENTITY, format!("Not saved: {other}.")),
    };
    let page = edit_page(&v, cur, Some(msg), None, input);
    Ok((status, render(&page)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    fn view(role: Role, disabled: bool, pw: Option<u64>) -> UserView {
        UserView {
            username: "alice".into(),
            role,
            disabled,
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
            password_changed_at: pw.map(Timestamp),
            version: 3,
        }
    }

    fn form(role: &str, disabled: &str, pw: &str) -> EditForm {
        EditForm {
            version: 2,
            loaded_role: role.into(),
            loaded_disabled: disabled.into(),
            loaded_password: pw.into(),
            action: "role".into(),
            role: None,
            disabled: None,
            password: None,
        }
    }

    #[test]
    fn a_conflict_names_what_changed_since_the_page_was_loaded() {
        let f = form("viewer", "false", "");
        assert_eq!(
            changes_since(&f, &view(Role::Editor, true, Some(5))),
            ["role viewer → editor", "disabled", "password reset"]
        );
        assert!(changes_since(&f, &view(Role::Viewer, false, None)).is_empty());
        assert_eq!(
            changes_since(&form("admin", "true", "5"), &view(Role::Admin, false, Some(5))),
            ["enabled again"]
        );
    }
}
