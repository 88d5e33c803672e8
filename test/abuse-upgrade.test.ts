import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// Upgrade requests from a hostile client, against `keyedge proxy` with two
// workers and a raw origin that records every byte it receives: nothing the
// client sends after an Upgrade request reaches the origin before its 101
// (after any other answer, never), an origin that does not switch gets its
// connection closed, and aborts at any phase leave no connection behind.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;

/** One connection the raw origin accepted: the bytes it received, and those received before it answered. */
interface OriginConnection {
  path: string | undefined;
  received: Buffer;
  beforeAnswer: Buffer | undefined;
  /** The proxy ended its side. */
  ended: boolean;
  closed: boolean;
}
const originConnections: OriginConnection[] = [];
let origin: net.Server;

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: other.localhost\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n';

/**
 * The raw origin. The request path says how to answer: `/answer/<status>/<delayMs>/<id>`, with
 * status 101 (switch), another code (a 2-byte body, connection kept open as keep-alive), `none`
 * (never), `close` (close without answering), `gzip` (a 200 with Transfer-Encoding: gzip, chunked), `reset` (switch, then reset), `stubborn` (switch,
 * and never end its side, even after the proxy ended its own), `h2c` (switch to h2c when asked
 * for it, else 200), `to-h2c` (switch to h2c whatever was asked) or `garbage` (an answer the parser
 * refuses, then content that must never reach a log).
 */
function startRawOrigin(): Promise<number> {
  origin = net.createServer({ allowHalfOpen: true }, (socket) => {
    const connection: OriginConnection = { path: undefined, received: Buffer.alloc(0), beforeAnswer: undefined, ended: false, closed: false };
    originConnections.push(connection);
    socket.on('error', () => undefined);
    socket.once('close', () => (connection.closed = true));
    socket.once('end', () => {
      connection.ended = true;
      if (!connection.path?.startsWith('/answer/stubborn/')) socket.end();
    });
    socket.on('data', (chunk: Buffer) => {
      connection.received = Buffer.concat([connection.received, chunk]);
      if (connection.path !== undefined || !connection.received.includes('\r\n\r\n')) return;
      // Test code reading its own fixture's request line; the proxy never parses HTTP by hand.
      connection.path = connection.received.toString('latin1').split(' ')[1] ?? '';
      const [, , status, delay] = connection.path.split('/');
      setTimeout(() => {
        if (socket.destroyed || status === 'none') return;
        connection.beforeAnswer = connection.received;
        const h2c = status === 'to-h2c' || (status === 'h2c' && /\r\nupgrade: *h2c\r\n/i.test(connection.received.toString('latin1')));
        if (status === 'garbage') socket.write(`HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nBad Header\r\n\r\n${'origin-secret-'.repeat(200)}`);
        else if (h2c) socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nh2-frames');
        else if (status === 'close') socket.destroy();
        // Interim answers only, one every 300 ms, and never a final one (a 101 or other).
        else if (status === 'interim') {
          const tick = setInterval(() => (socket.destroyed ? clearInterval(tick) : socket.write('HTTP/1.1 102 Processing\r\n\r\n')), 300);
        }
        // RFC 9112 §6.1: a coding besides chunked, which the client would get as if the bytes were the content.
        else if (status === 'gzip') socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n7\r\nGZIPPED\r\n0\r\n\r\n');
        else if (status === '101' || status === 'reset' || status === 'stubborn') {
          socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nhello');
          if (status === 'reset') setTimeout(() => socket.resetAndDestroy(), 50);
        } else socket.write(`HTTP/1.1 ${status === 'h2c' ? 200 : status} Whatever\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nno`);
      }, Number(delay));
    });
  });
  return new Promise((resolve) => origin.listen(0, '127.0.0.1', () => resolve((origin.address() as net.AddressInfo).port)));
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const originPort = await startRawOrigin();
  const wildcard = await lab.certificate('wild', lab.keys.ec, ['*.lab.test']);
  proxy = await startClusterProxy(lab, 'upgrade', (p) =>
    storeProxyConfig(lab, p, {
      certificates: [{ name: 'wild', chain: wildcard.file }],
      domains: [{ name: 'ws.lab.test', origin: `http://127.0.0.1:${originPort}` }],
      limits: { originResponseTimeoutMs: 2000 },
    }),
  );
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  origin?.close();
  await lab?.close();
});

function upgradeRequest(path: string, extra = ''): string {
  return `GET ${path} HTTP/1.1\r\nHost: ws.lab.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;
}

interface RawClient {
  readonly socket: tls.TLSSocket;
  /** Ends the connection with a TCP reset. */
  reset(): void;
  received(): string;
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;
}

async function rawClient(): Promise<RawClient> {
  const tcp = net.connect({ host: '127.0.0.1', port: proxy.port });
  const socket = tls.connect({ socket: tcp, servername: 'ws.lab.test', ca });
  let received = '';
  socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  return { socket, reset: () => tcp.resetAndDestroy(), received: () => received, closed };
}

const connectionFor = (id: string): Promise<OriginConnection> =>
  waitFor(`the origin connection of ${id}`, () => originConnections.find((c) => c.path?.endsWith(`/${id}`)));
const heads = (bytes: Buffer): number => bytes.toString('latin1').split('\r\n\r\n').length - 1;
/** Within `ms`, or the promise's rejection. */
const within = <T>(ms: number, what: string, promise: Promise<T>): Promise<T> =>
  Promise.race([promise, sleep(ms).then(() => Promise.reject(new Error(`not within ${ms} ms: ${what}`)))]);

describe('an Upgrade request with more bytes behind it', () => {
  it('holds them until the origin has answered 101, then delivers them in order', async () => {
    const client = await rawClient();
    client.socket.write(upgradeRequest('/answer/101/1500/held') + SMUGGLED);
    await sleep(300);
    client.socket.write(SMUGGLED);
    const connection = await connectionFor('held');
    await waitFor('the 101', () => (client.received().includes('\r\n\r\n') ? true : undefined));
    expect(client.received()).toMatch(/^HTTP\/1\.1 101 /);
    expect(client.received()).toMatch(/\r\nstrict-transport-security: max-age=\d+/i);
    // The origin had received the upgrade request alone, with the proxy's forwarding headers.
    const before = connection.beforeAnswer!.toString('latin1');
    expect(heads(connection.beforeAnswer!)).toBe(1);
    expect(before).not.toContain('other.localhost');
    expect(before).not.toContain('6.6.6.6');
    expect(before).toMatch(/\r\nx-forwarded-for: 127\.0\.0\.1\r\n/i);
    // After the switch the held bytes are the new protocol's: delivered whole, in order.
    await waitFor('the held bytes', () => (connection.received.length >= connection.beforeAnswer!.length + 2 * SMUGGLED.length ? true : undefined));
    expect(connection.received.subarray(connection.beforeAnswer!.length).toString('latin1')).toBe(SMUGGLED + SMUGGLED);
    await waitFor('the origin greeting', () => (client.received().endsWith('hello') ? true : undefined));
    client.socket.destroy();
    await waitFor('the origin connection to close', () => (connection.closed ? true : undefined), 5000);
  });

  for (const status of [200, 403, 426]) {
    it(`never sends them when the origin answers ${status}: the answer is relayed and the connection closes`, async () => {
      const id = `refused-${status}`;
      const client = await rawClient();
      client.socket.write(upgradeRequest(`/answer/${status}/1000/${id}`) + SMUGGLED);
      await sleep(300);
      client.socket.write(SMUGGLED);
      const connection = await connectionFor(id);
      await within(8000, 'the client connection closing', client.closed);
      const answer = client.received();
      expect(answer).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      expect(answer).toMatch(/\r\nconnection: close\r\n/i);
      expect(answer).toMatch(/\r\nstrict-transport-security: max-age=\d+/i);
      expect(answer.endsWith('\r\n\r\nno')).toBe(true);
      // One answer only: the pipelined request was not answered by anyone.
      expect(answer.split('HTTP/1.1 ').length - 1).toBe(1);
      // The origin connection is closed, having received the upgrade request alone.
      await waitFor('the origin connection to close', () => (connection.closed ? true : undefined), 5000);
      expect(heads(connection.received)).toBe(1);
      expect(connection.received.toString('latin1')).not.toContain('other.localhost');
      expect(connection.received.equals(connection.beforeAnswer!)).toBe(true);
    });
  }
});

describe('an Upgrade to anything but WebSocket (h2c smuggling)', () => {
  const H2C = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n';

  it('is sent to the origin as an ordinary request: no switch is asked for, the answer is relayed and the connection closes', async () => {
    const client = await rawClient();
    client.socket.write(`GET /answer/h2c/0/h2c-asked HTTP/1.1\r\nHost: ws.lab.test\r\n${H2C}\r\n${SMUGGLED}`);
    const connection = await connectionFor('h2c-asked');
    await within(8000, 'the client connection closing', client.closed);
    expect(client.received()).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\nconnection: close\r\n/i);
    expect(client.received().endsWith('\r\n\r\nno')).toBe(true);
    const request = connection.received.toString('latin1');
    expect(request).not.toMatch(/\r\nupgrade:/i);
    expect(request).not.toMatch(/\r\nhttp2-settings:/i);
    expect(heads(connection.received)).toBe(1);
    expect(request).not.toContain('other.localhost');
  });

  it('an origin that switches to h2c anyway gets 502, and nothing held reaches it', async () => {
    const client = await rawClient();
    client.socket.write(upgradeRequest('/answer/to-h2c/0/h2c-forced') + SMUGGLED);
    const connection = await connectionFor('h2c-forced');
    await within(8000, 'the 502', client.closed);
    expect(client.received()).toMatch(/^HTTP\/1\.1 502 [\s\S]*x-keyedge-error: KEYEDGE_HTTP_ORIGIN/i);
    expect(client.received()).not.toContain('h2-frames');
    await waitFor('the origin connection to close', () => (connection.closed ? true : undefined), 5000);
    expect(heads(connection.received)).toBe(1);
    expect(connection.received.toString('latin1')).not.toContain('other.localhost');
  });
});

describe('an origin that does not switch', () => {
  it('answering 200 at once, keep-alive, has its connection closed within seconds though the client stays', async () => {
    const client = await rawClient();
    client.socket.write(upgradeRequest('/answer/200/0/instant'));
    const connection = await connectionFor('instant');
    await waitFor('the answer', () => (client.received().endsWith('no') ? true : undefined));
    await waitFor('the origin connection to close', () => (connection.closed ? true : undefined), 5000);
    await within(5000, 'the client connection closing', client.closed);
    expect(originConnections.filter((c) => !c.closed && c.path?.endsWith('/instant'))).toEqual([]);
  });

  it('answering nothing gets 504 after the response timeout, and its connection closed', async () => {
    const client = await rawClient();
    const started = Date.now();
    client.socket.write(upgradeRequest('/answer/none/0/silent'));
    const connection = await connectionFor('silent');
    await within(10_000, 'the 504', client.closed);
    expect(client.received()).toMatch(/^HTTP\/1\.1 504 [\s\S]*x-keyedge-error: KEYEDGE_HTTP_ORIGIN_TIMEOUT/i);
    // originResponseTimeoutMs is 2000.
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    await waitFor('the origin connection to close', () => (connection.closed ? true : undefined), 5000);
  });

  // As for a request (README, "Interim answers"): the final answer is due originResponseTimeoutMs after the request
  // whatever came before it. The socket's idle timer was the bound, and each interim answer restarted it: an origin
  // sending one now and then held the client, and the upgrade's place at the origin, for as long as it liked.
  it('answering only interim 1xx, one every 300 ms, gets 504 after the response timeout, and its connection closed', async () => {
    const client = await rawClient();
    client.socket.write(upgradeRequest('/answer/interim/0/interim'));
    const connection = await connectionFor('interim');
    await within(10_000, 'the 504', client.closed);
    expect(client.received()).toMatch(/^HTTP\/1\.1 504 [\s\S]*x-keyedge-error: KEYEDGE_HTTP_ORIGIN_TIMEOUT/i);
    await waitFor('the origin connection to close', () => (connection.closed ? true : undefined), 5000);
  });

  it('answering what the parser refuses gets 502, and the log line names the error, never the origin bytes', async () => {
    const before = proxy.lines.length;
    const client = await rawClient();
    client.socket.write(upgradeRequest('/answer/garbage/0/garbage'));
    await within(10_000, 'the 502', client.closed);
    expect(client.received()).toMatch(/^HTTP\/1\.1 502 /);
    const logged = await waitFor('the failure line', () => {
      const text = JSON.stringify(proxy.lines.slice(before));
      return text.includes('origin upgrade failed') ? text : undefined;
    });
    // Node's client error carries the bytes it read as `rawPacket` (a Buffer: logged as its byte values).
    expect(logged).not.toContain('rawPacket');
    expect(logged).not.toContain('origin-secret-');
  });

  it('answering with a transfer coding besides chunked gets 502, never its coded bytes as if they were the content', async () => {
    const client = await rawClient();
    client.socket.write(upgradeRequest('/answer/gzip/0/gzip'));
    await within(10_000, 'the 502', client.closed);
    expect(client.received()).toMatch(/^HTTP\/1\.1 502 [\s\S]*x-keyedge-error: KEYEDGE_HTTP_ORIGIN_UNREACHABLE/i);
    expect(client.received()).not.toContain('GZIPPED');
  });

  it('closing without an answer gets 502', async () => {
    const client = await rawClient();
    client.socket.write(upgradeRequest('/answer/close/0/gone'));
    await within(10_000, 'the 502', client.closed);
    expect(client.received()).toMatch(/^HTTP\/1\.1 502 [\s\S]*x-keyedge-error: KEYEDGE_HTTP_ORIGIN_UNREACHABLE/i);
  });
});

describe('a switched connection', () => {
  it('half-closed by the client, to an origin that never ends its side, is closed within seconds', async () => {
    const client = await rawClient();
    client.socket.write(upgradeRequest('/answer/stubborn/0/half-closed'));
    const connection = await connectionFor('half-closed');
    await waitFor('the greeting', () => (client.received().endsWith('hello') ? true : undefined));
    client.socket.end();
    // The proxy ends its side towards the origin (which keeps its own open: only its next write would fail).
    await waitFor('the end at the origin', () => (connection.ended ? true : undefined), 5000);
    // As nginx: either side's end closes the tunnel, whatever the other side does.
    await within(5000, 'the client connection closing', client.closed);
  });
});

describe('an Upgrade request with a body', () => {
  for (const [name, framing, body] of [
    ['Content-Length', 'Content-Length: 37\r\n', SMUGGLED.slice(0, 37)],
    ['chunked', 'Transfer-Encoding: chunked\r\n', `${SMUGGLED.length.toString(16)}\r\n${SMUGGLED}\r\n0\r\n\r\n`],
  ] as const) {
    it(`is refused with 400 before any origin is contacted (${name})`, async () => {
      const id = `body-${name}`;
      const client = await rawClient();
      client.socket.write(upgradeRequest(`/answer/101/0/${id}`, framing) + body);
      await within(8000, 'the 400', client.closed);
      expect(client.received()).toMatch(/^HTTP\/1\.1 400 [\s\S]*x-keyedge-error: KEYEDGE_HTTP_UPGRADE_BODY/i);
      await sleep(300);
      expect(originConnections.some((c) => c.path?.endsWith(`/${id}`))).toBe(false);
    });
  }
});

describe('aborts at every phase of an upgrade', () => {
  it('leave no origin connection open, kill no worker, and are logged', async () => {
    const first = originConnections.length;
    const rounds = 12;
    for (let i = 0; i < rounds; i++) {
      // The client leaves before the answer, after the 101, and while the answer is on its way. The origin holds the
      // first answer 2 s, so a worker stalled a few hundred ms on a loaded machine still hears the client leave first.
      const early = await rawClient();
      early.socket.write(upgradeRequest(`/answer/101/2000/early-${i}`) + SMUGGLED);
      const late = await rawClient();
      late.socket.write(upgradeRequest(`/answer/101/0/late-${i}`) + SMUGGLED);
      const racing = await rawClient();
      racing.socket.write(upgradeRequest(`/answer/200/${i * 5}/racing-${i}`));
      // The origin resets after the 101.
      const reset = await rawClient();
      reset.socket.write(upgradeRequest(`/answer/reset/0/reset-${i}`));
      await sleep(100);
      early.socket.destroy();
      await waitFor('the 101', () => (late.received().includes('101') ? true : undefined));
      late.reset();
      racing.reset();
      await within(5000, 'the reset reaching the client', reset.closed);
    }
    await waitFor('every origin connection to close', () => (originConnections.slice(first).every((c) => c.closed) ? true : undefined), 10_000);
    expect(proxy.lines.filter((l) => l.msg === 'proxy worker died; starting a replacement')).toEqual([]);
    // A client gone before the answer is logged as 499 (nginx's "client closed request").
    const earlyLines = (): Record<string, unknown>[] => proxy.lines.filter((l) => l.access === true && String(l.path).startsWith('/answer/101/2000/early-'));
    await waitFor('the access lines', () => (earlyLines().length === rounds ? true : undefined));
    expect(new Set(earlyLines().map((l) => l.status))).toEqual(new Set([499]));
    // And a normal upgrade still works on both workers.
    for (let i = 0; i < 4; i++) {
      const client = await rawClient();
      client.socket.write(upgradeRequest(`/answer/101/0/after-${i}`));
      await waitFor('the greeting', () => (client.received().endsWith('hello') ? true : undefined));
      client.socket.destroy();
    }
  }, 60_000);
});
