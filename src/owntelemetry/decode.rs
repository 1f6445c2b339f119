//! OTLP/HTTP metrics bodies → the data points LinkMesh tracks.
//!
//! The `Content-Encoding` is undone before this, by `crate::api::body` (the
//! one bounded gunzip, shared with OpAMP over HTTP).
//!
//! Protobuf (`application/x-protobuf`) is decoded with the upstream
//! generated types; JSON (`application/json`) with a small lenient model of
//! the OTLP JSON encoding (64-bit integers as strings or numbers, enums as
//! numbers or names, camelCase or proto field names), because the upstream
//! crate's serde support only takes some of the forms collectors send.
//!
//! Only the collector's own counters and queue gauges are kept (see
//! `MetricName`); every other metric is ignored, not refused. Resource
//! attributes are never read: figures belong to the authenticated collector.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How many refusal reasons a reply names (the count covers all of them).
const MAX_REASONS: usize = 3;

/// The largest value a point may carry: a collector's counters are 64-bit
/// integers, and a larger figure (a double up to 1.8e308) would make totals
/// summed over counter resets overflow to infinity, which JSON cannot
/// carry: the rollup record holding it could not be read back.
pub const MAX_VALUE: f64 = 18_446_744_073_709_551_615.0;

/// Why a body was not accepted at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
}

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From the request's `Content-Type` (parameters such as `charset`
    /// ignored).
    pub fn from_content_type(value: Option<&str>) -> Result<Encoding, DecodeError> {
        let essence = value.unwrap_or("").split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(DecodeError::UnsupportedMediaType(format!(
                "Content-Type {essence:?} is not an OTLP/HTTP encoding; send application/x-protobuf or application/json"
            ))),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Which part of a collector a figure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    Receiver,
    Processor,
    Exporter,
}

impl ComponentKind {
    /// The data point attribute naming the component id.
    fn attribute(self) -> &'static str {
        match self {
            ComponentKind::Receiver => "receiver",
            ComponentKind::Processor => "processor",
            ComponentKind::Exporter => "exporter",
        }
    }
}

/// What a component counts: the signal's unit of data.
// Named apart in the OpenAPI document: the config store's `Signal`
// (traces/metrics/logs) is another type, and one name would replace the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = TelemetrySignal)]
pub enum Signal {
    Spans,
    MetricPoints,
    LogRecords,
    Profiles,
    /// A queue gauge without a `data_type` attribute (older collectors).
    All,
}

impl Signal {
    fn from_suffix(s: &str) -> Option<Signal> {
        match s {
            "spans" => Some(Signal::Spans),
            "metric_points" => Some(Signal::MetricPoints),
            "log_records" => Some(Signal::LogRecords),
            "profiles" => Some(Signal::Profiles),
            _ => None,
        }
    }

    /// From `otel.signal` / `data_type` attribute values.
    fn from_attribute(s: &str) -> Option<Signal> {
        match s {
            "traces" | "spans" => Some(Signal::Spans),
            "metrics" => Some(Signal::MetricPoints),
            "logs" => Some(Signal::LogRecords),
            "profiles" => Some(Signal::Profiles),
            _ => None,
        }
    }
}

/// The counters and gauges of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Accepted,
    Refused,
    Failed,
    Dropped,
    Incoming,
    Outgoing,
    Sent,
    SendFailed,
    EnqueueFailed,
    QueueSize,
    QueueCapacity,
}

impl Measure {
    fn counter(s: &str) -> Option<Measure> {
        Some(match s {
            "accepted" => Measure::Accepted,
            "refused" => Measure::Refused,
            "failed" => Measure::Failed,
            "dropped" => Measure::Dropped,
            "incoming" => Measure::Incoming,
            "outgoing" => Measure::Outgoing,
            "sent" => Measure::Sent,
            "send_failed" => Measure::SendFailed,
            "enqueue_failed" => Measure::EnqueueFailed,
            _ => return None,
        })
    }

    pub fn is_gauge(self) -> bool {
        matches!(self, Measure::QueueSize | Measure::QueueCapacity)
    }
}

/// Where a signal comes from in a metric name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignalSource {
    Name(Signal),
    /// `…_items`: the `otel.signal` attribute says which.
    Attribute,
    /// Queue gauges: the `data_type` attribute, `All` without one.
    DataType,
}

/// A collector internal metric LinkMesh tracks, e.g.
/// `otelcol_exporter_send_failed_spans` or `otelcol_processor_incoming_items`.
/// Dots and a Prometheus `_total` suffix are tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MetricName {
    kind: ComponentKind,
    measure: Measure,
    signal: SignalSource,
}

impl MetricName {
    fn parse(name: &str) -> Option<MetricName> {
        let name = name.replace('.', "_");
        let name = name.strip_suffix("_total").unwrap_or(&name);
        let rest = name.strip_prefix("otelcol_")?;
        let (kind, rest) = if let Some(r) = rest.strip_prefix("receiver_") {
            (ComponentKind::Receiver, r)
        } else if let Some(r) = rest.strip_prefix("processor_") {
            (ComponentKind::Processor, r)
        } else if let Some(r) = rest.strip_prefix("exporter_") {
            (ComponentKind::Exporter, r)
        } else {
            return None;
        };
        if kind == ComponentKind::Exporter {
            let gauge = match rest {
                "queue_size" => Some(Measure::QueueSize),
                "queue_capacity" => Some(Measure::QueueCapacity),
                _ => None,
            };
            if let Some(measure) = gauge {
                return Some(MetricName {
                    kind,
                    measure,
                    signal: SignalSource::DataType,
                });
            }
        }
        if let Some(m) = rest.strip_suffix("_items") {
            return Some(MetricName {
                kind,
                measure: Measure::counter(m)?,
                signal: SignalSource::Attribute,
            });
        }
        for suffix in ["_spans", "_metric_points", "_log_records", "_profiles"] {
            if let Some(m) = rest.strip_suffix(suffix) {
                let signal = Signal::from_suffix(&suffix[1..])?;
                return Some(MetricName {
                    kind,
                    measure: Measure::counter(m)?,
                    signal: SignalSource::Name(signal),
                });
            }
        }
        None
    }
}

/// One component of one collector, for one signal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub struct ComponentKey {
    pub kind: ComponentKind,
    /// The component id in the collector config, e.g. `otlphttp/backend`.
    pub id: String,
    pub signal: Signal,
}

/// How a point's value relates to earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// Running total since `start_ns`.
    Cumulative,
    /// Change since the previous point.
    Delta,
    /// A current level (queue size and capacity).
    Gauge,
}

/// A point LinkMesh keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub component: ComponentKey,
    pub measure: Measure,
    pub temporality: Temporality,
    pub value: f64,
    pub start_ns: u64,
    pub time_ns: u64,
}

/// A decoded request: the points kept and the ones refused, with why.
#[derive(Debug, Default)]
pub struct Decoded {
    pub points: Vec<Point>,
    pub rejected: u64,
    pub reasons: Vec<String>,
}

impl Decoded {
    pub fn reject(&mut self, reason: String) {
        self.rejected += 1;
        if self.reasons.len() < MAX_REASONS && !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }
}

/// What the data of a metric looks like, whatever the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Sum { monotonic: bool, temporality: i32 },
    Gauge,
    Other,
}

/// One data point, whatever the encoding.
struct RawPoint<'a> {
    attributes: Vec<(&'a str, &'a str)>,
    value: Option<f64>,
    start_ns: u64,
    time_ns: u64,
}

const TEMPORALITY_DELTA: i32 = 1;
const TEMPORALITY_CUMULATIVE: i32 = 2;

fn classify(out: &mut Decoded, name: &str, shape: Shape, points: Vec<RawPoint<'_>>) {
    let Some(m) = MetricName::parse(name) else { return };
    for p in points {
        let attr = |key: &str| p.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let Some(id) = attr(m.kind.attribute()).filter(|v| !v.is_empty()) else {
            out.reject(format!(
                "{name}: a data point has no `{}` attribute",
                m.kind.attribute()
            ));
            continue;
        };
        let signal = match m.signal {
            SignalSource::Name(s) => Some(s),
            SignalSource::Attribute => attr("otel.signal").and_then(Signal::from_attribute),
            SignalSource::DataType => match attr("data_type").or(attr("otel.signal")) {
                Some(v) => Signal::from_attribute(v),
                None => Some(Signal::All),
            },
        };
        let Some(signal) = signal else {
            out.reject(format!(
                "{name}: a data point has no known `otel.signal` / `data_type` attribute"
            ));
            continue;
        };
        let temporality = match (m.measure.is_gauge(), shape) {
            (true, Shape::Gauge | Shape::Sum { monotonic: false, .. }) => Temporality::Gauge,
            (
                false,
                Shape::Sum {
                    monotonic: true,
                    temporality: TEMPORALITY_CUMULATIVE,
                },
            ) => Temporality::Cumulative,
            (
                false,
                Shape::Sum {
                    monotonic: true,
                    temporality: TEMPORALITY_DELTA,
                },
            ) => Temporality::Delta,
            (true, _) => {
                out.reject(format!("{name}: expected a gauge"));
                continue;
            }
            (false, _) => {
                out.reject(format!(
                    "{name}: expected a monotonic sum with delta or cumulative temporality"
                ));
                continue;
            }
        };
        let value = match p.value {
            Some(v) if v.is_finite() && (0.0..=MAX_VALUE).contains(&v) => v,
            Some(v) if v > MAX_VALUE => {
                out.reject(format!("{name}: a value is larger than 2^64"));
                continue;
            }
            Some(_) => {
                out.reject(format!("{name}: a value is negative or not a number"));
                continue;
            }
            None => {
                out.reject(format!("{name}: a data point has no value"));
                continue;
            }
        };
        if p.time_ns == 0 {
            out.reject(format!("{name}: a data point has no timeUnixNano"));
            continue;
        }
        out.points.push(Point {
            component: ComponentKey {
                kind: m.kind,
                id: id.to_string(),
                signal,
            },
            measure: m.measure,
            temporality,
            value,
            start_ns: p.start_ns,
            time_ns: p.time_ns,
        });
    }
}

/// Decode a (decompressed) request body.
pub fn decode(encoding: Encoding, body: &[u8]) -> Result<Decoded, DecodeError> {
    match encoding {
        Encoding::Protobuf => decode_protobuf(body),
        Encoding::Json => decode_json(body),
    }
}

fn decode_protobuf(body: &[u8]) -> Result<Decoded, DecodeError> {
    let req = ExportMetricsServiceRequest::decode(body)
        .map_err(|e| DecodeError::BadRequest(format!("not an OTLP ExportMetricsServiceRequest: {e}")))?;
    let mut out = Decoded::default();
    for m in req
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
    {
        let (shape, points) = match &m.data {
            Some(metric::Data::Sum(s)) => (
                Shape::Sum {
                    monotonic: s.is_monotonic,
                    temporality: s.aggregation_temporality,
                },
                &s.data_points,
            ),
            Some(metric::Data::Gauge(g)) => (Shape::Gauge, &g.data_points),
            _ => {
                classify(&mut out, &m.name, Shape::Other, Vec::new());
                continue;
            }
        };
        let raw = points
            .iter()
            .map(|p| RawPoint {
                attributes: p
                    .attributes
                    .iter()
                    .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some((kv.key.as_str(), s.as_str())),
                        _ => None,
                    })
                    .collect(),
                value: p.value.map(|v| match v {
                    number_data_point::Value::AsDouble(d) => d,
                    number_data_point::Value::AsInt(i) => i as f64,
                }),
                start_ns: p.start_time_unix_nano,
                time_ns: p.time_unix_nano,
            })
            .collect();
        classify(&mut out, &m.name, shape, raw);
    }
    Ok(out)
}

/// The OTLP JSON encoding, only the parts read here. Unknown fields are
/// ignored (serde's default), as OTLP requires of receivers.
mod json {
    use serde::Deserialize;

    /// A 64-bit integer as a JSON string (the OTLP rule) or a number.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Int {
        Num(serde_json::Number),
        Str(String),
    }

    impl Int {
        pub fn as_u64(&self) -> Option<u64> {
            match self {
                Int::Num(n) => n.as_u64(),
                Int::Str(s) => s.trim().parse().ok(),
            }
        }
        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Int::Num(n) => n.as_f64(),
                Int::Str(s) => s.trim().parse().ok(),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Request {
        #[serde(default, alias = "resource_metrics")]
        pub resource_metrics: Vec<ResourceMetrics>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ResourceMetrics {
        #[serde(default, alias = "scope_metrics")]
        pub scope_metrics: Vec<ScopeMetrics>,
    }

    #[derive(Deserialize)]
    pub struct ScopeMetrics {
        #[serde(default)]
        pub metrics: Vec<Metric>,
    }

    #[derive(Deserialize)]
    pub struct Metric {
        #[serde(default)]
        pub name: String,
        pub sum: Option<Sum>,
        pub gauge: Option<Gauge>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Sum {
        #[serde(default, alias = "data_points")]
        pub data_points: Vec<Point>,
        #[serde(default, alias = "aggregation_temporality")]
        pub aggregation_temporality: Option<Temporality>,
        #[serde(default, alias = "is_monotonic")]
        pub is_monotonic: bool,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Gauge {
        #[serde(default, alias = "data_points")]
        pub data_points: Vec<Point>,
    }

    /// An enum value as its number or its name.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Temporality {
        Num(i32),
        Name(String),
    }

    impl Temporality {
        pub fn number(&self) -> i32 {
            match self {
                Temporality::Num(n) => *n,
                Temporality::Name(s) => match s.as_str() {
                    "AGGREGATION_TEMPORALITY_DELTA" => 1,
                    "AGGREGATION_TEMPORALITY_CUMULATIVE" => 2,
                    _ => 0,
                },
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Point {
        #[serde(default)]
        pub attributes: Vec<KeyValue>,
        #[serde(alias = "start_time_unix_nano")]
        pub start_time_unix_nano: Option<Int>,
        #[serde(alias = "time_unix_nano")]
        pub time_unix_nano: Option<Int>,
        #[serde(alias = "as_int")]
        pub as_int: Option<Int>,
        #[serde(alias = "as_double")]
        pub as_double: Option<f64>,
    }

    #[derive(Deserialize)]
    pub struct KeyValue {
        #[serde(default)]
        pub key: String,
        pub value: Option<AnyValue>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct AnyValue {
        #[serde(alias = "string_value")]
        pub string_value: Option<String>,
    }
}

fn decode_json(body: &[u8]) -> Result<Decoded, DecodeError> {
    let req: json::Request = serde_json::from_slice(body)
        .map_err(|e| DecodeError::BadRequest(format!("not an OTLP JSON ExportMetricsServiceRequest: {e}")))?;
    let mut out = Decoded::default();
    for m in req
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
    {
        let (shape, points) = match (&m.sum, &m.gauge) {
            (Some(s), _) => (
                Shape::Sum {
                    monotonic: s.is_monotonic,
                    temporality: s.aggregation_temporality.as_ref().map_or(0, |t| t.number()),
                },
                s.data_points.as_slice(),
            ),
            (None, Some(g)) => (Shape::Gauge, g.data_points.as_slice()),
            (None, None) => (Shape::Other, &[][..]),
        };
        let raw = points
            .iter()
            .map(|p| RawPoint {
                attributes: p
                    .attributes
                    .iter()
                    .filter_map(|kv| Some((kv.key.as_str(), kv.value.as_ref()?.string_value.as_deref()?)))
                    .collect(),
                value: p.as_double.or_else(|| p.as_int.as_ref().and_then(json::Int::as_f64)),
                start_ns: p.start_time_unix_nano.as_ref().and_then(json::Int::as_u64).unwrap_or(0),
                time_ns: p.time_unix_nano.as_ref().and_then(json::Int::as_u64).unwrap_or(0),
            })
            .collect();
        classify(&mut out, &m.name, shape, raw);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_of_the_collector_are_recognised() {
        let p = MetricName::parse("otelcol_exporter_send_failed_spans").unwrap();
        assert_eq!((p.kind, p.measure), (ComponentKind::Exporter, Measure::SendFailed));
        assert_eq!(p.signal, SignalSource::Name(Signal::Spans));
        let p = MetricName::parse("otelcol.receiver.accepted.log_records").unwrap();
        assert_eq!(p.signal, SignalSource::Name(Signal::LogRecords));
        let p = MetricName::parse("otelcol_processor_incoming_items_total").unwrap();
        assert_eq!((p.measure, p.signal), (Measure::Incoming, SignalSource::Attribute));
        let p = MetricName::parse("otelcol_exporter_queue_capacity").unwrap();
        assert_eq!(p.measure, Measure::QueueCapacity);
        assert!(MetricName::parse("otelcol_process_uptime").is_none());
        assert!(MetricName::parse("otelcol_receiver_weird_spans").is_none());
        assert!(MetricName::parse("http.server.duration").is_none());
    }

    #[test]
    fn json_takes_integers_as_strings_or_numbers_and_refuses_points_without_component() {
        let body = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.instance.id","value":{"stringValue":"someone-else"}}]},
          "scopeMetrics":[{"metrics":[
            {"name":"otelcol_receiver_accepted_spans","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[
              {"attributes":[{"key":"receiver","value":{"stringValue":"otlp"}}],"startTimeUnixNano":"1","timeUnixNano":"2000000000","asInt":"42"},
              {"attributes":[],"timeUnixNano":2000000000,"asInt":1}]}},
            {"name":"otelcol_exporter_queue_size","gauge":{"dataPoints":[
              {"attributes":[{"key":"exporter","value":{"stringValue":"otlphttp/x"}},{"key":"data_type","value":{"stringValue":"logs"}}],"timeUnixNano":"5","asDouble":3.0}]}},
            {"name":"unrelated","histogram":{}}
          ]}]}]}"#;
        let d = decode(Encoding::Json, body).unwrap();
        assert_eq!(d.points.len(), 2);
        assert_eq!(d.points[0].value, 42.0);
        assert_eq!(d.points[0].component.id, "otlp");
        assert_eq!(d.points[0].temporality, Temporality::Cumulative);
        assert_eq!(d.points[1].component.signal, Signal::LogRecords);
        assert_eq!(d.points[1].temporality, Temporality::Gauge);
        assert_eq!(d.rejected, 1);
        assert!(d.reasons[0].contains("`receiver` attribute"), "{:?}", d.reasons);
    }

    #[test]
    fn truncated_protobuf_and_bad_json_are_bad_requests() {
        let e = decode(Encoding::Protobuf, &[0x0a, 0x10, 0x01]).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadRequest(ref m) if m.contains("ExportMetricsServiceRequest")),
            "{e}"
        );
        assert!(matches!(
            decode(Encoding::Json, b"{\"resourceMetrics\": ["),
            Err(DecodeError::BadRequest(_))
        ));
        assert_eq!(decode(Encoding::Protobuf, b"").unwrap().points.len(), 0);
    }

    #[test]
    fn values_beyond_64_bits_are_refused_so_totals_stay_finite() {
        let body = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
            {"name":"otelcol_receiver_accepted_spans","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[
              {"attributes":[{"key":"receiver","value":{"stringValue":"otlp"}}],"timeUnixNano":"2","asDouble":1e308},
              {"attributes":[{"key":"receiver","value":{"stringValue":"otlp"}}],"timeUnixNano":"3","asDouble":18446744073709551615}]}}
          ]}]}]}"#;
        let d = decode(Encoding::Json, body).unwrap();
        assert_eq!(d.points.len(), 1, "2^64 - 1 is kept");
        assert_eq!(d.rejected, 1);
        assert!(d.reasons[0].contains("larger than 2^64"), "{:?}", d.reasons);
    }

    #[test]
    fn content_types_and_encodings() {
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            Encoding::Json
        );
        assert!(matches!(
            Encoding::from_content_type(None),
            Err(DecodeError::UnsupportedMediaType(_))
        ));
    }
}
