//! Observability as an operator sees it: spans exported over OTLP to a
//! receiver (a real OTLP/gRPC trace service on loopback), flushed on SIGTERM.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

use super::support::*;

#[derive(Clone, Default)]
struct Receiver {
    /// (service.name, span name, http.route attribute)
    spans: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(AnyValue::StringValue(s)) => s.clone(),
            _ => String::new(),
        };
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let route = span
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "route")
                        .map(|kv| text(&kv.value))
                        .unwrap_or_default();
                    self.spans.lock().unwrap().push((service.clone(), span.name, route));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_are_flushed_on_sigterm() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("linkmesh.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:{port}\"\ngrpc_listen = \"127.0.0.1:0\"\n[storage.embedded]\npath = {:?}\n[telemetry]\nlog_level = \"info\"\nlog_format = \"json\"\notlp_endpoint = \"http://{otlp}\"\nservice_name = \"linkmesh-under-test\"\n",
            dir.path().join("s.redb")
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    for _ in 0..3 {
        reqwest::get(format!("{base}/healthz")).await.unwrap();
    }
    // SIGTERM: a graceful stop flushes the pending spans.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        logs.lines().any(|l| l.starts_with('{') && l.contains("\"Stopped.\"")),
        "JSON logs: {logs}"
    );
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans = receiver.spans.lock().unwrap().clone();
        if spans
            .iter()
            .any(|(svc, name, route)| svc == "linkmesh-under-test" && name == "http" && route == "/healthz")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "no /healthz span arrived: {spans:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Secrets never reach the logs, at debug level for every crate: the real
/// binary handles a bootstrap password (from a file), logins right and
/// wrong, a new user's password and a password change, API, enrollment and
/// collector credentials (issued, rotated, presented, forged), and none of
/// them appears in what it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_never_appear_in_debug_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_password = "planted-admin-password-3f9c";
    std::fs::write(dir.path().join("admin-password"), admin_password).unwrap();
    let config = dir.path().join("linkmesh.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_listen = \"127.0.0.1:{port}\"\ngrpc_listen = \"127.0.0.1:0\"\n[storage.embedded]\npath = {:?}\n[auth]\nbootstrap_admin_password_file = {:?}\n[telemetry]\nlog_level = \"debug\"\nlog_format = \"json\"\n",
            dir.path().join("s.redb"),
            dir.path().join("admin-password"),
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = format!("http://127.0.0.1:{port}");
    wait_ready(&b).await;

    let mut secrets: Vec<String> = vec![admin_password.into()];
    let wrong = "planted-wrong-password-77aa";
    secrets.push(wrong.into());
    let r = reqwest::Client::new()
        .post(format!("{b}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": wrong}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let a = login(&b, "admin", admin_password).await;
    let user_password = "planted-user-password-51be";
    secrets.push(user_password.into());
    let r = a
        .post(format!("{b}/api/v1/users"))
        .json(&serde_json::json!({"username": "pat", "password": user_password, "role": "editor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pat = login(&b, "pat", user_password).await;
    let changed = "planted-changed-password-0c4d";
    secrets.push(changed.into());
    let r = pat
        .patch(format!("{b}/api/v1/users/pat"))
        .json(&serde_json::json!({"password": changed, "version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let api_token = api_token(&b, &a).await;
    let me = reqwest::Client::new()
        .get(format!("{b}/api/v1/auth/me"))
        .bearer_auth(&api_token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    secrets.push(api_token);
    let (_, enrollment) = enrollment_token(&b, &a, serde_json::json!({"name": "planted"})).await;
    let enrolled: serde_json::Value = enroll(&b, &enrollment, None).await.json().await.unwrap();
    secrets.push(enrollment);
    let id = enrolled["collector_id"].as_str().unwrap();
    let first = enrolled["credential"].as_str().unwrap().to_string();
    let rotated: serde_json::Value = a
        .post(format!("{b}/api/v1/collectors/{id}/rotate-credential"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second = rotated["credential"].as_str().unwrap().to_string();
    for credential in [&first, &second] {
        // The old one is refused, the new one accepted: both are handled.
        reqwest::Client::new()
            .post(format!("{b}/v1/opamp"))
            .bearer_auth(credential)
            .header("content-type", "application/x-protobuf")
            .body(Vec::new())
            .send()
            .await
            .unwrap();
    }
    secrets.push(first);
    secrets.push(second);
    // Forged tokens of the right shape are refused without being echoed.
    let forged = "lma_0192f7a45b6c7d8e9f00112233445566_plantedforgedrandompart";
    let r = reqwest::Client::new()
        .get(format!("{b}/api/v1/auth/me"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    secrets.push(forged.into());

    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Debug logging was on and saw these requests (else the test proves nothing).
    assert!(logs.contains("\"level\":\"DEBUG\""), "no debug lines: {logs}");
    assert!(logs.contains("/api/v1/auth/login"), "requests were not logged: {logs}");
    for secret in &secrets {
        // The whole secret, and its random part on its own: `lm?_<id>_<random>`,
        // where the random part is base64url and may itself contain `_`.
        let random = match secret.splitn(3, '_').nth(2) {
            Some(r) if secret.starts_with("lm") => r,
            _ => secret.as_str(),
        };
        assert!(random.len() >= 16, "needle too short to mean anything: {random}");
        for needle in [secret.as_str(), random] {
            assert!(!logs.contains(needle), "a secret ({needle}) appears in the logs");
        }
    }
}
