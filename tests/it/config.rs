//! Server config: the shipped example, error collection, env overrides,
//! secrets.

use std::process::Command;

use linkmesh::config::{load_str, StorageBackend};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn shipped_config_checks_clean() {
    let out = Command::new(super::support::bin())
        .current_dir(super::support::repo_root())
        .args(["check-config", "config/linkmesh.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_names_every_broken_key_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[server]
http_listen = "127.0.0.1:8080"
listen_backlog = 5          # unknown key

[telemetry]
metrics = "yes"             # wrong type

[auth]
bootstrap_admin_password_file = "/nonexistent/linkmesh-pw"   # missing secret file
"#,
    )
    .unwrap();
    let stderr = super::support::check_config_refuses(&file);
    for key in [
        "server.listen_backlog",
        "telemetry.metrics",
        "auth.bootstrap_admin_password_file",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

#[test]
fn env_overrides_nested_keys_and_types() {
    let c = load_str(
        "t",
        "[server]\nhttp_listen = \"127.0.0.1:1\"\n",
        env(&[
            ("LINKMESH_SERVER__HTTP_LISTEN", "127.0.0.1:9999"),
            ("LINKMESH_STORAGE__EMBEDDED__PATH", "/tmp/x.redb"),
            ("LINKMESH_TELEMETRY__METRICS", "false"),
            ("LINKMESH_SERVER__SHUTDOWN_GRACE", "3s"),
            ("LINKMESH_TEST_MONGODB_URI", "ignored: not an override"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.http_listen.port(), 9999);
    assert_eq!(c.storage.embedded.path.to_str(), Some("/tmp/x.redb"));
    assert!(!c.telemetry.metrics);
    assert_eq!(c.server.shutdown_grace.as_secs(), 3);
    assert_eq!(c.storage.backend, StorageBackend::Embedded);

    let e = load_str("t", "", env(&[("LINKMESH_SERVER__NOPE", "1")])).unwrap_err();
    assert_eq!(e.errors[0].path, "server.nope");
}

#[test]
fn secret_inline_and_file_is_an_error_and_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a-long-enough-password\n").unwrap();
    let both = format!(
        "[auth]\nbootstrap_admin_password = \"x-long-password\"\nbootstrap_admin_password_file = {:?}\n",
        pw
    );
    let e = load_str("t", &both, vec![]).unwrap_err();
    assert!(
        e.errors
            .iter()
            .any(|e| e.path == "auth.bootstrap_admin_password" && e.message.contains("not both")),
        "{e}"
    );

    let file_only = format!("[auth]\nbootstrap_admin_password_file = {:?}\n", pw);
    let c = load_str("t", &file_only, vec![]).unwrap();
    assert_eq!(
        c.auth.bootstrap_admin_password.unwrap().expose(),
        "a-long-enough-password"
    );
    // The secret never shows in Debug output.
    let c = load_str("t", &file_only, vec![]).unwrap();
    assert!(!format!("{c:?}").contains("a-long-enough-password"));
}

#[test]
fn unsafe_setups_are_refused_with_their_keys() {
    let e = load_str("t", "[server]\nhttp_listen = \"0.0.0.0:8080\"\n", vec![]).unwrap_err();
    assert!(e.errors.iter().any(|e| e.path == "server.http_listen"), "{e}");
    let ok = load_str(
        "t",
        "[server]\nhttp_listen = \"0.0.0.0:8080\"\nallow_insecure_http = true\n",
        vec![],
    );
    assert!(ok.is_ok());

    let e = load_str("t", "[storage]\nbackend = \"mongodb\"\n", vec![]).unwrap_err();
    assert!(e.errors.iter().any(|e| e.path == "database.uri"), "{e}");

    let e = load_str("t", "[tls]\ncert_file = \"/nonexistent/c.pem\"\n", vec![]).unwrap_err();
    assert!(
        e.errors.iter().any(|e| e.path == "tls.key_file"),
        "half-configured TLS: {e}"
    );

    let e = load_str("t", "[auth]\nbootstrap_admin_password = \"short\"\n", vec![]).unwrap_err();
    assert!(
        e.errors.iter().any(|e| e.path == "auth.bootstrap_admin_password"),
        "{e}"
    );
}
