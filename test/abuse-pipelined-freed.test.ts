import { readFileSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { rawTls } from './helpers/raw-tls.js';

// Pipelined HTTP/1.1 requests (RFC 9112 §9.3.2) on a connection that stays
// open: once answered, the worker must hold none of them. An answer queued
// behind another is registered on its connection, to hear of the client's
// leaving (queued.ts); the forwarded request's registration was dropped only
// when the client left, never when the answer went out whole, so each
// pipelined request, its answer and its exchange stayed reachable until the
// connection closed: memory that grew per request for as long as a client
// kept one connection busy.
// Counted directly: each request the worker's HTTPS server takes is watched
// with a WeakRef, and those still reachable after a full GC are counted.
const BATCHES = 10;
const PER_BATCH = 20;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Every request the worker's HTTPS server takes, weakly (the lab origin's plain ones are not counted). */
const requests: WeakRef<IncomingMessage>[] = [];
const createServer = http.createServer;
(http as { createServer: unknown }).createServer = (...args: Parameters<typeof http.createServer>) => {
  const server = createServer(...args);
  server.on('request', (req: IncomingMessage) => {
    if ((req.socket as { encrypted?: boolean }).encrypted === true) requests.push(new WeakRef(req));
  });
  return server;
};

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  proxy = await startProxyWorker(lab.proxyConfig({ certificates: [{ name: 'ec', chain: ec.file }] }), { log: createLogger('pipelined-freed', 'silent') });
}, 60_000);

afterAll(async () => {
  (http as { createServer: unknown }).createServer = createServer;
  await proxy?.close();
  await lab?.close();
});

async function reachable(): Promise<number> {
  for (let i = 0; i < 5; i++) {
    gc();
    await sleep(50);
  }
  return requests.filter((ref) => ref.deref() !== undefined).length;
}

it(`${BATCHES * PER_BATCH} pipelined requests answered on one connection that stays open: the worker holds none of them`, async () => {
  const client = await rawTls(proxy.ports[0]!, 'a.lab.test', ca);
  const get = 'GET /pipelined HTTP/1.1\r\nHost: a.lab.test\r\n\r\n';
  for (let batch = 1; batch <= BATCHES; batch++) {
    // All but the first of a batch wait behind the one before (queued answers).
    client.socket.write(get.repeat(PER_BATCH));
    await waitFor(`the answers of batch ${batch}`, () => client.text().split('HTTP/1.1 200 ').length - 1 === batch * PER_BATCH || undefined, 20_000);
  }
  expect(requests.length).toBe(BATCHES * PER_BATCH);
  // The connection is still open: before the fix every queued request was held (190 of 200), until it closed.
  expect(client.socket.destroyed).toBe(false);
  expect(await reachable()).toBeLessThan(PER_BATCH);
  client.socket.destroy();
}, 60_000);
