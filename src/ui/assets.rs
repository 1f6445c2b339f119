//! The console's CSS and JS, compiled into the binary (no Node step, no
//! asset fetched at run time). Each file is served under a URL carrying a
//! hash of its content, so it can be cached forever (`immutable`) and a new
//! binary's file gets a new URL. Gzip bodies are made once, at first use.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::api::AppState;

/// (file name, content, content type). Add a line per new file.
const FILES: &[(&str, &[u8], &str)] = &[
    ("app.css", include_bytes!("static/app.css"), "text/css; charset=utf-8"),
    (
        "app.js",
        include_bytes!("static/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "admin.js",
        include_bytes!("static/admin.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "canvas.css",
        include_bytes!("static/canvas.css"),
        "text/css; charset=utf-8",
    ),
    (
        "canvas.js",
        include_bytes!("static/canvas.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "onboarding.js",
        include_bytes!("static/onboarding.js"),
        "text/javascript; charset=utf-8",
    ),
];

struct Asset {
    name: &'static str,
    hash: String,
    body: &'static [u8],
    gzip: Vec<u8>,
    content_type: &'static str,
}

fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, body, content_type)| Asset {
                name,
                hash: hex::encode(&Sha256::digest(body)[..6]),
                body,
                gzip: gzip(body),
                content_type,
            })
            .collect()
    })
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail; an empty result only disables gzip.
    enc.write_all(body).and_then(|_| enc.finish()).unwrap_or_default()
}

/// The URL of an embedded file, e.g. `/assets/3f2a…/app.js`.
pub fn url(name: &str) -> String {
    match assets().iter().find(|a| a.name == name) {
        Some(a) => format!("/assets/{}/{}", a.hash, a.name),
        None => format!("/assets/missing/{name}"),
    }
}

/// (file name, bytes, gzip bytes) of every embedded file: for the weight
/// measurement and its test.
pub fn sizes() -> Vec<(&'static str, usize, usize)> {
    assets().iter().map(|a| (a.name, a.body.len(), a.gzip.len())).collect()
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/assets/{hash}/{name}", get(serve))
}

async fn serve(Path((hash, name)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let Some(a) = assets().iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    // An old URL (a page rendered by an older binary) gets today's file,
    // but must not be cached as if it were the old one.
    let cache = if a.hash == hash {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let accepts_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut resp = if accepts_gzip && !a.gzip.is_empty() {
        let mut r = a.gzip.clone().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        a.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    resp
}
