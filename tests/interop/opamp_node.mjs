// Drive the real Elastic OpAMP Node.js client (npm
// `@elastic/opamp-client-node`) against a LinkMesh server, configured the
// way a user would: the OpAMP endpoint and a bearer (an enrollment token, or
// the collector's own credential) and nothing else; `--uid` keeps an
// instance_uid across restarts (the client's own `instanceUid` option).
//
// The client connects over OpAMP HTTP, reports APPLIED for any remote config
// it is offered, and heartbeats every second until its stdin is closed (it
// never sends agent_disconnect). A refusal ends it at once with exit code 3.
// One JSON line per event on stdout: `started` (with its instance_uid),
// `applied`, `refused` (the client's own error text), `stopped`.
import {createOpAMPClient} from '@elastic/opamp-client-node';
import {parseArgs} from 'node:util';

const {values} = parseArgs({
    options: {
        endpoint: {type: 'string'},
        token: {type: 'string'},
        uid: {type: 'string'},
    },
});

const emit = (event) => console.log(JSON.stringify(event));

// AcceptsRemoteConfig | ReportsRemoteConfig | ReportsStatus
const capabilities = 0x2n | 0x1000n | 0x1n;

let client;
let stopping = false;
const stop = async (code) => {
    if (stopping) return;
    stopping = true;
    await client.shutdown();
    emit({event: 'stopped'});
    process.exit(code);
};

// The client keeps the response body of a refusal to itself; its error log
// line (with the HTTP status) is what a user sees.
const log = {
    trace() {},
    debug() {},
    info() {},
    warn() {},
    fatal() {},
    error(_fields, msg) {
        const m = /statusCode=(4\d\d)/.exec(String(msg));
        if (m) {
            emit({event: 'refused', status: Number(m[1]), message: msg});
            stop(3);
        } else {
            emit({event: 'error', message: String(msg)});
        }
    },
};

client = createOpAMPClient({
    endpoint: values.endpoint,
    headers: {Authorization: `Bearer ${values.token}`},
    ...(values.uid ? {instanceUid: values.uid} : {}),
    heartbeatIntervalSeconds: 1,
    capabilities,
    log,
    onMessage: ({remoteConfig}) => {
        if (!remoteConfig) return;
        client.setRemoteConfigStatus({
            lastRemoteConfigHash: remoteConfig.configHash,
            status: 1, // APPLIED
        });
        emit({event: 'applied', hash: Buffer.from(remoteConfig.configHash).toString('hex')});
    },
});
client.setAgentDescription({
    identifyingAttributes: {'service.name': 'node-interop'},
    nonIdentifyingAttributes: {'host.name': 'interop-host'},
});
client.start();
const uid = client.getInstanceUid();
emit({event: 'started', uid: [...uid].map((b) => b.toString(16).padStart(2, '0')).join('').replace(
    /^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5')});
process.stdin.resume();
process.stdin.on('end', () => stop(0));
// Bounded, so a test that dies never leaves the agent running.
setTimeout(() => stop(0), 300_000);
