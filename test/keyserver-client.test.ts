/**
 * The key-server client (keyserver/client/client.ts) against fake key servers
 * on a real unix socket: one that reads every request and never answers, one
 * that answers each request late, past the client's deadline. What is checked
 * is the client's bookkeeping of the ids it abandoned on its own timeout
 * (SPEC.md, "Request ids"): bounded while the connection stays open, and never
 * a reason to drop a connection whose server does answer; and an answer of
 * another kind than its request's, which is (SPEC.md, "Request ids").
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { Algorithm } from '../keyserver/protocol/constants.js';
import { decodeRequest, encodeResponse } from '../keyserver/protocol/codec.js';
import { FrameReader } from '../keyserver/protocol/framer.js';
import { REPO, removeDir, sleep, tempDir } from './helpers/basics.js';
import { createTestPki, issue, writeIssued } from './helpers/pki.js';

const TIMEOUT_MS = 50;
const MAX_IN_FLIGHT = 4;

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** A fake key server on a unix socket; `answer` decides, per request id, after how long its pong goes (undefined: never). */
async function fakeKeyserver(
  answerAfterMs: (id: number) => number | undefined,
): Promise<{ path: string; requests: () => number; answered: () => number; closed: () => number }> {
  const dir = tempDir('keyedge-ks-client-');
  const path = join(dir, 'fake.sock');
  let requests = 0;
  let closed = 0;
  let answered = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.once('close', () => {
      sockets.delete(socket);
      closed++;
    });
    const reader = new FrameReader({
      onFrame: (frame) => {
        requests++;
        const { id } = decodeRequest(frame);
        const after = answerAfterMs(id);
        if (after === undefined) return;
        setTimeout(() => {
          answered++;
          if (!socket.destroyed) socket.write(encodeResponse({ op: 'pong', id, payload: Buffer.alloc(0) }));
        }, after);
      },
      onError: () => socket.destroy(),
    });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  cleanups.push(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
    removeDir(dir);
  });
  return { path, requests: () => requests, answered: () => answered, closed: () => closed };
}

const errorCode = (p: Promise<unknown>): Promise<string> =>
  p.then(
    () => 'answered',
    (err: { code?: string }) => err.code ?? String(err),
  );

describe('a key server that reads every request and never answers', () => {
  it('past maxInFlight abandoned ids the client closes the connection: pending requests fail KEYEDGE_ERR_CLOSED, later ones at once', async () => {
    const fake = await fakeKeyserver(() => undefined);
    const client = await KeyserverClient.connect({ unixPath: fake.path, timeoutMs: TIMEOUT_MS, maxInFlight: MAX_IN_FLIGHT });
    cleanups.push(() => client.close());
    // maxInFlight requests time out one after another: their ids stay reserved, the connection open.
    for (let i = 0; i < MAX_IN_FLIGHT; i++) expect(await errorCode(client.ping())).toBe('KEYEDGE_ERR_TIMEOUT');
    expect(fake.closed()).toBe(0);
    // maxInFlight more at once: the first to time out is one abandoned id too many; the others are failed with the connection.
    const codes = await Promise.all(Array.from({ length: MAX_IN_FLIGHT }, () => errorCode(client.ping())));
    expect(codes).toEqual(['KEYEDGE_ERR_TIMEOUT', ...Array(MAX_IN_FLIGHT - 1).fill('KEYEDGE_ERR_CLOSED')]);
    const refused = await client.ping().catch((err: Error) => err);
    expect(refused).toMatchObject({ code: 'KEYEDGE_ERR_CLOSED', message: expect.stringContaining('unanswered past their 50 ms deadline') });
    expect(fake.requests()).toBe(2 * MAX_IN_FLIGHT);
    for (let i = 0; i < 100 && fake.closed() === 0; i++) await sleep(20);
    expect(fake.closed()).toBe(1);
  });
});

describe('a key server that answers, but past the deadline', () => {
  it('its late answers free their ids: many more timeouts than maxInFlight and the connection stays open and usable', async () => {
    let slow = true;
    const fake = await fakeKeyserver(() => (slow ? 3 * TIMEOUT_MS : 0));
    const client = await KeyserverClient.connect({ unixPath: fake.path, timeoutMs: TIMEOUT_MS, maxInFlight: MAX_IN_FLIGHT });
    cleanups.push(() => client.close());
    for (let i = 0; i < 2 * MAX_IN_FLIGHT + 1; i++) {
      expect(await errorCode(client.ping())).toBe('KEYEDGE_ERR_TIMEOUT');
      // The late answer arrives (and is dropped) before the next request: at most one id is abandoned at a time.
      // Waited for, not timed: on a loaded machine the fake's timer can fire well past 3 × TIMEOUT_MS.
      for (let waited = 0; fake.answered() <= i && waited < 5000; waited += 10) await sleep(10);
      await sleep(20);
    }
    slow = false;
    expect(await errorCode(client.ping())).toBe('answered');
    expect(fake.closed()).toBe(0);
  });
});

describe('a key server that answers a request with another kind of answer', () => {
  it('is a fault of the connection: closed, the request and every other in flight failed KEYEDGE_ERR_PROTOCOL', async () => {
    // It was that request's error alone, on a connection whose answers no longer pair with their requests (SPEC.md).
    const server = await fakeKeyserver((id) => (id === 2 ? 20 : undefined));
    const client = await KeyserverClient.connect({ unixPath: server.path, timeoutMs: 5_000 });
    cleanups.push(() => client.close());
    const sign = errorCode(client.sign('ab'.repeat(32), Algorithm.ECDSA_SHA256, Buffer.alloc(32)));
    const other = errorCode(client.ping());
    expect(await sign).toBe('KEYEDGE_ERR_PROTOCOL');
    expect(await other).toBe('KEYEDGE_ERR_PROTOCOL');
    expect(await errorCode(client.ping())).toBe('KEYEDGE_ERR_PROTOCOL');
    for (let i = 0; i < 100 && server.closed() === 0; i++) await sleep(20);
    expect(server.closed()).toBe(1);
  });
});

describe('a tcp key server whose TLS file is a FIFO', () => {
  it('connect() fails at once naming the file and the setting, unread, instead of holding the event loop in open(2)', () => {
    // The proxy's workers connect again to a key server they lost, and its primary for each ACME order and store
    // check: a keyserver.tcp.ca (or .cert, .key) replaced by a FIFO held that process's event loop until a writer came.
    // Run in a child, the built client: a blocked open(2) there cannot hold this runner, only fail the run by its timeout.
    const dir = tempDir('keyedge-ks-client-fifo-');
    cleanups.push(() => removeDir(dir));
    const fifo = join(dir, 'ca.pem');
    execFileSync('mkfifo', [fifo]);
    const script = `
      const { KeyserverClient } = await import(${JSON.stringify(join(REPO, 'dist', 'keyserver', 'client', 'client.js'))});
      const started = Date.now();
      const failure = await KeyserverClient.connect({ tcp: { host: '127.0.0.1', port: 1, ca: process.argv[1], cert: process.argv[1], key: process.argv[1] }, timeoutMs: 1000 })
        .then(() => 'connected', (err) => err.message);
      process.stdout.write(JSON.stringify({ failure, ms: Date.now() - started }));`;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script, fifo], { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL' });
    expect(run.signal, `the client held in open(2) of ${fifo}`).toBe(null);
    const { failure } = JSON.parse(run.stdout) as { failure: string };
    expect(failure).toBe(`cannot read the key server's ${fifo} (keyserver.tcp.ca): not a regular file`);
  });
});

describe('a tcp key server given by IP address, with no servername', () => {
  /** A TLS server on 127.0.0.1 with `certificate` that answers every PING: the key server, or one that only says it is. */
  async function tlsPonger(certificate: { cert: string; key: string }, caFile: string): Promise<number> {
    const server = tls.createServer(
      { cert: readFileSync(certificate.cert), key: readFileSync(certificate.key), ca: readFileSync(caFile), requestCert: true, minVersion: 'TLSv1.3' },
      (socket) => {
        socket.on('error', () => undefined);
        const reader = new FrameReader({
          onFrame: (frame) => void socket.write(encodeResponse({ op: 'pong', id: decodeRequest(frame).id, payload: Buffer.alloc(0) })),
          onError: () => socket.destroy(),
        });
        socket.on('data', (chunk: Buffer) => reader.push(chunk));
      },
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => server.close());
    return (server.address() as net.AddressInfo).port;
  }

  it("is checked against the certificate's IP SANs, as the native bridge checks it: another host's certificate from the same CA is refused", async () => {
    // The client skipped the check of the server's identity for an IP host: any certificate the CA issued (another
    // server's, or a proxy's client certificate) was taken for the key server's, by the primary's ACME orders, store
    // checks and `keyedge cert` (GET_PUBLIC_KEY answers a certificate is accepted on) and the workers' health checks.
    const dir = tempDir('keyedge-ks-client-ip-');
    cleanups.push(() => removeDir(dir));
    const pki = await createTestPki(dir, [{ commonName: 'proxy' }]);
    const client = { host: '127.0.0.1', ca: pki.caFile, ...pki.clients.proxy! };
    // The key server's own certificate names 127.0.0.1: served.
    const real = await KeyserverClient.connect({ tcp: { ...client, port: await tlsPonger(pki.server, pki.caFile) }, timeoutMs: 5_000 });
    try {
      expect(await real.ping()).toEqual(Buffer.alloc(0));
    } finally {
      real.close();
    }
    const other = writeIssued(dir, 'other', await issue(pki.ca, { commonName: 'other.example', dnsNames: ['other.example'], keyAlgorithm: 'ec-p256' }));
    const port = await tlsPonger(other, pki.caFile);
    const impostor = KeyserverClient.connect({ tcp: { ...client, port }, timeoutMs: 5_000 }).then((c) => c.ping().finally(() => c.close()));
    await expect(impostor).rejects.toMatchObject({ code: 'KEYEDGE_ERR_CLOSED', message: expect.stringMatching(/IP: 127\.0\.0\.1 is not in the cert's list/) });
  });
});
