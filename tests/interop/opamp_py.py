"""Drive the real OpenTelemetry OpAMP Python client (PyPI
`opentelemetry-opamp-client`) against a LinkMesh server, configured the way
a user would: the OpAMP endpoint and a bearer (an enrollment token, or the
collector's own credential) and nothing else.

The agent connects over OpAMP HTTP, applies any remote config it is offered
(reports APPLIED with the config's hash) and heartbeats until its stdin is
closed; then it stops, which sends agent_disconnect. A refusal (HTTP 4xx)
ends it at once with exit code 3. Prints one JSON line per event on stdout:
`started` (with the instance_uid the client uses), `applied`, `refused`
(status and the server's message), `stopped`.
"""

import argparse
import json
import sys
import threading
import uuid

from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import OpAMPCallbacks
from opentelemetry._opamp.client import OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2


def emit(**event):
    print(json.dumps(event), flush=True)


class Callbacks(OpAMPCallbacks):
    def __init__(self, done):
        self.done = done
        self.refused = False

    def on_message(self, agent, client, message):
        rc = message.remote_config
        if rc is None or not rc.config_hash:
            return
        files = {name: f.body.decode("utf-8", "replace") for name, f in rc.config.config_map.items()}
        client.update_effective_config({"files": files}, "application/json")
        status = client.update_remote_config_status(
            remote_config_hash=rc.config_hash,
            status=opamp_pb2.RemoteConfigStatuses.RemoteConfigStatuses_APPLIED,
        )
        if status is not None:
            agent.send(client.build_remote_config_status_response_message(status))
        emit(event="applied", hash=rc.config_hash.hex(), files=sorted(files))

    def on_connect_failed(self, agent, client, error):
        # The client wraps the requests error; the response (status and the
        # server's problem+json body) is on its cause.
        response = getattr(error.__cause__, "response", None)
        if response is None or response.status_code < 400 or response.status_code >= 500:
            emit(event="connect_failed", message=str(error))
            return
        self.refused = True
        emit(event="refused", status=response.status_code, message=response.text)
        self.done.set()

    def on_error(self, agent, client, error_response):
        emit(event="error", message=error_response.error_message)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token", required=True, help="enrollment token or collector credential")
    p.add_argument(
        "--uid",
        help="keep this instance_uid (a restart of the same agent); the client "
        "has no option for it, so this sets its private attribute",
    )
    args = p.parse_args()

    client = OpAMPClient(
        endpoint=args.endpoint,
        headers={"Authorization": f"Bearer {args.token}"},
        agent_identifying_attributes={"service.name": "python-interop", "service.version": "1.0"},
        agent_non_identifying_attributes={"host.name": "interop-host"},
        timeout_millis=5000,
    )
    if args.uid:
        client._instance_uid = uuid.UUID(args.uid).bytes
    done = threading.Event()
    callbacks = Callbacks(done)

    def wait_for_stdin_eof():
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
    agent = OpAMPAgent(interval=1, callbacks=callbacks, client=client)
    agent.start()
    emit(event="started", uid=str(uuid.UUID(bytes=client._instance_uid)))
    # Bounded, so a test that dies never leaves the agent running.
    done.wait(300)
    agent.stop()
    emit(event="stopped")
    return 3 if callbacks.refused else 0


if __name__ == "__main__":
    sys.exit(main())
