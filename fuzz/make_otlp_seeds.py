"""Write the seeds of the `otlp_body` fuzz target (fuzz/corpus/otlp_body/)
from real OTLP requests: tests/owntelemetry/send_own_metrics.py (the
OpenTelemetry Python SDK and its OTLP/HTTP exporter) sends its reports to a
loopback server here that keeps the bodies; the JSON seeds are the same
requests in the OTLP JSON encoding (google.protobuf.json_format, as the
OTLP specification maps it). Each seed is one selector byte (see
`linkmesh::fuzz::otlp_body`: low three bits the Content-Encoding, bit 3
JSON) followed by the body.

    python3 fuzz/make_otlp_seeds.py      # needs tests/owntelemetry/requirements.txt
"""

import gzip
import http.server
import pathlib
import subprocess
import sys
import threading

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz/corpus/otlp_body"
IDENTITY, GZIP, NO_HEADER, BROTLI = 0, 1, 7, 4
JSON = 8

bodies = []


class Capture(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        bodies.append((self.headers.get("Content-Encoding", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def capture(extra):
    server = http.server.HTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}/v1/metrics"
    subprocess.run(
        [sys.executable, str(ROOT / "tests/owntelemetry/send_own_metrics.py"), "--endpoint", endpoint,
         "--credential", "lmc_seed", "--rounds", "2", "--interval", "0.1", *extra],
        check=True, stdout=subprocess.DEVNULL)
    server.shutdown()


def write(name, selector, body):
    (OUT / name).write_bytes(bytes([selector]) + body)


capture([])
capture(["--gzip"])
(_, plain1), (_, plain2), (enc, gz1), _ = bodies
assert enc == "gzip"
OUT.mkdir(parents=True, exist_ok=True)
write("sdk-protobuf", IDENTITY, plain1)
write("sdk-protobuf-second-report", NO_HEADER, plain2)
write("sdk-protobuf-gzip", GZIP, gz1)
write("sdk-gzip-truncated", GZIP, gz1[: len(gz1) // 2])
write("sdk-protobuf-truncated", IDENTITY, plain1[: len(plain1) - 7])
write("sdk-brotli-label", BROTLI, plain1)
# Inflates to 1 MiB of zeros: past the target's 64 KiB limit.
write("gzip-bomb", GZIP, gzip.compress(b"\0" * (1 << 20), 9))
request = ExportMetricsServiceRequest()
request.ParseFromString(plain1)
as_json = json_format.MessageToJson(request, indent=None).encode()
write("sdk-json", JSON | IDENTITY, as_json)
write("sdk-json-gzip", JSON | GZIP, gzip.compress(as_json))
# Values a double can carry but a collector's 64-bit counter cannot: two
# lifetimes of 1e308 would sum to infinity.
write("json-huge-values", JSON | IDENTITY, b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"otelcol_receiver_accepted_spans","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":['
      b'{"attributes":[{"key":"receiver","value":{"stringValue":"otlp"}}],"startTimeUnixNano":"1","timeUnixNano":"2","asDouble":1e308},'
      b'{"attributes":[{"key":"receiver","value":{"stringValue":"otlp"}}],"startTimeUnixNano":"5","timeUnixNano":"6","asDouble":1e308}]}}]}]}]}')
print(f"wrote {len(list(OUT.iterdir()))} seeds to {OUT.relative_to(ROOT)}")
