//! Files a user downloads onto a collector host. `install-opamp.sh` installs
//! the upstream OpAMP supervisor and otelcol-contrib and points them at this
//! server; it is public and holds no secret (the enrollment token is an
//! argument of the script, never part of it).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// The repository's script; `PLACEHOLDER` is replaced by this server's
/// OpAMP WebSocket URL when `server.public_url` is set.
const INSTALL_OPAMP: &str = include_str!("../../scripts/install-opamp.sh");
const PLACEHOLDER: &str = "__LINKMESH_OPAMP_ENDPOINT__";

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(install_opamp))
}

/// The OpAMP WebSocket endpoint collectors reach this server at:
/// `server.public_url` with ws(s) for http(s) and `/v1/opamp` appended.
pub fn opamp_ws_url(public_url: &str) -> String {
    let base = public_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}/v1/opamp")
}

/// The script with this server's OpAMP URL filled in. Without
/// `server.public_url` it is served as in the repository, and `--server`
/// is then required.
fn script(public_url: Option<&str>) -> String {
    match public_url {
        // The URL sits in single quotes in the script: `%27` is the same
        // URL and cannot end the quoting.
        Some(url) => INSTALL_OPAMP.replacen(PLACEHOLDER, &opamp_ws_url(url).replace('\'', "%27"), 1),
        None => INSTALL_OPAMP.to_string(),
    }
}

/// Shell script installing the OpAMP supervisor and otelcol-contrib,
/// connected to this server (`sh -s -- --token <enrollment token>`; see
/// docs/onboarding.md). Public: it holds no secret.
#[utoipa::path(get, path = "/api/v1/downloads/install-opamp.sh", tag = "downloads",
    responses((status = 200, content_type = "text/x-shellscript", body = String, description = "POSIX sh script; `--help` lists its options")))]
async fn install_opamp(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        script(s.public_url.as_deref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_script_points_at_the_public_url() {
        assert_eq!(opamp_ws_url("https://lm.example.com/"), "wss://lm.example.com/v1/opamp");
        assert_eq!(opamp_ws_url("http://10.0.0.1:8080"), "ws://10.0.0.1:8080/v1/opamp");
        let s = script(Some("https://lm.example.com"));
        assert!(s.contains("DEFAULT_SERVER='wss://lm.example.com/v1/opamp'"));
        assert!(script(Some("https://x.example/a'b")).contains("DEFAULT_SERVER='wss://x.example/a%27b/v1/opamp'"));
        assert!(script(None).contains(&format!("DEFAULT_SERVER='{PLACEHOLDER}'")));
    }
}
