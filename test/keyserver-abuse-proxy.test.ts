/**
 * The reported attack, end to end: a local client opens 1,023 unix-socket
 * connections to the key server (default config), each with half a frame, and
 * opens a new one a second after any is closed. A real proxy with 2 workers started meanwhile must come up and
 * complete every TLS handshake (each one a keyless sign through the bridge).
 * Before, the bridges found the key server full and about half the
 * handshakes failed.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { encodeRequest } from '../keyserver/protocol/codec.js';
import { Algorithm } from '../keyserver/protocol/constants.js';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

const STALLED = 1_023;
let lab: KeylessLab;
let proxy: ClusterProxy | undefined;
let attacking = true;
const stalled = new Set<net.Socket>();
let opened = 0;

/** One connection sending the first half of a sign frame, replaced by another when the key server closes it. */
function stall(): void {
  if (!attacking) return;
  const frame = encodeRequest({ op: 'sign', id: 1, keyId: Buffer.alloc(32, 0xab), algorithm: Algorithm.ECDSA_SHA256, digest: Buffer.alloc(32, 0xcd) });
  const socket = net.connect(lab.socket, () => {
    opened++;
    socket.write(frame.subarray(0, 40));
  });
  stalled.add(socket);
  socket.on('error', () => undefined);
  socket.on('close', () => {
    stalled.delete(socket);
    // A second later: a churn of about a thousand connections a second once the key server closes them.
    setTimeout(stall, 1_000);
  });
}

async function keyserverMetric(name: string, label: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${lab.adminPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${label}}`));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

beforeAll(async () => {
  lab = await startKeylessLab();
});
afterAll(async () => {
  attacking = false;
  for (const socket of stalled) socket.destroy();
  await proxy?.stop();
  await lab?.close();
});

it(`with ${STALLED} stalled connections held to the key server, a 2-worker proxy starts and every handshake succeeds`, async () => {
  for (let i = 0; i < STALLED; i++) stall();
  const deadline = Date.now() + 20_000;
  // All connected once (some may be closed again at once: one local client may hold limits.maxConnectionsPerClient).
  while (opened < STALLED) {
    if (Date.now() > deadline) throw new Error('the stalled connections did not all open');
    await sleep(50);
  }

  const chain = (await lab.certificate('ec', lab.keys.ec, ['ec.lab.test'])).file;
  // A sign's deadline with room for the key server's event loop, which the churn (over a thousand connections a second)
  // holds up to half a second at a time on a loaded 2-core machine (measured: lag max 0.26-0.48 s on Node 20, 0.54-0.56 s
  // on Node 24, which works through the churn more slowly). What is checked is admission: with the default 250 ms, a
  // sign caught behind such a stall timed out and the breaker failed the next ones, whatever admission did.
  const keyserver = { socket: lab.socket, timeoutMs: 1_000 };
  proxy = await startClusterProxy(lab, 'abuse', (p) => storeProxyConfig(lab, p, { keyserver, certificates: [{ name: 'ec', chain }], sni: { default: 'ec' } }));
  const ca = readFileSync(lab.caFile);
  const port = proxy.port;
  const handshake = (): Promise<string> =>
    new Promise((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername: 'ec.lab.test', ca });
      socket.setTimeout(5_000, () => socket.destroy(new Error('client timeout')));
      socket.once('secureConnect', () => {
        socket.destroy();
        resolve('ok');
      });
      socket.once('error', (err) => resolve(err.message));
    });

  // Past one frame deadline (5 s), so the key server closes the stalled connections and they are replaced meanwhile.
  const outcomes: string[] = [];
  const end = Date.now() + 7_000;
  await Promise.all(
    [0, 1, 2, 3].map(async () => {
      while (Date.now() < end) outcomes.push(await handshake());
    }),
  );
  const failed = outcomes.filter((o) => o !== 'ok');
  // Enough handshakes to have crossed the churn: about 50 in 7 s were seen at a load average of 11 on 2 cores, hundreds when quiet.
  expect(outcomes.length).toBeGreaterThan(20);
  expect(failed, `${failed.length} of ${outcomes.length} handshakes failed: ${[...new Set(failed)].join('; ')}`).toEqual([]);
  // One local client may hold limits.maxConnectionsPerClient (256): its newcomers evict its stalled connections.
  expect(await keyserverMetric('keyedge_keyserver_connections_dropped_total', 'reason="evicted_client_cap"')).toBeGreaterThan(STALLED - 256);
}, 90_000);
