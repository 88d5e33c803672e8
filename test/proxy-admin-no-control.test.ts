// The proxy's admin port and `Expect: 100-continue` (RFC 9110 §10.1.1), in process, at port 0. Without a control API
// (no `admin.tokenFile`) only read-only endpoints exist: a change gets its 404 at once, without a 100, and the
// connection ends. With one, a change without the token gets its 401 at once, whatever its body, never an invitation
// to send it. And a body an answer leaves unread gathers nothing on a kept-alive connection; answers pipelined and
// never read hold neither the heap nor more than MAX_UNSENT_BYTES of the process.
import { spawn } from 'node:child_process';
import type http from 'node:http';
import { createServer as httpCreateServer } from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { capAdminConnections, MAX_ANSWERS } from '../keyserver/shared/admin-connections.js';
import { startProxyAdmin } from '../proxy/admin.js';
import { sleep } from './helpers/basics.js';
import { continueExchange } from './helpers/continue.js';
import { pipelineUnread, stillOpen } from './helpers/pipelined.js';
import type { ReloadReport } from '../proxy/serving/coordinator.js';

let server: http.Server;
let port: number;

beforeAll(async () => {
  server = await startProxyAdmin('127.0.0.1', 0, {
    metrics: async () => ({ contentType: 'text/plain', body: '' }),
    notReadyReason: async () => undefined,
    config: () => ({}) as ProxyConfig,
  });
  port = (server.address() as AddressInfo).port;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

describe('admin API without a control API', () => {
  it('answers a change with Expect: 100-continue by 404 without 100 Continue, and closes', async () => {
    for (const method of ['PUT', 'POST', 'DELETE']) {
      const { answer, closedByServer } = await continueExchange(
        port,
        `${method} /certs/x HTTP/1.1\r\nHost: admin\r\nContent-Length: 200000\r\nExpect: 100-continue\r\n\r\n`,
        Buffer.alloc(0),
        { untilClose: true },
      );
      expect(answer, method).toMatch(/^HTTP\/1\.1 404 /);
      expect(answer, method).not.toMatch(/100 Continue/i);
      expect(answer, method).toMatch(/\r\nconnection: close\r\n/i);
      expect(closedByServer, method).toBe(true);
    }
  });

  it('bodies left unread by many answers on one connection gather no listeners on its socket', async () => {
    const accepted: net.Socket[] = [];
    const onConnection = (socket: net.Socket): void => void accepted.push(socket);
    server.on('connection', onConnection);
    const head = 'GET /config HTTP/1.1\r\nHost: admin\r\nContent-Length: 1\r\n\r\n';
    const socket = net.connect(port, '127.0.0.1');
    try {
      await new Promise((resolve) => socket.once('connect', resolve));
      let received = '';
      const answers = (): number => received.split('HTTP/1.1 200 ').length - 1;
      socket.on('data', (d: Buffer) => {
        received += d.toString('latin1');
      });
      // Each body once its answer is in (so it was unread when the answer went out), with the next request.
      for (let sent = 1; sent <= 30; sent++) {
        socket.write(sent === 1 ? head : `x${head}`);
        const started = Date.now();
        while (answers() < sent && Date.now() - started < 5_000) await new Promise((resolve) => setTimeout(resolve, 2));
      }
      expect(answers()).toBe(30);
      expect(accepted).toHaveLength(1);
      expect(accepted[0]!.listenerCount('close')).toBeLessThan(10);
    } finally {
      server.off('connection', onConnection);
      socket.destroy();
    }
  });

  it('changes pipelined by the thousand and never read are closed past MAX_ANSWERS, as reads and refused changes are', async () => {
    // A change on a listener with no control API was answered 404/405 before its connection was marked answering: it
    // counted toward no cap, so 1,800 POST /reload (or POST /config) in one write were all answered, not the connection
    // closed past MAX_ANSWERS (the keep-alive timeout closes it later either way: the answers are what tell).
    for (const path of ['/reload', '/config']) {
      const [socket] = pipelineUnread(port, `POST ${path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n`, 1_800, 1);
      try {
        await sleep(1_000);
        let received = '';
        socket!.on('data', (d: Buffer) => {
          received += d.toString('latin1');
        });
        expect(await stillOpen([socket!], 20_000), path).toBe(0);
        expect(received.split('HTTP/1.1 ').length - 1, path).toBeLessThanOrEqual(MAX_ANSWERS);
      } finally {
        socket!.destroy();
      }
    }
  }, 60_000);

  it('a read with Expect: 100-continue gets its answer without 100 Continue', async () => {
    const { answer } = await continueExchange(
      port,
      'GET /config HTTP/1.1\r\nHost: admin\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n',
      Buffer.alloc(0),
      { untilClose: true },
    );
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer).not.toMatch(/100 Continue/i);
  });
});

describe('admin API with a control API: Expect: 100-continue on a change without the token', () => {
  let controlled: http.Server;
  let controlledPort: number;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyedge-admin-continue-'));
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, 'a-token-of-the-test\n', { mode: 0o600 });
    const report = async () => ({}) as ReloadReport;
    controlled = await startProxyAdmin('127.0.0.1', 0, {
      metrics: async () => ({ contentType: 'text/plain', body: '' }),
      notReadyReason: async () => undefined,
      config: () => ({}) as ProxyConfig,
      control: { tokenFile, reload: report, putCertificate: report, certificates: () => [], ownedByConfig: () => false, deleteRoute: async () => undefined },
    });
    controlledPort = (controlled.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => controlled.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('a change that reads no body, with a chunked body held back for the 100: 401 at once', async () => {
    for (const [method, path] of [
      ['POST', '/reload'],
      ['DELETE', '/routes/x'],
      ['PUT', '/certs/x'],
    ]) {
      const { answer, closedByServer } = await continueExchange(
        controlledPort,
        `${method} ${path} HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n`,
        Buffer.alloc(0),
        { untilClose: true },
      );
      expect(answer, path).toMatch(/^HTTP\/1\.1 401 /);
      expect(closedByServer, path).toBe(true);
    }
  });
});

describe('admin answers pipelined and never read', () => {
  it('64 connections × 16 pipelined GET /certs and /config of a large store, never read: the admin process keeps its heap and answers', async () => {
    // In a process of its own with a heap of 64 MB: rendered per request, the 1,024 answers of some 1.4 MB each filled
    // any heap (the primary's with 3.3 GB) and V8 aborted, exit 134. Rendered once per listing, they share one Buffer.
    const adminModule = new URL('../dist/proxy/admin.js', import.meta.url).href;
    const child = spawn(
      process.execPath,
      [
        '--max-old-space-size=64',
        '--input-type=module',
        '-e',
        `const { startProxyAdmin } = await import(${JSON.stringify(adminModule)});
         const entry = (i) => ({ name: 'site-' + i, from: 'store', names: ['site-' + i + '.example.com', 'www.site-' + i + '.example.com'],
           serial: 'a'.repeat(32), issuer: 'CN=Some Intermediate CA R3,O=Example Trust,C=US', notAfter: '2027-03-01T00:00:00.000Z',
           keyId: 'b'.repeat(64), loadedAt: '2026-12-07T00:00:00.000Z', refused: null });
         const listing = { certificates: Array.from({ length: 3000 }, (_, i) => entry(i)), refused: [] };
         const config = { domains: listing.certificates.map((c) => ({ name: c.names[0], origin: 'http://127.0.0.1:1' })) };
         const server = await startProxyAdmin('127.0.0.1', 0, {
           metrics: async () => ({ contentType: 'text/plain', body: '' }),
           notReadyReason: async () => undefined,
           config: () => config,
           control: { tokenFile: '/nonexistent', reload: async () => ({}), putCertificate: async () => ({}), certificates: () => listing, ownedByConfig: () => false },
         });
         process.stdout.write(server.address().port + '\\n');`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(String(code ?? signal))));
    try {
      const childPort = await new Promise<number>((resolve, reject) => {
        child.stdout!.once('data', (chunk: Buffer) => resolve(Number(chunk.toString().trim())));
        void exited.then((code) => reject(new Error(`the admin process exited (${code}) before listening: ${stderr}`)));
      });
      const certs = pipelineUnread(childPort, 'GET /certs HTTP/1.1\r\nHost: admin\r\n\r\n', 16, 32);
      const config = pipelineUnread(childPort, 'GET /config HTTP/1.1\r\nHost: admin\r\n\r\n', 16, 32);
      try {
        const gone = await Promise.race([exited.then((code) => `exited with ${code}: ${stderr.slice(-300)}`), sleep(8_000).then(() => undefined)]);
        expect(gone).toBeUndefined();
        const res = await fetch(`http://127.0.0.1:${childPort}/healthz`);
        expect(res.status).toBe(200);
      } finally {
        for (const socket of [...certs, ...config]) socket.destroy();
      }
    } finally {
      child.kill('SIGKILL');
    }
  }, 30_000);

  it('the answers its clients leave unsent, across connections, are bounded: the connections holding the most are closed', async () => {
    // A 1 MiB answer per request, as a render per scrape makes (shared here, so that the test itself holds one), 16
    // pipelined on each of 64 connections: MAX_ANSWERS alone left some 900 MiB unsent, all of it held by the process.
    const budget = 8 * 1024 * 1024;
    const body = Buffer.alloc(1024 * 1024, 'x');
    const queued = new Map<http.ServerResponse, net.Socket>();
    const sockets = new Set<net.Socket>();
    const own = httpCreateServer((req, res) => {
      if (!connections.answering(req, res)) return;
      queued.set(res, req.socket);
      res.once('close', () => queued.delete(res));
      res.end(body);
    });
    own.on('connection', (socket: net.Socket) => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
    });
    const connections = capAdminConnections(own, 64, budget);
    await new Promise<void>((resolve) => own.listen(0, '127.0.0.1', resolve));
    const ownPort = (own.address() as AddressInfo).port;
    const hoarders = pipelineUnread(ownPort, 'GET / HTTP/1.1\r\nHost: admin\r\n\r\n', 16, 64);
    try {
      await sleep(2_000);
      let unsent = 0;
      for (const socket of sockets) unsent += socket.writableLength;
      // An answer queued behind another on its connection holds its bytes until its turn, or until the connection closes.
      for (const [res, socket] of queued) if (res.socket === null && !socket.destroyed) unsent += res.writableLength;
      // Past the budget by at most the answer made after the last check.
      expect(unsent).toBeLessThanOrEqual(budget + body.length);
    } finally {
      for (const socket of hoarders) socket.destroy();
      await new Promise<void>((resolve) => own.close(() => resolve()));
    }
  });
});
