//! Add collector: create an enrollment token and get what a collector
//! needs to join with it (OpenTelemetry Collector `opamp` extension,
//! OpAMP supervisor, `linkmesh-sim`), then watch the first collector
//! arrive.
//!
//! The token's secret is rendered once, in the answer to the POST that
//! created it (never in a URL, never stored, `Cache-Control: no-store`);
//! onboarding.js then replaces the history entry with
//! `/add-collector?created=<id>`, so a reload is a plain GET that shows the
//! token without its secret. The progress panel asks
//! `/add-collector/progress/<id>`, which costs one key read until the
//! token is used (see `domain::onboarding`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use serde::Deserialize;

use super::assets;
use super::collectors::parse_labels;
use super::layout::{encode_query, render, Layout, UiError, Viewer};
use super::tokens::TokenRow;
use crate::api::AppState;
use crate::domain::{DomainError, EnrollmentProgress, Labels, NewEnrollmentToken};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/add-collector", get(page).post(create))
        .route("/add-collector/progress/{id}", get(progress))
}

/// The form as typed (re-shown with the error when it is refused).
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    expires_in: String,
    #[serde(default)]
    max_uses: String,
    /// A checkbox: present ("on") when ticked.
    #[serde(default)]
    require_own_credential: Option<String>,
}

/// A form field the user must fix, and what to write instead.
#[derive(Debug)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn field_error(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// Parse a lifetime like `24h` or `7d`; empty means the server default.
pub fn parse_lifetime(field: &'static str, text: &str) -> Result<Option<Duration>, FieldError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    match humantime::parse_duration(t) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        _ => Err(field_error(
            field,
            format!("{t:?} is not a lifetime; write a number and a unit, e.g. 1h, 24h or 30d"),
        )),
    }
}

impl TokenForm {
    fn request(&self) -> Result<NewEnrollmentToken, FieldError> {
        let labels: Labels = parse_labels(&self.labels)
            .map_err(|e| field_error("labels", format!("{e}; write one key=value per line")))?;
        let max_uses = match self.max_uses.trim() {
            "" => None,
            n => Some(n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                field_error(
                    "max_uses",
                    format!("{n:?} is not a whole number of at least 1; leave it empty for unlimited"),
                )
            })?),
        };
        Ok(NewEnrollmentToken {
            name: self.name.clone(),
            expires_in: parse_lifetime("expires_in", &self.expires_in)?,
            max_uses,
            labels,
            require_own_credential: self.require_own_credential.is_some(),
        })
    }
}

/// The addresses a collector uses, from `server.public_url` (or, when it
/// is not set, the address this browser reached the server at).
struct Endpoints {
    /// `https://linkmesh.example.com` (no trailing slash).
    base: String,
    /// `wss://linkmesh.example.com/v1/opamp`.
    opamp_ws: String,
    /// Whether `server.public_url` was missing and `base` is a guess.
    guessed: bool,
}

fn endpoints(public_url: Option<&str>, headers: &HeaderMap) -> Endpoints {
    let (base, guessed) = match public_url
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
    {
        Some(u) => (u.to_string(), false),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1:8080");
            (format!("http://{host}"), true)
        }
    };
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.clone()
    };
    Endpoints {
        opamp_ws: format!("{ws}/v1/opamp"),
        base,
        guessed,
    }
}

/// The copy-paste snippets, each with the secret in it.
struct Snippet {
    id: &'static str,
    title: &'static str,
    intro: &'static str,
    body: String,
}

fn snippets(e: &Endpoints, token: &str) -> Vec<Snippet> {
    vec![
        Snippet {
            id: "snippet-supervisor",
            title: "OpAMP supervisor (supervisor.yaml)",
            intro: "The supervisor runs the collector and applies the config LinkMesh pushes. \
                    Set agent.executable to your collector binary.",
            body: format!(
                "server:\n  endpoint: {ws}\n  headers:\n    Authorization:\n      - \"Bearer {token}\"\n\
                 capabilities:\n  accepts_remote_config: true\n  reports_remote_config: true\n  \
                 reports_effective_config: true\n  reports_health: true\n  reports_own_metrics: true\n  \
                 accepts_opamp_connection_settings: true\n\
                 agent:\n  executable: /usr/local/bin/otelcol-contrib\n\
                 storage:\n  directory: /var/lib/otelcol/supervisor\n",
                ws = e.opamp_ws
            ),
        },
        Snippet {
            id: "snippet-extension",
            title: "OpenTelemetry Collector opamp extension",
            intro: "Add to the collector's own config. The extension reports status, health and the \
                    effective config; it does not apply pushed config (use the supervisor for that).",
            body: format!(
                "extensions:\n  opamp:\n    server:\n      ws:\n        endpoint: {ws}\n        headers:\n          \
                 Authorization: \"Bearer {token}\"\n\
                 service:\n  extensions: [opamp]\n",
                ws = e.opamp_ws
            ),
        },
        Snippet {
            id: "snippet-sim",
            title: "linkmesh-sim (a simulated collector, to try it out)",
            intro: "Joins one simulated collector over OpAMP WebSocket with only the token, as a \
                    standard agent does. The token is passed in the environment, not in the \
                    process's arguments.",
            body: format!(
                "LINKMESH_SIM_ENROLLMENT_TOKEN='{token}' linkmesh-sim --server {base} --transport ws \
                 --token-only --accept-connection-settings --collectors 1 --hold 1h",
                base = e.base
            ),
        },
    ]
}

/// The token just created, with its secret (shown this once).
struct Created {
    secret: String,
    snippets: Vec<Snippet>,
}

#[derive(askama::Template)]
#[template(path = "addcollector.html")]
struct AddPage {
    layout: Layout,
    script: String,
    form: TokenForm,
    error: Option<FieldError>,
    /// After creation (POST answer, or `?created=<id>` after a reload).
    token: Option<TokenRow>,
    created: Option<Created>,
    progress: Option<EnrollmentProgress>,
    /// `/add-collector?created=<id>`: what a reload should fetch.
    replace_url: String,
    endpoints: Endpoints,
}

impl AddPage {
    fn new(v: &Viewer, endpoints: Endpoints) -> Self {
        AddPage {
            layout: v.layout("Add collector", "add"),
            script: assets::url("onboarding.js"),
            form: TokenForm {
                expires_in: "24h".into(),
                ..Default::default()
            },
            error: None,
            token: None,
            created: None,
            progress: None,
            replace_url: String::new(),
            endpoints,
        }
    }
    fn error_for(&self, field: &str) -> Option<&str> {
        self.error
            .as_ref()
            .filter(|e| e.field == field)
            .map(|e| e.message.as_str())
    }
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    created: Option<String>,
}

async fn page(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Result<Response, UiError> {
    let mut p = AddPage::new(&v, endpoints(s.public_url.as_deref(), &headers));
    if let Some(id) = q.created.filter(|i| !i.is_empty()) {
        let progress = s.domain.enrollment_progress(&v.actor, &id).await?;
        p.token = Some(TokenRow::new(&progress.token));
        p.replace_url = format!("/add-collector?created={}", encode_query(&id));
        p.progress = Some(progress);
    }
    Ok(render(&p)?.into_response())
}

async fn create(
    State(s): State<Arc<AppState>>,
    v: Viewer,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Response, UiError> {
    let mut p = AddPage::new(&v, endpoints(s.public_url.as_deref(), &headers));
    let outcome = match form.request() {
        Ok(req) => s
            .domain
            .create_enrollment_token(&v.actor, req)
            .await
            .map_err(|e| match e {
                DomainError::Invalid { field, message } => Ok(field_error(known_field(&field), message)),
                other => Err(other),
            }),
        Err(fe) => Err(Ok(fe)),
    };
    match outcome {
        Ok(created) => {
            let progress = s.domain.enrollment_progress(&v.actor, &created.view.id).await?;
            p.token = Some(TokenRow::new(&created.view));
            p.replace_url = format!("/add-collector?created={}", encode_query(&created.view.id));
            p.created = Some(Created {
                snippets: snippets(&p.endpoints, &created.token),
                secret: created.token,
            });
            p.progress = Some(progress);
            let mut resp = render(&p)?.into_response();
            // The secret must not come back from a cache or the back button.
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        Err(Ok(fe)) => {
            p.form = form;
            p.error = Some(fe);
            Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&p)?).into_response())
        }
        Err(Err(e)) => Err(e.into()),
    }
}

/// The form field a domain validation error names (so the page can put
/// the message next to it).
fn known_field(f: &str) -> &'static str {
    match f {
        "name" => "name",
        "max_uses" => "max_uses",
        "expires_in" => "expires_in",
        "require_own_credential" => "require_own_credential",
        _ => "labels",
    }
}

/// JSON for onboarding.js: the token's uses and state, and the first
/// collectors that enrolled with it.
async fn progress(State(s): State<Arc<AppState>>, v: Viewer, Path(id): Path<String>) -> Result<Response, UiError> {
    let p = s.domain.enrollment_progress(&v.actor, &id).await?;
    let mut resp = Json(serde_json::json!({
        "uses": p.token.uses,
        "max_uses": p.token.max_uses,
        "state": p.token.state,
        "collectors": p.collectors,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_public_url_and_fall_back_to_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("10.0.0.5:8080"));
        let e = endpoints(Some("https://lm.example.com/"), &h);
        assert_eq!(
            (e.base.as_str(), e.opamp_ws.as_str(), e.guessed),
            ("https://lm.example.com", "wss://lm.example.com/v1/opamp", false)
        );
        let e = endpoints(None, &h);
        assert_eq!(
            (e.base.as_str(), e.opamp_ws.as_str(), e.guessed),
            ("http://10.0.0.5:8080", "ws://10.0.0.5:8080/v1/opamp", true)
        );
    }

    #[test]
    fn bad_form_fields_are_named() {
        let f = |max_uses: &str, expires_in: &str, labels: &str| TokenForm {
            name: "edge".into(),
            labels: labels.into(),
            expires_in: expires_in.into(),
            max_uses: max_uses.into(),
            require_own_credential: None,
        };
        assert_eq!(f("0", "", "").request().unwrap_err().field, "max_uses");
        assert_eq!(f("many", "", "").request().unwrap_err().field, "max_uses");
        assert_eq!(f("", "soon", "").request().unwrap_err().field, "expires_in");
        assert_eq!(f("", "", "env").request().unwrap_err().field, "labels");
        let ok = f("3", "7d", "env=prod\nsite=eu").request().unwrap();
        assert_eq!(
            (ok.max_uses, ok.expires_in, ok.labels.len()),
            (Some(3), Some(Duration::from_secs(7 * 86400)), 2)
        );
    }
}
