"""Drive the real OpenTelemetry OpAMP Python client (PyPI
`opentelemetry-opamp-client`) against a LinkMesh server.

The test enrolls the collector first and passes its instance_uid and
credential. The agent connects over OpAMP HTTP, applies any remote config
it is offered (reports APPLIED with the config's hash), heartbeats, and
stops after --seconds, sending agent_disconnect. Prints one JSON line per
event on stdout.
"""

import argparse
import json
import sys
import time
import uuid

from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import OpAMPCallbacks
from opentelemetry._opamp.client import OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2


def emit(**event):
    print(json.dumps(event), flush=True)


class Callbacks(OpAMPCallbacks):
    def on_message(self, agent, client, message):
        rc = message.remote_config
        if rc is None:
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

    def on_error(self, agent, client, error_response):
        emit(event="error", message=error_response.error_message)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--credential", required=True)
    p.add_argument("--uid", required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()

    client = OpAMPClient(
        endpoint=args.endpoint,
        headers={"Authorization": f"Bearer {args.credential}"},
        agent_identifying_attributes={"service.name": "python-interop", "service.version": "1.0"},
        agent_non_identifying_attributes={"host.name": "interop-host"},
        timeout_millis=5000,
    )
    # The client draws a random instance_uid; use the enrolled one.
    client._instance_uid = uuid.UUID(args.uid).bytes
    agent = OpAMPAgent(interval=1, callbacks=Callbacks(), client=client)
    agent.start()
    emit(event="started")
    time.sleep(args.seconds)
    agent.stop()
    emit(event="stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
