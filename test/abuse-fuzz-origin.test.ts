import http2 from 'node:http2';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricSum, workerPids } from './helpers/abuse.js';
import { type Message, nextAnswer } from './helpers/fuzz-h1-parse.js';
import { type OriginAnswer, originAnswer } from './helpers/fuzz-origin.js';
import { runFuzzCases } from './helpers/fuzz-run.js';
import { h2Connect } from './helpers/h2.js';
import { type HostileOrigin, startHostileOrigin } from './helpers/hostile-origin.js';
import { sleep } from './helpers/basics.js';
import { type OriginProxy, startOriginProxy } from './helpers/origin-proxy.js';
import { prng } from './helpers/prng.js';
import { type ClusterProxy, waitFor } from './helpers/proxy-cluster.js';

// A seeded, mutational fuzz of the origin → proxy → client direction: a raw
// TCP origin (helpers/hostile-origin.ts) answers each request with a random
// mutation of a valid HTTP/1.1 answer (helpers/fuzz-origin.ts: interim
// floods, odd status lines, 204/304/HEAD answers with content, an unasked
// 101, conflicting Content-Length, Transfer-Encoding with it, bad chunks and
// trailers, obs-fold, CTLs in fields, huge or many fields, Connection mixes,
// a smuggled second answer, a cut at any byte), written in random pieces
// with random delays. Each case is an HTTP/1.1 client (raw TLS) and an
// HTTP/2 client (node:http2) side by side, each sending two to four requests
// one after the other on one kept-alive connection (the HTTP/1.1 one
// sometimes pipelines them; either sometimes gives up on an answer midway),
// through `keyedge proxy` (one worker) whose origin connections are reused
// across both and across cases. Every request carries a unique marker (path,
// answer's `x-marker`, body). The invariants, per case:
// - the HTTP/1.1 client's bytes split strictly into whole answers
//   (helpers/fuzz-h1-parse.ts), one per request, no 1xx; an HTTP/2 stream
//   gets a head or a reset;
// - an answer not the proxy's own (x-keyedge-error) is its request's: its
//   `x-marker` is that request's marker alone, and no other request's
//   marker nor the smuggled answer is in it (no desynchronisation);
// - an origin answer that was valid and whole reaches the client as it was
//   (status and body), on either protocol (an HTTP/1.2 status line, and
//   framing or connection fields in trailers, included); one the origin
//   broke off never reaches it as whole (RFC 9112 §8), unless its body ran to
//   the close; one whose status is outside 100–599 gets the proxy's 502 on
//   either (RFC 9110 §15);
// - no request reaches an origin connection after an answer whose framing
//   was bad or which closed it, in its head or its trailers (the rest of that
//   answer would be read as the next one's);
// - a normal request on a fresh connection afterwards gets its own 200; the
//   worker never dies; nothing is uncaught.
//
// Long runs: KEYEDGE_FUZZ_SEED (default 1) and KEYEDGE_FUZZ_COUNT (default
// 30 cases, about 5 s) choose the cases; KEYEDGE_FUZZ_FIRST skips to a case
// (to replay one: its seed, FIRST=case, COUNT=1; a break that comes of an
// origin connection an earlier case left may need its run from case 0, and
// one of timing, several runs). Every break is printed
// with the answers of its case (their mutations and bytes) before the test
// fails; KEYEDGE_FUZZ_STATS=1 prints what the clients got, by status and code.
const HOST = 'ofz.lab.test';
const SEED = Number(process.env.KEYEDGE_FUZZ_SEED ?? 1);
const COUNT = Number(process.env.KEYEDGE_FUZZ_COUNT ?? 30);
const FIRST = Number(process.env.KEYEDGE_FUZZ_FIRST ?? 0);
/** How long a client waits for an answer: past the proxy's origin timeouts below, with a margin for a loaded machine. */
const PATIENCE_MS = 8000;
/** Node's client resets an answer of more than 128 fields by default (ENHANCE_YOUR_CALM); nghttp2 clients take them. */
const H2_OPTIONS = { maxHeaderListPairs: 10_000 };
/** Another request's marker, wherever it shows. */
const MARKER = /m\d+xh[12]r\d+x[0-9a-z]+Z/g;

let setup: OriginProxy<HostileOrigin>;
let proxy: ClusterProxy;
let origin: HostileOrigin;
let ca: string;

beforeAll(async () => {
  setup = await startOriginProxy('ofz', HOST, startHostileOrigin, {
    workers: 1,
    limits: { originResponseTimeoutMs: 2000, originReadTimeoutMs: 1000 },
    // A signature is no finding here: at a load average past 10 the key server went without CPU for longer than the
    // product's 250 ms, and that case's and the next one's handshakes failed (alert 80), read as broken answers.
    keyserverTimeoutMs: 2000,
  });
  ({ proxy, origin, ca } = setup);
}, 90_000);

afterAll(async () => {
  await setup?.close();
});

/** One request of a case: its method and marker, and the answer registered for it. */
interface Planned {
  readonly method: string;
  readonly marker: string;
  readonly answer: OriginAnswer;
  /** The client gives up on the answer this long after its request (stream cancelled, connection closed); undefined: it waits. */
  readonly abortMs: number | undefined;
}

function plan(c: number, h2: boolean, n: number): Planned[] {
  const r = prng(SEED * 7919 + c * 2 + (h2 ? 1 : 0));
  return Array.from({ length: n }, (_, i) => {
    const method = r() < 0.7 ? 'GET' : r() < 0.5 ? 'HEAD' : 'POST';
    const marker = `m${c}x${h2 ? 'h2' : 'h1'}r${i}x${Math.floor(r() * 36 ** 4).toString(36)}Z`;
    const answer = originAnswer(SEED, c, i, h2, method, marker);
    origin.answers.set(marker, answer);
    return { method, marker, answer, abortMs: r() < 0.08 ? Math.floor(r() * 40) : undefined };
  });
}

/**
 * What is wrong with an answer the client got (status, fields, body) for `p`; undefined when nothing. `whole`: the
 * client got it as whole (HTTP/1.1: its framing ended; HTTP/2: END_STREAM, no reset).
 */
function wrongAnswer(p: Planned, status: number, markers: readonly string[], own: boolean, body: string, whole: boolean): string | undefined {
  if (status < 200) return `an interim ${status} reached the client`;
  for (const m of body.match(MARKER) ?? []) if (m !== p.marker) return `another request's marker ${m} in the body`;
  if (body.includes('SMUGGLED') || markers.includes('SMUGGLED')) return 'the smuggled answer reached the client';
  const e = p.answer.cut === undefined && p.abortMs === undefined ? p.answer.expect : undefined;
  // RFC 9110 §15: a status outside 100–599 is invalid; both protocols get the proxy's 502, never the origin's status.
  if (p.answer.refused && p.abortMs === undefined && !(own && status === 502)) return `${own ? 'our' : 'the origin’s'} ${status} for a status outside 100–599`;
  if (own) return e !== undefined ? `the proxy's own ${status} for a valid answer` : undefined;
  if (markers.length !== 1 || markers[0] !== p.marker) return `x-marker ${JSON.stringify(markers)}`;
  // RFC 9112 §8: an answer the origin broke off is incomplete; the client must be able to tell (a reset, a close
  // short of its framing), unless its body ran to the close anyway.
  if (whole && p.answer.cut !== undefined && !p.answer.toClose) return 'an answer the origin broke off passed off as whole';
  if (e !== undefined && (e.status !== status || e.body !== body))
    return `got ${status} ${JSON.stringify(body.slice(0, 80))} (${body.length} bytes) for ${e.status} ${JSON.stringify(e.body.slice(0, 80))} (${e.body.length})`;
  return undefined;
}

/** A TLS connection to the proxy whose received bytes accumulate. */
/** `secured`, `error`: how the connection went, for a break line (a handshake failed on a loaded machine is not an answer lost). */
interface H1State {
  received: string;
  closed: boolean;
  secured: boolean;
  error?: string;
}

async function h1Connect(): Promise<{ socket: tls.TLSSocket; state: H1State }> {
  const state: H1State = { received: '', closed: false, secured: false };
  const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername: HOST, ca, ALPNProtocols: ['http/1.1'] });
  socket.on('data', (chunk: Buffer) => (state.received += chunk.toString('latin1')));
  socket.on('error', (err: Error) => (state.error ??= err.message));
  socket.once('close', () => (state.closed = true));
  await new Promise<void>((resolve) => {
    socket.once('secureConnect', () => {
      state.secured = true;
      resolve();
    });
    socket.once('close', () => resolve());
  });
  return { socket, state };
}

/** The answers in `received` to `plans` in order (a HEAD's has no body), and the first error; `closed`: nothing more comes. */
function h1Answers(received: string, plans: readonly Planned[], closed: boolean): { messages: Message[]; rest: string; error?: string } {
  const messages: Message[] = [];
  let rest = received;
  while (rest !== '' && messages.length < plans.length) {
    const p = plans[messages.length]!;
    const step = nextAnswer(rest, () => p.method === 'HEAD', closed);
    if (step === undefined) break;
    if ('error' in step) return { messages, rest, error: step.error };
    messages.push(step.message);
    rest = rest.slice(step.length);
  }
  return { messages, rest };
}

/** Sends `plans` on `conn` (all at once when `pipelined`), and checks what came back. */
async function h1Exchange(conn: Awaited<ReturnType<typeof h1Connect>>, plans: readonly Planned[], stats: (s: string) => void): Promise<string[]> {
  const { socket, state } = conn;
  state.received = '';
  for (const p of plans)
    socket.write(`${p.method} /fz/${p.marker} HTTP/1.1\r\nhost: ${HOST}\r\n${p.method === 'POST' ? 'content-length: 5\r\n\r\nhello' : '\r\n'}`);
  const started = Date.now();
  const abortMs = plans.length === 1 ? plans[0]!.abortMs : undefined;
  if (abortMs !== undefined) {
    await sleep(abortMs);
    socket.destroy();
    stats('h1 aborted');
    const m = state.received.match(MARKER)?.find((x) => x !== plans[0]!.marker);
    return m === undefined && !state.received.includes('SMUGGLED')
      ? []
      : [`h1 ${plans[0]!.marker}: another answer in what came before the client left: ${JSON.stringify(state.received.slice(0, 400))}`];
  }
  let got = h1Answers('', plans, false);
  for (;;) {
    got = h1Answers(state.received, plans, false);
    if (got.error !== undefined || got.messages.length === plans.length || state.closed || Date.now() - started > PATIENCE_MS) break;
    await sleep(5);
  }
  // Whatever follows the answers within a moment would be read as the next one's.
  await sleep(20);
  got = h1Answers(state.received, plans, false);
  const breaks: string[] = [];
  const why = (p: Planned, s: string): string => `h1 ${p.method} ${p.marker}: ${s}; got ${JSON.stringify(state.received.slice(0, 400))}`;
  if (got.error !== undefined) breaks.push(why(plans[got.messages.length]!, `a malformed answer: ${got.error}`));
  got.messages.forEach((m, i) => {
    const p = plans[i]!;
    const status = Number(m.start.slice(9, 12));
    const own = m.headers.has('x-keyedge-error');
    stats(`h1 ${status} ${m.headers.get('x-keyedge-error')?.[0] ?? ''}`);
    const wrong = wrongAnswer(p, status, m.headers.get('x-marker') ?? [], own, m.body, true);
    if (wrong !== undefined) breaks.push(why(p, wrong));
  });
  if (got.error === undefined && got.messages.length === plans.length && got.rest !== '') breaks.push(why(plans.at(-1)!, 'bytes after the last answer'));
  if (got.error === undefined && got.messages.length < plans.length) {
    const p = plans[got.messages.length]!;
    // An answer read to the close is whole once the connection closed; one that breaks off is the origin's doing.
    const toClose = state.closed ? nextAnswer(got.rest, () => p.method === 'HEAD', true) : undefined;
    if (toClose !== undefined && !('error' in toClose)) breaks.push(why(p, 'an answer framed by the close'));
    stats(state.closed ? 'h1 closed' : 'h1 no answer');
    if (!state.closed) breaks.push(why(p, `no whole answer in ${PATIENCE_MS} ms`));
    else if (p.answer.expect !== undefined && p.answer.cut === undefined) breaks.push(why(p, 'closed without the whole answer to a valid one'));
  }
  if (got.error !== undefined) socket.destroy();
  return breaks;
}

/** The HTTP/1.1 client: one request after the other (or, when `pipelined`, all at once) on one connection while the proxy keeps it open. */
async function h1Client(plans: readonly Planned[], pipelined: boolean, stats: (s: string) => void): Promise<string[]> {
  const breaks: string[] = [];
  let conn: Awaited<ReturnType<typeof h1Connect>> | undefined;
  for (let i = 0; i < plans.length; i++) {
    if (conn === undefined || conn.state.closed || conn.socket.destroyed) conn = await h1Connect();
    const batch = pipelined ? plans.slice(i) : [plans[i]!];
    breaks.push(...(await h1Exchange(conn, batch, stats)));
    if (pipelined) break;
  }
  conn?.socket.destroy();
  return breaks;
}

/** One stream: its final head, body and reset code, or nothing after PATIENCE_MS. */
/**
 * `error` and `sessionEnded` tell a reset the proxy sent from the client's own end of the stream: a connection that
 * failed (its TLS handshake too: a key operation past keyserver.timeoutMs on a loaded machine) ends its streams
 * with the same code, INTERNAL_ERROR, and no head, and the next request opens a new connection.
 */
function h2Stream(
  session: http2.ClientHttp2Session,
  p: Planned,
): Promise<{ head?: http2.IncomingHttpHeaders; body: string; rst?: number; timedOut: boolean; error?: string; sessionEnded?: boolean }> {
  return new Promise((resolve) => {
    let head: http2.IncomingHttpHeaders | undefined;
    let body = '';
    let stream: http2.ClientHttp2Stream;
    const timer = setTimeout(() => {
      stream?.close();
      resolve({ head, body, timedOut: true });
    }, PATIENCE_MS);
    try {
      stream = session.request({ ':method': p.method, ':path': `/fz/${p.marker}` }, { endStream: p.method !== 'POST' });
      if (p.abortMs !== undefined) setTimeout(() => stream.close(http2.constants.NGHTTP2_CANCEL), p.abortMs);
    } catch {
      clearTimeout(timer);
      return resolve({ body, rst: -1, timedOut: false });
    }
    stream.on('response', (h) => {
      if (Number(h[':status']) >= 200) head = h;
    });
    stream.on('data', (chunk: Buffer) => (body += chunk.toString('latin1')));
    let error: string | undefined;
    stream.on('error', (err: Error & { code?: string }) => (error = err.code ?? err.message));
    stream.on('close', () => {
      clearTimeout(timer);
      resolve({ head, body, rst: stream.rstCode, timedOut: false, error, sessionEnded: session.destroyed });
    });
    if (p.method === 'POST') stream.end('hello');
  });
}

/** The HTTP/2 client: each request after the last one's answer, on one session while the proxy keeps it. */
async function h2Client(plans: readonly Planned[], stats: (s: string) => void): Promise<string[]> {
  const breaks: string[] = [];
  let session: http2.ClientHttp2Session | undefined;
  for (const p of plans) {
    if (session === undefined || session.closed || session.destroyed) session = h2Connect(proxy.port, ca, HOST, H2_OPTIONS);
    const got = await h2Stream(session, p);
    const why = (s: string): string => `h2 ${p.method} ${p.marker}: ${s}; got ${JSON.stringify({ ...got, body: got.body.slice(0, 200) })}`;
    if (got.timedOut) breaks.push(why(`no end in ${PATIENCE_MS} ms`));
    const valid = p.answer.expect !== undefined && p.answer.cut === undefined && p.abortMs === undefined;
    if (got.head === undefined) {
      stats(`h2 reset ${got.rst}`);
      if (valid) breaks.push(why('no answer to a valid one'));
      continue;
    }
    const status = Number(got.head[':status']);
    const code = got.head['x-keyedge-error'] as string | undefined;
    stats(`h2 ${status} ${code ?? ''}${got.rst === 0 ? '' : ` rst ${got.rst}`}`);
    const markers = ([] as string[]).concat(got.head['x-marker'] ?? []);
    const wrong = wrongAnswer(p, status, markers, code !== undefined, got.body, got.rst === 0);
    if (wrong !== undefined) breaks.push(why(wrong));
    else if (valid && got.rst !== 0) breaks.push(why(`a valid answer reset (${got.rst})`));
  }
  if (session !== undefined) session.destroy();
  return breaks;
}

const stats: Record<string, number> = {};
const count = (what: string): void => void (stats[what] = (stats[what] ?? 0) + 1);
let deaths = 0;

async function runCase(c: number): Promise<string[]> {
  const r = prng(SEED * 31 + c);
  const h1 = plan(c, false, 2 + Math.floor(r() * 3));
  const h2 = plan(c, true, 2 + Math.floor(r() * 3));
  const reusedBefore = origin.reused.length;
  const linesBefore = proxy.lines.length;
  const breaks = (await Promise.all([h1Client(h1, r() < 0.3, count), h2Client(h2, count)])).flat();
  breaks.push(...origin.reused.slice(reusedBefore).map((s) => `a request reached a connection it must not have: ${s}`));

  const { socket, state } = await h1Connect();
  socket.write(`GET /control/c${c} HTTP/1.1\r\nhost: ${HOST}\r\nconnection: close\r\n\r\n`);
  await waitFor('the control answer', () => (state.closed ? true : undefined), PATIENCE_MS).catch(() => socket.destroy());
  const control = nextAnswer(state.received, () => false, true);
  if (control === undefined || 'error' in control || !control.message.start.startsWith('HTTP/1.1 200 ') || control.message.body !== `plain /control/c${c}`)
    breaks.push(
      `a normal request afterwards got ${JSON.stringify(state.received.slice(0, 300))} (handshake ${state.secured ? 'done' : 'not done'}${state.error === undefined ? '' : `; ${state.error}`})`,
    );
  const died = workerPids(proxy).died.length;
  if (died > deaths) {
    deaths = died;
    breaks.push(
      `the worker died: ${JSON.stringify(proxy.lines.filter((l) => l.level === 'error' || l.level === 'fatal' || Number(l.level) >= 50).slice(-4)).slice(0, 3000)}`,
    );
  }
  if (breaks.length === 0) return [];
  // What the proxy said meanwhile besides access lines (a reload, a key-server outage, a worker's replacement).
  const said = proxy.lines.slice(linesBefore).filter((l) => l.access !== true);
  if (said.length > 0) breaks.push(`the proxy said: ${JSON.stringify(said.slice(-6)).slice(0, 3000)}`);
  const answers = [...h1, ...h2].map((p) => `  ${p.marker} ${p.method} [${p.answer.notes.join('; ')}] ${JSON.stringify(p.answer.bytes.slice(0, 400))}`);
  return [`seed ${SEED} case ${c}:\n  ${breaks.join('\n  ')}\n${answers.join('\n')}`];
}

describe('random hostile origin answers through the proxy', () => {
  it(`seed ${SEED}, cases ${FIRST}..${FIRST + COUNT - 1}: no desynchronisation, malformed answer, reused bad connection or worker death`, async () => {
    const breaks = await runFuzzCases(FIRST, COUNT, runCase);
    if (process.env.KEYEDGE_FUZZ_STATS === '1') console.error(stats);
    expect(breaks).toEqual([]);
    expect(workerPids(proxy).died).toEqual([]);
    expect(await metricSum(proxy, 'keyedge_proxy_uncaught_errors_total')).toBe(0);
  }, 600_000);
});
