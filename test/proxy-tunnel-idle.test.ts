import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { PROXY_DEFAULTS } from '../config/proxy-schema.js';
import { createLogger } from '../keyserver/shared/log.js';
import { openTunnel } from '../proxy/http/tunnel.js';
import { type RunningWorker, startProxyWorker } from '../proxy/worker.js';
import { sleep } from './helpers/basics.js';
import { issue } from './helpers/pki.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { acceptFor, type ClientSocket, encodeFrame, openWebSocket, readFrames, TEXT, upgradeRequest } from './helpers/websocket.js';

// A tunnel that carries no byte either way for limits.tunnelIdleTimeoutMs is closed, both sides (HAProxy's `timeout
// tunnel`, nginx's proxy_read_timeout on a proxied WebSocket); one that carries bytes one way only is not idle. Before
// the bound, a tunnel where neither side sent anything held its client connection, its origin connection and the
// worker's memory for ever. The proxy runs in this process; the origin is node's server, switching on 'upgrade'.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
let origin: http.Server;
/** The origin's side of each tunnel, in the order opened: `closed` once the proxy closed its connection. */
const originSides: { socket: Duplex; closed: Promise<void>; received: () => number }[] = [];
const IDLE_MS = 1000;
/** Loopback closes in milliseconds; the rest is margin for a loaded machine. */
const MARGIN_MS = 5000;
/** What the paced client takes every 200 ms. */
const PACED_BYTES = 1024 * 1024;
/** What '/last' sends before it closes: more than the buffers between hold, so the client is still taking it then. */
const LAST_BYTES = 8 * 1024 * 1024;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  origin = http.createServer((_req, res) => res.writeHead(426, { 'content-length': 0 }).end());
  origin.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${acceptFor(String(req.headers['sec-websocket-key']))}\r\n\r\n`,
    );
    // '/slow-reader': the origin takes PACED_BYTES every 200 ms of what the client sends, checking each byte against
    // floodByte's stream, and pushes a frame every 20 ms meanwhile (a server streaming down while it takes an upload).
    if (req.url === '/slow-reader') return slowReader(socket, head);
    let received = 0;
    readFrames(socket, head, () => received++);
    // The proxy's close of its connection arrives as a FIN (or a reset): node's upgraded socket is half-open, so it ends
    // its side too, as the ws library does.
    const closed = new Promise<void>((resolve) => {
      socket.once('end', () => {
        socket.end();
        resolve();
      });
      socket.once('close', () => resolve());
    });
    originSides.push({ socket, closed, received: () => received });
    // '/flood': the origin sends floodByte's stream as fast as the proxy takes it, for ever.
    if (req.url === '/flood') return flood(socket);
    // '/last': the origin sends LAST_BYTES of floodByte's stream at once, then closes.
    if (req.url === '/last') return void socket.end(floodBytes(LAST_BYTES));
    // '/push': the origin sends every 300 ms (a server pushing to a silent client); otherwise it never sends.
    if (req.url === '/push') {
      let n = 0;
      const push = setInterval(() => socket.write(encodeFrame(TEXT, `push ${n++}`, false)), 300);
      socket.once('close', () => clearInterval(push));
    }
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [{ name: 'ws.lab.test', origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      limits: { tunnelIdleTimeoutMs: IDLE_MS },
    }),
    { log: createLogger('tunnel-idle-test', 'silent') },
  );
});
afterAll(async () => {
  await proxy?.close();
  origin?.closeAllConnections();
  origin?.close();
  await lab?.close();
});

async function open(path: string): Promise<{ ws: ClientSocket; side: (typeof originSides)[number] }> {
  const before = originSides.length;
  const ws = await openWebSocket(proxy.ports[0]!, ca, 'ws.lab.test', path);
  if (!('socket' in ws)) throw new Error(`no upgrade: ${ws.status} ${ws.body}`);
  return { ws, side: originSides[before]! };
}

/** The byte at `offset` of what '/flood' sends: 32-bit little-endian counters, so a byte lost, doubled or moved shows. */
const floodByte = (offset: number): number => ((offset >>> 2) >>> ((offset & 3) * 8)) & 0xff;

/** The first `length` bytes of floodByte's stream. */
function floodBytes(length: number): Buffer {
  const bytes = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i += 4) bytes.writeUInt32LE(i >>> 2, i);
  return bytes;
}

/** Writes floodByte's stream to `socket` as it drains, 64 KiB per write, until it closes. */
function flood(socket: Duplex): void {
  let offset = 0;
  const more = (): void => {
    while (!socket.destroyed) {
      const chunk = Buffer.allocUnsafe(65_536);
      for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((offset + i) >>> 2, i);
      offset += chunk.length;
      if (!socket.write(chunk)) return void socket.once('drain', more);
    }
  };
  more();
}

/** Opens a tunnel to `path` through the proxy without reading from it: the caller reads (the head first). */
function openRaw(path: string): Promise<{ socket: Duplex; head: Buffer; side: (typeof originSides)[number] }> {
  const before = originSides.length;
  return new Promise((resolve, reject) => {
    const req = https.request(upgradeRequest(proxy.ports[0]!, ca, 'ws.lab.test', path));
    req.on('error', reject);
    req.on('response', (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
    req.on('upgrade', (_res, socket: Duplex, head: Buffer) => {
      socket.pause();
      socket.on('error', () => undefined);
      resolve({ socket, head, side: originSides[before]! });
    });
    req.end();
  });
}

/** Reads '/flood' from a paused `socket` only as `take` allows, checking each byte against floodByte. */
function reader(socket: Duplex, head: Buffer) {
  let received = 0;
  let inOrder = true;
  let allowed = 0;
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const check = (chunk: Buffer): void => {
    for (let i = 0; i < chunk.length; i++) if (chunk[i] !== floodByte(received + i)) inOrder = false;
    received += chunk.length;
    allowed -= chunk.length;
    if (allowed <= 0) socket.pause();
  };
  check(head);
  socket.on('data', check);
  return {
    /** Reads about `bytes` more (whole chunks), then pauses. */
    take: (bytes: number): void => {
      allowed = bytes;
      socket.resume();
    },
    received: () => received,
    inOrder: () => inOrder,
    closed,
  };
}

/** What '/slow-reader' took of what its client sent, and whether every byte was floodByte's in order. */
const slowReaders: { received: () => number; inOrder: () => boolean; closed: Promise<void> }[] = [];

function slowReader(socket: Duplex, head: Buffer): void {
  let received = 0;
  let inOrder = true;
  let allowed = 0;
  const check = (chunk: Buffer): void => {
    for (let i = 0; i < chunk.length; i++) if (chunk[i] !== floodByte(received + i)) inOrder = false;
    received += chunk.length;
    allowed -= chunk.length;
    if (allowed <= 0) socket.pause();
  };
  socket.pause();
  check(head);
  socket.on('data', check);
  const reading = setInterval(() => {
    allowed = PACED_BYTES;
    socket.resume();
  }, 200);
  const pushing = setInterval(() => socket.write(encodeFrame(TEXT, 'still here', false)), 20);
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      clearInterval(reading);
      clearInterval(pushing);
      resolve();
    }),
  );
  socket.once('end', () => socket.end());
  slowReaders.push({ received: () => received, inOrder: () => inOrder, closed });
}

/** Whether `promise` settled by now. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  void promise.then(() => (done = true));
  await sleep(0);
  return done;
}

/** Milliseconds until `promise` settles, or undefined when it has not within `ms`. */
async function settlesWithin(ms: number, promise: Promise<unknown>): Promise<number | undefined> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
  const elapsed = await Promise.race([promise.then(() => performance.now() - started), late]);
  clearTimeout(timer);
  return elapsed;
}

describe('limits.tunnelIdleTimeoutMs', () => {
  it('defaults to a minute, and takes null for no bound', () => {
    expect(PROXY_DEFAULTS.limits.tunnelIdleTimeoutMs).toBe(60_000);
    const file = `${lab.dir}/tunnel-idle-config.json`;
    writeFileSync(file, JSON.stringify({}));
    expect(loadProxyConfig(file).limits.tunnelIdleTimeoutMs).toBe(60_000);
    writeFileSync(file, JSON.stringify({ limits: { tunnelIdleTimeoutMs: null } }));
    expect(loadProxyConfig(file).limits.tunnelIdleTimeoutMs).toBeNull();
    writeFileSync(file, JSON.stringify({ limits: { tunnelIdleTimeoutMs: 50 } }));
    expect(() => loadProxyConfig(file)).toThrow('limits.tunnelIdleTimeoutMs');
    expect(() => loadProxyConfig(file)).toThrow('from 100 to 86400000');
  });

  it('closes a tunnel neither side sent anything on, both its connections, after the bound and not before', async () => {
    const { ws, side } = await open('/');
    const elapsed = await settlesWithin(IDLE_MS + MARGIN_MS, ws.closed);
    expect(elapsed, 'the client side closed within the bound and the margin').toBeDefined();
    // Not before half the bound (measured from the 101, which came before the clock started).
    expect(elapsed!).toBeGreaterThanOrEqual(IDLE_MS / 2);
    expect(await settlesWithin(MARGIN_MS, side.closed), 'the origin side closed').toBeDefined();
  });

  it('keeps a tunnel open past the bound while only the client sends (to a silent origin)', async () => {
    const { ws, side } = await open('/');
    for (let i = 0; i < 10; i++) {
      ws.send(`tick ${i}`);
      await sleep(300);
    }
    // Three times the bound has passed: the tunnel is open, and what the client sent reached the origin.
    expect(await settled(ws.closed)).toBe(false);
    expect(await settled(side.closed)).toBe(false);
    expect(side.received()).toBe(10);
    // Then silent: closed by the bound.
    expect(await settlesWithin(IDLE_MS + MARGIN_MS, ws.closed)).toBeDefined();
    expect(await settlesWithin(MARGIN_MS, side.closed)).toBeDefined();
  });

  it('keeps a tunnel open past the bound while only the origin sends (to a silent client)', async () => {
    const { ws, side } = await open('/push');
    await sleep(3 * IDLE_MS);
    expect(await settled(ws.closed)).toBe(false);
    expect(ws.messages.length).toBeGreaterThanOrEqual(5);
    ws.socket.destroy();
    expect(await settlesWithin(MARGIN_MS, side.closed)).toBeDefined();
  });

  // A client taking a long message at its own pace: the origin sends far more than the buffers between hold, so it
  // waits on the client (nothing is read from it between the kernel's wake-ups of the proxy), while the client takes
  // 1 MiB every 200 ms. Bytes reach it all along: the tunnel is live. The pace is set by what a proxy can see on
  // loopback: it learns of the client's reading only when the kernel wakes it to write, once a third of the
  // connection's send buffer is free, and on loopback that buffer autotunes to MiBs (tunnel.ts).
  it('keeps a tunnel open past the bound while the origin waits on a client taking its bytes, every byte in order', async () => {
    const { socket, head, side } = await openRaw('/flood');
    const client = reader(socket, head);
    const reading = setInterval(() => client.take(PACED_BYTES), 200);
    try {
      const counts: number[] = [];
      for (let i = 0; i < 8; i++) {
        await sleep(IDLE_MS / 2);
        counts.push(client.received());
      }
      // Four times the bound has passed: the origin side is open (the proxy would have closed it), and bytes still
      // arrive in the last half of that time.
      expect(await settled(side.closed)).toBe(false);
      expect(counts[7]!).toBeGreaterThan(counts[5]!);
      // Far more than the buffers between hold went through: the origin waited on the client.
      expect(counts[7]!).toBeGreaterThan(8 * 1024 * 1024);
    } finally {
      clearInterval(reading);
    }
    // Then it stops reading: the bytes stop, and the bound closes the tunnel; what the proxy had sent still arrives.
    expect(await settlesWithin(IDLE_MS + MARGIN_MS, side.closed), 'the origin side closed').toBeDefined();
    client.take(Number.POSITIVE_INFINITY);
    expect(await settlesWithin(MARGIN_MS, client.closed), 'the client side closed').toBeDefined();
    expect(client.inOrder()).toBe(true);
  });

  // The relay (tunnel.ts) ends the client only once what it read from the origin is handed over: an origin's last
  // message and its close reach a client still taking what came before them, every byte, as with nginx.
  it('hands a client still taking its bytes all the origin sent before it closed, then closes', async () => {
    const { socket, head, side } = await openRaw('/last');
    const client = reader(socket, head);
    const reading = setInterval(() => client.take(PACED_BYTES), 200);
    try {
      expect(await settlesWithin(30_000, client.closed), 'the client side closed').toBeDefined();
    } finally {
      clearInterval(reading);
    }
    expect(await settled(side.closed)).toBe(true);
    expect(client.received()).toBe(LAST_BYTES);
    expect(client.inOrder()).toBe(true);
  });

  // A client that sends while it takes the origin's last bytes (a WebSocket streaming up, pinging): the proxy stops
  // reading it once the origin's side is closed, so its bytes lie unread when the tunnel closes, and a close with
  // unread bytes is a reset, which drops what the kernel still held for the client (RFC 9112 §9.6's lingering close).
  it('hands a client still taking its bytes, and still sending, all the origin sent before it closed', async () => {
    const { socket, head, side } = await openRaw('/last');
    const client = reader(socket, head);
    const reading = setInterval(() => client.take(PACED_BYTES), 200);
    const sending = setInterval(() => socket.writable && socket.write(encodeFrame(TEXT, 'still here', true)), 20);
    try {
      expect(await settlesWithin(30_000, client.closed), 'the client side closed').toBeDefined();
    } finally {
      clearInterval(reading);
      clearInterval(sending);
    }
    expect(await settled(side.closed)).toBe(true);
    expect(client.received()).toBe(LAST_BYTES);
    expect(client.inOrder()).toBe(true);
  });

  // The other way: a client that sends its last bytes and closes while the origin, still taking them, sends to it.
  it('hands an origin still taking its bytes, and still sending, all the client sent before it closed', async () => {
    const before = slowReaders.length;
    const { socket, head } = await openRaw('/slow-reader');
    const origin = slowReaders[before]!;
    const client = reader(socket, head);
    client.take(Number.POSITIVE_INFINITY);
    socket.end(floodBytes(LAST_BYTES));
    expect(await settlesWithin(30_000, origin.closed), 'the origin side closed').toBeDefined();
    expect(origin.received()).toBe(LAST_BYTES);
    expect(origin.inOrder()).toBe(true);
  });

  it('closes a tunnel whose client never reads what the origin sends, after the bound', async () => {
    const { socket, head, side } = await openRaw('/flood');
    // The buffers between fill within the margin; from then on nothing moves.
    expect(await settlesWithin(IDLE_MS + 2 * MARGIN_MS, side.closed), 'the origin side closed').toBeDefined();
    // The client's side sees the close once it reads what was sent before it.
    const client = reader(socket, head);
    client.take(Number.POSITIVE_INFINITY);
    expect(await settlesWithin(MARGIN_MS, client.closed), 'the client side closed').toBeDefined();
    expect(client.received()).toBeGreaterThan(0);
    expect(client.inOrder()).toBe(true);
  });
});

/** What a paced link passes toward the client per second (below). */
const LINK_BYTES_PER_S = 40 * 1024;

/**
 * A connection whose way to the client passes LINK_BYTES_PER_S, as a poor link does, without the kernel's buffers:
 * a write to `proxySide` completes as its last byte is passed to `clientSide`. On loopback the kernel takes MiBs at
 * once and tells a writer of the client's reading only once a third of that is free, so a client reading KiBs a
 * second is not seen reading by any proxy (tunnel.ts); this link shows what the proxy does with what it is told.
 */
function pacedLink(): { proxySide: Duplex; clientSide: Duplex; stall: () => void } {
  const queue: { chunk: Buffer; done: () => void }[] = [];
  let clientSide: Duplex | undefined;
  const proxySide = new Duplex({
    read: () => undefined,
    write: (chunk: Buffer, _encoding, done) => void queue.push({ chunk, done }),
    final: (done) => {
      clientSide?.push(null);
      done();
    },
    // The proxy's close without an end (a reset): what the link had not passed yet is lost, and the client sees it.
    destroy: (err, done) => {
      clientSide?.destroy();
      done(err);
    },
  });
  clientSide = new Duplex({
    read: () => undefined,
    write: (chunk: Buffer, _encoding, done) => {
      proxySide.push(chunk);
      done();
    },
    final: (done) => {
      proxySide.push(null);
      done();
    },
  });
  // By the clock, not by ticks: a late tick (a loaded machine) passes what the time allowed.
  let last = performance.now();
  let allowed = 0;
  const pass = setInterval(() => {
    const now = performance.now();
    allowed += ((now - last) / 1000) * LINK_BYTES_PER_S;
    last = now;
    while (queue.length > 0 && allowed >= 1) {
      const first = queue[0]!;
      const n = Math.min(first.chunk.length, Math.floor(allowed));
      clientSide.push(first.chunk.subarray(0, n));
      allowed -= n;
      first.chunk = first.chunk.subarray(n);
      if (first.chunk.length === 0) {
        queue.shift();
        first.done();
      }
    }
    // A link with nothing to pass banks no time.
    if (queue.length === 0) allowed = 0;
  }, 20);
  return { proxySide, clientSide, stall: () => clearInterval(pass) };
}

describe('an open tunnel over a link that passes KiBs a second to the client', () => {
  let originServer: net.Server;
  let context: tls.SecureContext;
  /** The same key and certificate, for a server of our own (tls.Server takes no secure context). */
  let leafPems: { key: string; cert: string };
  let leafCa: string;
  const originSockets: { closed: Promise<void> }[] = [];

  beforeAll(async () => {
    const leaf = await issue(lab.ca, { commonName: 'link.test', dnsNames: ['link.test'], keyAlgorithm: 'ec-p256' });
    leafPems = { key: leaf.keyPem, cert: leaf.certPem };
    context = tls.createSecureContext(leafPems);
    leafCa = lab.ca.certPem;
    originServer = net.createServer((socket) => {
      socket.on('error', () => undefined);
      originSockets.push({ closed: new Promise<void>((resolve) => socket.once('close', () => resolve())) });
      flood(socket);
    });
    await new Promise<void>((resolve) => originServer.listen(0, '127.0.0.1', resolve));
  });
  afterAll(() => originServer?.close());

  /** The tunnel's bounds: IDLE_MS idle, by default; a minute to take a closed peer's last bytes (with no idle bound). */
  type Bounds = { idleMs: number | null; sendTimeoutMs: number };
  const IDLE_BOUND: Bounds = { idleMs: IDLE_MS, sendTimeoutMs: 60_000 };

  function tunnel(client: tls.TLSSocket, upstream: net.Socket, bounds: Bounds): void {
    openTunnel({ client, upstream, ...bounds, log: createLogger('tunnel-idle-test', 'silent'), domain: 'link.test', origin: 'paced' });
  }

  /** A TLS tunnel to `upstream` whose way to the client is a paced link; `peer` is the client's end. */
  async function linkedTunnel(
    upstream: net.Socket,
    bounds = IDLE_BOUND,
  ): Promise<{ link: ReturnType<typeof pacedLink>; client: tls.TLSSocket; peer: tls.TLSSocket }> {
    const link = pacedLink();
    const client = new tls.TLSSocket(link.proxySide as net.Socket, { isServer: true, secureContext: context });
    client.on('error', () => undefined);
    const peer = tls.connect({ socket: link.clientSide, ca: leafCa, servername: 'link.test' });
    peer.on('error', () => undefined);
    await Promise.all([new Promise((resolve) => client.once('secure', resolve)), new Promise((resolve) => peer.once('secureConnect', resolve))]);
    tunnel(client, upstream, bounds);
    return { link, client, peer };
  }

  /** An origin connection on which `bytes` of floodByte's stream arrive with the FIN, at once; `close` stops its server. */
  async function lastWords(bytes: number): Promise<{ upstream: net.Socket; close: () => void }> {
    const server = net.createServer((socket) => {
      socket.on('error', () => undefined);
      socket.end(floodBytes(bytes));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const upstream = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    upstream.on('error', () => undefined);
    await new Promise((resolve) => upstream.once('connect', resolve));
    return { upstream, close: () => server.close() };
  }

  /**
   * Reads all `end` is sent from now on; the returned check expects, within what the link takes to pass `bytes` and
   * the margin, all of them in order and then an end, not a reset (the link passes a reset at once, the bytes it held
   * lost). `side` names the end in the failures.
   */
  function handedWhole(end: tls.TLSSocket, bytes: number): (side: string) => Promise<void> {
    const reading = reader(end, Buffer.alloc(0));
    reading.take(Number.POSITIVE_INFINITY);
    const ended = new Promise<void>((resolve) => end.once('end', () => resolve()));
    return async (side) => {
      const within = MARGIN_MS + (bytes / LINK_BYTES_PER_S) * 1000;
      expect(await settlesWithin(within, Promise.race([ended, reading.closed])), `the ${side} side closed`).toBeDefined();
      expect(await settled(ended), `the ${side} side was ended, not cut`).toBe(true);
      expect(reading.received()).toBe(bytes);
      expect(reading.inOrder()).toBe(true);
    };
  }

  // An origin whose last bytes and FIN arrive together: the relay reads them at once and the origin's connection
  // closes cleanly while those bytes still wait on the link. Before, its close cut the client at once, and what the
  // relay had not yet handed to the client was lost (a client taking a WebSocket's last 8 MiB on a loaded machine got
  // all but its last 5 KiB); now the relay ends the client after the last byte.
  it('hands the client, on a slow link, all an origin sent with its FIN, then ends it', async () => {
    const lastBytes = 48 * 1024;
    const origin = await lastWords(lastBytes);
    const { link, peer } = await linkedTunnel(origin.upstream);
    const handed = handedWhole(peer, lastBytes);
    try {
      await handed('client');
    } finally {
      link.stall();
      peer.destroy();
      origin.close();
    }
  });

  // Handed its peer's last bytes, a side that stops taking them is still bound: it cannot hold its connection for ever.
  // With no idle bound, limits.sendTimeoutMs bounds it (before, it was held for ever: nothing was left to cut it).
  it.each([
    ['the idle bound', IDLE_BOUND],
    ['limits.sendTimeoutMs, with no idle bound', { idleMs: null, sendTimeoutMs: IDLE_MS }],
  ])('cuts a client that stops taking the last bytes of an origin that closed, after %s', async (_name, bounds) => {
    const origin = await lastWords(48 * 1024);
    const { link, client, peer } = await linkedTunnel(origin.upstream, bounds);
    link.stall();
    try {
      expect(await settlesWithin(MARGIN_MS, new Promise((resolve) => origin.upstream.once('close', resolve))), 'the origin side closed').toBeDefined();
      expect(client.destroyed, 'the client side is held for its last bytes').toBe(false);
      expect(await settlesWithin(IDLE_MS + MARGIN_MS, new Promise((resolve) => client.once('close', resolve))), 'the client side cut').toBeDefined();
    } finally {
      peer.destroy();
      origin.close();
    }
  });

  // The other way: the client's last bytes and FIN arrive together, and the link to the origin (a TLS one here) is the
  // slow side. Before, the client's close cut the origin's connection with those bytes still on the link.
  it('hands the origin, on a slow link, all a client sent with its FIN, then ends it', async () => {
    const lastBytes = 48 * 1024;
    const link = pacedLink();
    const originEnd = new tls.TLSSocket(link.clientSide as net.Socket, { isServer: true, secureContext: context });
    originEnd.on('error', () => undefined);
    const upstream = tls.connect({ socket: link.proxySide, ca: leafCa, servername: 'link.test' });
    upstream.on('error', () => undefined);
    // The client: a loopback TLS connection, the proxy's end accepted here.
    let accepted!: (socket: tls.TLSSocket) => void;
    const clientEnd = new Promise<tls.TLSSocket>((resolve) => (accepted = resolve));
    const server = tls.createServer(leafPems, accepted);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const peer = tls.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', ca: leafCa, servername: 'link.test' });
    peer.on('error', () => undefined);
    const [client] = await Promise.all([clientEnd, new Promise((resolve) => upstream.once('secureConnect', resolve))]);
    client.on('error', () => undefined);
    tunnel(client, upstream, IDLE_BOUND);
    const handed = handedWhole(originEnd, lastBytes);
    peer.end(floodBytes(lastBytes));
    try {
      await handed('origin');
    } finally {
      link.stall();
      peer.destroy();
      originEnd.destroy();
      server.close();
    }
  });

  // The origin sends far more than the link passes, 64 KiB per read reaching the proxy; the client takes all the link
  // passes, 40 KiB a second. Before, the tunnel saw only what it read from the origin, once the client had taken a
  // whole read's worth (1.6 s): with a 1 s bound it was closed after 1 s, bytes reaching the client all along. Each
  // 16 KiB the link passes (0.4 s) counts now.
  it('stays open past the bound while the client takes the bytes, every byte in order; closed once they stop', async () => {
    const upstream = net.connect((originServer.address() as net.AddressInfo).port, '127.0.0.1');
    upstream.on('error', () => undefined);
    await new Promise((resolve) => upstream.once('connect', resolve));
    const origin = originSockets.at(-1)!;
    const { link, client, peer } = await linkedTunnel(upstream);
    const reading = reader(peer, Buffer.alloc(0));
    reading.take(Number.POSITIVE_INFINITY);
    try {
      const counts: number[] = [];
      for (let i = 0; i < 8; i++) {
        await sleep(IDLE_MS / 2);
        counts.push(reading.received());
      }
      // Four times the bound: the origin side is open, and the client took bytes in the last half of that time.
      expect(await settled(origin.closed)).toBe(false);
      expect(counts[7]!).toBeGreaterThan(counts[5]!);
      expect(reading.inOrder()).toBe(true);
      // Then the link passes nothing more: no byte either way, and the bound closes the tunnel.
      link.stall();
      expect(await settlesWithin(IDLE_MS + MARGIN_MS, origin.closed), 'the origin side closed').toBeDefined();
      expect(client.destroyed).toBe(true);
    } finally {
      link.stall();
      peer.destroy();
      upstream.destroy();
    }
  });
});
