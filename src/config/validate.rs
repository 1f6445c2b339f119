//! Checks that types alone cannot express, and the reading of `*_file`
//! secrets. All problems are appended to one list with their key paths.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::load::ConfigError;
use super::{Config, Secret, StorageBackend};

/// Shortest bootstrap password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;

pub(super) fn resolve_and_validate(config: &mut Config, errors: &mut Vec<ConfigError>) {
    resolve_secret(
        "auth.bootstrap_admin_password",
        &mut config.auth.bootstrap_admin_password,
        &config.auth.bootstrap_admin_password_file,
        errors,
    );
    if let Some(pw) = &config.auth.bootstrap_admin_password {
        if pw.expose().chars().count() < MIN_PASSWORD_LEN {
            errors.push(ConfigError::new(
                "auth.bootstrap_admin_password",
                format!("must be at least {MIN_PASSWORD_LEN} characters"),
            ));
        }
    }
    for (key, n) in [
        ("auth.login_attempts_per_minute", config.auth.login_attempts_per_minute),
        (
            "auth.enroll_attempts_per_minute",
            config.auth.enroll_attempts_per_minute,
        ),
    ] {
        if n == 0 {
            errors.push(ConfigError::new(key, "must be at least 1"));
        }
    }
    if config.auth.bootstrap_admin_username.trim().is_empty() {
        errors.push(ConfigError::new("auth.bootstrap_admin_username", "must not be empty"));
    }

    check_listener("server.http_listen", config.server.http_listen, config, errors);
    check_listener("server.grpc_listen", config.server.grpc_listen, config, errors);
    if let Some(url) = &config.server.public_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(ConfigError::new(
                "server.public_url",
                "must start with http:// or https://",
            ));
        }
    }

    if let Some(tls) = &config.tls {
        check_file("tls.cert_file", &tls.cert_file, errors);
        check_file("tls.key_file", &tls.key_file, errors);
        if let Some(ca) = &tls.client_ca_file {
            check_file("tls.client_ca_file", ca, errors);
        }
    }

    if let Some(db) = &mut config.database {
        resolve_secret("database.uri", &mut db.uri, &db.uri_file, errors);
        if let Some(uri) = &db.uri {
            for problem in crate::storage::mongodb_uri_problems(uri.expose()) {
                errors.push(ConfigError::new("database.uri", problem));
            }
        }
        if let Some(ca) = &db.tls_ca_file {
            if let Err(e) = crate::storage::check_mongodb_ca_file(ca) {
                errors.push(ConfigError::new("database.tls_ca_file", e));
            }
        }
    }
    if config.storage.backend == StorageBackend::Mongodb {
        let has_uri = config.database.as_ref().is_some_and(|d| d.uri.is_some());
        let uri_file_failed = errors.iter().any(|e| e.path.starts_with("database.uri"));
        if !has_uri && !uri_file_failed {
            errors.push(ConfigError::new(
                "database.uri",
                "storage.backend = \"mongodb\" needs database.uri or database.uri_file",
            ));
        }
    }

    if let Some(cs) = &config.config_store {
        if cs.url.trim().is_empty() {
            errors.push(ConfigError::new("config_store.url", "must not be empty"));
        } else if let Err(e) = crate::configstore::check_url(&cs.url) {
            errors.push(ConfigError::new("config_store.url", e));
        }
        if let Some(f) = &cs.credentials_file {
            check_file("config_store.credentials_file", f, errors);
        }
        if cs.poll_interval.is_zero() {
            errors.push(ConfigError::new("config_store.poll_interval", "must be greater than 0"));
        }
        if let Some(f) = &cs.collector_validator {
            check_file("config_store.collector_validator", f, errors);
        }
        if cs.collector_validator_timeout.is_zero() {
            errors.push(ConfigError::new(
                "config_store.collector_validator_timeout",
                "must be greater than 0",
            ));
        }
        if cs.allow_publish && crate::configstore::publish::is_remote_url(&cs.url) {
            errors.push(ConfigError::new(
                "config_store.allow_publish",
                "publishing needs a local repository (a path or file:// URL); for a remote one, download drafts as patches",
            ));
        }
    }

    if config.fleet.liveness_timeout < std::time::Duration::from_secs(1) {
        errors.push(ConfigError::new("fleet.liveness_timeout", "must be at least 1s"));
    }
    if config.fleet.telemetry_rollup_interval < std::time::Duration::from_secs(1) {
        errors.push(ConfigError::new(
            "fleet.telemetry_rollup_interval",
            "must be at least 1s",
        ));
    }

    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.telemetry.log_level) {
        errors.push(ConfigError::new("telemetry.log_level", e.to_string()));
    }
    if let Some(ep) = &config.telemetry.otlp_endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            errors.push(ConfigError::new(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL",
            ));
        }
    }
}

/// `key` and `key_file` are two spellings of one secret: exactly one may be
/// set; the file's content (without a trailing newline) becomes the value.
fn resolve_secret(key: &str, value: &mut Option<Secret>, file: &Option<PathBuf>, errors: &mut Vec<ConfigError>) {
    let Some(path) = file else { return };
    if value.is_some() {
        errors.push(ConfigError::new(
            key,
            format!("set either {key} or {key}_file, not both"),
        ));
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim_end_matches(['\n', '\r']);
            if s.is_empty() {
                errors.push(ConfigError::new(
                    format!("{key}_file"),
                    format!("{} is empty", path.display()),
                ));
            } else {
                *value = Some(Secret::new(s));
            }
        }
        Err(e) => errors.push(ConfigError::new(
            format!("{key}_file"),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

fn check_file(key: &str, path: &Path, errors: &mut Vec<ConfigError>) {
    if let Err(e) = std::fs::metadata(path) {
        errors.push(ConfigError::new(key, format!("cannot read {}: {e}", path.display())));
    }
}

/// Plain HTTP is only for loopback unless the operator says a proxy in front
/// terminates TLS; credentials would otherwise cross the network in clear.
fn check_listener(key: &str, addr: SocketAddr, config: &Config, errors: &mut Vec<ConfigError>) {
    if config.tls.is_none() && !addr.ip().is_loopback() && !config.server.allow_insecure_http {
        errors.push(ConfigError::new(
            key,
            format!(
                "{addr} is not a loopback address and [tls] is not set; set [tls] or, behind a \
                 TLS-terminating proxy, server.allow_insecure_http = true"
            ),
        ));
    }
}
