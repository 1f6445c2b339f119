"""Export counters named like an OpenTelemetry Collector's own metrics with
the real OpenTelemetry Python SDK and its OTLP/HTTP (protobuf) exporter,
the way a collector reports itself to LinkMesh.

Each round adds to every counter, then forces one export and prints a JSON
line with the exporter's result. Rounds are `--interval` seconds apart:
the reporting interval of the simulated collector, so that the server sees
two reports at different times and can compute rates.
"""

import argparse
import json
import sys
import time

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource


class RecordingExporter(OTLPMetricExporter):
    """Remembers the result of the last export (the SDK swallows it)."""

    last = None

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        self.last = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        return self.last


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True, help="http://host:port/v1/metrics")
    ap.add_argument("--credential", default="", help="collector credential (empty: none)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--claim-instance", default="", help="service.instance.id to put in the resource")
    args = ap.parse_args()

    headers = {"Authorization": f"Bearer {args.credential}"} if args.credential else {}
    exporter = RecordingExporter(
        endpoint=args.endpoint,
        headers=headers,
        timeout=10,
        compression=Compression.Gzip if args.gzip else Compression.NoCompression,
    )
    # A huge interval: exports happen only on force_flush.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    resource = {"service.name": "otelcol-contrib"}
    if args.claim_instance:
        resource["service.instance.id"] = args.claim_instance
    # No export at exit: only the rounds below report.
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create(resource), shutdown_on_exit=False)
    meter = provider.get_meter("go.opentelemetry.io/collector/receiver/receiverhelper")

    recv = {"receiver": "otlp", "transport": "http"}
    exp = {"exporter": "otlphttp/backend"}
    accepted = meter.create_counter("otelcol_receiver_accepted_spans", unit="{spans}")
    refused = meter.create_counter("otelcol_receiver_refused_spans", unit="{spans}")
    sent = meter.create_counter("otelcol_exporter_sent_spans", unit="{spans}")
    failed = meter.create_counter("otelcol_exporter_send_failed_spans", unit="{spans}")
    incoming = meter.create_counter("otelcol_processor_incoming_items", unit="{items}")
    meter.create_observable_gauge(
        "otelcol_exporter_queue_size",
        callbacks=[lambda _o: [Observation(7, {**exp, "data_type": "traces"})]],
    )
    meter.create_observable_gauge(
        "otelcol_exporter_queue_capacity",
        callbacks=[lambda _o: [Observation(1000, {**exp, "data_type": "traces"})]],
    )

    for i in range(args.rounds):
        if i > 0:
            time.sleep(args.interval)
        accepted.add(100, recv)
        refused.add(1, recv)
        sent.add(90, exp)
        failed.add(10, exp)
        incoming.add(100, {"processor": "batch", "otel.signal": "traces"})
        provider.force_flush()
        ok = exporter.last == MetricExportResult.SUCCESS
        print(json.dumps({"round": i + 1, "result": "SUCCESS" if ok else "FAILURE"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
