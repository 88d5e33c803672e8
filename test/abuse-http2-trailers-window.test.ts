import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { closeSession, frame, h2Connect, headerFrames, hpackLiteral, RawH2 } from './helpers/h2.js';
import { startOriginWorker } from './helpers/origin-worker.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';

// An origin answer that declares trailers (RFC 9110 §6.5) goes out on HTTP/2
// with its END_STREAM on the trailers' HEADERS frame, which Node sends only
// once nghttp2 has read the body's end through flow control: a client whose
// stream window stays shut (SETTINGS_INITIAL_WINDOW_SIZE 0, or exactly the
// body's length, and never a WINDOW_UPDATE, RFC 9113 §6.9) never lets it.
// Before, nothing ended such a stream: its body was all written (no write
// refused, so no send-stall clock), the ended-answer bound skipped it (its
// writable side had finished), the idle deadline waits for no stream open:
// the stream, its concurrency slot and its connection were held for ever,
// with no access line. It must be cut after limits.sendTimeoutMs, logged as
// a send timeout, and the connection then closed once idle; a client that
// takes the answer still gets it whole, trailers and all.
const HOST = 't.lab.test';
const SEND_TIMEOUT_MS = 1000;
/** Generous: the bound is SEND_TIMEOUT_MS from the answer's end, seen at a one-second tick. */
const CUT_WITHIN_MS = 10_000;

const EMPTY_WITH_TRAILERS = 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n0\r\nx-t: 1\r\n\r\n';
const BODY_WITH_TRAILERS = 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n';

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const lines: Record<string, unknown>[] = [];
const sockets = new Set<net.Socket>();

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('t', lab.keys.ec, [HOST]);
  origin = scriptedOrigin(
    {
      '/empty-shut': EMPTY_WITH_TRAILERS,
      '/empty-open': EMPTY_WITH_TRAILERS,
      '/body-open': BODY_WITH_TRAILERS,
      // The body, then its end and trailers a moment later: the client's window of exactly the body's length is spent by then.
      '/body-then-end': (s) => {
        s.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2\r\nok\r\n');
        setTimeout(() => s.write('0\r\nx-t: 1\r\n\r\n'), 200);
      },
    },
    { sockets },
  );
  proxy = await startOriginWorker(lab, {
    certificate: { name: 't', chain: cert.file },
    host: HOST,
    origin,
    limits: { sendTimeoutMs: SEND_TIMEOUT_MS, http2IdleTimeoutMs: 1000 },
    logName: 'trailers-window-test',
    lines,
  });
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await lab?.close();
});

const accessLine = (path: string, timeoutMs = CUT_WITHIN_MS): Promise<Record<string, unknown>> =>
  waitFor(`the access line of ${path}`, () => lines.find((l) => l.msg === 'request' && l.path === path), timeoutMs);

interface Got {
  status?: number;
  trailers?: Record<string, unknown>;
  body: string;
  rst?: number;
}

/** One stream's answer, however it ends, or what of it came when `patienceMs` ran out (rst undefined). */
function exchange(session: http2.ClientHttp2Session, path: string, patienceMs: number): Promise<Got> {
  return new Promise((resolve) => {
    const stream = session.request({ ':path': path });
    const got: Got = { body: '' };
    stream.on('response', (headers) => (got.status = Number(headers[':status'])));
    stream.on('trailers', (trailers) => (got.trailers = Object.fromEntries(Object.entries(trailers))));
    stream.on('data', (chunk: Buffer) => (got.body += chunk.toString('latin1')));
    stream.on('error', () => undefined);
    const patience = setTimeout(() => resolve(got), patienceMs);
    stream.on('close', () => {
      clearTimeout(patience);
      got.rst = stream.rstCode;
      resolve(got);
    });
  });
}

describe('an HTTP/2 answer with trailers whose end waits on a shut flow-control window', () => {
  it('a client that never opens its window (SETTINGS_INITIAL_WINDOW_SIZE 0) has the stream cut after limits.sendTimeoutMs, logged, then its connection closed once idle', async () => {
    const session = h2Connect(proxy.ports[0]!, ca, HOST, { settings: { initialWindowSize: 0 } });
    const goaway = new Promise<number>((resolve) => session.once('goaway', resolve));
    try {
      const started = Date.now();
      const got = await exchange(session, '/empty-shut', CUT_WITHIN_MS);
      expect({ status: got.status, rst: got.rst, trailers: got.trailers }, 'the stream reset within 10 s').toEqual({
        status: 200,
        rst: http2.constants.NGHTTP2_CANCEL,
        trailers: undefined,
      });
      expect(Date.now() - started).toBeGreaterThan(SEND_TIMEOUT_MS - 500);
      const line = await accessLine('/empty-shut');
      expect(line).toMatchObject({ status: 200, code: 'KEYEDGE_HTTP_SEND_TIMEOUT', aborted: true });
      const code = await Promise.race([goaway, sleep(CUT_WITHIN_MS).then(() => 'none')]);
      expect(code, 'GOAWAY once idle').toBe(http2.constants.NGHTTP2_NO_ERROR);
    } finally {
      await closeSession(session);
    }
  }, 30_000);

  it('a client whose window is exactly the body length, never updated, has the stream cut after limits.sendTimeoutMs', async () => {
    const client = new RawH2(proxy.ports[0]!, ca, HOST);
    try {
      await client.secure;
      // SETTINGS_INITIAL_WINDOW_SIZE 2: the body's "ok", and never a WINDOW_UPDATE.
      client.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), frame(0x4, 0, 0, Buffer.from([0, 4, 0, 0, 0, 2]))]));
      const block = Buffer.concat([Buffer.from([0x82, 0x87]), hpackLiteral(':path', '/body-then-end'), hpackLiteral(':authority', HOST)]);
      client.write(headerFrames(1, block, true));
      const line = await accessLine('/body-then-end');
      expect(line).toMatchObject({ status: 200, code: 'KEYEDGE_HTTP_SEND_TIMEOUT', aborted: true });
      // The line is written as the stream closes; its RST_STREAM reaches the client a moment later.
      expect(await waitFor('the stream reset', () => client.streamResets.get(1))).toBe(http2.constants.NGHTTP2_CANCEL);
    } finally {
      client.tls.destroy();
    }
  }, 30_000);

  it('a client with an open window gets the answers whole, trailers and all', async () => {
    const session = h2Connect(proxy.ports[0]!, ca, HOST);
    try {
      for (const [path, body] of [
        ['/empty-open', ''],
        ['/body-open', 'ok'],
      ] as const) {
        const got = await exchange(session, path, CUT_WITHIN_MS);
        expect(got, path).toEqual({ status: 200, body, trailers: { 'x-t': '1' }, rst: http2.constants.NGHTTP2_NO_ERROR });
        const line = await accessLine(path);
        // Left out of a whole answer's line: no code, not aborted.
        expect({ status: line.status, code: line.code, aborted: line.aborted }, path).toEqual({ status: 200, code: undefined, aborted: undefined });
      }
    } finally {
      await closeSession(session);
    }
  }, 30_000);
});
