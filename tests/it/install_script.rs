//! The install script as a user downloads it (`GET
//! /api/v1/downloads/install-opamp.sh`, no credentials), run in dry-run
//! mode: every action is printed, nothing is downloaded or started, and the
//! generated supervisor.yaml is checked against the OpAMP supervisor's
//! config schema (cmd/opampsupervisor: `server.endpoint` string,
//! `server.headers` map of header -> value, `capabilities` booleans,
//! `agent.executable` string, `storage.directory` string).

use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use super::support::*;

const TOKEN: &str = "lme_0123456789abcdef_secretpart";

/// The capabilities the supervisor documents (each a boolean).
const SUPERVISOR_CAPABILITIES: [&str; 11] = [
    "accepts_remote_config",
    "accepts_restart_command",
    "accepts_opamp_connection_settings",
    "accepts_packages",
    "reports_effective_config",
    "reports_own_metrics",
    "reports_own_logs",
    "reports_own_traces",
    "reports_health",
    "reports_remote_config",
    "reports_available_components",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_install_script_dry_runs_to_a_valid_supervisor_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.public_url = Some("https://linkmesh.example.com".into());
    let s = start(open_store(dir.path()).await, config).await;
    let r = reqwest::get(format!("{}/api/v1/downloads/install-opamp.sh", s.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/x-shellscript"));
    let body = r.text().await.unwrap();
    assert!(body.contains("DEFAULT_SERVER='wss://linkmesh.example.com/v1/opamp'"));
    let script = dir.path().join("install-opamp.sh");
    std::fs::write(&script, &body).unwrap();
    let prefix = dir.path().join("root");

    // With --prefix, a dry run writes the generated files there (and only
    // those), and prints every other action.
    let out = Command::new("sh")
        .arg(&script)
        .args(["--dry-run", "--token", TOKEN, "--arch", "amd64", "--prefix"])
        .arg(&prefix)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let releases = "https://github.com/open-telemetry/opentelemetry-collector-releases/releases/download";
    for action in [
        "==> Dry run: nothing is downloaded, installed or started".to_string(),
        format!("+ curl --proto =https,http -fsSL -o /tmp/install-opamp.dry-run/opentelemetry-collector-releases_otelcol-contrib_checksums.txt {releases}/v0.146.0/opentelemetry-collector-releases_otelcol-contrib_checksums.txt"),
        format!("-o /tmp/install-opamp.dry-run/otelcol-contrib_0.146.0_linux_amd64.tar.gz {releases}/v0.146.0/otelcol-contrib_0.146.0_linux_amd64.tar.gz"),
        "+ check sha256 of /tmp/install-opamp.dry-run/otelcol-contrib_0.146.0_linux_amd64.tar.gz".to_string(),
        format!("{releases}/cmd%2Fopampsupervisor%2Fv0.146.0/opampsupervisor_0.146.0_linux_amd64"),
        "+ check sha256 of /tmp/install-opamp.dry-run/opampsupervisor_0.146.0_linux_amd64".to_string(),
        format!("+ install -m 0755 /tmp/install-opamp.dry-run/otelcol-contrib {}/usr/local/bin/otelcol-contrib", prefix.display()),
        format!("+ write {}/etc/opampsupervisor/supervisor.yaml (mode 600)", prefix.display()),
        format!("+ write {}/etc/systemd/system/opampsupervisor.service (mode 644)", prefix.display()),
        "(server wss://linkmesh.example.com/v1/opamp)".to_string(),
    ] {
        assert!(stdout.contains(&action), "missing action {action:?} in:\n{stdout}");
    }
    assert!(!stdout.contains(TOKEN), "the token is never printed:\n{stdout}");
    assert!(
        !prefix.join("usr/local/bin/opampsupervisor").exists(),
        "nothing installed"
    );

    let yaml = std::fs::read_to_string(prefix.join("etc/opampsupervisor/supervisor.yaml")).unwrap();
    let doc = &YamlLoader::load_from_str(&yaml).unwrap()[0];
    let Yaml::Hash(top) = doc else {
        panic!("not a map:\n{yaml}")
    };
    for key in top.keys() {
        let k = key.as_str().unwrap();
        assert!(
            ["server", "capabilities", "agent", "storage", "telemetry"].contains(&k),
            "{k} is not a supervisor config key"
        );
    }
    assert_eq!(
        doc["server"]["endpoint"].as_str(),
        Some("wss://linkmesh.example.com/v1/opamp")
    );
    let Yaml::Hash(headers) = &doc["server"]["headers"] else {
        panic!("server.headers is a map:\n{yaml}")
    };
    assert_eq!(headers.len(), 1);
    assert_eq!(
        doc["server"]["headers"]["Authorization"].as_str(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let Yaml::Hash(caps) = &doc["capabilities"] else {
        panic!("capabilities is a map:\n{yaml}")
    };
    for (k, v) in caps {
        let k = k.as_str().unwrap();
        assert!(
            SUPERVISOR_CAPABILITIES.contains(&k) || k == "reports_heartbeat",
            "{k} is not a supervisor capability"
        );
        assert!(v.as_bool().is_some(), "{k} must be a boolean");
    }
    for needed in [
        "accepts_remote_config",
        "reports_remote_config",
        "accepts_opamp_connection_settings",
        "reports_available_components",
    ] {
        assert_eq!(doc["capabilities"][needed].as_bool(), Some(true), "{needed}");
    }
    assert_eq!(
        doc["agent"]["executable"].as_str(),
        Some("/usr/local/bin/otelcol-contrib")
    );
    assert_eq!(doc["storage"]["directory"].as_str(), Some("/var/lib/opampsupervisor"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(prefix.join("etc/opampsupervisor/supervisor.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the file holding the token is private");
    }

    // Without --prefix a dry run writes nothing and shows the file with the
    // token masked; it ends with the systemd actions.
    let out = Command::new("sh")
        .arg(&script)
        .args(["--dry-run", "--token", TOKEN, "--arch", "arm64"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("    |     Authorization: \"Bearer <enrollment token>\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ systemctl enable --now opampsupervisor.service"),
        "{stdout}"
    );
    assert!(!stdout.contains(TOKEN));

    // A token is required, and a bad one is named.
    let out = Command::new("sh").arg(&script).arg("--dry-run").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token is required"));
    s.stop().await;
}
