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
