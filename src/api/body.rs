//! Request bodies sent by collectors (OpAMP over HTTP, OTLP/HTTP): the one
//! place a `Content-Encoding` is undone, and the bound on what that may
//! produce. A small gzip body can inflate to gigabytes (a "gzip bomb"), so
//! the decompressed size is capped by a limit the caller names, and going
//! past it is a 413 that names the limit.
//!
//! Callers authenticate the request before they get here: an unknown
//! sender never makes the server inflate anything.

use std::borrow::Cow;
use std::io::Read;

use axum::http::{header, HeaderMap, StatusCode};
use flate2::read::GzDecoder;

/// A bound on a decompressed body, with the setting that sets it (named in
/// the 413, so an operator knows what to raise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: usize,
    /// The config key, e.g. `server.max_request_bytes`.
    pub setting: &'static str,
}

impl Limit {
    /// `server.max_request_bytes`, the limit of every collector body today.
    pub fn max_request_bytes(bytes: usize) -> Limit {
        Limit {
            bytes,
            setting: "server.max_request_bytes",
        }
    }
}

/// Why a body's encoding could not be undone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the decompressed body exceeds {} bytes ({})", .0.bytes, .0.setting)]
    TooLarge(Limit),
    #[error("invalid gzip body: {0}")]
    InvalidGzip(String),
    #[error("Content-Encoding {0:?} is not supported; send gzip or identity")]
    UnsupportedEncoding(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::InvalidGzip(_) => StatusCode::BAD_REQUEST,
            BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

/// `body` with the request's `Content-Encoding` undone (gzip or identity;
/// the coding name is case-insensitive, as HTTP says), never longer than
/// `limit`. An identity body is borrowed: the web server's body limit
/// already bounded it.
pub fn decoded<'a>(headers: &HeaderMap, body: &'a [u8], limit: Limit) -> Result<Cow<'a, [u8]>, BodyError> {
    let coding = match headers.get(header::CONTENT_ENCODING) {
        None => "",
        Some(v) => v
            .to_str()
            .map_err(|_| BodyError::UnsupportedEncoding(String::from_utf8_lossy(v.as_bytes()).into_owned()))?,
    };
    match coding.trim().to_ascii_lowercase().as_str() {
        "identity" | "" => Ok(Cow::Borrowed(body)),
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            // One byte past the limit tells "too large" from "fits" without
            // inflating any further.
            match GzDecoder::new(body).take(limit.bytes as u64 + 1).read_to_end(&mut out) {
                Ok(n) if n > limit.bytes => Err(BodyError::TooLarge(limit)),
                Ok(_) => Ok(Cow::Owned(out)),
                Err(e) => Err(BodyError::InvalidGzip(e.to_string())),
            }
        }
        _ => Err(BodyError::UnsupportedEncoding(coding.trim().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn encoded(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, coding.parse().unwrap());
        h
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_named_limit() {
        let bomb = gzip(&vec![0u8; 1_000_000]);
        let e = decoded(&encoded("gzip"), &bomb, Limit::max_request_bytes(1_000)).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            e.to_string(),
            "the decompressed body exceeds 1000 bytes (server.max_request_bytes)"
        );
        let fits = decoded(&encoded(" GZIP "), &bomb, Limit::max_request_bytes(1_000_000)).unwrap();
        assert_eq!(fits.len(), 1_000_000, "exactly at the limit fits");
    }

    #[test]
    fn identity_is_borrowed_and_other_codings_are_refused() {
        assert!(matches!(
            decoded(&HeaderMap::new(), b"raw", Limit::max_request_bytes(1)),
            Ok(Cow::Borrowed(b"raw"))
        ));
        let e = decoded(&encoded("br"), b"", Limit::max_request_bytes(10)).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.to_string().contains("\"br\""), "{e}");
        let truncated = &gzip(b"hello world")[..12];
        let e = decoded(&encoded("gzip"), truncated, Limit::max_request_bytes(100)).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
