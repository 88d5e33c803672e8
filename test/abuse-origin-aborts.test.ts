import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AbuseSetup,
  CUTS,
  type Cut,
  expectUnharmed,
  inBatches,
  KIB,
  MIB,
  RawClient,
  startAbuseSetup,
  SteadyClient,
  workerPids,
  wsUpgradeHead,
} from './helpers/abuse.js';
import { sleep } from './helpers/basics.js';

// Origins that go away at every phase of an exchange (FIN after a
// half-close, FIN, RST), over a thousand times against `keyedge proxy` with
// two workers, while a normal client runs alongside. Each client is told what
// happened the only way left (our 502 before an answer, a cut connection
// after its head), and no worker dies of it.
const HOST = 'abuse-origin.lab.test';
const ROUNDS = 34;
const CONCURRENCY = 24;

let setup: AbuseSetup;

beforeAll(async () => {
  setup = await startAbuseSetup('abuse-origin', HOST);
}, 90_000);

afterAll(async () => {
  await setup?.close();
});

interface Scenario {
  readonly phase: string;
  readonly request: (tag: string, how: Cut) => string;
  /** What the client must have seen: the first line of the answer. */
  readonly expected: RegExp;
}

const cutPath = (tag: string, how: Cut, query: string): string => `/${tag}/cut?how=${how}&${query}`;
const get = (query: string) => (tag: string, how: Cut) => `GET ${cutPath(tag, how, query)} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`;
const BAD_GATEWAY = /^HTTP\/1\.1 502 /;

function scenarios(): Scenario[] {
  const upload = 'u'.repeat(256 * KIB);
  const list: Scenario[] = [
    // Before answering: at once, and after the proxy has waited a while.
    { phase: 'before', request: get('phase=before'), expected: BAD_GATEWAY },
    { phase: 'before-late', request: get('phase=before&delayMs=150'), expected: BAD_GATEWAY },
    // While the request body streams to it.
    {
      phase: 'upload-length',
      request: (tag, how) =>
        `POST ${cutPath(tag, how, 'phase=upload')} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\nContent-Length: ${upload.length}\r\n\r\n${upload}`,
      expected: BAD_GATEWAY,
    },
    {
      phase: 'upload-chunked',
      request: (tag, how) =>
        `POST ${cutPath(tag, how, 'phase=upload')} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n${upload.length.toString(16)}\r\n${upload}\r\n0\r\n\r\n`,
      expected: BAD_GATEWAY,
    },
    // Mid-head.
    { phase: 'head', request: get('phase=head'), expected: BAD_GATEWAY },
    // After the 101: the WebSocket is open when the origin goes.
    { phase: 'ws-open', request: (tag, how) => wsUpgradeHead(HOST, `/${tag}/ws?cut=${how}`), expected: /^HTTP\/1\.1 101 / },
  ];
  // Mid-body: half of a 1 KiB answer, 256 KiB of an 8 MiB one. The head went out: the client gets a cut connection.
  for (const framing of ['cl', 'chunked']) {
    for (const size of [KIB, 8 * MIB])
      list.push({
        phase: `body-${framing}-${size === KIB ? '1k' : '8m'}`,
        request: get(`phase=body&framing=${framing}&size=${size}`),
        expected: /^HTTP\/1\.1 200 /,
      });
  }
  return list;
}

interface Outcome {
  readonly phase: string;
  readonly how: Cut;
  readonly first: string;
  readonly received: number;
  readonly closed: boolean;
}

async function exchange(scenario: Scenario, how: Cut, tag: string): Promise<Outcome> {
  const client = new RawClient(setup.proxy.port, setup.ca, HOST);
  await client.secure;
  client.write(scenario.request(tag, how));
  // The proxy must end every one of these by itself: its answer with Connection: close, or a cut.
  const closed = await Promise.race([client.closed.then(() => true), sleep(15_000).then(() => false)]);
  client.tls.destroy();
  return { phase: scenario.phase, how, first: client.head.split('\r\n', 1)[0] ?? '', received: client.received, closed };
}

describe('origins that go away', () => {
  it(`at every phase, ${ROUNDS} rounds: each client is told, no worker dies, nothing is uncaught, a normal client gets every answer`, async () => {
    const { proxy } = setup;
    const before = workerPids(proxy);
    expect(before.listening).toHaveLength(2);
    const events = Array.from({ length: ROUNDS }, () => scenarios().flatMap((s) => CUTS.map((how) => ({ scenario: s, how })))).flat();
    expect(events.length).toBeGreaterThanOrEqual(1000);
    const steady = new SteadyClient(proxy.port, setup.ca, HOST, '/steady/ok', 'ok\n');
    const started = Date.now();
    const wrong: string[] = [];
    await inBatches(events, CONCURRENCY, async ({ scenario, how }, i) => {
      const outcome = await exchange(scenario, how, `${scenario.phase}-${how}-${i}`);
      if (!outcome.closed || !scenario.expected.test(outcome.first)) wrong.push(JSON.stringify(outcome));
      // An 8 MiB answer cut after 256 KiB must not reach the client whole.
      if (scenario.phase.endsWith('-8m') && outcome.received >= 8 * MIB) wrong.push(`whole answer despite the cut: ${JSON.stringify(outcome)}`);
    });
    const seconds = (Date.now() - started) / 1000;
    await sleep(1_500);
    await steady.stop();
    console.log(`${events.length} origin cuts in ${seconds.toFixed(1)} s; ${steady.requests} normal requests alongside`);
    expect(wrong.slice(0, 20)).toEqual([]);
    await expectUnharmed(proxy, before.listening, steady);
  }, 180_000);
});
