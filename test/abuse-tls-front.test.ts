import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { setImmediate as nextTurn } from 'node:timers/promises';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClientConnectionLimit, clientKey } from '../proxy/tls/connection-limits.js';
import { captureClientHello } from './helpers/client-hello.js';
import { nodeGet } from './helpers/clients.js';
import { sleep } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// The TLS front of a real `keyedge proxy` (primary and two workers) as a
// hostile or clumsy client meets it: handshakes that stall, a ClientHello sent
// one byte per segment, plain HTTP on the TLS port, one address opening many
// connections. Each test uses its own loopback source address (127.0.0.0/8),
// so the per-client cap of one never refuses another's connections.

/** Low, so the stalled handshakes are closed within seconds. */
const HANDSHAKE_TIMEOUT_MS = 1500;
/** Per worker: with two workers one address holds at most twice this. */
const PER_CLIENT = 5;
/** Room over the deadline for a loaded 2-core machine (timer checks, scheduling). */
const MARGIN_MS = 3000;

let lab: KeylessLab;
/** Low handshake deadline, low per-client cap. */
let proxy: ClusterProxy;
/** A deadline long enough for a ClientHello sent one byte per segment, and nothing else running on its workers. */
let paced: ClusterProxy;
let ca: string;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const wild = await lab.certificate('wild', lab.keys.ec, ['*.lab.test']);
  const certificates = [{ name: 'wild', chain: wild.file }];
  // One after the other: starting both at once doubles the load of a start on a busy machine.
  proxy = await startClusterProxy(lab, 'tls-front', (p) =>
    storeProxyConfig(lab, p, { certificates, limits: { handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS, maxConnectionsPerClient: PER_CLIENT } }),
  );
  paced = await startClusterProxy(lab, 'tls-front-paced', (p) => storeProxyConfig(lab, p, { certificates, limits: { handshakeTimeoutMs: 30_000 } }));
  await waitFor('two workers each', () => (workerPids(proxy).length === 2 && workerPids(paced).length === 2 ? true : undefined));
}, 150_000);

afterAll(async () => {
  await Promise.all([proxy?.stop(), paced?.stop()]);
  await lab?.close();
});

function workerPids(cluster: ClusterProxy): number[] {
  return [...new Set(cluster.lines.filter((l) => l.msg === 'proxy worker listening').map((l) => l.pid as number))];
}

/** CPU seconds (user + system) each worker has used so far, from /proc/PID/stat (clock ticks of 1/100 s on Linux). */
function workersCpuSeconds(cluster: ClusterProxy): number[] {
  return workerPids(cluster).map((pid) => {
    // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  });
}

/** A TCP connection to `cluster`'s TLS port from `localAddress` (any of 127.0.0.0/8). */
function tcpFrom(localAddress: string, cluster = proxy): net.Socket {
  const socket = net.connect({ host: '127.0.0.1', port: cluster.port, localAddress });
  socket.on('error', () => {});
  return socket;
}

async function connect(localAddress: string, cluster = proxy): Promise<net.Socket> {
  const socket = tcpFrom(localAddress, cluster);
  await once(socket, 'connect');
  return socket;
}

/** Milliseconds until the proxy closes `socket`, or Infinity past `limitMs` (the socket is then destroyed). */
async function closedAfter(socket: net.Socket, since: number, limitMs: number): Promise<number> {
  socket.resume();
  const closed = once(socket, 'close').then(() => Date.now() - since);
  const gaveUp = sleep(limitMs).then(() => Infinity);
  const elapsed = await Promise.race([closed, gaveUp]);
  socket.destroy();
  return elapsed;
}

/**
 * A stream for tls.connect that sends its first write (the ClientHello) one
 * byte per TCP segment, with a turn of the event loop between bytes, and the
 * rest as it comes.
 */
const PAUSE = new Int32Array(new SharedArrayBuffer(4));
const BYTE_PAUSE_MS = 0.25;

function byteBySegment(raw: net.Socket, sizes: number[]): Duplex {
  let first = true;
  const duplex = new Duplex({
    write(chunk: Buffer, _encoding, done) {
      sizes.push(chunk.length);
      if (!first) return void raw.write(chunk, () => done());
      first = false;
      void (async () => {
        for (let i = 0; i < chunk.length; i++) {
          raw.write(chunk.subarray(i, i + 1));
          Atomics.wait(PAUSE, 0, 0, BYTE_PAUSE_MS);
          if (i % 64 === 0) await nextTurn();
        }
        done();
      })();
    },
    read() {},
    final(done) {
      raw.end();
      done();
    },
    destroy(err, done) {
      raw.destroy();
      done(err);
    },
  });
  raw.on('data', (d: Buffer) => duplex.push(d));
  raw.on('end', () => duplex.push(null));
  raw.on('close', () => duplex.destroy());
  return duplex;
}

/** A metric summed over the workers, from the admin port; 0 when the series is absent. */
async function proxyMetric(name: string, labels: string): Promise<number> {
  const text = (await proxy.admin('GET', '/metrics')).text;
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

/** Each socket is closed by the handshake deadline: not long before it (something else), not long after (no deadline). */
async function expectClosedByDeadline(sockets: readonly net.Socket[], since: number): Promise<void> {
  const elapsed = await Promise.all(sockets.map((s) => closedAfter(s, since, 20_000)));
  for (const ms of elapsed) {
    expect(ms).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS / 2);
    expect(ms).toBeLessThan(HANDSHAKE_TIMEOUT_MS + MARGIN_MS);
  }
}

describe('TLS front: one deadline from accept to the end of the handshake', () => {
  it('closes connections that sent a 5-byte record header and stalled, and counts them', async () => {
    const timeouts = await proxyMetric('keyedge_proxy_tls_handshakes_total', 'result="timeout"');
    const sockets = await Promise.all([connect('127.0.0.3'), connect('127.0.0.3')]);
    const since = Date.now();
    // A handshake record announcing 512 bytes (RFC 8446 §5.1), then nothing.
    for (const socket of sockets) socket.write(Buffer.from([22, 3, 1, 0x02, 0x00]));
    await expectClosedByDeadline(sockets, since);
    expect(await proxyMetric('keyedge_proxy_tls_handshakes_total', 'result="timeout"')).toBe(timeouts + 2);
  });

  it('closes connections that sent a whole ClientHello and never finished the handshake', async () => {
    const hello = await captureClientHello({ servername: 'stall.lab.test' });
    const failed = await proxyMetric('keyedge_proxy_tls_handshakes_total', 'result="failed"');
    const sockets = await Promise.all([connect('127.0.0.3'), connect('127.0.0.3')]);
    const since = Date.now();
    const answered = sockets.map((s) => once(s, 'data').then(([d]) => (d as Buffer)[0]));
    for (const socket of sockets) socket.write(hello);
    // The server did answer (a ServerHello record, type 22): the stall is in the client's second flight.
    expect(await Promise.all(answered)).toEqual([22, 22]);
    await expectClosedByDeadline(sockets, since);
    // Past the hand-over, the TLS server counts the handshake the deadline ended as failed.
    expect(await proxyMetric('keyedge_proxy_tls_handshakes_total', 'result="failed"')).toBe(failed + 2);
  });

  it('leaves a connection whose handshake completed open past the deadline', async () => {
    const socket = tls.connect({ socket: tcpFrom('127.0.0.6'), servername: 'a.lab.test', ca });
    socket.on('error', () => {});
    await once(socket, 'secureConnect');
    await sleep(HANDSHAKE_TIMEOUT_MS + 1000);
    expect(socket.destroyed).toBe(false);
    let answer = '';
    socket.on('data', (d: Buffer) => (answer += d.toString()));
    socket.write('GET / HTTP/1.1\r\nHost: a.lab.test\r\nConnection: close\r\n\r\n');
    await once(socket, 'close');
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
  });
});

describe('TLS front: a ClientHello in many segments', () => {
  it('serves a 16 KB ClientHello sent one byte per segment, at a bounded CPU cost', async () => {
    const raw = await connect('127.0.0.4', paced);
    raw.setNoDelay(true);
    const sizes: number[] = [];
    // ALPN names of 250 bytes (RFC 7301 §3.1 allows 255) make node:tls send a hello of about 15 KB in one record.
    const alpn = [...Array.from({ length: 60 }, (_, i) => `${String(i).padStart(3, '0')}${'x'.repeat(247)}`), 'http/1.1'];
    const cpuBefore = workersCpuSeconds(paced);
    const socket = tls.connect({ socket: byteBySegment(raw, sizes), servername: 'a.lab.test', ca, ALPNProtocols: alpn });
    socket.on('error', () => {});
    await once(socket, 'secureConnect');
    let answer = '';
    socket.on('data', (d: Buffer) => (answer += d.toString()));
    socket.write('GET / HTTP/1.1\r\nHost: a.lab.test\r\nConnection: close\r\n\r\n');
    await once(socket, 'close');
    // The worker that served the connection: the other one only idles.
    const cpu = Math.max(...workersCpuSeconds(paced).map((seconds, i) => seconds - cpuBefore[i]!));
    expect(sizes[0]).toBeGreaterThan(15_000);
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    // Concatenating and re-peeking all bytes so far on every segment cost 3.5 s of worker CPU here (quadratic);
    // linear reassembly about 0.5 s on a loaded machine, mostly one read callback per segment. The exact work is
    // counted in proxy-client-hello.test.ts.
    expect(cpu).toBeLessThan(1.5);
  }, 60_000);
});

describe('TLS front: plain HTTP on the TLS port', () => {
  it('answers 400 like nginx, with connection: close, and counts it', async () => {
    const before = await proxyMetric('keyedge_proxy_tls_handshakes_total', 'result="plain_http"');
    const response = await new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const req = http.get(
        { host: '127.0.0.1', port: proxy.port, localAddress: '127.0.0.5', path: '/', headers: { host: 'a.lab.test' }, agent: false },
        (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        },
      );
      req.on('error', reject);
    });
    expect(response.status).toBe(400);
    expect(response.headers.connection).toBe('close');
    expect(response.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_PLAIN_HTTP');
    expect(response.body).toContain('The plain HTTP request was sent to HTTPS port');
    await waitFor('the plain_http count', async () =>
      (await proxyMetric('keyedge_proxy_tls_handshakes_total', 'result="plain_http"')) > before ? true : undefined,
    );
  });

  it('answers a POST with a body too, and still speaks TLS on the same port', async () => {
    const socket = await connect('127.0.0.5');
    let answer = '';
    socket.on('data', (d: Buffer) => (answer += d.toString()));
    socket.write(`POST /form HTTP/1.1\r\nHost: a.lab.test\r\nContent-Length: 10000\r\n\r\n${'x'.repeat(10_000)}`);
    await once(socket, 'close');
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect((await nodeGet(proxy.port, 'a.lab.test', ca, { socket: tcpFrom('127.0.0.5') })).ok).toBe(true);
  });
});

describe('TLS front: per-client connection cap', () => {
  it('closes connections over limits.maxConnectionsPerClient from one address at accept while another address is served', async () => {
    const rejectedBefore = await proxyMetric('keyedge_proxy_connections_rejected_total', 'reason="client_limit"');
    const held: tls.TLSSocket[] = [];
    const handshake = (localAddress: string): Promise<boolean> =>
      new Promise((resolve) => {
        const socket = tls.connect({ socket: tcpFrom(localAddress), servername: 'a.lab.test', ca }, () => resolve(true));
        held.push(socket);
        socket.once('error', () => resolve(false));
        socket.once('close', () => resolve(false));
      });
    try {
      const attempts = 2 * PER_CLIENT + 4;
      let accepted = 0;
      for (let i = 0; i < attempts; i++) if (await handshake('127.0.0.1')) accepted++;
      // The kernel spreads connections over both workers, each with its own cap.
      expect(accepted).toBeGreaterThanOrEqual(PER_CLIENT);
      expect(accepted).toBeLessThanOrEqual(2 * PER_CLIENT);
      const other = await nodeGet(proxy.port, 'a.lab.test', ca, { socket: tcpFrom('127.0.0.2') });
      expect(other.ok).toBe(true);
      expect(other.body).toMatch(/^HTTP\/1\.1 200 /);
      expect(await proxyMetric('keyedge_proxy_connections_rejected_total', 'reason="client_limit"')).toBe(rejectedBefore + attempts - accepted);
    } finally {
      for (const socket of held) socket.destroy();
    }
    // Once its connections close, the address is admitted again.
    await waitFor('127.0.0.1 admitted again', async () =>
      (await nodeGet(proxy.port, 'a.lab.test', ca, { socket: tcpFrom('127.0.0.1') })).ok ? true : undefined,
    );
  });
});

describe('ClientConnectionLimit', () => {
  it('keys IPv4 by address (also IPv4-mapped) and IPv6 by /64', () => {
    expect(clientKey('192.0.2.7')).toBe('192.0.2.7');
    expect(clientKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
    const net64 = clientKey('2001:db8:1:2::7');
    expect(net64).toBe('2001:db8:1:2::/64');
    for (const same of ['2001:db8:1:2:3:4:5:6', '2001:0DB8:0001:0002::', '2001:db8:1:2:ffff::1.2.3.4']) expect(clientKey(same)).toBe(net64);
    expect(clientKey('2001:db8:1:3::7')).not.toBe(net64);
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    expect(clientKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
  });

  it('refuses a client at its cap, admits others and exempt peers, and forgets a client once its connections close', async () => {
    const limit = new ClientConnectionLimit(2, (address) => address === '127.0.0.9');
    const verdicts: boolean[] = [];
    const server = net.createServer((socket) => {
      verdicts.push(limit.admit(socket));
      socket.on('error', () => {});
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const clients: net.Socket[] = [];
    const open = async (localAddress: string): Promise<boolean> => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress });
      socket.on('error', () => {});
      clients.push(socket);
      await waitFor('the accept', () => (verdicts.length === clients.length ? true : undefined));
      return verdicts.at(-1)!;
    };
    try {
      expect([await open('127.0.0.7'), await open('127.0.0.7'), await open('127.0.0.7')]).toEqual([true, true, false]);
      expect(await open('127.0.0.8')).toBe(true);
      expect([await open('127.0.0.9'), await open('127.0.0.9'), await open('127.0.0.9')]).toEqual([true, true, true]);
      expect(limit.clients).toBe(2);
      for (const socket of clients) socket.destroy();
      await waitFor('every entry gone', () => (limit.clients === 0 ? true : undefined));
    } finally {
      for (const socket of clients) socket.destroy();
      server.close();
    }
  });
});
