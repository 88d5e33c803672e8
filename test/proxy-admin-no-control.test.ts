// The proxy's admin port and `Expect: 100-continue` (RFC 9110 §10.1.1), in process, at port 0. Without a control API
// (no `admin.tokenFile`) only read-only endpoints exist: a change gets its 404 at once, without a 100, and the
// connection ends. With one, a change without the token gets its 401 at once, whatever its body, never an invitation
// to send it. And a body an answer leaves unread gathers nothing on a kept-alive connection.
import type http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { MAX_ANSWERS } from '../keyserver/shared/admin-connections.js';
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
