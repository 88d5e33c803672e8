import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import { type RunningWorker, startProxyWorker } from '../proxy/worker.js';
import { closeSession, h2Connect, h2Request } from './helpers/h2.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// The keep-alive race: an origin that closes an idle connection without saying so (gunicorn's 2 s, uvicorn's 5 s
// keep-alive, a NAT or load balancer with a shorter idle timeout) closes one now and then just as a request is written
// on it. Nothing of that request was answered, nor, for an idempotent one, can have done harm: it is sent again once,
// on a new connection (nginx: a cached connection's failure takes no try; RFC 9112 §9.3.1), and the origin is not
// counted failed. A POST in the same place is not sent again (RFC 9110 §9.2.2): our 502.
//
// Raw TCP origins that answer each request head by its path: a connection that has answered one request closes (FIN,
// or RST with resetAndDestroy) when a `/race-…` request comes on it, or sends the start of a head and closes for
// `/begun-…`; a new connection answers it. `/drop…` is closed on any connection.
let lab: KeylessLab;
let proxy: RunningWorker;
let metrics: ProxyMetrics;
let ca: string;
const servers: net.Server[] = [];
const sockets = new Set<net.Socket>();

interface RawOrigin {
  /** Each request head's method and path, with the number of the connection it came on. */
  readonly seen: { readonly request: string; readonly connection: number }[];
  readonly url: string;
}

async function rawOrigin(name: string): Promise<RawOrigin> {
  const seen: RawOrigin['seen'] = [];
  let connections = 0;
  const server = net.createServer((socket) => {
    const connection = ++connections;
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    let answered = 0;
    let buf = '';
    socket.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      // Heads only: a POST's body here is the last thing on its connection, which closes on it.
      for (let end = buf.indexOf('\r\n\r\n'); end >= 0; end = buf.indexOf('\r\n\r\n')) {
        const [method, path = '/'] = buf.slice(0, end).split(' ');
        buf = buf.slice(end + 4);
        seen.push({ request: `${method} ${path}`, connection });
        if (answered > 0 && path.startsWith('/race-fin')) return void socket.end();
        if (answered > 0 && path.startsWith('/race-rst')) return void socket.resetAndDestroy();
        if (answered > 0 && path.startsWith('/begun')) return void socket.end('HTTP/1.1 200 OK\r\ncontent-');
        if (path.startsWith('/drop')) return void socket.end();
        if (path.startsWith('/blank')) return void socket.end('\r\n');
        answered++;
        socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${name.length}\r\n\r\n${method === 'HEAD' ? '' : name}`);
      }
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { seen, url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}` };
}

let solo: RawOrigin;
let first: RawOrigin;
let second: RawOrigin;
let third: RawOrigin;
let fourth: RawOrigin;
/** Only ever drops: each request comes on a new connection. */
let lone: RawOrigin;
/** Writes an empty line (which a client skips before a status line) and closes, on every request. */
let blank: RawOrigin;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('race', lab.keys.ec, ['race.lab.test', 'pair.lab.test', 'drop.lab.test', 'lone.lab.test', 'blank.lab.test']);
  solo = await rawOrigin('solo');
  first = await rawOrigin('first');
  second = await rawOrigin('second');
  third = await rawOrigin('third');
  fourth = await rawOrigin('fourth');
  lone = await rawOrigin('lone');
  blank = await rawOrigin('blank');
  metrics = new ProxyMetrics(() => proxy.keySource.stats(), new Registry());
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'race', chain: cert.file }],
      domains: [
        { name: 'race.lab.test', origin: solo.url },
        { name: 'pair.lab.test', origins: [first.url, second.url] },
        { name: 'drop.lab.test', origins: [third.url, fourth.url] },
        { name: 'lone.lab.test', origin: lone.url },
        { name: 'blank.lab.test', origin: blank.url },
      ],
      limits: { originFailureCooldownMs: 60_000 },
    }),
    { log: createLogger('keepalive-race-test', 'silent'), metrics },
  );
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  metrics?.stop();
  for (const socket of sockets) socket.destroy();
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  await lab?.close();
});

/** One HTTP/1.1 request on its own client connection (to `port`, the race proxy's by default): the status and the body. */
function h1(host: string, method: string, path: string, body = '', port = proxy.ports[0]!): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: host, ca, ALPNProtocols: ['http/1.1'] }, () =>
      socket.write(`${method} ${path} HTTP/1.1\r\nhost: ${host}\r\nconnection: close\r\ncontent-length: ${body.length}\r\n\r\n${body}`),
    );
    let got = '';
    socket.on('data', (chunk: Buffer) => (got += chunk.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => {
      const status = /^HTTP\/1\.1 (\d{3})/.exec(got);
      if (status === null) return reject(new Error(`no answer: ${JSON.stringify(got.slice(0, 200))}`));
      resolve({ status: Number(status[1]), body: got.slice(got.indexOf('\r\n\r\n') + 4) });
    });
  });
}

/** The connections a request came on at `origin`, in order. */
const connectionsOf = (origin: RawOrigin, request: string): number[] => origin.seen.filter((s) => s.request === request).map((s) => s.connection);

/** `keyedge_proxy_origin_resends_total` of `of` (undefined while it is not exported). */
async function resends(of: ProxyMetrics = metrics): Promise<number | undefined> {
  return (await of.registry.getSingleMetric('keyedge_proxy_origin_resends_total')?.get())?.values[0]?.value;
}

/** A request that leaves the origin's pool with a connection that has answered once, idle. */
async function prime(host: string, path: string): Promise<void> {
  expect((await h1(host, 'GET', path)).status).toBe(200);
}

describe('a request on a kept-alive origin connection the origin closes as it arrives', () => {
  for (const close of ['fin', 'rst'] as const) {
    it(`${close}: an HTTP/1.1 GET is sent again on a new connection and answered`, async () => {
      await prime('race.lab.test', `/prime-h1-${close}`);
      const path = `/race-${close}-h1`;
      expect(await h1('race.lab.test', 'GET', path)).toEqual({ status: 200, body: 'solo' });
      const on = connectionsOf(solo, `GET ${path}`);
      // Twice: on the connection that had answered the primer (closed under it), then on a new one.
      expect(on).toHaveLength(2);
      expect(on[0]).toBe(connectionsOf(solo, `GET /prime-h1-${close}`)[0]);
      expect(on[1]).toBeGreaterThan(on[0]!);
    });

    it(`${close}: an HTTP/2 GET is sent again on a new connection and answered`, async () => {
      await prime('race.lab.test', `/prime-h2-${close}`);
      const path = `/race-${close}-h2`;
      const session = h2Connect(proxy.ports[0]!, ca, 'race.lab.test');
      try {
        const answer = await h2Request(session, { ':method': 'GET', ':path': path });
        expect({ status: answer.status, body: answer.body.toString() }).toEqual({ status: 200, body: 'solo' });
      } finally {
        await closeSession(session);
      }
      const on = connectionsOf(solo, `GET ${path}`);
      expect(on).toHaveLength(2);
      expect(on[1]).toBeGreaterThan(on[0]!);
    });

    it(`${close}: a POST with a body is not sent again: 502, and the origin saw it once`, async () => {
      await prime('race.lab.test', `/prime-post-${close}`);
      const path = `/race-${close}-post`;
      const answer = await h1('race.lab.test', 'POST', path, 'order=1');
      expect(answer.status).toBe(502);
      expect(connectionsOf(solo, `POST ${path}`)).toHaveLength(1);
    });
  }

  it('counts each resend in keyedge_proxy_origin_resends_total, and nothing for a request not sent again', async () => {
    const before = (await resends()) ?? Number.NaN;
    await prime('race.lab.test', '/prime-count');
    expect((await h1('race.lab.test', 'GET', '/race-fin-count')).status).toBe(200);
    expect(await resends()).toBe(before + 1);
    await prime('race.lab.test', '/prime-count-post');
    expect((await h1('race.lab.test', 'POST', '/race-fin-count-post', 'order=1')).status).toBe(502);
    expect(await resends()).toBe(before + 1);
  });

  it('an HTTP/1.1 HEAD and an HTTP/2 DELETE without a body are sent again too (idempotent, RFC 9110 §9.2.2)', async () => {
    await prime('race.lab.test', '/prime-head');
    expect((await h1('race.lab.test', 'HEAD', '/race-fin-head')).status).toBe(200);
    expect(connectionsOf(solo, 'HEAD /race-fin-head')).toHaveLength(2);
    await prime('race.lab.test', '/prime-delete');
    const session = h2Connect(proxy.ports[0]!, ca, 'race.lab.test');
    try {
      expect((await h2Request(session, { ':method': 'DELETE', ':path': '/race-rst-delete' })).status).toBe(200);
    } finally {
      await closeSession(session);
    }
    expect(connectionsOf(solo, 'DELETE /race-rst-delete')).toHaveLength(2);
  });

  it('does not cool the origin down: of two, the one that met the race keeps its turn', async () => {
    // Round robin: first, second, first, … A cooled-down first would be skipped for the 60 s cool-down.
    const answers: string[] = [];
    for (const path of ['/pair-1', '/pair-2', '/race-fin-pair', '/pair-4', '/pair-5']) answers.push((await h1('pair.lab.test', 'GET', path)).body);
    expect(answers).toEqual(['first', 'second', 'first', 'second', 'first']);
    // The raced request was sent twice to the same origin: on its kept-alive connection, then on a new one.
    expect(connectionsOf(first, 'GET /race-fin-pair')).toEqual([1, 2]);
    expect(connectionsOf(second, 'GET /race-fin-pair')).toEqual([]);
  });

  it('an answer begun is not sent again: 502, and the origin saw the request once', async () => {
    await prime('race.lab.test', '/prime-begun');
    expect((await h1('race.lab.test', 'GET', '/begun-h1')).status).toBe(502);
    expect(connectionsOf(solo, 'GET /begun-h1')).toHaveLength(1);
  });

  it('an origin that drops the request on a new connection too is cooled down', async () => {
    // Round robin over third and fourth: third answers once, then drops the next request on that kept-alive connection
    // and on the new one (its resend), then is skipped.
    const answers: string[] = [];
    for (const path of ['/warm-1', '/warm-2', '/drop-1', '/after-4', '/after-5']) {
      const { status, body } = await h1('drop.lab.test', 'GET', path);
      answers.push(status === 200 ? body : String(status));
    }
    expect(answers).toEqual(['third', 'fourth', '502', 'fourth', 'fourth']);
    expect(connectionsOf(third, 'GET /drop-1')).toEqual([1, 2]);
  });

  // Not the race: a connection that never carried an answer, closed under its first request, is the origin dropping
  // it (nginx resends only on a cached connection). Sent again, an origin dropping every request got each one twice,
  // for ever: with one origin, its cool-down changes nothing.
  it('a request dropped on a new connection is not sent again: 502, and the origin saw it once', async () => {
    for (let i = 0; i < 5; i++) expect((await h1('lone.lab.test', 'GET', `/drop-lone-${i}`)).status).toBe(502);
    expect(lone.seen.map((s) => s.connection)).toEqual([1, 2, 3, 4, 5]);
  });

  // Its socket read a byte, so the close may be the race: the first request is sent again, that fails too, and the
  // origin cools down; while it does, nothing is sent again (each request was sent twice, for ever).
  it('an origin that writes an empty line and closes, every time, has one request sent again, then none while it cools down', async () => {
    for (let i = 0; i < 4; i++) expect((await h1('blank.lab.test', 'GET', `/blank-${i}`)).status).toBe(502);
    expect(blank.seen.map((s) => s.request)).toEqual(['GET /blank-0', 'GET /blank-0', 'GET /blank-1', 'GET /blank-2', 'GET /blank-3']);
  });
});

interface CountingOrigin {
  readonly url: Promise<string>;
  /** Connections open now, and the most ever open at once. */
  open(): number;
  maxOpen(): number;
  /** The connections of requests held unanswered, by path. */
  readonly held: Map<string, net.Socket[]>;
  /** Each request's path, as it came. */
  readonly seen: string[];
  /** Answers the requests held for `path`. */
  release(path: string): void;
  /** Closes the connection of the raced `/drop-once`. */
  drop(): void;
}

/**
 * A raw TCP origin that counts the connections open to it at once. Requests are held until `release` (by path), but
 * for `/drop-once`: the first that comes on a connection that has answered before is closed under (the race), which
 * the test lets happen with `drop`; every later one, or one on a new connection, is held as the others.
 */
function countingOrigin(): CountingOrigin {
  let open = 0;
  let maxOpen = 0;
  const held = new Map<string, net.Socket[]>();
  const seen: string[] = [];
  let dropping: net.Socket | undefined;
  let dropped = false;
  const answers = new WeakMap<net.Socket, number>();
  /** Open connections counted: one the origin closes stops counting as it does (its 'close' waits for the proxy's side). */
  const counted = new WeakSet<net.Socket>();
  const server = net.createServer((socket) => {
    maxOpen = Math.max(maxOpen, ++open);
    counted.add(socket);
    sockets.add(socket);
    answers.set(socket, 0);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (counted.delete(socket)) open--;
      sockets.delete(socket);
    });
    let buf = '';
    socket.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      for (let end = buf.indexOf('\r\n\r\n'); end >= 0; end = buf.indexOf('\r\n\r\n')) {
        const path = buf.slice(0, end).split(' ')[1] ?? '/';
        buf = buf.slice(end + 4);
        seen.push(path);
        if (path === '/drop-once' && !dropped && answers.get(socket)! > 0) {
          dropped = true;
          dropping = socket;
          continue;
        }
        held.set(path, [...(held.get(path) ?? []), socket]);
      }
    });
  });
  servers.push(server);
  const url = new Promise<string>((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`)));
  return {
    url,
    open: () => open,
    maxOpen: () => maxOpen,
    held,
    seen,
    release(path) {
      for (const socket of held.get(path) ?? []) {
        answers.set(socket, answers.get(socket)! + 1);
        socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${path.length}\r\n\r\n${path}`);
      }
      held.delete(path);
    },
    drop() {
      if (dropping !== undefined && counted.delete(dropping)) open--;
      dropping?.end();
    },
  };
}

describe("the resend's connection", () => {
  // The resend goes on a connection of its own, since another idle one of the pool may be closing too. The origin's
  // bound (limits.originMaxConnections) holds only if that connection counts with the pool's: a request waiting at
  // the gate, admitted as the raced one left it, reopens the pool's closed connection, and once the resend is admitted
  // in its turn, a connection of its own would be one more than the bound, the pool's others kept alive.
  it('keeps the origin within limits.originMaxConnections: with the pool at its bound, the resend takes a place in it', async () => {
    const origin = countingOrigin();
    const cert = await lab.certificate('bound', lab.keys.ec, ['bound.lab.test']);
    const boundMetrics = new ProxyMetrics(() => bound.keySource.stats(), new Registry());
    const bound: RunningWorker = await startProxyWorker(
      lab.proxyConfig({
        certificates: [{ name: 'bound', chain: cert.file }],
        domains: [{ name: 'bound.lab.test', origin: await origin.url }],
        // Clients not counted per address (all are 127.0.0.1): the origin's own bound is tried, not one client's share of it.
        limits: { originMaxConnections: 2, originFailureCooldownMs: 60_000, maxConnectionsPerClient: null },
      }),
      { log: createLogger('keepalive-race-bound-test', 'silent'), metrics: boundMetrics },
    );
    const get = (path: string) => h1('bound.lab.test', 'GET', path, '', bound.ports[0]!);
    const heldAt = (path: string, count = 1) => waitFor(`${path} held at the origin`, () => ((origin.held.get(path)?.length ?? 0) >= count ? true : undefined));
    try {
      // Two connections that have answered once, idle in the pool.
      const warm = [get('/warm-1'), get('/warm-2')];
      await heldAt('/warm-1');
      await heldAt('/warm-2');
      origin.release('/warm-1');
      origin.release('/warm-2');
      expect((await Promise.all(warm)).map((a) => a.status)).toEqual([200, 200]);
      // One held on one of them; the raced request on the other: the pool's two places are taken.
      const holding = get('/hold');
      await heldAt('/hold');
      const raced = get('/drop-once');
      await waitFor('the raced request at the origin', () => (origin.seen.includes('/drop-once') ? true : undefined));
      // A third waits at the gate for a place. Its wait cannot be seen from here: a wide margin for it to get there.
      const waiting = get('/waiting');
      await new Promise((resolve) => setTimeout(resolve, 1000));
      expect(origin.seen).not.toContain('/waiting');
      // The raced connection closes: the waiting request takes its place (and a connection), the resend waits for one.
      origin.drop();
      await heldAt('/waiting');
      // The held request is answered: its place goes to the resend.
      origin.release('/hold');
      expect((await holding).status).toBe(200);
      await waitFor('the resend at the origin', () => (origin.seen.filter((p) => p === '/drop-once').length === 2 ? true : undefined));
      await heldAt('/drop-once');
      expect({ open: origin.open(), maxOpen: origin.maxOpen() }).toEqual({ open: 2, maxOpen: 2 });
      origin.release('/drop-once');
      origin.release('/waiting');
      expect((await raced).status).toBe(200);
      expect((await waiting).status).toBe(200);
      expect(await resends(boundMetrics)).toBe(1);
    } finally {
      await bound.close();
      boundMetrics.stop();
    }
  }, 60_000);
});
