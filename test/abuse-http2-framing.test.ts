import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricSum, workerPids } from './helpers/abuse.js';
import { closeSession, frame, getHeaders, h2Connect, h2Request, headerFrames, hpackLiteral, RawH2, rstStream } from './helpers/h2.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// HTTP/2 framing a client library would not send, against `keyedge proxy`
// with two workers and an origin that accepts header lists of any size and
// records what reached it: each case must get a clear answer of the proxy's
// (or a stream error), never reach the origin as something the proxy's
// limits forbid, and leave the workers unharmed.
const HOST = 'framing-h2.lab.test';
/** limits.maxHeaderBytes, as configured below. */
const MAX_HEADER_BYTES = 16_384;

let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;
let origin: http.Server;
/** Per request reaching the origin: its path and the bytes of its header names and values. */
const seen: { path: string; headerBytes: number }[] = [];
/** Per /big answer, once closed: whether it was sent whole. */
const bigClosed: boolean[] = [];
/** limits.sendTimeoutMs, as configured below. */
const SEND_TIMEOUT_MS = 2_000;

beforeAll(async () => {
  lab = await startKeylessLab();
  origin = http.createServer({ maxHeaderSize: 4 * 1024 * 1024 }, (req, res) => {
    seen.push({ path: req.url ?? '', headerBytes: req.rawHeaders.reduce((sum, h) => sum + h.length, 0) });
    req.resume();
    // 8 MiB written as the proxy takes it; `bigClosed` says whether it went out whole.
    if (req.url === '/big') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 8 * 1024 * 1024 });
      res.once('close', () => bigClosed.push(res.writableFinished));
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let sent = 0;
      const more = (): void => {
        while (sent < 128) {
          sent++;
          if (!res.write(chunk)) return void res.once('drain', more);
        }
        res.end();
      };
      return more();
    }
    // Fields HTTP/1.1 lets an origin repeat, which Node's HTTP/2 layer sends only once; in the head and in trailers.
    if (req.url === '/repeated-fields') {
      const head = 'x-content-type-options: nosniff\r\nx-content-type-options: nosniff\r\ncontent-type: text/plain\r\ncontent-type: text/html\r\n';
      res.socket?.end(`HTTP/1.1 200 OK\r\n${head}connection: close\r\ncontent-length: 3\r\n\r\nok\n`);
      return;
    }
    if (req.url === '/repeated-trailers') {
      res.socket?.end(
        'HTTP/1.1 200 OK\r\nconnection: close\r\ntrailer: etag\r\ntransfer-encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\netag: "a"\r\netag: "b"\r\n\r\n',
      );
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 3 }).end('ok\n');
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const originUrl = `http://127.0.0.1:${(origin.address() as AddressInfo).port}`;
  const cert = await lab.certificate('framing-h2', lab.keys.ec, [HOST]);
  proxy = await startClusterProxy(
    lab,
    'framing-h2',
    (p) => {
      writeFileSync(join(p.storeDir, 'framing-h2.pem'), readFileSync(cert.file));
      return storeProxyConfig(lab, p, {
        domains: [{ name: HOST, origin: originUrl }],
        limits: { maxHeaderBytes: MAX_HEADER_BYTES, sendTimeoutMs: SEND_TIMEOUT_MS },
      });
    },
    {},
    75_000,
  );
  await waitFor('two workers listening', () => (workerPids(proxy).listening.length === 2 ? true : undefined));
  ca = readFileSync(lab.caFile, 'utf8');
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  origin?.closeAllConnections();
  await new Promise((resolve) => origin?.close(resolve));
  await lab?.close();
});

/** A raw connection past its handshake and preface. */
async function rawClient(options: { ackSettings?: boolean } = {}): Promise<RawH2> {
  const client = new RawH2(proxy.port, ca, HOST, options);
  await client.secure;
  client.preface();
  return client;
}

/** The access line of the request for `path`, once logged. */
const accessLine = (path: string): Promise<Record<string, unknown>> =>
  waitFor(`the access line of ${path}`, () => proxy.lines.find((l) => l.msg === 'request' && l.path === path));

/** A POST's header block (static-table :method POST, :scheme https), then `fields` as literals. */
const postBlock = (path: string, fields: readonly (readonly [string, string])[] = []): Buffer =>
  Buffer.concat([Buffer.from([0x83, 0x87]), hpackLiteral(':path', path), hpackLiteral(':authority', HOST), ...fields.map(([n, v]) => hpackLiteral(n, v))]);

/** A GET's header block: the static-table :method GET and :scheme https (RFC 7541 Appendix A), then `fields` as literals. */
const getBlock = (path: string, fields: readonly (readonly [string, string])[] = []): Buffer =>
  Buffer.concat([Buffer.from([0x82, 0x87]), hpackLiteral(':path', path), hpackLiteral(':authority', HOST), ...fields.map(([n, v]) => hpackLiteral(n, v))]);

describe('HTTP/2 framing abuse', () => {
  it('a header list over limits.maxHeaderBytes is refused 431 (or reset) and never reaches the origin, whether or not the client acknowledged SETTINGS', async () => {
    const before = workerPids(proxy).listening;
    // 100 fields of 1,000 bytes: about six times the bound, in HEADERS + CONTINUATION frames.
    const big = Array.from({ length: 100 }, (_, i) => [`x-field-${i}`, 'v'.repeat(1000)] as const);
    for (const ackSettings of [true, false]) {
      const path = `/big-headers-${ackSettings ? 'acked' : 'unacked'}`;
      const client = await rawClient({ ackSettings });
      // Node applies our SETTINGS once they are acknowledged: the acknowledging client's ACK has left by then.
      await new Promise((resolve) => setTimeout(resolve, 300));
      client.write(headerFrames(1, getBlock(path, big), true));
      await waitFor(`${path} answered or reset`, () => (client.answers + client.resets > 0 ? true : undefined));
      if (ackSettings) {
        // Node's own bound: the stream is reset before it is ever a request (no access line).
        expect(client.resets).toBe(1);
      } else {
        const line = await accessLine(path);
        expect(line.status).toBe(431);
        expect(line.code).toBe('KEYEDGE_HTTP_HEADERS_TOO_LARGE');
      }
      client.tls.destroy();
      expect(seen.filter((s) => s.path === path)).toEqual([]);
    }
    // A list within the bound goes through on a client that never acknowledges.
    const client = await rawClient({ ackSettings: false });
    client.write(headerFrames(1, getBlock('/small-headers', [['x-small', 'v'.repeat(1000)]]), true));
    expect((await accessLine('/small-headers')).status).toBe(200);
    client.tls.destroy();
    expect(workerPids(proxy).listening).toEqual(before);
    expect(await metricSum(proxy, 'keyedge_proxy_uncaught_errors_total')).toBe(0);
  }, 60_000);

  it("an origin's repeated field that Node sends only once (X-Content-Type-Options, Content-Type, ETag trailers) reaches an HTTP/2 client once, not as a 502", async () => {
    const session = h2Connect(proxy.port, ca, HOST);
    try {
      const answer = await h2Request(session, { ':path': '/repeated-fields' });
      expect(answer.status).toBe(200);
      expect(answer.headers['x-keyedge-error']).toBeUndefined();
      expect(answer.headers['x-content-type-options']).toBe('nosniff');
      expect(answer.headers['content-type']).toBe('text/plain');
      expect(answer.body.toString()).toBe('ok\n');
      const trailed = await h2Request(session, { ':path': '/repeated-trailers' });
      expect(trailed.status).toBe(200);
      expect(trailed.body.toString()).toBe('ok\n');
      expect(trailed.trailers?.etag).toBe('"a"');
    } finally {
      await closeSession(session);
    }
  }, 30_000);

  it('floods of CONTINUATION, empty DATA, PING, SETTINGS and PRIORITY frames end their connection (or cost nothing), and a normal client is served meanwhile', async () => {
    const before = workerPids(proxy).listening;
    const settingsFrame = (): Buffer => frame(0x4, 0, 0, Buffer.from([0, 4, 0, 0, 0xff, 0xff]));
    const priority = (id: number): Buffer => frame(0x2, 0, id, Buffer.from([0, 0, 0, 0, 16]));
    // name, the flood's frame, whether the client stops reading, whether the server must close it, what opens the flood.
    const floods: [string, (i: number) => Buffer, boolean, boolean, Buffer?][] = [
      // CVE-2024-27316 / CVE-2024-28182: a header block that never ends, one CONTINUATION after another.
      ['continuation', () => frame(0x9, 0, 1, hpackLiteral('x-a', 'b')), false, true, frame(0x1, 0, 1, getBlock('/continuation'))],
      // CVE-2019-9518: empty DATA frames on an open stream.
      ['empty-data', () => frame(0x0, 0, 1, Buffer.alloc(0)), false, true, headerFrames(1, getBlock('/empty-data'), false)],
      // CVE-2019-9515: SETTINGS whose acknowledgements the client never reads.
      ['settings', settingsFrame, true, true],
      // CVE-2019-9512: PINGs likewise. Node stops reading a connection whose writes are pending, so the client's own
      // TCP window stops the flood: nothing to cut, the connection goes at the idle deadline.
      ['ping', () => frame(0x6, 0, 0, Buffer.alloc(8)), true, false],
      // PRIORITY frames for streams never opened (RFC 9113 §5.3.2 deprecates the scheme; each is still parsed).
      ['priority', (i) => priority(2 * i + 1), false, false],
    ];
    const results: string[] = [];
    for (const [name, make, stopReading, mustClose, first] of floods) {
      const client = await rawClient();
      if (stopReading) client.tls.pause();
      if (first !== undefined) client.write(first);
      const started = Date.now();
      let sent = 0;
      while (sent < 200_000 && !client.tls.destroyed && Date.now() - started < 3_000) {
        const batch = Array.from({ length: 1000 }, (_, i) => make(sent + i));
        sent += batch.length;
        if (!client.write(Buffer.concat(batch))) await new Promise((resolve) => setTimeout(resolve, 5));
      }
      if (stopReading) client.tls.resume();
      const session = h2Connect(proxy.port, ca, HOST);
      const normal = await h2Request(session, { ':path': `/after-${name}` });
      await closeSession(session);
      expect(normal.status, `a normal request after the ${name} flood`).toBe(200);
      if (mustClose) await Promise.race([client.closed, new Promise((resolve) => setTimeout(resolve, 10_000))]);
      results.push(`${name}: ${sent} frames, closed ${client.tls.destroyed}, goaway ${client.goaways.join('/')}, ${Date.now() - started} ms`);
      if (mustClose) expect(client.tls.destroyed, `${name} flood ends its connection`).toBe(true);
      client.tls.destroy();
    }
    console.log(results.join('; '));
    expect(workerPids(proxy).listening).toEqual(before);
    expect(await metricSum(proxy, 'keyedge_proxy_uncaught_errors_total')).toBe(0);
  }, 120_000);

  it('an :authority with userinfo or a port that is not digits is refused 400, never routed on its first name and handed to the origin as Host', async () => {
    // nghttp2 lets `@` and `,` through; routing reads the name before the first `:`.
    // And characters no host name has: `3627734734,…` reached the origin as X-Forwarded-Host, read as an IP address.
    const authorities = [`${HOST}:1@evil.test`, `${HOST}:443,evil.test`, `${HOST}:x`, `3627734734,${HOST}`, `evil;${HOST}`];
    for (const [i, authority] of authorities.entries()) {
      const path = `/authority-${i}`;
      const client = await rawClient();
      client.write(headerFrames(1, Buffer.concat([Buffer.from([0x82, 0x87]), hpackLiteral(':path', path), hpackLiteral(':authority', authority)]), true));
      // Ours (400) where nghttp2 lets it through (Node 20's 1.61); the newer nghttp2 of Node 22 and 24 resets such a
      // stream itself (PROTOCOL_ERROR, RFC 9113 §8.1.1), before any request reaches the proxy: refused either way.
      const outcome = await waitFor(`the refusal of ${path}`, () => {
        const line = proxy.lines.find((l) => l.msg === 'request' && l.path === path);
        if (line !== undefined) return { status: line.status, code: line.code };
        return client.resets > 0 || client.goaways.length > 0 ? { status: 'reset', code: undefined } : undefined;
      });
      if (outcome.status !== 'reset') expect([authority, outcome.status, outcome.code]).toEqual([authority, 400, 'KEYEDGE_HTTP_BAD_TARGET']);
      client.tls.destroy();
      expect(seen.filter((s) => s.path === path)).toEqual([]);
    }
    // With a port, as browsers send it on a port other than 443: routed.
    const client = await rawClient();
    client.write(
      headerFrames(
        1,
        Buffer.concat([Buffer.from([0x82, 0x87]), hpackLiteral(':path', '/authority-port'), hpackLiteral(':authority', `${HOST}:${proxy.port}`)]),
        true,
      ),
    );
    expect((await accessLine('/authority-port')).status).toBe(200);
    client.tls.destroy();
  }, 30_000);

  it('a client that never opens its window (SETTINGS_INITIAL_WINDOW_SIZE 0) is cut after limits.sendTimeoutMs, and its origin request aborted', async () => {
    const client = new RawH2(proxy.port, ca, HOST);
    await client.secure;
    const zeroWindow = Buffer.from([0, 4, 0, 0, 0, 0]);
    client.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), frame(0x4, 0, 0, zeroWindow)]));
    const started = Date.now();
    client.write(headerFrames(1, getBlock('/big'), true));
    await waitFor('the stalled stream reset', () => (client.resets > 0 ? true : undefined), 15_000);
    const seconds = (Date.now() - started) / 1000;
    expect(seconds).toBeGreaterThan(SEND_TIMEOUT_MS / 1000 - 0.5);
    const line = await accessLine('/big');
    expect(line.code).toBe('KEYEDGE_HTTP_SEND_TIMEOUT');
    // The origin's answer was abandoned, not read to its end into the proxy's memory.
    await waitFor('the origin answer closed', () => (bigClosed.length > 0 ? true : undefined));
    expect(bigClosed).toEqual([false]);
    client.tls.destroy();
  }, 30_000);

  it('Rapid Reset with RST_STREAM NO_ERROR instead of CANCEL is counted like any other reset: GOAWAY ENHANCE_YOUR_CALM at limits.http2MaxResetStreams', async () => {
    const before = workerPids(proxy).listening;
    const client = await rawClient();
    // Three times the bound (200), under nghttp2's own limit on received resets (1,000 at once).
    for (let first = 0; first < 600 && !client.tls.destroyed; first += 100) {
      const batch: Buffer[] = [];
      for (let id = 2 * first + 1; id < 2 * (first + 100); id += 2) batch.push(getHeaders(id, HOST, `/no-error-reset-${id}`), rstStream(id, 0));
      client.write(Buffer.concat(batch));
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await Promise.race([client.closed, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    expect(client.goaways).toContain(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    expect(client.tls.destroyed).toBe(true);
    client.tls.destroy();
    expect(workerPids(proxy).listening).toEqual(before);
  }, 30_000);

  it('a HEAD with a body still coming that gets an answer of ours (413, 421) has its stream closed, not held open for ever', async () => {
    const session = h2Connect(proxy.port, ca, HOST);
    try {
      const cases: [string, http2.OutgoingHttpHeaders, number][] = [
        ['/head-too-large', { 'content-length': String(1 << 30) }, 413],
        ['/head-misdirected', { ':authority': 'elsewhere.test' }, 421],
      ];
      for (const [path, headers, status] of cases) {
        // The body is never sent: only our closing the stream (RST_STREAM NO_ERROR after the answer, RFC 9113 §8.1) ends it.
        const answer = h2Request(session, { ':method': 'HEAD', ':path': path, ...headers }, 'open');
        const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${path}: stream still open after 5 s`)), 5_000));
        expect((await Promise.race([answer, timeout])).status).toBe(status);
        expect((await accessLine(path)).status).toBe(status);
      }
    } finally {
      await closeSession(session);
    }
  }, 30_000);

  it('a client that never opens its window on a small answer (all of it written, its end waiting on the window) is cut after limits.sendTimeoutMs', async () => {
    const results: string[] = [];
    for (const path of ['/small-answer', '/small-own-answer']) {
      const client = new RawH2(proxy.port, ca, HOST);
      await client.secure;
      client.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), frame(0x4, 0, 0, Buffer.from([0, 4, 0, 0, 0, 0]))]));
      // Ours: a 421 for a name the certificate does not cover.
      const authority = path === '/small-answer' ? HOST : 'elsewhere.test';
      client.write(headerFrames(1, Buffer.concat([Buffer.from([0x82, 0x87]), hpackLiteral(':path', path), hpackLiteral(':authority', authority)]), true));
      const started = Date.now();
      const line = await waitFor(
        `the access line of ${path}`,
        () => proxy.lines.find((l) => l.msg === 'request' && l.path === path),
        4 * SEND_TIMEOUT_MS + 5_000,
      );
      results.push(`${path}: ${line.status} ${line.code} after ${Date.now() - started} ms`);
      // Our 421 keeps its own code; the line says the answer was cut.
      expect(line.code).toBe(path === '/small-answer' ? 'KEYEDGE_HTTP_SEND_TIMEOUT' : 'KEYEDGE_HTTP_MISDIRECTED');
      expect(line.aborted).toBe(true);
      expect(Date.now() - started).toBeGreaterThan(SEND_TIMEOUT_MS - 500);
      expect(client.resets).toBeGreaterThan(0);
      client.tls.destroy();
    }
    console.log(results.join('; '));
  }, 60_000);

  it('a connection nghttp2 ends on a connection error (a frame over the maximum size) is closed within seconds, not held in CLOSE-WAIT until its idle deadline', async () => {
    // Before, on Node 20: nghttp2 sent GOAWAY FRAME_SIZE_ERROR and Node stopped reading, told no one, and never saw the
    // client's close: the connection (a descriptor and a place in maxConnectionsPerClient) stayed for 75 s and more.
    const client = await rawClient();
    client.write(headerFrames(1, getBlock('/before-the-bad-frame'), true));
    await waitFor('the answer on stream 1', () => (client.answered.has(1) ? true : undefined));
    const closedByErrors = async (): Promise<number> =>
      (await metricSum(proxy, 'keyedge_proxy_http2_connections_closed_total', { reason: 'protocol_error' })) ?? 0;
    const before = await closedByErrors();
    // A DATA frame of 20,000 bytes, over SETTINGS_MAX_FRAME_SIZE (16,384): a connection error (RFC 9113 §4.2).
    const header = Buffer.alloc(9);
    header.writeUIntBE(20_000, 0, 3);
    header.writeUInt32BE(99, 5);
    client.write(Buffer.concat([header, Buffer.alloc(20_000)]));
    client.tls.end();
    const closed = await Promise.race([client.closed.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 8_000))]);
    expect(closed, 'the connection was still open 8 s after the client closed its side').toBe(true);
    await waitFor('the close counted', async () => ((await closedByErrors()) > before ? true : undefined));
  }, 30_000);

  it.each([
    // Node destroys the session on the client's GOAWAY with an error code. Fuzz: Node 22, seed 26 case 763.
    ['GOAWAY with an error code', (_round: number) => frame(0x7, 0, 0, Buffer.from([0, 0, 0, 0, 0, 0, 0, 2])), '/after-goaway'],
    // Node 22 and 24 destroy the session on DATA past a stream's content-length (a stream error, RFC 9113 §8.1.1); Node 20
    // resets the stream. Fuzz: Node 22, seed 33 case 594.
    [
      'DATA past its content-length',
      (round: number) =>
        Buffer.concat([frame(0x1, 0x4, 1, postBlock(`/past-length-${round}`, [['content-length', '3']])), frame(0x0, 0x1, 1, Buffer.from('abcd'))]),
      '/after-past-length',
    ],
  ] as const)(
    '%s, then HEADERS and DATA on a new stream in the same record: the worker lives (Node 22 aborted)',
    async (_name, first, after) => {
      // Node destroys the session from inside its reading of the frames, and nghttp2 reads on: the DATA reached a stream
      // Node never set up (Assertion failed: onread->IsFunction(), Node 22.23).
      const before = workerPids(proxy).listening;
      for (let round = 0; round < 4; round++) {
        const client = await rawClient();
        const id = 3;
        const next = Buffer.concat([
          frame(0x1, 0x4, id, postBlock(`${after}-${round}`)),
          frame(0x0, 0, id, Buffer.from('abc')),
          frame(0x0, 0x1, id, Buffer.from('def')),
        ]);
        client.write(Buffer.concat([first(round), next]));
        // The connection ends (Node's destroy), or, on Node 20 after the content-length, the next stream is answered.
        await waitFor('the connection ended or the next stream answered', () => (client.tls.destroyed || client.answered.has(id) ? true : undefined), 5_000);
        client.tls.destroy();
      }
      // A worker's death reaches the primary's log a moment after its abort.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(workerPids(proxy).died).toEqual([]);
      expect(workerPids(proxy).listening).toEqual(before);
      expect(seen.filter((r) => r.path.startsWith('/after-goaway') || r.path.startsWith('/past-length'))).toEqual([]);
      expect(await metricSum(proxy, 'keyedge_proxy_uncaught_errors_total')).toBe(0);
    },
    30_000,
  );

  it('an answer cut for a stalled client is reset with an error code, never RST_STREAM NO_ERROR, which says it was whole (RFC 9113 §8.1)', async () => {
    const session = h2Connect(proxy.port, ca, HOST);
    try {
      const stream = session.request({ ':path': '/big' });
      stream.on('error', () => undefined);
      // Not read: Node's client grants no window while its stream is paused, so the proxy's writes stall.
      stream.pause();
      const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
      await new Promise((resolve) => setTimeout(resolve, SEND_TIMEOUT_MS + 2_000));
      let received = 0;
      stream.on('data', (chunk: Buffer) => (received += chunk.length));
      stream.resume();
      await closed;
      expect(received).toBeLessThan(8 * 1024 * 1024);
      expect(stream.rstCode).not.toBe(http2.constants.NGHTTP2_NO_ERROR);
    } finally {
      await closeSession(session);
    }
  }, 30_000);
});
