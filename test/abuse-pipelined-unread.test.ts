import { readFileSync } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { RunningWorker } from '../proxy/worker.js';
import { fillThenEnd } from './helpers/full-send-queue.js';
import { startOriginWorker } from './helpers/origin-worker.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { type RawTls, rawTls } from './helpers/raw-tls.js';
import { closeScriptedOrigin, type ScriptedAnswer, scriptedOrigin } from './helpers/scripted-origin.js';

// A client that pipelines many requests on one connection (RFC 9112 §9.3.2) and
// reads nothing, against an in-process worker and an origin that answers each
// at once with 256 KiB: the connection must be cut after limits.sendTimeoutMs
// and every origin place it held given back, while the origin's other clients
// are served. Node 20's server emits 'drain' on the answer being sent whenever
// an answer queued behind it buffers output, though the socket is still full:
// taken for progress, it stopped the send clock, and the connection held every
// origin place for ever (the origin's other clients got 503 after the queue
// timeout). And all the requests of such a connection were forwarded at once,
// each answer queued behind the one before holding an origin place: one
// connection took them all. A connection's pipelined requests are now
// forwarded a few at a time.
const HOST = 'p.lab.test';
const SEND_TIMEOUT_MS = 3000;
const LIMITS = { sendTimeoutMs: SEND_TIMEOUT_MS, originMaxConnections: 8, originQueueTimeoutMs: 1500 };
const BIG = `HTTP/1.1 200 OK\r\ncontent-length: ${256 * 1024}\r\n\r\n${'x'.repeat(256 * 1024)}`;
const DEPTH = 100;

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const sockets = new Set<net.Socket>();
const saw: string[] = [];
const lines: Record<string, unknown>[] = [];

/** The origin connection of the last '/tail' request: the test sends its answer's body (full-send-queue.ts). */
let tail: net.Socket | undefined;

const answers: Record<string, ScriptedAnswer> = {
  '/victim': 'HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nvictim',
  '/tail': (socket) => {
    tail = socket;
    socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n');
  },
};
for (let i = 0; i < DEPTH; i++) {
  answers[`/a${i}`] = BIG;
  // Each names itself, after 20 KiB: answers past Node's 16 KiB mark, queued behind one another.
  const body = `${'o'.repeat(20_000)}<o${i}>`;
  answers[`/o${i}`] = `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}`;
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('p', lab.keys.ec, [HOST]);
  origin = scriptedOrigin(answers, { sockets, saw });
  proxy = await startOriginWorker(lab, {
    certificate: { name: 'p', chain: cert.file },
    host: HOST,
    origin,
    limits: LIMITS,
    logName: 'pipelined-unread',
    lines,
  });
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

const burst = (): string => {
  let text = '';
  for (let i = 0; i < DEPTH; i++) text += `GET /a${i} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
  return text;
};
const attackerLines = (from: number): Record<string, unknown>[] =>
  lines.slice(from).filter((l) => l.access === true && typeof l.path === 'string' && /^\/a\d+$/.test(l.path));

/** Sends one GET /victim on `client` (connected beforehand: a handshake's sign is not part of what is measured); resolves with its answer's head. */
async function victim(client: RawTls): Promise<string> {
  client.socket.write(`GET /victim HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
  return waitFor('the answer to /victim', () => (client.text().includes('\r\n\r\n') ? client.text() : undefined), 20_000);
}

it(`a client that pipelines ${DEPTH} requests and reads nothing is cut after limits.sendTimeoutMs, and gives back every origin place`, async () => {
  const from = lines.length;
  const attacker = await rawTls(proxy.ports[0]!, HOST, ca, { read: false });
  attacker.socket.write(burst());
  await waitFor('the origin to be sent the first requests', () => (saw.filter((l) => l.startsWith('GET /a')).length > 0 ? true : undefined));
  // Before the fix no line came: the connection was never cut (the reviewer saw it held for 150 s and more).
  const cut = await waitFor(
    'the send timeout of the attacker',
    () => attackerLines(from).find((l) => l.code === 'KEYEDGE_HTTP_SEND_TIMEOUT'),
    SEND_TIMEOUT_MS + 15_000,
  );
  expect(cut.status).toBe(200);
  // Every request the connection carried ended (an answer whole, cut, or never begun): none holds an origin place.
  await waitFor('every pipelined request to end', () => (attackerLines(from).length === DEPTH ? true : undefined), 15_000);
  const after = await rawTls(proxy.ports[0]!, HOST, ca);
  expect(await victim(after)).toMatch(/^HTTP\/1\.1 200 /);
  after.socket.destroy();
  attacker.socket.destroy();
}, 60_000);

it("serves the origin's other clients while a connection that pipelined requests and reads nothing holds its answers", async () => {
  const from = lines.length;
  // Another client: the attacker's address holds its own share of the places, half, with its 4 in turn (origin-gate.ts).
  const other = await rawTls(proxy.ports[0]!, HOST, ca, { localAddress: '127.0.0.2' });
  const attacker = await rawTls(proxy.ports[0]!, HOST, ca, { read: false });
  attacker.socket.write(burst());
  await waitFor('the origin to be sent the first requests', () => (saw.slice(-DEPTH).some((l) => l.startsWith('GET /a')) ? true : undefined));
  // Before the fix the connection held all 8 places of the origin until its cut: the other client waited in the
  // origin's queue, and got 503 KEYEDGE_HTTP_ORIGIN_BUSY after its 1.5 s, before the 3 s send timeout.
  const answer = await victim(other);
  expect(answer).toMatch(/^HTTP\/1\.1 200 /);
  // Served during the hold, not after it: the connection had not been cut yet.
  expect(attackerLines(from).some((l) => l.code === 'KEYEDGE_HTTP_SEND_TIMEOUT')).toBe(false);
  await waitFor('the send timeout of the attacker', () => attackerLines(from).find((l) => l.code === 'KEYEDGE_HTTP_SEND_TIMEOUT'), SEND_TIMEOUT_MS + 15_000);
  other.socket.destroy();
  attacker.socket.destroy();
}, 60_000);

it(`a client that pipelines ${DEPTH} requests in one write and reads gets every answer, whole and in order`, async () => {
  const client = await rawTls(proxy.ports[0]!, HOST, ca);
  let text = '';
  for (let i = 0; i < DEPTH; i++) text += `GET /o${i} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
  client.socket.write(text);
  await waitFor('every answer', () => (client.text().includes(`<o${DEPTH - 1}>`) ? true : undefined), 30_000);
  const statuses = [...client.text().matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]);
  expect(statuses).toEqual(Array(DEPTH).fill('200'));
  const names = [...client.text().matchAll(/<o(\d+)>/g)].map((m) => Number(m[1]));
  expect(names).toEqual([...Array(DEPTH).keys()]);
  client.socket.destroy();
}, 60_000);

it('cuts, after limits.sendTimeoutMs, an answer ended while its last bytes wait for a client that reads nothing, and the request pipelined behind it', async () => {
  // The answer's end is relayed while its last piece waits in the proxy's own buffer, the kernel's full: it never
  // finishes, and the answer pipelined behind it never gets the connection. Before the fix nothing bounded that: the
  // connection stayed open, and the request behind held its origin place, for ever.
  let line: Record<string, unknown> | undefined;
  for (let attempt = 0; attempt < 3 && line === undefined; attempt++) {
    const from = lines.length;
    tail = undefined;
    const client = tls.connect({ host: '127.0.0.1', port: proxy.ports[0], servername: HOST, ca, ALPNProtocols: ['http/1.1'] });
    client.on('error', () => undefined);
    await new Promise((resolve) => client.once('secureConnect', resolve));
    client.pause();
    client.write(`GET /tail HTTP/1.1\r\nHost: ${HOST}\r\n\r\nGET /a0 HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    const filled = await fillThenEnd(await waitFor('the origin connection', () => tail), proxy.ports[0]!, client.localPort!);
    const tailLine = (): Record<string, unknown> | undefined => lines.slice(from).find((l) => l.access === true && l.path === '/tail');
    if (filled.stuck) {
      const logged = await waitFor('the access line of /tail', tailLine, SEND_TIMEOUT_MS + 15_000);
      // Not cut, and the kernel took more: the proxy had only been slow to write the rest, which then went whole.
      if (!(logged.code !== 'KEYEDGE_HTTP_SEND_TIMEOUT' && filled.grewSince())) line = logged;
    }
    client.destroy();
    await waitFor('the pipelined request to end', () => lines.slice(from).find((l) => l.access === true && l.path === '/a0'), 15_000);
  }
  expect(line, 'the state reached in 3 tries').toBeDefined();
  expect(line).toMatchObject({ status: 200, code: 'KEYEDGE_HTTP_SEND_TIMEOUT', aborted: true });
}, 120_000);
