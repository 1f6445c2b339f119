//! Own telemetry: collectors' internal metrics over OTLP/HTTP
//! (`POST /v1/metrics`), sent by the real OpenTelemetry Python SDK and its
//! OTLP/HTTP exporter (PyPI, installed by `scripts/test.sh` from
//! tests/owntelemetry/requirements.txt) and by hand-made bodies for the
//! refusals. Without the SDK (and without `LINKMESH_INTEROP=1`, which the
//! test script sets) the SDK test prints SKIPPED instead of failing.

use std::process::Command;
use std::time::Duration;

use linkmesh::owntelemetry::TelemetryRollup;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use prost::Message;
use serde_json::{json, Value};

use super::support::*;

fn sdk_installed() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.sdk.metrics, opentelemetry.exporter.otlp.proto.http",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Two instances on one store, rollups every second; returns the admin
/// client of `a`.
async fn setup(dir: &std::path::Path, max_body: usize) -> (TestServer, TestServer, reqwest::Client) {
    let mut c = test_config(dir);
    c.server.max_request_bytes = max_body;
    c.fleet.telemetry_rollup_interval = Duration::from_secs(1);
    let (a, b) = pair_with(dir, c).await;
    let admin = admin(&a.base).await;
    (a, b, admin)
}

/// Run the Python SDK sender; returns the exporter's result per round.
/// (An async child: the servers run on this test's runtime thread.)
async fn send_with_sdk(base: &str, credential: &str, extra: &[&str]) -> Vec<String> {
    let script = repo_root().join("tests/owntelemetry/send_own_metrics.py");
    let endpoint = format!("{base}/v1/metrics");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--endpoint", &endpoint, "--credential", credential])
        .args(extra)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["result"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

async fn telemetry(base: &str, admin: &reqwest::Client, id: &str) -> Value {
    admin
        .get(format!("{base}/api/v1/collectors/{id}/telemetry"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The figures of component `(kind, id, signal)` in a telemetry document.
fn component<'a>(doc: &'a Value, kind: &str, id: &str, signal: &str) -> Option<&'a Value> {
    doc["components"]
        .as_array()?
        .iter()
        .find(|c| c["kind"] == kind && c["id"] == id && c["signal"] == signal)
}

fn total(doc: &Value, kind: &str, id: &str, signal: &str, measure: &str) -> Option<f64> {
    component(doc, kind, id, signal)?["counters"][measure]["total"].as_f64()
}

#[tokio::test]
async fn sdk_counters_become_per_component_rates_of_the_sending_collector_only() {
    if !sdk_installed() {
        assert!(
            std::env::var("LINKMESH_INTEROP").map_or(true, |v| v != "1"),
            "LINKMESH_INTEROP=1 but the OpenTelemetry Python SDK is not installed (pip install -r tests/owntelemetry/requirements.txt)"
        );
        println!(
            "SKIPPED: OpenTelemetry Python SDK not installed (pip install -r tests/owntelemetry/requirements.txt)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b, admin) = setup(dir.path(), 4 * 1024 * 1024).await;
    let (c1, cred1) = enroll_one(&a.base, &admin).await;
    let (c2, cred2) = enroll_one(&a.base, &admin).await;

    // Two reports, gzip-compressed, with c1's own credential.
    assert_eq!(
        send_with_sdk(&a.base, &cred1, &["--gzip"]).await,
        ["SUCCESS", "SUCCESS"]
    );
    let doc = telemetry(&a.base, &admin, &c1).await;
    assert_eq!(doc["instance"], "a", "{doc}");
    assert_eq!(doc["stale"], false);
    assert_eq!(
        total(&doc, "receiver", "otlp", "spans", "accepted"),
        Some(200.0),
        "{doc}"
    );
    assert_eq!(total(&doc, "receiver", "otlp", "spans", "refused"), Some(2.0));
    assert_eq!(
        total(&doc, "exporter", "otlphttp/backend", "spans", "sent"),
        Some(180.0)
    );
    assert_eq!(
        total(&doc, "exporter", "otlphttp/backend", "spans", "send_failed"),
        Some(20.0)
    );
    assert_eq!(total(&doc, "processor", "batch", "spans", "incoming"), Some(200.0));
    let exporter = component(&doc, "exporter", "otlphttp/backend", "spans").unwrap();
    assert_eq!(exporter["queue_size"], 7.0);
    assert_eq!(exporter["queue_capacity"], 1000.0);
    let rate = exporter["counters"]["sent"]["rate"].as_f64().unwrap();
    assert!(rate > 0.0, "sent rate {rate}");

    // The other instance answers from the stored rollup.
    let on_b = poll_json(
        "c1's figures on instance b",
        async || telemetry(&b.base, &admin, &c1).await,
        |d| total(d, "exporter", "otlphttp/backend", "spans", "sent") == Some(180.0),
    )
    .await;
    assert_eq!(on_b["instance"], "a");

    // c2 claims to be c1 in its resource: the figures are still c2's.
    assert_eq!(
        send_with_sdk(&b.base, &cred2, &["--claim-instance", &c1, "--rounds", "1"]).await,
        ["SUCCESS"]
    );
    let doc2 = telemetry(&b.base, &admin, &c2).await;
    assert_eq!(
        total(&doc2, "receiver", "otlp", "spans", "accepted"),
        Some(100.0),
        "{doc2}"
    );
    let doc1 = telemetry(&a.base, &admin, &c1).await;
    assert_eq!(
        total(&doc1, "receiver", "otlp", "spans", "accepted"),
        Some(200.0),
        "{doc1}"
    );

    // No credential, or a wrong one: the exporter is refused, nothing changes.
    assert_eq!(send_with_sdk(&a.base, "", &["--rounds", "1"]).await, ["FAILURE"]);
    let wrong = format!("{cred1}x");
    assert_eq!(send_with_sdk(&a.base, &wrong, &["--rounds", "1"]).await, ["FAILURE"]);
    let doc1 = telemetry(&a.base, &admin, &c1).await;
    assert_eq!(
        total(&doc1, "receiver", "otlp", "spans", "accepted"),
        Some(200.0),
        "{doc1}"
    );

    // Fleet-wide sums per component, from either instance.
    let fleet = poll_json(
        "fleet components on b",
        async || {
            admin
                .get(format!("{}/api/v1/telemetry/components", b.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        },
        |d| d["collectors"] == 2,
    )
    .await;
    assert_eq!(
        total(&fleet, "exporter", "otlphttp/backend", "spans", "sent"),
        Some(270.0),
        "{fleet}"
    );
    assert_eq!(
        component(&fleet, "exporter", "otlphttp/backend", "spans").unwrap()["collectors"],
        2
    );

    // /metrics counts points, with no series per collector.
    let metrics = reqwest::get(format!("{}/metrics", a.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("linkmesh_own_telemetry_points_total{outcome=\"accepted\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(&c1) && !metrics.contains("otlphttp/backend"));
    a.stop().await;
    b.stop().await;
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

/// A protobuf request with one cumulative `otelcol_exporter_sent_spans`
/// point of `value` (no `exporter` attribute when `component` is empty).
fn sent_spans(component: &str, value: i64, time_s: u64) -> ExportMetricsServiceRequest {
    let attributes = if component.is_empty() {
        vec![]
    } else {
        vec![kv("exporter", component)]
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "otelcol_exporter_sent_spans".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: vec![NumberDataPoint {
                            attributes,
                            start_time_unix_nano: 1,
                            time_unix_nano: time_s * 1_000_000_000,
                            value: Some(number_data_point::Value::AsInt(value)),
                            ..Default::default()
                        }],
                        aggregation_temporality: 2,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(
    base: &str,
    credential: Option<&str>,
    content_type: &str,
    gzip: bool,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{base}/v1/metrics"))
        .header("content-type", content_type)
        .body(body);
    if let Some(c) = credential {
        r = r.bearer_auth(c);
    }
    if gzip {
        r = r.header("content-encoding", "gzip");
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn bad_bodies_oversize_and_missing_credentials_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, admin) = setup(dir.path(), 64 * 1024).await;
    let (c1, cred) = enroll_one(&a.base, &admin).await;
    let pb = "application/x-protobuf";
    let good = sent_spans("otlphttp/x", 5, 10).encode_to_vec();

    // No credential, an unknown one, an API token instead of a collector's.
    assert_eq!(post(&a.base, None, pb, false, good.clone()).await.status(), 401);
    let r = post(
        &a.base,
        Some("lmc_nope_nope"),
        "application/json",
        false,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("credential"), "{v}");

    // A truncated protobuf body: 400 naming what it is not.
    let r = post(&a.base, Some(&cred), pb, false, good[..good.len() - 3].to_vec()).await;
    assert_eq!(r.status(), 400);
    let body = r.bytes().await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("not an OTLP ExportMetricsServiceRequest"));
    // Broken JSON: 400 with the position, as a JSON Status.
    let r = post(
        &a.base,
        Some(&cred),
        "application/json",
        false,
        b"{\"resourceMetrics\": [".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 3);
    assert!(v["message"].as_str().unwrap().contains("line 1"), "{v}");
    // Neither protobuf nor JSON.
    assert_eq!(
        post(&a.base, Some(&cred), "text/plain", false, good.clone())
            .await
            .status(),
        415
    );

    // Oversize, as sent and after decompression (a gzip bomb).
    let big = vec![b' '; 100 * 1024];
    assert_eq!(post(&a.base, Some(&cred), pb, false, big.clone()).await.status(), 413);
    assert_eq!(post(&a.base, Some(&cred), pb, true, gzip(&big)).await.status(), 413);
    assert_eq!(
        post(&a.base, Some(&cred), pb, true, b"not gzip".to_vec())
            .await
            .status(),
        400
    );

    // Nothing was recorded by any of these.
    let doc = telemetry(&a.base, &admin, &c1).await;
    assert_eq!(doc["components"], json!([]), "{doc}");
    assert_eq!(doc["updated_at"], Value::Null);

    // gzip works; a point without its component attribute is refused in a
    // partial success, the others kept.
    let mut req = sent_spans("otlphttp/x", 5, 10);
    let stray = sent_spans("", 1, 10).resource_metrics.remove(0);
    req.resource_metrics.push(stray);
    let r = post(&a.base, Some(&cred), pb, true, gzip(&req.encode_to_vec())).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], pb);
    let resp = ExportMetricsServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    let partial = resp.partial_success.unwrap();
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("`exporter` attribute"),
        "{}",
        partial.error_message
    );
    // Full success: no partial_success at all; JSON is answered in JSON.
    let r = post(
        &a.base,
        Some(&cred),
        pb,
        false,
        sent_spans("otlphttp/x", 8, 20).encode_to_vec(),
    )
    .await;
    let resp = ExportMetricsServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(resp.partial_success, None);
    let json_body = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "otelcol_exporter_sent_spans",
        "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [
            {"attributes": [{"key": "exporter", "value": {"stringValue": "otlphttp/x"}}],
             "startTimeUnixNano": "1", "timeUnixNano": "30000000000", "asInt": "11"}]}}]}]}]});
    let r = post(
        &a.base,
        Some(&cred),
        "application/json",
        false,
        json_body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({}));

    // 5 at 10 s, 8 at 20 s, 11 at 30 s: 0.3 spans/s.
    let doc = telemetry(&a.base, &admin, &c1).await;
    let sent = &component(&doc, "exporter", "otlphttp/x", "spans").unwrap()["counters"]["sent"];
    assert_eq!(sent["total"], 11.0, "{doc}");
    assert!((sent["rate"].as_f64().unwrap() - 0.3).abs() < 1e-9, "{doc}");

    // The collector detail carries the same figures, on either instance
    // (b from the rollup), and the OpenAPI document describes the field.
    let detail_of = |base: String| {
        let admin = admin.clone();
        let c1 = c1.clone();
        async move {
            let d: Value = admin
                .get(format!("{base}/api/v1/collectors/{c1}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            d["telemetry"].clone()
        }
    };
    let on_a = detail_of(a.base.clone()).await;
    assert_eq!(on_a["components"], doc["components"], "{on_a}");
    assert_eq!(on_a["instance"], "a");
    let on_b = poll_json(
        "c1's detail on b with its figures",
        async || detail_of(b.base.clone()).await,
        |t| component(t, "exporter", "otlphttp/x", "spans").is_some_and(|c| c["counters"]["sent"]["total"] == 11.0),
    )
    .await;
    assert_eq!(on_b["instance"], "a", "{on_b}");
    let doc_api: Value = reqwest::get(format!("{}/api/v1/openapi.json", a.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc_api["components"]["schemas"];
    let detail = schemas["CollectorDetail"].to_string();
    assert!(
        detail.contains("\"telemetry\"") && detail.contains("#/components/schemas/CollectorTelemetry"),
        "telemetry missing from CollectorDetail in the OpenAPI document: {detail}"
    );
    assert!(schemas["CollectorTelemetry"]["properties"]["components"].is_object());

    // Deregistered: its figures go with it, on every instance and in the store.
    poll_json(
        "the rollup of c1 on b",
        async || telemetry(&b.base, &admin, &c1).await,
        |d| d["updated_at"] != Value::Null,
    )
    .await;
    let r = admin
        .delete(format!("{}/api/v1/collectors/{c1}", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for s in [&a, &b] {
        let r = admin
            .get(format!("{}/api/v1/collectors/{c1}/telemetry", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    poll_json(
        "instance a to forget c1",
        async || {
            let m = reqwest::get(format!("{}/metrics", a.base))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            json!(m.lines().any(|l| l == "linkmesh_own_telemetry_collectors 0"))
        },
        |v| v == &json!(true),
    )
    .await;
    assert!(a.store.get::<TelemetryRollup>(&c1).await.unwrap().is_none());
    a.stop().await;
    b.stop().await;
}
