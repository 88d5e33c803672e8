import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { type RawTls, rawTls } from './helpers/raw-tls.js';
import { closeScriptedOrigin, scriptedOrigin } from './helpers/scripted-origin.js';

// Upgrade requests against origins that misbehave after their answer's head, and tunnels one side of which never
// reads: the proxy in this process, a scripted raw origin.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: net.Server;
/** A second origin of 'pair.lab.test' (the first is `origin`): each one's request lines, to see which got what. */
let second: net.Server;
const sockets = new Set<net.Socket>();
const sawFirst: string[] = [];
const sawSecond: string[] = [];
/** An answer head node's parser refuses (a field line without a colon); and an ordinary answer. */
const REFUSED_HEAD = 'HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\nno';
const OK = 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok';
/** Each request head the origin received. */
const heads: string[] = [];
/** Bytes each flooding origin connection got written into its socket (its 'drain' respected), by path. */
const pushed = new Map<string, () => number>();
/** What each origin connection of a tunnel received after the 101, by path. */
const receivedAfter = new Map<string, () => number>();
const READ_TIMEOUT_MS = 1500;
const BIG = 24 * 1024 * 1024;
const SWITCH = 'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: x\r\n\r\n';

/** After the 101: writes 64 KiB chunks as fast as the proxy takes them, and counts (without keeping) what arrives. */
function flood(path: string): (socket: net.Socket) => void {
  return (socket) => {
    socket.write(SWITCH);
    let written = 0;
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const more = (): void => {
      while (!socket.destroyed && written < 512 * 1024 * 1024) {
        written += chunk.length;
        if (!socket.write(chunk)) return void socket.once('drain', more);
      }
    };
    more();
    pushed.set(path, () => written);
  };
}

/** After the 101: reads nothing at all (its receive window fills), and says how much it read before it stopped. */
function deaf(path: string): (socket: net.Socket) => void {
  return (socket) => {
    socket.write(SWITCH);
    socket.pause();
    receivedAfter.set(path, () => socket.bytesRead);
  };
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  origin = scriptedOrigin(
    {
      // A whole answer, then bytes no request asked for, shaped as a second answer.
      '/trailing': 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nnoHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!',
      // An answer whose body ends with the connection, then nothing more: the origin stalls.
      '/stall': 'HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart',
      // Larger than every buffer between the origin and a client that does not read.
      '/big': `HTTP/1.1 200 OK\r\ncontent-length: ${BIG}\r\n\r\n${'b'.repeat(BIG)}`,
      // Switches whenever asked, as a lenient origin (node's server) does, also for an HTTP/1.0 client's request.
      '/v10': (socket) =>
        void socket.write(
          heads.at(-1)?.match(/\r\nupgrade: websocket/i) ? `${SWITCH}switched` : 'HTTP/1.1 426 Upgrade Required\r\ncontent-length: 2\r\n\r\nno',
        ),
      // Switches to WebSocket whatever was asked (or not asked) for, with bytes of the new protocol behind its 101.
      '/always-101': `${SWITCH}tunnel-bytes`,
      // Never answers: the proxy holds what the client sends after its request, unread, until the response timeout.
      '/silent': () => undefined,
      // Part of its body, then its connection cut: the relayed answer is cut short.
      '/cut-mid': (socket) => {
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npart');
        setTimeout(() => socket.destroy(), 100);
      },
      // Their own HSTS, which is not the operator's (a framework's default, or one that clears the browser's record).
      '/hsts-101': 'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nStrict-Transport-Security: max-age=0\r\n\r\n',
      '/hsts-403': 'HTTP/1.1 403 Forbidden\r\nstrict-transport-security: max-age=31536000; includeSubDomains; preload\r\ncontent-length: 2\r\n\r\nno',
      '/refused-head': REFUSED_HEAD,
      // A switch whose head holds fields for this hop only: hop-by-hop ones, and one its Connection names.
      '/hop-101':
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop-Secret\r\nX-Hop-Secret: internal\r\nKeep-Alive: timeout=5\r\nSec-WebSocket-Accept: x\r\n\r\n',
      '/ok': OK,
      '/flood': flood('/flood'),
      '/deaf': deaf('/deaf'),
    },
    { sockets, heads, saw: sawFirst },
  );
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}`;
  second = scriptedOrigin({ '/refused-head': REFUSED_HEAD, '/ok': OK }, { sockets, saw: sawSecond });
  await new Promise<void>((resolve) => second.listen(0, '127.0.0.1', resolve));
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [
        { name: 'ws.lab.test', origin: url },
        { name: 'pair.lab.test', origins: [url, `http://127.0.0.1:${(second.address() as net.AddressInfo).port}`] },
      ],
      limits: { originReadTimeoutMs: READ_TIMEOUT_MS },
      // Read by the teardown's close() alone (nothing here watches a stop): the tunnels the cases leave open held it for
      // the whole default grace, 10 s.
      shutdownGraceMs: 0,
    }),
    { log: createLogger('upgrade-edges-test', 'silent') },
  );
}, 60_000);
afterAll(async () => {
  await proxy?.close();
  await closeScriptedOrigin(origin, sockets);
  await closeScriptedOrigin(second, sockets);
  await lab?.close();
});

const upgrade = (path: string): string =>
  `GET ${path} HTTP/1.1\r\nhost: ws.lab.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;

/** Resolves with true once `closed` resolves, with false after `ms`. */
const within = (closed: Promise<unknown>, ms: number): Promise<boolean> => Promise.race([closed.then(() => true), sleep(ms).then(() => false)]);

describe('an origin that does not switch, misbehaving after its answer', () => {
  it('sending bytes past its answer: the client gets that answer alone, then the connection closes', async () => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca);
    client.socket.write(upgrade('/trailing'));
    expect(await within(client.closed, 8000)).toBe(true);
    expect(client.text()).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nno$/);
    expect(client.text()).not.toContain('EVIL');
  });

  it('stalling in a body that ends with its connection: cut after limits.originReadTimeoutMs, as a request is', async () => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca);
    client.socket.write(upgrade('/stall'));
    await waitFor('the part answer', () => (client.text().endsWith('part') ? true : undefined));
    // Before, nothing bounded it: the client and the origin connection were held for as long as the origin kept quiet.
    expect(await within(client.closed, READ_TIMEOUT_MS + 6000)).toBe(true);
  });

  it("a client that reads nothing for longer than limits.originReadTimeoutMs still gets the whole answer: that stall is not the origin's", async () => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca, { read: false });
    client.socket.write(upgrade('/big'));
    await sleep(3 * READ_TIMEOUT_MS);
    client.resume();
    expect(await within(client.closed, 20_000)).toBe(true);
    const text = client.text();
    expect([text.slice(0, 15), text.length - text.indexOf('\r\n\r\n') - 4]).toEqual(['HTTP/1.1 200 OK', BIG]);
  });
});

describe('an ordinary answer to an Upgrade, cut short by its origin', () => {
  // The relay's stall clock is armed on the answer's 'pause': the close of the client connection unpipes the answer,
  // which pauses it, after the close's own clearing of that clock. Each cut answer left a timer (and with it the
  // answer, both connections and the request) for limits.sendTimeoutMs, 60 s by default: a flood of them held that much.
  it('leaves no timer behind once its client connection is closed', async () => {
    const timers = (): number => process.getActiveResourcesInfo().filter((resource) => resource === 'Timeout').length;
    const before = timers();
    const clients = await Promise.all(Array.from({ length: 20 }, () => rawTls(proxy.ports[0]!, 'ws.lab.test', ca)));
    for (const client of clients) client.socket.write(upgrade('/cut-mid'));
    // Each answer cut, its client connection with it (no timer of the test's own meanwhile).
    await Promise.all(clients.map((client) => client.closed));
    expect(clients.every((client) => client.text().startsWith('HTTP/1.1 200 OK\r\n'))).toBe(true);
    await sleep(300);
    // None per cut answer (20 of them); a few of the worker's own may come and go meanwhile.
    expect(timers() - before).toBeLessThan(10);
  });
});

describe('an Upgrade to h2c, answered with a switch to WebSocket', () => {
  it('gets 502: the proxy asked for no switch, so none is relayed, and nothing of the new protocol reaches the client', async () => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca);
    client.socket.write(
      'GET /always-101 HTTP/1.1\r\nhost: ws.lab.test\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n',
    );
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    expect({ status: client.text().split('\r\n')[0], leaked: client.text().includes('tunnel-bytes'), closed }).toEqual({
      status: 'HTTP/1.1 502 Bad Gateway',
      leaked: false,
      closed: true,
    });
  });
});

describe("an origin's own Strict-Transport-Security on its answer to an Upgrade", () => {
  // As on every answer to a request (forward-headers.ts answerHeaderList): the operator's HSTS (tls.hstsMaxAgeSeconds,
  // the domain's hsts), not the origin's, which kept its own: max-age=0 made the browser forget the host's HSTS, and
  // includeSubDomains the operator did not configure held every subdomain to HTTPS.
  it.each(['/hsts-101', '/hsts-403'])("%s: is replaced by the proxy's own, sent once", async (path) => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca);
    client.socket.write(upgrade(path));
    await waitFor('the answer head', () => (client.text().includes('\r\n\r\n') ? true : undefined));
    client.socket.destroy();
    const head = client.text().slice(0, client.text().indexOf('\r\n\r\n'));
    expect(head.match(/^strict-transport-security: .*$/gim)).toEqual(['strict-transport-security: max-age=63072000']);
  });
});

describe("an origin's 101 with fields for the proxy's hop", () => {
  // RFC 9110 §7.6.1: a proxy removes the hop-by-hop fields and those the Connection field names, as keyedge does from
  // every other answer (forward-headers.ts); the 101's were all relayed, an origin's field for this hop (a secret it
  // meant for the proxy) included.
  it('reaches the client without them, switching to WebSocket', async () => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca);
    client.socket.write(upgrade('/hop-101'));
    await waitFor('the 101', () => (client.text().includes('\r\n\r\n') ? true : undefined));
    client.socket.destroy();
    const head = client.text().slice(0, client.text().indexOf('\r\n\r\n')).toLowerCase().split('\r\n');
    expect(head[0]).toBe('http/1.1 101 switching protocols');
    expect(head.slice(1).sort()).toEqual(
      ['connection: upgrade', 'sec-websocket-accept: x', 'strict-transport-security: max-age=63072000', 'upgrade: websocket'].sort(),
    );
  });
});

describe("an answer to an Upgrade that node's parser refuses", () => {
  // As for a request (README, "Several origins"; origin-failure.ts): the origin answered, so it is not cooled down. It
  // was, and every request of the domain went to its other origins for limits.originFailureCooldownMs: a client could
  // keep one out of rotation with an Upgrade to a path it answers so (an answer head over the parser's 16 KiB, say).
  it('gets 502, and the origin it came from keeps its turn in the rotation', async () => {
    const client = await rawTls(proxy.ports[0]!, 'pair.lab.test', ca);
    client.socket.write(upgrade('/refused-head').replace('ws.lab.test', 'pair.lab.test'));
    expect(await within(client.closed, 8000)).toBe(true);
    expect(client.text().split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
    for (let i = 0; i < 4; i++) {
      const request = await rawTls(proxy.ports[0]!, 'pair.lab.test', ca);
      request.socket.write('GET /ok HTTP/1.1\r\nhost: pair.lab.test\r\nconnection: close\r\n\r\n');
      expect(await within(request.closed, 8000)).toBe(true);
      expect(request.text().split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
    }
    const served = (saw: string[]): number => saw.filter((line) => line === 'GET /ok HTTP/1.1').length;
    // Round robin over both: two each. The one cooled down got none.
    expect([served(sawFirst), served(sawSecond)]).toEqual([2, 2]);
  });
});

describe('an Upgrade in an HTTP/1.0 request', () => {
  it('is ignored (RFC 9110 §7.8): the request goes to the origin asking for no switch, and its answer closes the connection', async () => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca);
    client.socket.write(upgrade('/v10').replace('HTTP/1.1', 'HTTP/1.0'));
    const closed = await within(client.closed, 8000);
    client.socket.destroy();
    const asked = /\r\nupgrade:/i.test(heads.find((h) => h.startsWith('GET /v10 ')) ?? '');
    // Before, the proxy asked the origin for WebSocket and relayed its 101: a tunnel for a client that cannot ask for one.
    expect({ status: client.text().split('\r\n')[0], asked, closed }).toEqual({ status: 'HTTP/1.1 426 Upgrade Required', asked: false, closed: true });
  });
});

/** Writes 64 KiB chunks from `client` as fast as the proxy takes them; returns the count of bytes written so far. */
function floodFrom(client: RawTls): () => number {
  let written = 0;
  const chunk = Buffer.alloc(64 * 1024, 0x62);
  const more = (): void => {
    while (!client.socket.destroyed && written < 512 * 1024 * 1024) {
      written += chunk.length;
      if (!client.socket.write(chunk)) return void client.socket.once('drain', more);
    }
  };
  more();
  return () => written;
}

describe('an upgrade one side of which never reads', () => {
  /** Waits till `count` has stopped growing for a while (backpressure reached every buffer), then returns it. */
  async function settled(count: () => number): Promise<number> {
    let last = -1;
    for (let i = 0; i < 100; i++) {
      const now = count();
      if (now === last && now > 0) return now;
      last = now;
      await sleep(300);
    }
    return count();
  }

  it('a client flooding before the origin has answered is held back: what the proxy buffers stays bounded', async () => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca);
    client.socket.write(upgrade('/silent'));
    const total = await settled(floodFrom(client));
    expect(total).toBeLessThan(64 * 1024 * 1024);
    client.socket.destroy();
  });

  it('a client that reads nothing holds back a flooding origin: what the proxy buffers stays bounded', async () => {
    const client: RawTls = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca, { read: false });
    client.socket.write(upgrade('/flood'));
    await waitFor('the flood', () => pushed.get('/flood'));
    const total = await settled(pushed.get('/flood')!);
    // Kernel buffers on loopback (both connections, both ends) are a few MiB each; the proxy's own stay near 64 KiB.
    expect(total).toBeLessThan(64 * 1024 * 1024);
    client.socket.destroy();
  });

  it('an origin that reads nothing holds back a flooding client: what the proxy buffers stays bounded', async () => {
    const client = await rawTls(proxy.ports[0]!, 'ws.lab.test', ca);
    client.socket.write(upgrade('/deaf'));
    await waitFor('the 101', () => (client.text().includes('\r\n\r\n') ? true : undefined));
    const total = await settled(floodFrom(client));
    expect(total).toBeLessThan(64 * 1024 * 1024);
    client.socket.destroy();
  });
});
