"""schemathesis hooks, loaded by scripts/schemathesis.sh
(SCHEMATHESIS_HOOKS=hooks with this directory on PYTHONPATH).

The OpAMP (`POST /v1/opamp`) and OTLP (`POST /v1/metrics`) bodies are
protobuf, which schemathesis cannot serialize by itself. The document
describes them as bytes (an array of integers); they are sent as those raw
bytes, so the generated cases reach the servers' protobuf decoders.
"""

import schemathesis


@schemathesis.serializer("application/x-protobuf")
def protobuf(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, list):
        return bytes(int(v) % 256 for v in value if isinstance(v, (int, float)))
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return b""
