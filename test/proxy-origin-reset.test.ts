import { readFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { curl } from './helpers/clients.js';
import { sleep } from './helpers/basics.js';
import { startKeylessLab, type KeylessLab, jsonLineSink } from './helpers/proxy-lab.js';

// An origin that resets its connection mid-answer (headers and part of the
// body sent, then a TCP RST): the proxy must not pass the cut answer off as
// whole. With a Content-Length the client would otherwise wait for bytes that
// never come; with chunked encoding a terminating chunk would make a partial
// body look complete (RFC 9112 §7.1). So the proxy aborts the client
// connection, logs the origin's error code, and goes on serving.
const DECLARED = 100_000;
const PARTIAL = 'partial-body-';

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
const lines: Record<string, unknown>[] = [];
/** Origin connections holding a cut answer, reset when the test says so. */
const holding: net.Socket[] = [];
let waiter: ((socket: net.Socket) => void) | undefined;

/**
 * A raw origin: reads one request, answers with headers and PARTIAL (framed
 * by Content-Length on /length, chunked on /chunked), then holds the
 * connection until the test resets it, so the reset always comes after the
 * client has seen the start of the answer.
 */
function resettingOrigin(): net.Server {
  return net.createServer((socket) => {
    socket.on('error', () => undefined);
    let head = '';
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      const chunked = head.startsWith('GET /chunked');
      socket.write(
        chunked
          ? `HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n${PARTIAL.length.toString(16)}\r\n${PARTIAL}\r\n`
          : `HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ${DECLARED}\r\n\r\n${PARTIAL}`,
      );
      holding.push(socket);
      waiter?.(socket);
    });
  });
}

/** Resets the origin connection holding the next (or current) cut answer. */
function resetOrigin(): void {
  const reset = (socket: net.Socket): void => void socket.resetAndDestroy();
  const socket = holding.shift();
  if (socket !== undefined) return reset(socket);
  waiter = (s) => {
    waiter = undefined;
    holding.splice(holding.indexOf(s), 1);
    reset(s);
  };
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  origin = resettingOrigin();
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const sink = jsonLineSink(lines);
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [
        { name: 'reset.lab.test', origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` },
        { name: 'ok.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
      ],
    }),
    { log: createLogger('origin-reset-test', 'info', sink) },
  );
});
afterAll(async () => {
  await proxy?.close();
  for (const socket of holding) socket.destroy();
  await new Promise((resolve) => (origin === undefined ? resolve(undefined) : origin.close(resolve)));
  await lab?.close();
});

interface RawExchange {
  /** Everything the proxy sent, as text. */
  readonly received: string;
  /** How the connection ended: closed by the proxy, or still open when the client gave up. */
  readonly ending: 'closed' | 'timeout';
}

/**
 * One keep-alive request on a raw TLS connection, so the test sees exactly the
 * bytes the proxy sent and whether it closed the connection. The origin is
 * reset once the partial body has arrived here.
 */
function rawExchange(path: string): Promise<RawExchange> {
  return new Promise((resolve) => {
    let received = '';
    let resetSent = false;
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.ports[0], servername: 'reset.lab.test', ca });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ received, ending: 'timeout' });
    }, 10_000);
    socket.once('secureConnect', () => socket.write(`GET ${path} HTTP/1.1\r\nHost: reset.lab.test\r\n\r\n`));
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      if (!resetSent && received.includes(PARTIAL)) {
        resetSent = true;
        resetOrigin();
      }
    });
    socket.on('error', () => undefined);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve({ received, ending: 'closed' });
    });
  });
}

/** The same through node:https, as an application would see it. */
function httpsGet(path: string): Promise<{ status?: number; body: string; complete: boolean; error?: string }> {
  return new Promise((resolve) => {
    let body = '';
    let status: number | undefined;
    const req = https.get(
      { host: '127.0.0.1', port: proxy.ports[0], servername: 'reset.lab.test', ca, path, headers: { host: 'reset.lab.test' }, agent: false },
      (res) => {
        status = res.statusCode;
        res.on('data', (chunk: Buffer) => {
          body += chunk.toString();
          if (body.includes(PARTIAL) && body.length === PARTIAL.length) resetOrigin();
        });
        res.on('end', () => resolve({ status, body, complete: res.complete }));
        res.on('error', (err) => resolve({ status, body, complete: res.complete, error: err.message }));
      },
    );
    req.setTimeout(10_000, () => req.destroy(new Error('client timeout: the proxy neither finished nor aborted the answer')));
    req.on('error', (err) => resolve({ status, body, complete: false, error: err.message }));
  });
}

const used = new Set<Record<string, unknown>>();

/** The next 'origin request failed' line for the resetting origin not yet claimed by an earlier request. */
async function waitForLine(found: () => boolean): Promise<void> {
  // The access line follows the socket's close, a moment after the client saw the cut.
  for (let i = 0; i < 250 && !found(); i++) await sleep(20);
  expect(found()).toBe(true);
}

async function logLineFor(path: string): Promise<Record<string, unknown>> {
  for (let i = 0; i < 100; i++) {
    const line = lines.find((l) => l.msg === 'origin request failed' && l.domain === 'reset.lab.test' && !used.has(l));
    if (line !== undefined) {
      used.add(line);
      return line;
    }
    await sleep(20);
  }
  throw new Error(`no 'origin request failed' log line for ${path}; lines: ${JSON.stringify(lines)}`);
}

describe('an origin resetting its connection mid-answer', () => {
  for (const framing of ['length', 'chunked'] as const) {
    it(`(${framing === 'length' ? 'Content-Length' : 'chunked'}) gets the client connection closed after the partial body, and a log line with the error code`, async () => {
      const exchange = await rawExchange(`/${framing}`);
      // Closed by the proxy, not left hanging until the client's own timeout.
      expect(exchange.ending, exchange.received).toBe('closed');
      expect(exchange.received).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(exchange.received).toContain(PARTIAL);
      const [head = '', body = ''] = exchange.received.split('\r\n\r\n', 2);
      if (framing === 'length') {
        expect(head).toMatch(new RegExp(`content-length: ${DECLARED}`, 'i'));
        expect(body.length).toBeLessThan(DECLARED);
      } else {
        expect(head).toMatch(/transfer-encoding: chunked/i);
        // No last-chunk: a client cannot mistake the cut body for a whole one.
        expect(exchange.received).not.toMatch(/\r\n0\r\n(.*\r\n)*\r\n$/);
      }
      const line = await logLineFor(`/${framing}`);
      expect(line.level).toBe(40);
      expect(line.code).toBe('KEYEDGE_HTTP_ORIGIN_ABORTED');
      const err = line.err as { code?: unknown; message?: unknown };
      // The origin's own error code (undici's socket error or the errno), so an operator can tell a reset from a refusal.
      expect(err.code, JSON.stringify(line)).toMatch(/^(UND_ERR_SOCKET|ECONNRESET)$/);
      // The cut answer still has its access line, marked, and counts.
      await waitForLine(() =>
        lines.some((l) => l.access === true && l.path === `/${framing}` && l.aborted === true && l.code === 'KEYEDGE_HTTP_ORIGIN_ABORTED'),
      );
    });
  }

  it('surfaces as an incomplete answer to node:https', async () => {
    const result = await httpsGet('/chunked');
    expect(result.status).toBe(200);
    expect(result.body).toBe(PARTIAL);
    expect(result.complete).toBe(false);
    expect(result.error).toMatch(/aborted|socket hang up|ECONNRESET/);
    await logLineFor('/chunked (node:https)');
  });

  it('makes curl fail with a transfer error, not a success', async () => {
    const run = curl(proxy.ports[0]!, 'reset.lab.test', lab.caFile, [], '/length');
    // curl gives no hook for "body started", so the origin is reset once the partial body has been sent.
    while (holding.length === 0) await sleep(10);
    await sleep(100);
    resetOrigin();
    const result = await run;
    expect(result.code, result.stderr).not.toBe(0);
    // 18: partial file; 56: failure receiving data (both name a cut transfer).
    expect([18, 56], result.stderr).toContain(result.code);
    expect(result.stdout).toContain(PARTIAL);
    await logLineFor('/length (curl)');
  });

  it('keeps serving: other domains, and new connections to the same one', async () => {
    const ok = await curl(proxy.ports[0]!, 'ok.lab.test', lab.caFile);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/^HTTP\/1\.1 200/);
    // The origin pool dropped the reset connection and opens a fresh one.
    const again = await rawExchange('/length');
    expect(again.ending).toBe('closed');
    expect(again.received).toContain(PARTIAL);
    await logLineFor('/length (again)');
  });
});
