import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AbuseSetup, expectUnharmed, inBatches, KIB, metricSum, MIB, SteadyClient, startAbuseSetup, workerPids } from './helpers/abuse.js';
import { sleep } from './helpers/basics.js';
import { frame, H2_CUTS, type H2Cut, H2Client, RawH2, SteadyH2 } from './helpers/h2.js';
import { waitFor } from './helpers/proxy-cluster.js';

// The HTTP/2 counterpart of abuse-client-aborts: clients that go away at every
// phase of an exchange, in every way HTTP/2 allows (one stream reset with
// RST_STREAM CANCEL, the session closed, the TCP connection reset), and
// origins that fail at every phase under an HTTP/2 stream, against
// `keyedge proxy` with two workers while normal HTTP/1.1 and HTTP/2 clients
// run alongside. No action may kill a worker, leave an exception uncaught,
// leave an origin request open, or cost a normal client an answer.
const HOST = 'abuse-h2.lab.test';
// Each round is every scenario in every way (49 events); H2_ROUNDS=20 makes a soak of about a thousand.
const ROUNDS = Number(process.env.H2_ROUNDS ?? 4);
const CONCURRENCY = 24;

let setup: AbuseSetup;

beforeAll(async () => {
  setup = await startAbuseSetup('abuse-h2-aborts', HOST);
}, 180_000);

afterAll(async () => {
  await setup?.close();
});

interface Scenario {
  readonly phase: string;
  /** Starts the exchange on `client`; resolves with the stream to cut (if any) once it is time to cut. */
  readonly run: (client: H2Client, tag: string) => Promise<import('node:http2').ClientHttp2Stream | undefined>;
  /** Origin failures: the client does not cut, it waits for whatever end the proxy gives the stream. */
  readonly originCut?: boolean;
}

const answerPath = (tag: string, framing: string, size: number, delayMs = 0): string => `/${tag}/answer?framing=${framing}&size=${size}&delayMs=${delayMs}`;

/** Resolves when `check` holds, polling; gives up after `timeoutMs` (a scenario then cuts anyway). */
async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check() && Date.now() < deadline) await sleep(5);
}

function scenarios(): Scenario[] {
  const list: Scenario[] = [
    // Mid-body: 64 KiB of a 1 MiB upload sent (with and without a declared length), then gone.
    ...[true, false].map(
      (declared): Scenario => ({
        phase: `request-body-${declared ? 'length' : 'open'}`,
        run: async (client, tag) => {
          const { stream } = client.request({ ':method': 'POST', ':path': `/${tag}/upload`, ...(declared ? { 'content-length': String(MIB) } : {}) }, false);
          stream.write(Buffer.alloc(64 * KIB, 0x78));
          await sleep(30);
          return stream;
        },
      }),
    ),
    // Waiting: the origin answers 8 MiB after 2 s; the client is gone by then (with 400 ms, a loaded CI machine cut
    // one client only after the answer's head went out: logged 200, aborted, as it should be, where this wants 499).
    {
      phase: 'waiting',
      run: async (client, tag) => {
        const { stream } = client.request({ ':path': answerPath(tag, 'cl', 8 * MIB, 2_000) });
        await sleep(100);
        return stream;
      },
    },
    // Ten streams at once on the connection, each mid-answer when the client goes.
    {
      phase: 'many-streams',
      run: async (client, tag) => {
        const streams = Array.from({ length: 10 }, (_, i) => client.request({ ':path': answerPath(`${tag}-${i}`, 'chunked', 8 * MIB) }));
        await until(() => streams.every((s) => s.received() > 64 * KIB));
        return streams[0]!.stream;
      },
    },
  ];
  for (const framing of ['cl', 'chunked']) {
    for (const size of [KIB, 8 * MIB]) {
      const label = `${framing}-${size === KIB ? '1k' : '8m'}`;
      // As the answer head arrives.
      list.push({
        phase: `answer-head-${label}`,
        run: async (client, tag) => {
          const { stream } = client.request({ ':path': answerPath(tag, framing, size) });
          await new Promise<void>((resolve) => {
            stream.once('response', () => resolve());
            stream.once('close', () => resolve());
          });
          return stream;
        },
      });
      // Mid-body.
      list.push({
        phase: `answer-body-${label}`,
        run: async (client, tag) => {
          const request = client.request({ ':path': answerPath(tag, framing, size) });
          await until(() => request.received() >= (size === KIB ? 200 : 256 * KIB) || request.stream.closed);
          return request.stream;
        },
      });
    }
    // Not reading: the stream's window and the buffers fill, then the client goes.
    list.push({
      phase: `answer-stalled-${framing}-8m`,
      run: async (client, tag) => {
        const { stream } = client.request({ ':path': answerPath(tag, framing, 8 * MIB) });
        await new Promise<void>((resolve) => {
          stream.once('response', () => resolve());
          stream.once('close', () => resolve());
        });
        stream.pause();
        await sleep(100);
        return stream;
      },
    });
  }
  // The origin fails under a stream: before answering, mid-upload, mid-head, mid-body (chunked and by length).
  for (const [phase, query] of [
    ['before', 'phase=before&delayMs=20'],
    ['upload', 'phase=upload'],
    ['head', 'phase=head'],
    ['body-cl', `phase=body&framing=cl&size=${MIB}`],
    ['body-chunked', `phase=body&framing=chunked&size=${MIB}`],
  ] as const) {
    list.push({
      phase: `origin-${phase}`,
      originCut: true,
      run: async (client, tag) => {
        const upload = phase === 'upload';
        const request = client.request({ ':method': upload ? 'POST' : 'GET', ':path': `/${tag}/cut?${query}` }, !upload);
        if (upload) request.stream.end(Buffer.alloc(256 * KIB, 0x79));
        await new Promise<void>((resolve) => request.stream.once('close', () => resolve()));
        return undefined;
      },
    });
  }
  return list;
}

/** A client cut mid-frame: a HEADERS frame header promising 64 bytes, 10 sent, then gone (the request head phase). */
async function partialHead(how: H2Cut): Promise<void> {
  const { proxy, ca } = setup;
  const client = new RawH2(proxy.port, ca, HOST);
  await client.secure.catch(() => undefined);
  client.preface();
  client.write(frame(0x1, 0x4, 1, Buffer.alloc(64)).subarray(0, 19));
  await sleep(10);
  if (how === 'reset') client.tls.destroy();
  else client.tls.end();
  await Promise.race([client.closed, sleep(2_000)]);
  client.tls.destroy();
}

const timings = new Map<string, number[]>();

async function abuse(scenario: Scenario, how: H2Cut, tag: string): Promise<void> {
  const client = new H2Client(setup.proxy.port, setup.ca, HOST);
  const started = Date.now();
  try {
    await client.connected;
    const stream = await scenario.run(client, tag);
    if (!scenario.originCut) client.cut(how, stream);
  } finally {
    await client.finish(how === 'stream' ? 2_000 : 200);
    const key = `${scenario.phase}/${how}`;
    timings.set(key, [...(timings.get(key) ?? []), Date.now() - started]);
  }
}

describe('HTTP/2 clients and origins that go away', () => {
  it('a stream reset before any answer is logged 499 with KEYEDGE_HTTP_CLIENT_CLOSED, and its origin request abandoned', async () => {
    const client = new H2Client(setup.proxy.port, setup.ca, HOST);
    await client.connected;
    const { stream } = client.request({ ':path': answerPath('h2-left-waiting', 'cl', 8 * MIB, 3_000) });
    await sleep(300);
    client.cut('stream', stream);
    const line = await waitFor('the access line', () =>
      setup.proxy.lines.find((l) => l.access === true && l.path === '/h2-left-waiting/answer' && l.protocol === 'h2'),
    );
    expect(line).toMatchObject({ status: 499, aborted: true, code: 'KEYEDGE_HTTP_CLIENT_CLOSED' });
    await waitFor('the origin request to be abandoned', () => (setup.origin.abandoned.includes('h2-left-waiting') ? true : undefined), 2_000);
    await client.finish();
  });

  it(`at every phase, ${ROUNDS} rounds: no worker dies, nothing is uncaught, normal clients get every answer`, async () => {
    const { proxy, ca, origin } = setup;
    const before = workerPids(proxy);
    expect(before.listening).toHaveLength(2);
    const events = Array.from({ length: ROUNDS }, () => [
      ...scenarios().flatMap((scenario) => (scenario.originCut ? [{ scenario, how: 'session' as H2Cut }] : H2_CUTS.map((how) => ({ scenario, how })))),
      ...(['session', 'reset'] as const).map((how) => ({ scenario: undefined, how })),
    ]).flat();
    expect(events.length).toBe(ROUNDS * 49);
    const steady = new SteadyClient(proxy.port, ca, HOST, '/steady/ok', 'ok\n');
    const steadyH2 = new SteadyH2(proxy.port, ca, HOST, '/steady-h2/ok', 'ok\n');
    const started = Date.now();
    await inBatches(events, CONCURRENCY, ({ scenario, how }, i) =>
      scenario === undefined ? partialHead(how) : abuse(scenario, how, `${scenario.phase}-${how}-${i}`),
    );
    const seconds = (Date.now() - started) / 1000;
    if (process.env.H2_ROUNDS !== undefined) console.log([...timings].map(([k, v]) => `${k}: ${v.join(',')}`).join('\n'));
    await sleep(1_500);
    await steady.stop();
    await steadyH2.stop();
    console.log(`${events.length} HTTP/2 cuts in ${seconds.toFixed(1)} s; normal requests alongside: ${steady.requests} HTTP/1.1, ${steadyH2.requests} h2`);

    expect(steadyH2.failures).toEqual([]);
    expect(steadyH2.requests).toBeGreaterThan(5);
    await expectUnharmed(proxy, before.listening, steady);
    // Every cut, 8 MiB answers held back by flow control among them, frees its origin request.
    await waitFor('every origin request to end', () => (origin.open().length === 0 ? true : undefined), 10_000).catch(() => undefined);
    const open = origin.open();
    console.log(`origin requests left open: ${open.length}${open.length > 0 ? ` (${open.join(', ')})` : ''}`);
    expect(open).toEqual([]);
    // Requests whose client left before the answer are logged as such, never as a 200 that never went out.
    const waiting = proxy.lines.filter((l) => l.access === true && String(l.path).startsWith('/waiting-'));
    expect(waiting.length).toBeGreaterThan(0);
    for (const line of waiting) expect(line.status, JSON.stringify(line)).toBe(499);
    expect(await metricSum(proxy, 'keyedge_proxy_http2_streams_per_connection_count')).toBeGreaterThan(events.length / 2);
  }, 240_000);
});
