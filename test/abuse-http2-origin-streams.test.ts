import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningWorker } from '../proxy/worker.js';
import { closeSession, h2Connect } from './helpers/h2.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { startOriginWorker } from './helpers/origin-worker.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';

// Hostile origin answers to one stream of an HTTP/2 connection that carries
// others at the same time: what HTTP/1.1 allows and HTTP/2 forbids
// (connection-specific fields, RFC 9113 §8.2.2; names and values §8.2.1),
// interim answers, odd trailers, bodies where none may be, lengths that lie,
// connections closed or reset mid-answer. Each answer is the stream's alone:
// the client gets a whole answer, our 502, or a reset with an error code
// (RFC 9113 §8.1), while the connection's other streams, whose answers are
// still streaming, end with 200 and their exact bytes, no GOAWAY comes, and
// the connection serves the next request. abuse-origin-answers.test.ts and
// abuse-fuzz-origin.test.ts send such answers one request at a time.
const HOST = 's.lab.test';
/** The other streams' answer: large enough to still be flowing when the hostile one comes. */
const OTHER = 'o'.repeat(1_000_000);
/** The hostile answers come this long after their request, while the others' bodies flow. */
const HOSTILE_DELAY_MS = 150;

const whole = { status: 200, body: 'ok', rst: 0 };
const refused = { status: 502, body: 'origin unreachable\n', rst: 0, code: 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE' };
/**
 * A head went out, then the answer broke off: only a reset with an error code can say so. What of the body came
 * before the break is relayed; a loaded machine may submit the reset before nghttp2 sent all of it (a prefix then).
 */
const cut = (body: string) => ({ status: 200, body, rst: http2.constants.NGHTTP2_INTERNAL_ERROR, prefix: true });
const empty = (status: number) => ({ status, body: '', rst: 0 });

interface Case {
  readonly answer: string | ((socket: net.Socket) => void);
  readonly method?: string;
  readonly expected: { status: number; body: string; rst: number; code?: string; prefix?: boolean };
  /** Fields the client must (value) or must not (null) see. */
  readonly fields?: Record<string, string | null>;
  readonly trailers?: Record<string, string>;
}

/** Writes `bytes`, then resets the origin connection (TCP RST) 50 ms later. */
const thenReset =
  (bytes: string) =>
  (socket: net.Socket): void => {
    socket.write(bytes);
    setTimeout(() => socket.resetAndDestroy(), 50);
  };

const ok = (fields: string): string => `HTTP/1.1 200 OK\r\n${fields}content-length: 2\r\n\r\nok`;
const CONNECTION_FIELDS = { connection: null, 'keep-alive': null, 'proxy-connection': null, 'transfer-encoding': null, upgrade: null, te: null };

const CASES: Record<string, Case> = {
  '/connection-close': { answer: (s) => s.end(ok('Connection: close\r\n')), expected: whole, fields: CONNECTION_FIELDS },
  '/keep-alive': { answer: ok('Connection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\n'), expected: whole, fields: CONNECTION_FIELDS },
  '/proxy-connection': { answer: ok('Proxy-Connection: keep-alive\r\n'), expected: whole, fields: CONNECTION_FIELDS },
  '/upgrade-named': {
    answer: ok('Upgrade: h2c\r\nConnection: Upgrade, x-hop\r\nx-hop: 1\r\n'),
    expected: whole,
    fields: { ...CONNECTION_FIELDS, 'x-hop': null },
  },
  '/te-trailers': { answer: ok('TE: trailers\r\nHTTP2-Settings: AAA\r\n'), expected: whole, fields: { ...CONNECTION_FIELDS, 'http2-settings': null } },
  '/chunked': { answer: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n', expected: whole, fields: CONNECTION_FIELDS },
  '/upper-case': { answer: ok('X-Upper-CASE: Value\r\n'), expected: whole, fields: { 'x-upper-case': 'Value' } },
  '/padded-value': { answer: ok('x-padded:   a b \t\r\nx-empty: \r\n'), expected: whole, fields: { 'x-padded': 'a b', 'x-empty': '' } },
  '/long-value': { answer: ok(`x-long: ${'v'.repeat(15_000)}\r\n`), expected: whole, fields: { 'x-long': 'v'.repeat(15_000) } },
  '/many-fields': { answer: ok(Array.from({ length: 1000 }, (_, i) => `x-f${i}: ${i}\r\n`).join('')), expected: whole, fields: { 'x-f999': '999' } },
  '/many-cookies': { answer: ok('set-cookie: a=1\r\n'.repeat(100)), expected: whole },
  '/prototype-names': { answer: ok('__proto__: 1\r\nconstructor: 2\r\n'), expected: whole, fields: { constructor: '2' } },
  '/pseudo-status': { answer: ok(':status: 500\r\n'), expected: refused },
  '/pseudo-path': { answer: ok(':path: /x\r\n'), expected: refused },
  '/empty-name': { answer: ok(': v\r\n'), expected: refused },
  '/obs-fold': { answer: ok('x-fold: a\r\n  b\r\n'), expected: refused },
  '/continue-unasked': { answer: `HTTP/1.1 100 Continue\r\n\r\n${ok('')}`, expected: whole },
  '/early-hints': { answer: `HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n${ok('')}`, expected: whole },
  '/early-hints-many': { answer: `${'HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n'.repeat(2000)}${ok('')}`, expected: whole },
  '/switching': { answer: 'HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\nPRI * HTTP/2.0', expected: refused },
  '/hints-then-close': { answer: (s) => s.end('HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n'), expected: refused },
  '/hints-then-reset': { answer: thenReset('HTTP/1.1 103 Early Hints\r\n\r\n'), expected: refused },
  '/trailers': {
    answer: 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n',
    expected: whole,
    trailers: { 'x-t': '1' },
  },
  '/trailers-declared-none': { answer: 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2\r\nok\r\n0\r\n\r\n', expected: whole },
  '/trailers-forbidden': {
    answer:
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2\r\nok\r\n0\r\nx-t:  1 \r\nconnection: close\r\nhost: x\r\ncontent-encoding: gzip\r\nte: trailers\r\n\r\n',
    expected: whole,
    trailers: { 'x-t': '1' },
  },
  '/trailer-pseudo': {
    answer: 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2\r\nok\r\n0\r\n:status: 500\r\n\r\n',
    expected: cut('ok'),
  },
  '/head-close': { answer: (s) => s.end('HTTP/1.1 200 OK\r\ncontent-le'), expected: refused },
  '/head-reset': { answer: thenReset('HTTP/1.1 200 OK\r\ncontent-le'), expected: refused },
  '/body-reset': {
    answer: thenReset('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc'),
    expected: cut('abc'),
  },
  '/length-short': { answer: (s) => s.end('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc'), expected: cut('abc') },
  '/length-long': { answer: 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA', expected: whole },
  '/to-close': { answer: (s) => s.end('HTTP/1.1 200 OK\r\n\r\nok'), expected: whole },
  '/head-with-body': { method: 'HEAD', answer: (s) => s.end('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello'), expected: empty(200) },
  '/head-with-trailer': { method: 'HEAD', answer: 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n', expected: empty(200) },
  '/204-with-body': {
    answer: (s) => s.end('HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello'),
    expected: empty(204),
    fields: { 'content-length': null },
  },
  '/204-with-trailer': { answer: 'HTTP/1.1 204 No Content\r\ntrailer: x-t\r\n\r\n', expected: empty(204) },
  '/304-with-body': { answer: (s) => s.end('HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\nhello'), expected: empty(304) },
};

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const lines: Record<string, unknown>[] = [];
const sockets = new Set<net.Socket>();

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('s', lab.keys.ec, [HOST]);
  const answers: Record<string, (socket: net.Socket) => void> = {
    '/other': (s) => void setTimeout(() => s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${OTHER.length}\r\n\r\n${OTHER}`), 50),
  };
  for (const [path, { answer }] of Object.entries(CASES))
    answers[path] = (s) => void setTimeout(() => (typeof answer === 'string' ? s.write(answer) : answer(s)), HOSTILE_DELAY_MS);
  origin = scriptedOrigin(answers, { sockets });
  proxy = await startOriginWorker(lab, {
    certificate: { name: 's', chain: cert.file },
    host: HOST,
    origin,
    limits: { originResponseTimeoutMs: 5000, originReadTimeoutMs: 5000 },
    logName: 'origin-streams-test',
    lines,
  });
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

interface Got {
  status?: number;
  headers?: http2.IncomingHttpHeaders;
  trailers?: http2.IncomingHttpHeaders;
  body: string;
  rst?: number;
  gaveUp?: boolean;
}

/** One stream's whole story: its final head, body, trailers and how it closed (or that the client gave up). */
function exchange(session: http2.ClientHttp2Session, path: string, method = 'GET'): Promise<Got> {
  return new Promise((resolve) => {
    const stream = session.request({ ':path': path, ':method': method });
    const got: Got = { body: '' };
    stream.on('response', (headers) => {
      got.status = Number(headers[':status']);
      got.headers = headers;
    });
    stream.on('trailers', (trailers) => (got.trailers = trailers));
    stream.on('data', (chunk: Buffer) => (got.body += chunk.toString('latin1')));
    stream.on('error', () => undefined);
    const patience = setTimeout(() => {
      got.gaveUp = true;
      stream.close(http2.constants.NGHTTP2_CANCEL);
    }, 20_000);
    stream.on('close', () => {
      clearTimeout(patience);
      got.rst = stream.rstCode;
      resolve(got);
    });
  });
}

describe('a hostile origin answer to one of several concurrent HTTP/2 streams', () => {
  it.each(Object.keys(CASES))('%s: its stream alone is answered, refused or reset; the others end whole, no GOAWAY', async (path) => {
    const c = CASES[path]!;
    // Node's client resets an answer of more than 128 fields by default (ENHANCE_YOUR_CALM); nghttp2's take them.
    const session = h2Connect(proxy.ports[0]!, ca, HOST, { maxHeaderListPairs: 5000 });
    const goaways: number[] = [];
    session.on('goaway', (code: number) => goaways.push(code));
    try {
      const others = [exchange(session, '/other'), exchange(session, '/other')];
      const hostile = exchange(session, path, c.method);
      others.push(exchange(session, '/other'));
      const got = await hostile;
      const { prefix, ...expected } = c.expected;
      const body = prefix === true && expected.body.startsWith(got.body) ? expected.body : got.body;
      expect({ status: got.status, body, rst: got.rst, code: got.headers?.['x-keyedge-error'], gaveUp: got.gaveUp }).toEqual({
        ...expected,
        code: expected.code,
        gaveUp: undefined,
      });
      for (const [name, value] of Object.entries(c.fields ?? {})) expect(got.headers?.[name] ?? null, name).toBe(value);
      if (c.trailers !== undefined) expect(Object.fromEntries(Object.entries(got.trailers ?? {}))).toEqual(c.trailers);
      for (const other of await Promise.all(others))
        expect({ status: other.status, bytes: other.body.length, rst: other.rst }).toEqual({ status: 200, bytes: OTHER.length, rst: 0 });
      const next = await exchange(session, '/other');
      expect({ status: next.status, bytes: next.body.length, rst: next.rst }).toEqual({ status: 200, bytes: OTHER.length, rst: 0 });
      expect(goaways).toEqual([]);
      // Nothing the origin did is the proxy's own fault: no error-level line (warn for the origin's failures is expected).
      expect(lines.filter((l) => (l.level as number) >= 50)).toEqual([]);
    } finally {
      await closeSession(session);
    }
  });
});
