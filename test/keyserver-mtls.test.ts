/**
 * The mutual-TLS listener: who may connect at all (a client certificate from
 * the configured CA, TLS 1.3), and which keys each client may use (SPEC.md,
 * "Authorisation"), with an audit line and a metric for every refusal.
 */
import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { encodeRequest, type Response } from '../keyserver/protocol/codec.js';
import { Algorithm, type AlgorithmByte, ErrorCode, Opcode } from '../keyserver/protocol/constants.js';
import { FrameReader } from '../keyserver/protocol/framer.js';
import type { RunningKeyserver } from '../keyserver/server/daemon.js';
import { removeDir, sleep, tempDir } from './helpers/basics.js';
import {
  captureLog,
  digestOf,
  type LogCapture,
  metricValue,
  type ProvisionedKey,
  provisionKeys,
  rawFrame,
  startTestKeyserver,
  testConfig,
  verifies,
} from './helpers/keyserver.js';
import { createTestPki, issue, type TestPkiFiles, writeIssued } from './helpers/pki.js';

const REFUSALS = 'keyedge_keyserver_authorization_refusals_total';
const HANDSHAKE_REFUSALS = 'keyedge_keyserver_tls_client_rejections_total';
let dir: string;
let pki: TestPkiFiles;
let keys: Record<string, ProvisionedKey>;
let logs: LogCapture;
let server: RunningKeyserver;

beforeAll(async () => {
  dir = tempDir();
  pki = await createTestPki(
    dir,
    [
      { commonName: 'edge-a' },
      { commonName: 'edge-b', keyAlgorithm: 'rsa-2048' },
      { commonName: 'edge-u', uris: ['spiffe://keyedge.test/edge-u'], dnsNames: ['edge-u.keyedge.test'] },
      { commonName: 'stranger' },
    ],
    'edge-a',
  ); // the other CA's client even claims edge-a's name
  const spkiOfB = createPublicKey(readFileSync(pki.clients['edge-b']!.key)).export({ type: 'spki', format: 'der' });
  const base = testConfig(dir);
  keys = provisionKeys(base, [
    { label: 'listed', type: 'ec-p256' },
    { label: 'unlisted', type: 'rsa-2048' },
  ]);
  // The server key as a Kubernetes secret mount lays it out (tls.key -> ..data/tls.key, ..data -> ..2026_12_05), its
  // file group-readable: judged by the file the links lead to, and warned about once at start (checked below).
  const mount = join(dir, 'secret');
  mkdirSync(join(mount, '..2026_12_05'), { recursive: true });
  copyFileSync(pki.server.key, join(mount, '..2026_12_05', 'tls.key'));
  chmodSync(join(mount, '..2026_12_05', 'tls.key'), 0o640);
  symlinkSync('..2026_12_05', join(mount, '..data'));
  symlinkSync(join('..data', 'tls.key'), join(mount, 'tls.key'));
  const config = testConfig(dir, {
    listen: { unix: null, tcp: { host: '127.0.0.1', port: 0, cert: pki.server.cert, key: join(mount, 'tls.key'), clientCa: pki.caFile } },
    clients: [
      { name: 'edge-a', match: { commonName: 'edge-a' }, keys: [keys.listed!.keyId] },
      { name: 'by-spki', match: { spkiSha256: createHash('sha256').update(spkiOfB).digest('hex') }, keys: '*' },
      { name: 'by-uri', match: { uri: 'spiffe://keyedge.test/edge-u', dnsName: 'edge-u.keyedge.test' }, keys: [keys.unlisted!.keyId] },
    ],
  });
  logs = captureLog();
  server = await startTestKeyserver(config, logs);
});

afterAll(async () => {
  await server?.close();
  if (dir !== undefined) removeDir(dir);
});

function connect(files: { cert: string; key: string }): Promise<KeyserverClient> {
  return KeyserverClient.connect({
    tcp: { host: '127.0.0.1', port: server.tcpPort!, ca: pki.caFile, cert: files.cert, key: files.key, servername: 'localhost' },
    timeoutMs: 5000,
  });
}

async function withClient<T>(name: string, work: (client: KeyserverClient) => Promise<T>): Promise<T> {
  const client = await connect(pki.clients[name]!);
  try {
    return await work(client);
  } finally {
    client.close();
  }
}

async function expectSigns(client: KeyserverClient, key: ProvisionedKey, algorithm: AlgorithmByte): Promise<void> {
  const message = randomBytes(48);
  const signature = await client.sign(key.keyId, algorithm, digestOf(algorithm, message));
  expect(verifies(algorithm, message, key.publicKey, signature)).toBe(true);
}

function expectCode(response: Response, code: number): void {
  expect(response).toMatchObject({ op: 'error', code });
}

function signRequest(key: ProvisionedKey | Buffer, algorithm: AlgorithmByte) {
  const keyId = Buffer.isBuffer(key) ? key : Buffer.from(key.keyId, 'hex');
  return { op: 'sign' as const, keyId, algorithm, digest: digestOf(algorithm, randomBytes(8)) };
}

/**
 * A raw TLS connection that sends a PING as soon as its side of the handshake
 * is done and reports whether any answer came back before the connection ended.
 */
interface Attempt {
  handshake: boolean;
  answered: boolean;
  error: string | undefined;
  timedOut: boolean;
}

/** An attempt, and the session the server gave it to resume with (TLS 1.3: a ticket), if any, and whether it resumed one. */
interface SessionAttempt extends Attempt {
  session: Buffer | undefined;
  resumed: boolean;
}

function attempt(options: tls.ConnectionOptions): Promise<SessionAttempt> {
  return new Promise((resolve) => {
    let session: Buffer | undefined;
    let resumed = false;
    let handshake = false;
    let answered = false;
    let error: string | undefined;
    let timedOut = false;
    const socket = tls.connect({ host: '127.0.0.1', port: server.tcpPort!, servername: 'localhost', ca: readFileSync(pki.caFile), ...options });
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy();
    }, 5000);
    socket.on('session', (ticket: Buffer) => void (session = ticket));
    socket.on('secureConnect', () => {
      handshake = true;
      resumed = socket.isSessionReused();
      socket.write(encodeRequest({ op: 'ping', id: 1, payload: Buffer.from('hello') }));
    });
    socket.on('data', () => {
      answered = true;
      socket.destroy();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => void (error = err.code ?? err.message));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ handshake, answered, error, timedOut, session, resumed });
    });
  });
}

const certOf = (files: { cert: string; key: string }) => ({ cert: readFileSync(files.cert), key: readFileSync(files.key) });

describe('who may connect', () => {
  it('an authorised client gets its ping answered (control for the refusals below)', async () => {
    const result = await attempt(certOf(pki.clients['edge-a']!));
    expect(result).toMatchObject({ handshake: true, answered: true, error: undefined, timedOut: false });
  });

  it('a TLS key file others may read, behind links, is named at start with its mode, never its content', () => {
    expect(logs.find(/^the TLS key file .*secret\/tls\.key is open to its group or others \(mode 0640\): chmod 600 it/)).toHaveLength(1);
    expect(logs.text()).not.toContain('PRIVATE KEY');
  });

  it('a client without a certificate is refused before any answer', async () => {
    const before = await metricValue(server, HANDSHAKE_REFUSALS);
    const result = await attempt({});
    // The handshake may complete; the server then closes before reading a frame.
    expect(result).toMatchObject({ answered: false, timedOut: false });
    expect(await metricValue(server, HANDSHAKE_REFUSALS)).toBe(before + 1);
    expect(logs.find(/^mutual TLS client refused/).length).toBeGreaterThan(0);
  });

  it('a client certificate from another CA is refused, even with an authorised name', async () => {
    const before = await metricValue(server, HANDSHAKE_REFUSALS);
    const result = await attempt(certOf(pki.foreignClient));
    // The server drops the connection once it has checked the chain: no answer, whether or not an alert came first.
    expect(result).toMatchObject({ answered: false, timedOut: false });
    expect(await metricValue(server, HANDSHAKE_REFUSALS)).toBe(before + 1);
    await expect(connect(pki.foreignClient).then((c) => c.ping().finally(() => c.close()))).rejects.toMatchObject({ code: 'KEYEDGE_ERR_CLOSED' });
  });

  it('a client certificate that has expired signs nothing, not even by resuming a session made before it expired', async () => {
    // listeners.ts meant resumption off with sessionTimeout 0, which OpenSSL reads as "its default" (7200 s): every
    // connection got tickets, and a session resumed from one is not verified again. A certificate that expired (a
    // client's access ended) kept its connections coming, by ticket, as the identity it had.
    // Long enough for the first handshake on a loaded machine; the wait past it is the cost.
    const notAfter = Date.now() + 6_000;
    const files = writeIssued(dir, 'client-edge-a-short', await issue(pki.ca, { commonName: 'edge-a', keyAlgorithm: 'ec-p256', notAfter: new Date(notAfter) }));
    const first = await attempt(certOf(files));
    expect(first).toMatchObject({ handshake: true, answered: true, resumed: false });
    // Past notAfter (X.509 times are whole seconds).
    await sleep(notAfter + 1_500 - Date.now());
    // Control: a full handshake with it now is refused.
    expect(await attempt(certOf(files))).toMatchObject({ answered: false, timedOut: false });
    // The session from before: resumed and answered before; now a full handshake with no certificate, refused.
    const again = await attempt({ session: first.session });
    expect(again).toMatchObject({ answered: false, resumed: false, timedOut: false });
  });

  it("a refused certificate's subject is logged cut short: an unauthenticated client cannot write 30 KB lines", async () => {
    // The subject is the client's to choose (any self-signed certificate will do), and the line naming it was written
    // whole: at the log's rate limit (10 lines a window), some 30 KB a second, for ever, from anyone reaching the port.
    const big = await issue(pki.otherCa, { commonName: `huge-${'x'.repeat(30_000)}`, keyAlgorithm: 'ec-p256' });
    const before = logs.lines().length;
    const result = await attempt({ cert: big.certPem, key: big.keyPem });
    expect(result).toMatchObject({ answered: false, timedOut: false });
    const refused = logs
      .lines()
      .slice(before)
      .filter((l) => l.msg === 'mutual TLS client refused');
    expect(refused).toHaveLength(1);
    expect(JSON.stringify(refused[0]).length).toBeLessThan(2_000);
    expect(refused[0]!.subject).toMatch(/^CN=huge-x+… \(\d+ characters\)$/);
  });

  it('a TLS 1.2 client is refused, even with a good certificate', async () => {
    const result = await attempt({ ...certOf(pki.clients['edge-a']!), minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
    expect(result).toMatchObject({ handshake: false, answered: false, timedOut: false });
    expect(result.error).toMatch(/PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|WRONG_VERSION/i);
  });
});

describe('which keys a client may use', () => {
  it('a client named by commonName signs with its listed key, is refused the other, and the connection stays usable', async () => {
    await withClient('edge-a', async (client) => {
      await expectSigns(client, keys.listed!, Algorithm.ECDSA_SHA256);
      expect((await client.getPublicKey(keys.listed!.keyId)).equals(keys.listed!.spki)).toBe(true);
      const before = await metricValue(server, REFUSALS, { transport: 'tls' });
      expectCode(await client.request(signRequest(keys.unlisted!, Algorithm.RSA_PSS_SHA256)), ErrorCode.NOT_AUTHORISED);
      expectCode(await client.request({ op: 'getPublicKey', keyId: Buffer.from(keys.unlisted!.keyId, 'hex') }), ErrorCode.NOT_AUTHORISED);
      // a key that does not exist is refused the same way, so a client cannot probe which keys the token holds
      expectCode(await client.request(signRequest(randomBytes(32), Algorithm.ECDSA_SHA256)), ErrorCode.NOT_AUTHORISED);
      expect(await metricValue(server, REFUSALS, { transport: 'tls' })).toBe(before + 3);
      await expectSigns(client, keys.listed!, Algorithm.ECDSA_SHA384);
    });
    const audit = logs.lines().filter((l) => l.audit === 'refused' && l.client === 'edge-a');
    expect(audit.map((l) => l.keyId)).toEqual(expect.arrayContaining([keys.unlisted!.keyId]));
    expect(audit[0]).toMatchObject({ transport: 'tls', msg: 'client may not use this key' });
  });

  it('a client matched by spkiSha256 with "*" may use every key', async () => {
    await withClient('edge-b', async (client) => {
      await expectSigns(client, keys.listed!, Algorithm.ECDSA_SHA512);
      await expectSigns(client, keys.unlisted!, Algorithm.RSA_PSS_SHA384);
      await expectSigns(client, keys.unlisted!, Algorithm.RSA_PKCS1_SHA256);
      // "*" covers keys, not existence
      expectCode(await client.request(signRequest(randomBytes(32), Algorithm.ECDSA_SHA256)), ErrorCode.UNKNOWN_KEY);
    });
  });

  it('a client matched by URI and DNS SAN uses only its key', async () => {
    await withClient('edge-u', async (client) => {
      await expectSigns(client, keys.unlisted!, Algorithm.RSA_PKCS1_SHA384);
      expectCode(await client.request(signRequest(keys.listed!, Algorithm.ECDSA_SHA256)), ErrorCode.NOT_AUTHORISED);
    });
  });

  it('a certificate from the right CA that matches no rule may ping but use no key, and each refusal is audited and counted', async () => {
    const before = await metricValue(server, REFUSALS, { transport: 'tls' });
    const auditBefore = logs.lines().filter((l) => l.audit === 'refused').length;
    await withClient('stranger', async (client) => {
      expect((await client.ping(Buffer.from('still here'))).toString()).toBe('still here');
      expectCode(await client.request(signRequest(keys.listed!, Algorithm.ECDSA_SHA256)), ErrorCode.NOT_AUTHORISED);
      expectCode(await client.request(signRequest(keys.unlisted!, Algorithm.RSA_PSS_SHA256)), ErrorCode.NOT_AUTHORISED);
      expectCode(await client.request({ op: 'getPublicKey', keyId: Buffer.from(keys.listed!.keyId, 'hex') }), ErrorCode.NOT_AUTHORISED);
      expect((await client.ping()).length).toBe(0);
    });
    expect(await metricValue(server, REFUSALS, { transport: 'tls' })).toBe(before + 3);
    const audit = logs
      .lines()
      .filter((l) => l.audit === 'refused')
      .slice(auditBefore);
    expect(audit).toHaveLength(3);
    for (const line of audit) {
      expect(line).toMatchObject({ level: 40, transport: 'tls', msg: 'client may not use this key' });
      expect(line.client).toMatch(/^unmatched certificate CN=stranger spki-sha256=[0-9a-f]{64}$/);
    }
    expect(audit.map((l) => l.keyId)).toEqual([keys.listed!.keyId, keys.unlisted!.keyId, keys.listed!.keyId]);
  });

  it("one client refused at its own rate does not take another client's audit line: refusals are rate-limited per client", async () => {
    // The log limiter's burst (log.rateLimitBurst, 10 a window) spent by one certificate matching no rule...
    await withClient('stranger', async (client) => {
      for (let i = 0; i < 30; i++) expectCode(await client.request(signRequest(keys.listed!, Algorithm.ECDSA_SHA256)), ErrorCode.NOT_AUTHORISED);
    });
    const auditBefore = logs.lines().filter((l) => l.audit === 'refused').length;
    // ...and then a configured client's one refusal: its audit line names it (keyed by code only, it was dropped).
    await withClient('edge-u', async (client) => {
      expectCode(await client.request(signRequest(keys.listed!, Algorithm.ECDSA_SHA256)), ErrorCode.NOT_AUTHORISED);
    });
    const audit = logs
      .lines()
      .filter((l) => l.audit === 'refused')
      .slice(auditBefore);
    expect(audit).toMatchObject([{ client: 'by-uri', keyId: keys.listed!.keyId, msg: 'client may not use this key' }]);
  });

  it("one client's bad frames at its own rate do not take another client's line: bad frames are rate-limited per client", async () => {
    /** Sends `count` frames of protocol version 2 over a connection of client `name` and waits for their answers. */
    const badFrames = (name: string, count: number): Promise<void> =>
      new Promise((resolve, reject) => {
        const socket = tls.connect({
          host: '127.0.0.1',
          port: server.tcpPort!,
          servername: 'localhost',
          ca: readFileSync(pki.caFile),
          ...certOf(pki.clients[name]!),
        });
        let answered = 0;
        const reader = new FrameReader({
          onFrame: () => {
            if (++answered < count) return;
            socket.destroy();
            resolve();
          },
          onError: reject,
        });
        socket.on('secureConnect', () =>
          socket.write(Buffer.concat(Array.from({ length: count }, (_, id) => rawFrame({ version: 2, opcode: Opcode.PING, id })))),
        );
        socket.on('data', (chunk: Buffer) => reader.push(chunk));
        socket.on('error', reject);
      });
    // A certificate matching no rule spends the burst of bad-frame lines of one error code (10 a window)...
    await badFrames('stranger', 30);
    const before = logs.lines().length;
    // ...and then a configured client sends one: its line names it (keyed by code only, it was dropped).
    await badFrames('edge-u', 1);
    const lines = logs
      .lines()
      .slice(before)
      .filter((l) => l.code === 'UNSUPPORTED_VERSION');
    expect(lines).toMatchObject([{ client: 'by-uri', transport: 'tls', msg: expect.stringMatching(/^bad request: protocol version 2/) }]);
  });
});
