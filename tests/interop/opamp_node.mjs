// Drive the real Elastic OpAMP Node.js client (npm
// `@elastic/opamp-client-node`) against a LinkMesh server.
//
// The test enrolls the collector first and passes its instance_uid and
// credential. The client connects over OpAMP HTTP, reports APPLIED for any
// remote config it is offered, and heartbeats every second until the test
// kills it (this client never sends agent_disconnect). One JSON line per
// event on stdout.
import {createOpAMPClient} from '@elastic/opamp-client-node';
import {parseArgs} from 'node:util';

const {values} = parseArgs({
    options: {
        endpoint: {type: 'string'},
        credential: {type: 'string'},
        uid: {type: 'string'},
    },
});

const emit = (event) => console.log(JSON.stringify(event));

// AcceptsRemoteConfig | ReportsRemoteConfig | ReportsStatus
const capabilities = 0x2n | 0x1000n | 0x1n;

const client = createOpAMPClient({
    endpoint: values.endpoint,
    headers: {Authorization: `Bearer ${values.credential}`},
    instanceUid: values.uid,
    heartbeatIntervalSeconds: 1,
    capabilities,
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
emit({event: 'started'});
// The client's timers do not keep Node alive; the test ends this process.
setInterval(() => {}, 1 << 30);
