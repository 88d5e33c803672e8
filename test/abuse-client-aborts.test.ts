import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AbuseOrigin,
  type AbuseSetup,
  expectUnharmed,
  CUTS,
  type Cut,
  inBatches,
  KIB,
  metricSum,
  MIB,
  RawClient,
  startAbuseSetup,
  SteadyClient,
  workerPids,
  wsUpgradeHead,
} from './helpers/abuse.js';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, waitFor } from './helpers/proxy-cluster.js';

// Clients that go away at every phase of an exchange, in every way (FIN
// after a half-close, FIN, RST), over a thousand times against `keyedge proxy`
// with two workers, while a normal client runs alongside. No client action
// may kill a worker, leave an exception uncaught, or cost the normal client
// an answer; and a request that got no answer is logged as such (499).
const HOST = 'abuse.lab.test';
const ROUNDS = 21;
const CONCURRENCY = 24;

let setup: AbuseSetup;
let origin: AbuseOrigin;
let proxy: ClusterProxy;
let ca: string;

beforeAll(async () => {
  setup = await startAbuseSetup('abuse-client', HOST);
  ({ origin, proxy, ca } = setup);
}, 90_000);

afterAll(async () => {
  await setup?.close();
});

interface Scenario {
  readonly phase: string;
  /** The request sent (all of it, or the part written before the cut). */
  readonly request: (tag: string) => string;
  /** When to cut, once the request (or its part) is written. */
  readonly cutWhen: (client: RawClient) => Promise<void>;
}

const get = (path: string) => (tag: string) => `GET /${tag}${path} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
const answerPath = (framing: string, size: number, delayMs = 0): string => `/answer?framing=${framing}&size=${size}&delayMs=${delayMs}`;

function scenarios(): Scenario[] {
  const list: Scenario[] = [
    // Mid-head: the proxy has part of a request line and headers.
    { phase: 'request-head', request: (tag) => `POST /${tag}/upload HTTP/1.1\r\nHost: ${HOST}\r\nContent-Le`, cutWhen: () => sleep(10) },
    // Mid-body: the request is forwarded and its body streams to the origin when the client goes.
    {
      phase: 'request-body-length',
      request: (tag) => `POST /${tag}/upload HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${MIB}\r\n\r\n${'x'.repeat(64 * KIB)}`,
      cutWhen: () => sleep(30),
    },
    {
      phase: 'request-body-chunked',
      request: (tag) => `POST /${tag}/upload HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\n${'4000\r\n' + 'y'.repeat(0x4000) + '\r\n'}`,
      cutWhen: () => sleep(30),
    },
    // Waiting: the origin answers 8 MiB after 2 s; the client is gone by then (cut at 100 ms: the margin covers a loaded
    // machine, where a worker can be off the CPU for a few hundred ms; the origin request is abandoned at the cut, so
    // the wait costs nothing).
    { phase: 'waiting', request: get(answerPath('cl', 8 * MIB, 2_000)), cutWhen: () => sleep(100) },
    // Pipelined (RFC 9112 §9.3.2): six answers wait behind the first when the client goes.
    {
      phase: 'pipelined',
      request: (tag) => get(answerPath('cl', 8 * MIB))(tag) + [1, 2, 3, 4, 5, 6].map((n) => get(answerPath('chunked', 8 * MIB))(`${tag}-queued${n}`)).join(''),
      cutWhen: (client) => client.receivedAtLeast(64 * KIB),
    },
    // WebSocket: gone before the 101, and with the WebSocket open.
    { phase: 'ws-handshake', request: (tag) => wsUpgradeHead(HOST, `/${tag}/ws`), cutWhen: () => sleep(1) },
    {
      phase: 'ws-open',
      request: (tag) => wsUpgradeHead(HOST, `/${tag}/ws`),
      cutWhen: async (client) => {
        await client.receivedAtLeast(20);
        client.write(Buffer.from([0x81, 0x82, 1, 2, 3, 4, 0x69 ^ 1, 0x21 ^ 2]));
        await sleep(5);
      },
    },
  ];
  for (const framing of ['cl', 'chunked']) {
    for (const size of [KIB, 8 * MIB]) {
      const label = `${framing}-${size === KIB ? '1k' : '8m'}`;
      // As the answer head arrives.
      list.push({ phase: `answer-head-${label}`, request: get(answerPath(framing, size)), cutWhen: (client) => client.receivedAtLeast(1) });
      // Mid-body: 1 KiB answers once the head and some of the body are in, 8 MiB ones after 256 KiB.
      list.push({
        phase: `answer-body-${label}`,
        request: get(answerPath(framing, size)),
        cutWhen: (client) => client.receivedAtLeast(size === KIB ? 200 : 256 * KIB),
      });
    }
    // Not reading: the answer fills the buffers, then the client goes.
    list.push({
      phase: `answer-stalled-${framing}-8m`,
      request: get(answerPath(framing, 8 * MIB)),
      cutWhen: async (client) => {
        await client.receivedAtLeast(1);
        client.tls.pause();
        await sleep(100);
      },
    });
  }
  return list;
}

/** One client: connect, write the (partial) request, cut when the scenario says, wait for the connection to end. */
async function abuse(scenario: Scenario, how: Cut, tag: string): Promise<void> {
  const client = new RawClient(proxy.port, ca, HOST);
  await client.secure;
  client.write(scenario.request(tag));
  await scenario.cutWhen(client);
  client.cut(how);
  // After a half-close the proxy may still answer; the client leaves soon after either way.
  await client.finish(how === 'end' ? 100 : 2_000);
}

function accessLine(path: string): Record<string, unknown> | undefined {
  return proxy.lines.find((l) => l.access === true && l.path === path);
}

describe('clients that go away', () => {
  it('before any answer: logged 499 with KEYEDGE_HTTP_CLIENT_CLOSED, counted, and the origin request abandoned at once', async () => {
    const client = new RawClient(proxy.port, ca, HOST);
    await client.secure;
    client.write(get(answerPath('cl', 8 * MIB, 3_000))('left-waiting'));
    await sleep(300);
    client.cut('destroy');
    const line = await waitFor('the access line', () => accessLine('/left-waiting/answer'));
    expect(line).toMatchObject({ status: 499, aborted: true, code: 'KEYEDGE_HTTP_CLIENT_CLOSED' });
    // Not a failure of the origin: no warning about it.
    expect(proxy.lines.some((l) => l.msg === 'origin request failed' && l.code !== undefined && String(l.path ?? '').includes('left-waiting'))).toBe(false);
    // The origin's connection is closed well before its answer was due (3 s): nothing waits for an answer no one will read.
    await waitFor('the origin request to be abandoned', () => (origin.abandoned.includes('left-waiting') ? true : undefined), 2_000);
    expect(await metricSum(proxy, 'keyedge_proxy_http_requests_total', { status_class: '4xx', code: 'KEYEDGE_HTTP_CLIENT_CLOSED' })).toBeGreaterThanOrEqual(1);
  });

  it('mid-answer: logged with the status that was sent, marked aborted, KEYEDGE_HTTP_CLIENT_CLOSED', async () => {
    const client = new RawClient(proxy.port, ca, HOST);
    await client.secure;
    // Larger than what the kernel can hold between the origin and the proxy (send buffer up to 4 MiB, receive buffer up
    // to tcp_rmem's 32 MiB here): with 8 MiB, a loaded machine let the origin write its whole answer into those buffers
    // before the cut, and it was never seen abandoned.
    client.write(get(answerPath('chunked', 64 * MIB))('left-body'));
    await client.receivedAtLeast(256 * KIB);
    client.cut('reset');
    const line = await waitFor('the access line', () => accessLine('/left-body/answer'));
    expect(line).toMatchObject({ status: 200, aborted: true, code: 'KEYEDGE_HTTP_CLIENT_CLOSED' });
    await waitFor('the origin answer to be abandoned', () => (origin.abandoned.includes('left-body') ? true : undefined), 5_000);
  });

  it(`at every phase, ${ROUNDS} rounds: no worker dies, nothing is uncaught, a normal client gets every answer`, async () => {
    const before = workerPids(proxy);
    expect(before.listening).toHaveLength(2);
    expect(before.died).toEqual([]);
    const events = Array.from({ length: ROUNDS }, () => scenarios().flatMap((s) => CUTS.map((how) => ({ scenario: s, how })))).flat();
    expect(events.length).toBeGreaterThanOrEqual(1000);
    const steady = new SteadyClient(proxy.port, ca, HOST, '/steady/ok', 'ok\n');
    const started = Date.now();
    await inBatches(events, CONCURRENCY, ({ scenario, how }, i) => abuse(scenario, how, `${scenario.phase}-${how}-${i}`));
    const seconds = (Date.now() - started) / 1000;
    // The normal client keeps going a moment after the last event: a worker dying of the last cuts shows too.
    await sleep(1_500);
    await steady.stop();
    console.log(`${events.length} client cuts in ${seconds.toFixed(1)} s; ${steady.requests} normal requests alongside`);

    await expectUnharmed(proxy, before.listening, steady);
    // No origin request is left hanging on a client that has gone: each was answered whole or abandoned.
    await waitFor('every origin request to end', () => (origin.open().length === 0 ? true : undefined), 10_000).catch(() => undefined);
    expect(origin.open()).toEqual([]);
    // Every one of these requests is in the access log and in the counter, none as a 200 that never went out.
    const waiting = proxy.lines.filter((l) => l.access === true && String(l.path).startsWith('/waiting-'));
    expect(waiting.length).toBeGreaterThan(0);
    for (const line of waiting) expect(line.status, JSON.stringify(line)).toBe(499);
    // So are pipelined requests whose answer was still queued behind another when the client went.
    const pipelined = events.filter((e) => e.scenario.phase === 'pipelined').length;
    const queued = await waitFor('the queued pipelined requests in the access log', () => {
      const lines = proxy.lines.filter((l) => l.access === true && /^\/pipelined-.*-queued\d\//.test(String(l.path)));
      return lines.length === pipelined * 6 ? lines : undefined;
    });
    for (const line of queued) expect(line, JSON.stringify(line)).toMatchObject({ aborted: true, code: 'KEYEDGE_HTTP_CLIENT_CLOSED' });
  }, 180_000);
});
