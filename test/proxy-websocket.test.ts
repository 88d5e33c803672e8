import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { register } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { createCa, issue, writeIssued, writePem } from './helpers/pki.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { refusedPort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { acceptFor, CLOSE, type ClientSocket, encodeFrame, openWebSocket, readFrames, TEXT, upgradeRequest } from './helpers/websocket.js';

// WebSocket upgrades through the proxy (RFC 6455 §4): messages both ways,
// a close on either side closes the other (Close frames pass through, and
// the connections on both sides of the proxy end), and the same refusals as
// plain requests (421, 404, 502); an origin's refusal of the upgrade is relayed.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
const servers: net.Server[] = [];
/** The origin's side of each WebSocket: promises of its close and of the code of the Close frame it received (undefined: none). */
const originSides: { socket: Duplex; closed: Promise<void>; closeCode: Promise<number | undefined> }[] = [];
/** Bound on a close crossing the proxy: loopback takes milliseconds; the rest is margin for a loaded machine. */
const CLOSE_WITHIN_MS = 5000;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  const origin = http.createServer((_req, res) => res.writeHead(426, { 'content-length': 0 }).end());
  const originCa = await createCa('origin CA');
  const originCaFile = writePem(lab.dir, 'origin-ca', originCa.certPem);
  const files = writeIssued(lab.dir, 'origin', await issue(originCa, { commonName: 'origin.test', dnsNames: ['origin.test'], keyAlgorithm: 'ec-p256' }));
  const secureOrigin = https.createServer({ cert: readFileSync(files.cert), key: readFileSync(files.key) }, (_req, res) =>
    res.writeHead(426, { 'content-length': 0 }).end(),
  );
  const onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    if (req.url === '/reject-fields') {
      // A field repeated and names in their own case, and an HSTS of the origin's (the operator's replaces it).
      socket.end(
        'HTTP/1.1 403 Forbidden\r\nServer: one\r\nServer: two\r\nX-Refusal-Reason: quota\r\nStrict-Transport-Security: max-age=0\r\ncontent-length: 7\r\nconnection: close\r\n\r\nrefused',
      );
      return;
    }
    if (req.url === '/reject') {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 7\r\nconnection: close\r\n\r\nrefused');
      return;
    }
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${acceptFor(String(req.headers['sec-websocket-key']))}\r\n\r\n`,
    );
    socket.write(encodeFrame(TEXT, `welcome ${req.headers.host} ${req.headers['x-forwarded-for']} ${req.headers['x-forwarded-proto']}`, false));
    let onClose: (code: number | undefined) => void = () => undefined;
    const closeCode = new Promise<number | undefined>((resolve) => (onClose = resolve));
    const closed = new Promise<void>((resolve) =>
      socket.once('close', () => {
        onClose(undefined);
        resolve();
      }),
    );
    originSides.push({ socket, closed, closeCode });
    socket.on('error', () => undefined);
    // As the ws library does: the proxy's end of the connection is answered with ours.
    socket.once('end', () => socket.end());
    readFrames(socket, head, (frame) => {
      if (frame.opcode === CLOSE) {
        // §5.5.1: a Close is answered with a Close (echoing the code), then the TCP connection ends.
        onClose(frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : undefined);
        socket.end(encodeFrame(CLOSE, frame.payload, false));
      } else if (frame.payload.toString() === 'bye') socket.end(encodeFrame(CLOSE, Buffer.from([0x03, 0xe9]), false));
      else if (frame.payload.toString() === 'vanish') (socket as net.Socket).resetAndDestroy();
      else socket.write(encodeFrame(TEXT, `echo ${frame.payload.toString()}`, false));
    });
  };
  const urls: string[] = [];
  for (const server of [origin, secureOrigin]) {
    server.on('upgrade', onUpgrade);
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    urls.push(`${server === origin ? 'http' : 'https'}://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
  }
  const [url, secureUrl] = urls as [string, string];
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [
        { name: 'ws.lab.test', origin: url },
        { name: 'down.lab.test', origin: `http://127.0.0.1:${await refusedPort()}` },
        // The first origin refuses: the upgrade goes on to the verified https one.
        { name: 'wss.lab.test', origins: [`http://127.0.0.1:${await refusedPort()}`, secureUrl], originTls: { ca: originCaFile, servername: 'origin.test' } },
        // The same https origin, checked against Node's bundled roots: its certificate fails verification.
        { name: 'untrusted.lab.test', origin: secureUrl, originTls: { servername: 'origin.test' } },
      ],
      // Short HTTP timeouts, which an open WebSocket must outlive.
      limits: { headerTimeoutMs: 300, keepAliveTimeoutMs: 300 },
    }),
    { log: createLogger('websocket-test', 'silent') },
  );
});
afterAll(async () => {
  await proxy?.close();
  for (const server of servers) server.close();
  await lab?.close();
});

async function open(host = 'ws.lab.test', path = '/'): Promise<ClientSocket> {
  const ws = await openWebSocket(proxy.ports[0]!, ca, host, path);
  if (!('socket' in ws)) throw new Error(`no upgrade: ${ws.status} ${ws.body}`);
  return ws;
}

/** TCP connections open at the origins (WebSocket or not): each WebSocket through the proxy holds one. */
async function originConnections(): Promise<number> {
  let total = 0;
  for (const server of servers) total += await new Promise<number>((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
  return total;
}

/** `promise`'s value within `ms`, or a failure naming what did not happen. */
function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_resolve, reject) => (timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Every origin connection closed (none of this file's WebSockets left open behind the proxy). */
async function noOriginConnections(): Promise<void> {
  await waitFor('the origin connections to close', async () => ((await originConnections()) === 0 ? true : undefined), CLOSE_WITHIN_MS);
}

/** The requests counter's value for these labels, in this process's registry (the worker runs in it). */
async function requestsCounted(statusClass: string, code: string): Promise<number> {
  const metric = register.getSingleMetric('keyedge_proxy_http_requests_total');
  const values = (await metric?.get())?.values ?? [];
  return values.find((v) => v.labels.status_class === statusClass && v.labels.code === code)?.value ?? 0;
}

/** Observations of the origin duration histogram for this status class, in this process's registry. */
async function originDurations(statusClass: string): Promise<number> {
  const metric = register.getSingleMetric('keyedge_proxy_origin_request_duration_seconds');
  const values = (await metric?.get())?.values ?? [];
  return (
    (values as { metricName?: string; labels: Record<string, unknown>; value: number }[]).find(
      (v) => v.metricName === 'keyedge_proxy_origin_request_duration_seconds_count' && v.labels.status_class === statusClass,
    )?.value ?? 0
  );
}

/** /proc/net/tcp's `tr` for an idle established connection whose keepalive timer is armed (net/ipv4/tcp_ipv4.c, get_tcp4_sock). */
const KEEPALIVE_TIMER = 2;

/** The `tr` (which timer is pending) of the loopback TCP connection from `localPort` to `remotePort`, as /proc/net/tcp shows it. */
function tcpTimer(localPort: number, remotePort: number): number | undefined {
  const hexPort = (port: number): string => port.toString(16).toUpperCase().padStart(4, '0');
  const local = `0100007F:${hexPort(localPort)}`;
  const remote = `0100007F:${hexPort(remotePort)}`;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields[1] === local && fields[2] === remote) return Number.parseInt(fields[5]!.split(':')[0]!, 16);
  }
  return undefined;
}

describe('WebSocket through the proxy', () => {
  it("carries messages both ways, the forwarding headers and the client's Host reaching the origin", async () => {
    const ws = await open();
    expect(ws.headers['strict-transport-security']).toBe('max-age=63072000');
    expect(await ws.next()).toBe('welcome ws.lab.test 127.0.0.1 https');
    ws.send('one');
    expect(await ws.next()).toBe('echo one');
    const sent = Array.from({ length: 20 }, (_, i) => (i === 10 ? 'x'.repeat(3000) : `message ${i}`));
    for (const text of sent) ws.send(text);
    const received: string[] = [];
    for (let i = 0; i < sent.length; i++) received.push(await ws.next());
    expect(received).toEqual(sent.map((t) => `echo ${t}`));
    ws.socket.destroy();
  });

  it('stays open while idle past the HTTP header and keep-alive timeouts', async () => {
    const ws = await open();
    await ws.next();
    await new Promise((resolve) => setTimeout(resolve, 2500));
    ws.send('still there');
    expect(await ws.next()).toBe('echo still there');
    ws.socket.destroy();
  });

  it('reaches an https origin, verified, after the first origin refused', async () => {
    const ws = await open('wss.lab.test');
    // Host is the https origin's own (originHost unset).
    expect(await ws.next()).toMatch(/^welcome 127\.0\.0\.1:\d+ 127\.0\.0\.1 https$/);
    ws.send('over tls');
    expect(await ws.next()).toBe('echo over tls');
    ws.socket.destroy();
  });

  it("passes the client's Close to the origin and its answer back, then closes both connections", async () => {
    const before = originSides.length;
    const ws = await open();
    await ws.next();
    expect(await originConnections()).toBe(1);
    const side = originSides[before]!;
    // 1000: normal closure (RFC 6455 §7.4.1). The client then waits for the
    // origin's Close, and the origin closes the TCP connection first (§7.1.1).
    ws.socket.write(encodeFrame(CLOSE, Buffer.from([0x03, 0xe8]), true));
    expect(await within(CLOSE_WITHIN_MS, 'the Close frame at the origin', side.closeCode)).toBe(1000);
    expect(await within(CLOSE_WITHIN_MS, "the origin's Close frame at the client", ws.closeCode)).toBe(1000);
    await within(CLOSE_WITHIN_MS, 'the origin side to close', side.closed);
    await within(CLOSE_WITHIN_MS, 'the client side to close', ws.closed);
    await noOriginConnections();
  });

  it("passes the origin's Close to the client, then closes both connections", async () => {
    const before = originSides.length;
    const ws = await open();
    await ws.next();
    ws.send('bye');
    // 1001: going away, sent by the origin, which then ends its connection.
    expect(await within(CLOSE_WITHIN_MS, "the origin's Close frame at the client", ws.closeCode)).toBe(1001);
    await within(CLOSE_WITHIN_MS, 'the client side to close', ws.closed);
    await within(CLOSE_WITHIN_MS, 'the origin side to close', originSides[before]!.closed);
    await noOriginConnections();
  });

  it('cuts the client side when the origin side vanishes', async () => {
    const before = originSides.length;
    const ws = await open();
    await ws.next();
    ws.send('vanish');
    await within(CLOSE_WITHIN_MS, 'the client side to close', ws.closed);
    // No Close frame was sent: none may appear.
    expect(await ws.closeCode).toBeUndefined();
    await within(CLOSE_WITHIN_MS, 'the origin side to close', originSides[before]!.closed);
    await noOriginConnections();
  });

  it('cuts the origin side when the client vanishes', async () => {
    const before = originSides.length;
    const ws = await open();
    await ws.next();
    ws.socket.destroy();
    await within(CLOSE_WITHIN_MS, 'the origin side to close', originSides[before]!.closed);
    expect(await originSides[before]!.closeCode).toBeUndefined();
    await noOriginConnections();
  });

  // A tunnel quiet for less than limits.tunnelIdleTimeoutMs is a live one: a peer that vanished without a FIN or a reset
  // (its network gone, a NAT that forgot it) held both connections until that bound (for the worker's life with it set to
  // null), as nothing is sent on a quiet tunnel for TCP to find it gone. Both of the proxy's connections are probed with TCP keepalive: the kernel's keepalive timer is armed
  // on each (the `tr` column of /proc/net/tcp: 2), where it was not (0).
  it("probes both of the proxy's connections of a tunnel with TCP keepalive, so a peer that vanished is found", async () => {
    const before = originSides.length;
    const ws = await open();
    await ws.next();
    const origin = originSides[before]!.socket as net.Socket;
    const timers = (): (number | undefined)[] => [
      tcpTimer(proxy.ports[0]!, (ws.socket as net.Socket).localPort!),
      tcpTimer(origin.remotePort!, origin.localPort!),
    ];
    // A segment not yet acknowledged shows its retransmission timer instead (1) for a moment.
    for (let i = 0; i < 20 && !timers().every((timer) => timer === KEEPALIVE_TIMER); i++) await new Promise((resolve) => setTimeout(resolve, 100));
    const [clientSide, originSide] = timers();
    ws.socket.destroy();
    expect(clientSide, "the proxy's connection to the client").toBe(KEEPALIVE_TIMER);
    expect(originSide, "the proxy's connection to the origin").toBe(KEEPALIVE_TIMER);
  });

  it('counts an upgrade in the requests metric', async () => {
    const before = await requestsCounted('1xx', 'none');
    const ws = await open();
    await ws.next();
    ws.socket.destroy();
    expect(await requestsCounted('1xx', 'none')).toBe(before + 1);
  });

  it("observes the origin's answer to the upgrade (its 101, its refusal) in the origin duration, by status class; not our own 502", async () => {
    const before = { switched: await originDurations('1xx'), refused: await originDurations('4xx'), failed: await originDurations('5xx') };
    const ws = await open();
    await ws.next();
    ws.socket.destroy();
    expect(await openWebSocket(proxy.ports[0]!, ca, 'ws.lab.test', '/reject')).toMatchObject({ status: 403 });
    expect(await openWebSocket(proxy.ports[0]!, ca, 'down.lab.test')).toMatchObject({ status: 502 });
    // The refusal is observed once its relay ended (as a request's answer), which the client saw first.
    await waitFor(
      'the relayed refusal to be observed',
      async () => ((await originDurations('4xx')) > before.refused ? true : undefined),
      CLOSE_WITHIN_MS,
    ).catch(() => undefined);
    expect({ switched: await originDurations('1xx'), refused: await originDurations('4xx'), failed: await originDurations('5xx') }).toEqual({
      switched: before.switched + 1,
      refused: before.refused + 1,
      // No origin answered: our 502 is no origin's time.
      failed: before.failed,
    });
  });

  it("answers 421 for a Host the connection's certificate does not cover", async () => {
    const res = await openWebSocket(proxy.ports[0]!, ca, 'elsewhere.example', '/', 'ws.lab.test');
    expect(res).toMatchObject({ status: 421, headers: { 'x-keyedge-error': 'KEYEDGE_HTTP_MISDIRECTED' } });
  });

  it('answers 404 for a host with no domain', async () => {
    expect(await openWebSocket(proxy.ports[0]!, ca, 'nodomain.lab.test')).toMatchObject({
      status: 404,
      headers: { 'x-keyedge-error': 'KEYEDGE_HTTP_UNKNOWN_HOST' },
    });
  });

  it('answers 502 when the origin refuses the connection, and counts it', async () => {
    const before = await requestsCounted('5xx', 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE');
    expect(await openWebSocket(proxy.ports[0]!, ca, 'down.lab.test')).toMatchObject({
      status: 502,
      headers: { 'x-keyedge-error': 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE' },
    });
    expect(await requestsCounted('5xx', 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE')).toBe(before + 1);
  });

  it("answers 502 when an https origin's certificate fails verification", async () => {
    expect(await openWebSocket(proxy.ports[0]!, ca, 'untrusted.lab.test')).toMatchObject({
      status: 502,
      headers: { 'x-keyedge-error': 'KEYEDGE_HTTP_ORIGIN_CERTIFICATE' },
    });
  });

  it("relays an origin's refusal of the upgrade with its fields as the origin sent them, as the 101's and every answer's", async () => {
    const raw = await new Promise<string[]>((resolve, reject) => {
      const req = https.request(upgradeRequest(proxy.ports[0]!, ca, 'ws.lab.test', '/reject-fields'));
      req.on('error', reject);
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve(res.rawHeaders));
      });
      req.end();
    });
    const pairs: [string, string][] = [];
    for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i]!, raw[i + 1]!]);
    // Each line as sent (the parsed view kept one Server and lower-cased every name), then ours.
    expect(pairs).toEqual([
      ['Server', 'one'],
      ['Server', 'two'],
      ['X-Refusal-Reason', 'quota'],
      ['content-length', '7'],
      ['strict-transport-security', 'max-age=63072000'],
      ['connection', 'close'],
    ]);
  });

  it("relays an origin's refusal of the upgrade", async () => {
    expect(await openWebSocket(proxy.ports[0]!, ca, 'ws.lab.test', '/reject')).toMatchObject({ status: 403, body: 'refused' });
  });
});
