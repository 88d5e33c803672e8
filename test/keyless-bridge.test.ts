/**
 * The keyless bridge (proxy/native): node:tls serving keys whose private half
 * is in the key server's token, through an OpenSSL 3 provider inside this
 * process. A real key server runs as a child process (the bridge blocks this
 * process's event loop while it signs, so the key server cannot live here).
 */
import { spawnSync } from 'node:child_process';
import { constants, createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyedgeError } from '../keyserver/shared/errors.js';
import { createLogger } from '../keyserver/shared/log.js';
import { readTcpMaterial, TcpFilesWatch, tcpFilesIdentity } from '../proxy/keyless/tcp-files.js';
import * as bridge from '../proxy/native/index.js';
import { keyIdOf } from '../keyserver/shared/key-id.js';
import {
  buildDualStackResolver,
  type FakeAnswer,
  fetchSpki,
  issueForSpki,
  type KeyserverProcess,
  sClient,
  signCount,
  startFakeKeyserver,
  startKeyserverProcess,
  startNotTlsServer,
  startTlsServer,
  tlsHandshake,
} from './helpers/keyless.js';
import { removeDir, runCli, sleep, tempDir } from './helpers/basics.js';
import { writeConfigFile } from './helpers/keyserver.js';
import { createCa, createTestPki, issueForPublicKey, type TestCa, type TestPkiFiles, writePem } from './helpers/pki.js';

const ADDON = bridge.addonPath();
const TIMEOUT_MS = 250;
const BREAKER_MS = 200;
/** Node 24 changed what a KeyObject without a legacy key structure does (the guard test below). */
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);

type Server = Awaited<ReturnType<typeof startTlsServer>>;

let stateDir: string;
let configFile: string;
let ks: KeyserverProcess;
let ca: TestCa;
let caFile: string;
let pki: TestPkiFiles;
const keys: Record<'ec' | 'rsa', { id: string; spki: Buffer; cert: string; pem: string }> = {} as never;
let ecServer: Server;
let rsaServer: Server;

async function generate(type: string, label: string): Promise<string> {
  const result = await runCli(['key', 'generate', '--config', configFile, '--type', type, '--label', label]);
  expect(result.code, result.stderr).toBe(0);
  return /key id: ([0-9a-f]{64})/.exec(result.stdout)![1]!;
}

function useKeyserver(): void {
  bridge.init({ socketPath: ks.unixPath!, timeoutMs: TIMEOUT_MS, breakerMs: BREAKER_MS });
}

function failures(): bridge.KeylessStats['failures'] {
  return bridge.stats().failures;
}

beforeAll(async () => {
  stateDir = tempDir('keyedge-keyless-');
  pki = await createTestPki(stateDir, [{ commonName: 'edge' }]);
  configFile = writeConfigFile(stateDir, {
    log: { level: 'info' },
    listen: { tcp: { host: '127.0.0.1', port: 0, cert: pki.server.cert, key: pki.server.key, clientCa: pki.caFile } },
    clients: [{ name: 'edge', match: { commonName: 'edge' }, keys: '*' }],
  });
  const ids = { ec: await generate('ec-p256', 'edge-ec'), rsa: await generate('rsa-2048', 'edge-rsa') };
  ks = await startKeyserverProcess(configFile);
  ca = await createCa('keyless test CA');
  caFile = writePem(stateDir, 'keyless-ca', ca.certPem);
  for (const kind of ['ec', 'rsa'] as const) {
    const spki = await fetchSpki(ks.unixPath!, ids[kind]);
    keys[kind] = { id: ids[kind], spki, cert: await issueForSpki(ca, spki, kind), pem: bridge.keylessKeyPem(ids[kind], spki) };
  }
  useKeyserver();
  ecServer = await startTlsServer({ key: keys.ec.pem, cert: keys.ec.cert });
  rsaServer = await startTlsServer({ key: keys.rsa.pem, cert: keys.rsa.cert });
});

afterAll(async () => {
  await ecServer?.close();
  await rsaServer?.close();
  await ks?.stop();
  if (stateDir !== undefined) removeDir(stateDir);
});

describe('the keyless PEM block', () => {
  it('is version 1 | key id | SPKI under the KEYEDGE KEYLESS KEY label, and refuses a key id of another key', () => {
    const { id, spki, pem } = keys.ec;
    expect(pem).toMatch(/^-----BEGIN KEYEDGE KEYLESS KEY-----\n([A-Za-z0-9+/=]{1,64}\n)+-----END KEYEDGE KEYLESS KEY-----\n$/);
    const body = Buffer.from(pem.split('\n').slice(1, -2).join(''), 'base64');
    expect(body[0]).toBe(1);
    expect(body.subarray(1, 33).toString('hex')).toBe(id);
    expect(body.subarray(33).equals(spki)).toBe(true);
    expect(keyIdOf(spki)).toBe(id);
    expect(() => bridge.keylessKeyPem(keys.rsa.id, spki)).toThrow(expect.objectContaining({ code: 'KEYEDGE_ERR_KEY_INPUT' }));
  });

  it('is refused by createSecureContext when the key id does not match its public key, or the certificate is for another key', async () => {
    const body = Buffer.concat([Buffer.from([1]), Buffer.alloc(32, 0xab), keys.ec.spki]).toString('base64');
    const forged = `-----BEGIN KEYEDGE KEYLESS KEY-----\n${body.match(/.{1,64}/g)!.join('\n')}\n-----END KEYEDGE KEYLESS KEY-----\n`;
    expect(() => tls.createSecureContext({ key: forged, cert: keys.ec.cert })).toThrow();
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
    const otherCert = await issueForSpki(ca, other, 'ec');
    expect(() => tls.createSecureContext({ key: keys.ec.pem, cert: otherCert })).toThrow(/key values mismatch/);
  });
});

describe('handshakes signed by the key server', () => {
  it('node:tls: TLS 1.3 and 1.2 with ECDSA P-256 and RSA-2048, one sign per full handshake', async () => {
    for (const server of [ecServer, rsaServer]) {
      for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
        const before = await signCount(ks.adminPort);
        const result = await tlsHandshake(server.port, ca.certPem, { minVersion: version, maxVersion: version });
        expect(result.error).toBeUndefined();
        expect(result.protocol).toBe(version);
        expect(await signCount(ks.adminPort)).toBe(before + 1);
      }
    }
    expect(bridge.stats().lastError).toBe('');
  });

  const matrix: { kind: 'ec' | 'rsa'; args: string[]; protocol: string; type: string; digest: string; algorithm: string }[] = [
    { kind: 'ec', args: ['-tls1_3'], protocol: 'TLSv1.3', type: 'ECDSA', digest: 'SHA256', algorithm: 'ECDSA_SHA256' },
    { kind: 'ec', args: ['-tls1_3', '-groups', 'P-256'], protocol: 'TLSv1.3', type: 'ECDSA', digest: 'SHA256', algorithm: 'ECDSA_SHA256' },
    { kind: 'ec', args: ['-tls1_2', '-sigalgs', 'ECDSA+SHA256'], protocol: 'TLSv1.2', type: 'ECDSA', digest: 'SHA256', algorithm: 'ECDSA_SHA256' },
    { kind: 'ec', args: ['-tls1_2', '-sigalgs', 'ECDSA+SHA384'], protocol: 'TLSv1.2', type: 'ECDSA', digest: 'SHA384', algorithm: 'ECDSA_SHA384' },
    { kind: 'ec', args: ['-tls1_2', '-sigalgs', 'ECDSA+SHA512'], protocol: 'TLSv1.2', type: 'ECDSA', digest: 'SHA512', algorithm: 'ECDSA_SHA512' },
    { kind: 'rsa', args: ['-tls1_3'], protocol: 'TLSv1.3', type: 'RSA-PSS', digest: 'SHA256', algorithm: 'RSA_PSS_SHA256' },
    { kind: 'rsa', args: ['-tls1_3', '-sigalgs', 'rsa_pss_rsae_sha384'], protocol: 'TLSv1.3', type: 'RSA-PSS', digest: 'SHA384', algorithm: 'RSA_PSS_SHA384' },
    { kind: 'rsa', args: ['-tls1_2', '-sigalgs', 'rsa_pss_rsae_sha256'], protocol: 'TLSv1.2', type: 'RSA-PSS', digest: 'SHA256', algorithm: 'RSA_PSS_SHA256' },
    { kind: 'rsa', args: ['-tls1_2', '-sigalgs', 'RSA+SHA256'], protocol: 'TLSv1.2', type: 'RSA', digest: 'SHA256', algorithm: 'RSA_PKCS1_SHA256' },
    { kind: 'rsa', args: ['-tls1_2', '-sigalgs', 'RSA+SHA512'], protocol: 'TLSv1.2', type: 'RSA', digest: 'SHA512', algorithm: 'RSA_PKCS1_SHA512' },
  ];

  it.each(matrix)('openssl s_client $args: $type $digest over $protocol, signed as $algorithm', async ({ kind, args, protocol, type, digest, algorithm }) => {
    const server = kind === 'ec' ? ecServer : rsaServer;
    const [before, beforeTotal] = [await signCount(ks.adminPort, algorithm), await signCount(ks.adminPort)];
    const result = await sClient(server.port, caFile, args);
    expect(result.code, result.output).toBe(0);
    expect(result.protocol).toBe(protocol);
    expect(result.signatureType).toBe(type);
    expect(result.signingDigest).toBe(digest);
    expect(await signCount(ks.adminPort, algorithm)).toBe(before + 1);
    expect(await signCount(ks.adminPort)).toBe(beforeTotal + 1);
  });

  it('skips sigalgs whose digest the key server cannot sign (SHA-224), which an in-memory key would use', async () => {
    const local = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const localSpki = local.publicKey.export({ type: 'spki', format: 'der' });
    const inMemory = await startTlsServer({ key: local.privateKey.export({ type: 'pkcs8', format: 'pem' }), cert: await issueForSpki(ca, localSpki, 'ec') });
    try {
      const only224 = ['-tls1_2', '-sigalgs', 'ECDSA+SHA224'];
      const control = await sClient(inMemory.port, caFile, only224);
      expect(control.code, control.output).toBe(0);
      expect(control.signingDigest).toBe('SHA224');

      // Refused at DigestSignInit: libssl finds no usable sigalg, and nothing reaches the key server.
      const before = await signCount(ks.adminPort);
      const keyless = await sClient(ecServer.port, caFile, only224);
      expect(keyless.code).not.toBe(0);
      expect(keyless.alert).toBe('handshake failure');
      expect(ecServer.clientErrors.at(-1)?.message).toMatch(/no suitable signature algorithm/);
      // With SHA-384 also on offer, that one is used.
      const both = await sClient(ecServer.port, caFile, ['-tls1_2', '-sigalgs', 'ECDSA+SHA224:ECDSA+SHA384']);
      expect(both.code, both.output).toBe(0);
      expect(both.signingDigest).toBe('SHA384');
      expect(await signCount(ks.adminPort)).toBe(before + 1);
    } finally {
      await inMemory.close();
    }
  });

  it('never decrypts: a TLS 1.2 RSA key-exchange handshake fails without reaching the key server', async () => {
    const before = await signCount(ks.adminPort);
    const result = await sClient(rsaServer.port, caFile, ['-tls1_2', '-cipher', 'AES128-GCM-SHA256']);
    expect(result.code).not.toBe(0);
    expect(result.alert).toBe('decrypt error');
    expect(await signCount(ks.adminPort)).toBe(before);
    expect(rsaServer.clientErrors.at(-1)?.message).toMatch(/asym_cipher_init|not supported/);
  });

  it('a resumed TLS 1.3 session needs no signature', async () => {
    const before = await signCount(ks.adminPort);
    const session = await new Promise<Buffer>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port: ecServer.port, servername: 'localhost', ca: ca.certPem });
      socket.once('session', (s: Buffer) => {
        socket.end();
        resolve(s);
      });
      socket.on('error', reject);
    });
    const reused = await new Promise<boolean>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port: ecServer.port, servername: 'localhost', ca: ca.certPem, session }, () => {
        resolve(socket.isSessionReused());
        socket.end();
      });
      socket.on('error', reject);
    });
    expect(reused).toBe(true);
    expect(await signCount(ks.adminPort)).toBe(before + 1);
  });

  it('signature parameters (through node:crypto.sign): SHA-256/384/512, PSS only with salt = hash length, nothing else', () => {
    // Not how the proxy uses the key; a direct way to drive EVP_DigestSign with every parameter.
    const data = Buffer.from('keyless');
    const publicKey = (kind: 'ec' | 'rsa') => createPublicKey({ key: keys[kind].spki, format: 'der', type: 'spki' });
    const refused = /keyedge-keyless::not supported by the key server/;
    const before = bridge.stats().signs;
    for (const kind of ['ec', 'rsa'] as const) {
      for (const hash of ['sha256', 'sha384', 'sha512']) expect(verify(hash, data, publicKey(kind), sign(hash, data, keys[kind].pem))).toBe(true);
      for (const hash of ['sha1', 'sha224']) expect(() => sign(hash, data, keys[kind].pem)).toThrow(refused);
    }
    const pss = (saltLength: number) => sign('sha384', data, { key: keys.rsa.pem, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength });
    for (const saltLength of [48, constants.RSA_PSS_SALTLEN_DIGEST]) {
      expect(verify('sha384', data, { key: publicKey('rsa'), padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 }, pss(saltLength))).toBe(true);
    }
    for (const saltLength of [32, 0, constants.RSA_PSS_SALTLEN_MAX_SIGN]) expect(() => pss(saltLength)).toThrow(refused);
    expect(() => sign('sha256', data, { key: keys.rsa.pem, padding: constants.RSA_NO_PADDING })).toThrow(refused);
    expect(bridge.stats().signs).toBe(before + 8);
  });

  it('leaves ordinary keys and crypto alone (the default provider still answers ordinary fetches)', async () => {
    const pairs = [
      { type: 'ec' as const, pair: generateKeyPairSync('ec', { namedCurve: 'P-256' }) },
      { type: 'rsa' as const, pair: generateKeyPairSync('rsa', { modulusLength: 2048 }) },
    ];
    for (const { type, pair } of pairs) {
      const pem = pair.privateKey.export({ type: 'pkcs8', format: 'pem' });
      const loaded = createPrivateKey(pem);
      expect(loaded.asymmetricKeyDetails).toBeDefined();
      const signature = sign('sha256', Buffer.from('hello'), loaded);
      expect(verify('sha256', Buffer.from('hello'), pair.publicKey, signature)).toBe(true);
      const server = await startTlsServer({ key: pem, cert: await issueForSpki(ca, pair.publicKey.export({ type: 'spki', format: 'der' }), type) });
      try {
        const before = await signCount(ks.adminPort);
        expect((await sClient(server.port, caFile, ['-tls1_3', '-groups', 'P-256'])).code).toBe(0);
        expect((await tlsHandshake(server.port, ca.certPem, { maxVersion: 'TLSv1.2' })).ok).toBe(true);
        expect(await signCount(ks.adminPort)).toBe(before);
      } finally {
        await server.close();
      }
    }
  });

  it('survives many secure-context reloads with keyless keys', async () => {
    for (let i = 0; i < 300; i++) {
      const kind = i % 2 === 0 ? 'ec' : 'rsa';
      tls.createSecureContext({ key: keys[kind].pem, cert: keys[kind].cert });
    }
    ecServer.server.setSecureContext({ key: keys.ec.pem, cert: keys.ec.cert });
    expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
  });
});

describe('failures', () => {
  it('a key the key server does not hold: the handshake fails with internal_error, counted as remote', async () => {
    const local = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spki = local.publicKey.export({ type: 'spki', format: 'der' });
    const server = await startTlsServer({ key: bridge.keylessKeyPem(keyIdOf(spki), spki), cert: await issueForSpki(ca, spki, 'ec') });
    try {
      const before = failures().remote;
      const result = await sClient(server.port, caFile, ['-tls1_3']);
      expect(result.code).not.toBe(0);
      expect(result.alert).toBe('internal error');
      expect(failures().remote).toBe(before + 1);
      expect(bridge.stats().lastError).toContain('UNKNOWN_KEY');
      expect(bridge.stats().lastError).toContain(keyIdOf(spki).slice(0, 16));
      expect(server.clientErrors.at(-1)?.message).toContain('keyedge-keyless');
      // The connection stays usable after a well-formed ERROR answer.
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
    } finally {
      await server.close();
    }
  });

  it('malformed answers are failed signs that close the connection', async () => {
    const answers: FakeAnswer[] = ['wrong-id', 'critical-item', 'not-der', 'overrun'];
    const fake = await startFakeKeyserver(join(stateDir, 'fake.sock'), answers);
    try {
      bridge.init({ socketPath: join(stateDir, 'fake.sock'), timeoutMs: TIMEOUT_MS, breakerMs: BREAKER_MS });
      for (let i = 0; i < answers.length; i++) {
        const before = failures().protocol;
        const result = await tlsHandshake(ecServer.port, ca.certPem);
        expect(result.ok).toBe(false);
        expect(result.error?.code).toBe('ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR');
        expect(failures().protocol, bridge.stats().lastError).toBe(before + 1);
        expect(bridge.stats().lastError).toMatch(/malformed answer/);
      }
      await sleep(100);
      expect(fake.connections).toBe(answers.length); // each failure closed the connection
    } finally {
      await fake.stop();
      useKeyserver();
    }
  });

  it('an ERROR answer with an unknown optional item is a remote failure on a connection that stays open', async () => {
    const fake = await startFakeKeyserver(join(stateDir, 'fake-error.sock'), ['error-optional']);
    try {
      bridge.init({ socketPath: join(stateDir, 'fake-error.sock'), timeoutMs: TIMEOUT_MS, breakerMs: BREAKER_MS });
      const before = failures().remote;
      for (let i = 0; i < 2; i++) expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(false);
      expect(failures().remote, bridge.stats().lastError).toBe(before + 2);
      expect(bridge.stats().lastError).toContain('OVERLOADED (busy)');
      await sleep(100);
      expect(fake.connections).toBe(1);
    } finally {
      await fake.stop();
      useKeyserver();
    }
  });

  it('a key server that accepts but never answers: fails after about timeoutMs, then fails fast while the breaker is open', async () => {
    // Deadlines of their own, long enough that "fails fast" and "waits the
    // timeout" stay seconds apart on a loaded CI machine (250 ms against a
    // 266 ms fast failure did not). The breaker counter and the fake's
    // connection count say what happened; the times only tell fast from slow.
    const HANG_TIMEOUT_MS = 1000;
    const HANG_BREAKER_MS = 2500;
    const fake = await startFakeKeyserver(join(stateDir, 'hang.sock'), ['never']);
    const delay = monitorEventLoopDelay({ resolution: 10 });
    try {
      bridge.init({ socketPath: join(stateDir, 'hang.sock'), timeoutMs: HANG_TIMEOUT_MS, breakerMs: HANG_BREAKER_MS });
      const before = { ...failures() };
      delay.enable();
      await sleep(50); // the histogram measures between ticks of its own timer: let it tick first
      let start = performance.now();
      const cpu = process.cpuUsage();
      const first = await tlsHandshake(ecServer.port, ca.certPem);
      const firstMs = performance.now() - start;
      const used = process.cpuUsage(cpu);
      const cpuMs = (used.user + used.system) / 1000;
      await sleep(50); // let the histogram's timer record the stall
      delay.disable();
      expect(first.ok).toBe(false);
      expect(first.error?.code).toBe('ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR');
      expect(failures().timeout, bridge.stats().lastError).toBe(before.timeout + 1);
      expect(bridge.stats().lastError).toMatch(/no answer within the deadline \(timeout 1000 ms/);
      expect(firstMs).toBeGreaterThanOrEqual(HANG_TIMEOUT_MS - 20);
      expect(cpuMs).toBeLessThan(HANG_TIMEOUT_MS / 2); // waiting in poll(), not spinning
      // The event loop was blocked for about timeoutMs, once, and not much longer (generous slack for CI).
      const blockedMs = delay.max / 1e6;
      expect(blockedMs).toBeGreaterThan(HANG_TIMEOUT_MS / 2);
      expect(blockedMs).toBeLessThan(HANG_TIMEOUT_MS * 2);

      start = performance.now();
      const second = await tlsHandshake(ecServer.port, ca.certPem);
      expect(second.ok).toBe(false);
      // Failed fast: without asking the key server (the breaker counter), well under the timeout.
      expect(performance.now() - start).toBeLessThan(HANG_TIMEOUT_MS);
      expect(failures().breaker).toBe(before.breaker + 1);
      expect(bridge.stats().lastError).toMatch(/not retried for \d+ ms/);

      await sleep(HANG_BREAKER_MS + 50);
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(false);
      expect(failures().timeout).toBe(before.timeout + 2);
      await sleep(100);
      expect(fake.connections).toBe(2);
    } finally {
      await fake.stop();
      useKeyserver();
    }
  });

  it('key server stopped: internal_error alert, the process stays up; restarted: handshakes work again within a second, without init()', async () => {
    expect((await tlsHandshake(rsaServer.port, ca.certPem)).ok).toBe(true); // connection open
    await ks.stop();
    const before = { ...failures() };
    const down = await sClient(rsaServer.port, caFile, ['-tls1_3']);
    expect(down.code).not.toBe(0);
    expect(down.alert).toBe('internal error');
    expect(failures().connect).toBe(before.connect + 1);
    const fast = await tlsHandshake(rsaServer.port, ca.certPem);
    expect(fast.ok).toBe(false);
    expect(fast.error?.code).toBe('ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR');
    expect(failures().connect + failures().breaker).toBe(before.connect + before.breaker + 2);

    ks = await startKeyserverProcess(configFile);
    const start = performance.now();
    let ok = false;
    while (!ok && performance.now() - start < 5000) {
      ok = (await tlsHandshake(rsaServer.port, ca.certPem)).ok;
      if (!ok) await sleep(20);
    }
    expect(ok).toBe(true);
    expect(performance.now() - start).toBeLessThan(1000);
    expect(await signCount(ks.adminPort)).toBe(1);
  });
});

describe('a key server that mangles valid answers (a relay in front of the real one)', () => {
  type Outcome = 'ok' | 'timeout' | 'connect' | 'protocol';
  const cases: { name: string; answers: FakeAnswer[]; expect: Outcome[]; timeoutMs?: number; connections: number }[] = [
    // The duplicate is found by the idle check before the next request: a new connection, no failed sign.
    { name: 'answers twice', answers: ['twice', 'relay', 'relay'], expect: ['ok', 'ok', 'ok'], connections: 2 },
    // The late answer lands on the connection closed at the deadline, never on the next request.
    { name: 'answers after the deadline', answers: ['late', 'relay', 'relay'], expect: ['timeout', 'ok', 'ok'], connections: 2 },
    { name: 'sends the header, the body after the deadline', answers: ['split-late', 'relay'], expect: ['timeout', 'ok'], connections: 2 },
    { name: 'trickles the answer a byte at a time', answers: ['trickle', 'relay'], expect: ['ok', 'ok'], timeoutMs: 5_000, connections: 1 },
    { name: 'closes mid-frame', answers: ['cut', 'relay'], expect: ['connect', 'ok'], connections: 2 },
    { name: 'declares a 4 GiB body', answers: ['huge', 'relay'], expect: ['protocol', 'ok'], connections: 2 },
  ];
  for (const c of cases) {
    it(`${c.name}: ${c.expect.join(', ')}, over ${c.connections} connection(s): a failure never reaches the next sign`, async () => {
      const path = join(stateDir, `mangle-${cases.indexOf(c)}.sock`);
      const fake = await startFakeKeyserver(path, c.answers, ks.unixPath!);
      try {
        bridge.init({ socketPath: path, timeoutMs: c.timeoutMs ?? TIMEOUT_MS, breakerMs: BREAKER_MS });
        for (const [i, expected] of c.expect.entries()) {
          const before = { ...failures() };
          const result = await tlsHandshake(ecServer.port, ca.certPem);
          expect(result.ok, `handshake ${i}: ${bridge.stats().lastError}`).toBe(expected === 'ok');
          if (expected !== 'ok') expect(failures()[expected], bridge.stats().lastError).toBe(before[expected] + 1);
          // Past the breaker, and past any late answer of this case (1.5 s) before the last handshake.
          await sleep(i === c.expect.length - 2 && c.answers.some((a) => a.includes('late')) ? 1_600 : BREAKER_MS + 50);
        }
        expect(fake.connections).toBe(c.connections);
      } finally {
        await fake.stop();
        useKeyserver();
      }
    }, 20_000);
  }
});

describe('a connection used again right after an answer', () => {
  // crypto.sign back to back: the next request follows the last answer within microseconds, before the
  // key server's close of the connection (or its stray bytes) can be seen by any check (which is skipped
  // then anyway, to save a poll per sign). The request found such a connection dead before any byte of
  // its answer; it goes once more on a new connection: no failed sign. (It used to fail the sign.)
  const cases: { name: string; answers: FakeAnswer[]; connections: number }[] = [
    { name: 'closes it after each answer', answers: ['then-close'], connections: 4 },
    // The duplicate is read with the answer (bytes after it close the connection) or as the next request's (stale).
    { name: 'answers twice', answers: ['twice'], connections: 4 },
  ];
  for (const c of cases) {
    it(`a key server that ${c.name}: every sign succeeds, each on a live connection`, async () => {
      const path = join(stateDir, `recent-${cases.indexOf(c)}.sock`);
      const fake = await startFakeKeyserver(path, c.answers, ks.unixPath!);
      try {
        bridge.init({ socketPath: path, timeoutMs: TIMEOUT_MS, breakerMs: BREAKER_MS });
        const data = Buffer.from('keyless');
        const publicKey = createPublicKey({ key: keys.ec.spki, format: 'der', type: 'spki' });
        const before = { ...failures() };
        const signs = bridge.stats().signs;
        for (let i = 0; i < 4; i++) expect(verify('sha256', data, publicKey, sign('sha256', data, keys.ec.pem)), bridge.stats().lastError).toBe(true);
        expect(bridge.stats().signs).toBe(signs + 4);
        expect(failures()).toEqual(before);
        await sleep(100);
        expect(fake.connections).toBe(c.connections);
      } finally {
        await fake.stop();
        useKeyserver();
      }
    });
  }
});

describe("setTls: a TLS key server's renewed client identity (proxy/keyless/tcp-files.ts)", () => {
  it('is checked as init() checks it and refused whole, naming the field, never the key; applies to TLS servers of the current configuration only', async () => {
    const material = {
      caPem: readFileSync(pki.caFile, 'utf8'),
      certPem: readFileSync(pki.clients.edge!.cert, 'utf8'),
      keyPem: readFileSync(pki.clients.edge!.key, 'utf8'),
    };
    const refusal = (m: bridge.KeylessTlsMaterial): unknown => {
      try {
        bridge.setTls(bridge.init({ servers: [{ tls: { host: '127.0.0.1', port: 1, ...material } }] }), 0, m);
        return undefined;
      } catch (err) {
        return { code: (err as KeyedgeError).code, message: (err as Error).message };
      }
    };
    const otherKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    try {
      expect([refusal({ ...material, caPem: 'no CA' }), refusal({ ...material, certPem: 'no cert' }), refusal({ ...material, keyPem: otherKey })]).toEqual([
        { code: 'KEYEDGE_ERR_CONFIG', message: 'keyless bridge setTls: tls.caPem holds no PEM certificate' },
        { code: 'KEYEDGE_ERR_CONFIG', message: 'keyless bridge setTls: tls.certPem holds no usable PEM certificate' },
        { code: 'KEYEDGE_ERR_CONFIG', message: 'keyless bridge setTls: tls.keyPem is not an unencrypted PEM private key matching tls.certPem' },
      ]);
      const generation = bridge.init({ servers: [{ tls: { host: '127.0.0.1', port: 1, ...material } }, { socketPath: ks.unixPath! }] });
      expect([
        bridge.setTls(generation, 0, material),
        bridge.setTls(generation, 1, material), // a unix socket
        bridge.setTls(generation, 2, material),
        bridge.setTls(generation + 1, 0, material),
      ]).toEqual([true, false, false, false]);
    } finally {
      bridge.init({ socketPath: ks.unixPath!, timeoutMs: TIMEOUT_MS, breakerMs: BREAKER_MS });
    }
    expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
  });
});

describe("a keyless key as a TLS key server's client key", () => {
  // The connection's own TLS 1.3 handshake would sign its CertificateVerify through this bridge: the sign
  // that opens the connection holds the pool's lock, and the handshake's sign waits on it for ever. At a
  // worker's start such a key happened to be refused (the provider was not registered yet when the files
  // were checked); a renewal, checked after, was taken, and the next reconnect hung the worker for good.
  const material = async () => ({
    caPem: readFileSync(pki.caFile, 'utf8'),
    // From the key server's client CA, for the token's key: a pair every other check takes.
    certPem: (await issueForPublicKey(pki.ca, keys.ec.spki, { commonName: 'edge' })).certPem,
    keyPem: keys.ec.pem,
  });
  const signs = (): boolean => {
    const data = Buffer.from('keyless');
    return verify('sha256', data, createPublicKey({ key: keys.ec.spki, format: 'der', type: 'spki' }), sign('sha256', data, keys.ec.pem));
  };

  it('is refused by init() and setTls, naming the field', async () => {
    const keyless = await material();
    const endpoint = (m: bridge.KeylessTlsMaterial) => ({ tls: { host: '127.0.0.1', port: ks.tcpPort!, ...m } });
    const message = 'tls.keyPem is a keyless key (KEYEDGE KEYLESS KEY): the client key of a key server connection must be a local private key';
    try {
      expect(() => bridge.init({ servers: [endpoint(keyless)] })).toThrow(`keyless bridge init: ${message}`);
      const generation = bridge.init({
        servers: [
          endpoint({
            caPem: keyless.caPem,
            certPem: readFileSync(pki.clients.edge!.cert, 'utf8'),
            keyPem: readFileSync(pki.clients.edge!.key, 'utf8'),
          }),
        ],
      });
      expect(() => bridge.setTls(generation, 0, keyless)).toThrow(`keyless bridge setTls: ${message}`);
    } finally {
      useKeyserver();
    }
  });

  it('a renewal of tcp.key to one is refused with a warning naming the file; signing goes on with the files read before', async () => {
    const tcp = {
      host: '127.0.0.1',
      port: ks.tcpPort!,
      ca: pki.caFile,
      cert: join(stateDir, 'renew-cert.pem'),
      key: join(stateDir, 'renew-key.pem'),
      servername: null,
    };
    copyFileSync(pki.clients.edge!.cert, tcp.cert);
    copyFileSync(pki.clients.edge!.key, tcp.key);
    const lines: { msg: string; err?: string }[] = [];
    const log = createLogger('test', 'info', { write: (line: string) => void lines.push(JSON.parse(line)) });
    const seen = tcpFilesIdentity(tcp);
    const generation = bridge.init({
      servers: [{ name: 'tls', tls: { host: tcp.host, port: tcp.port, ...readTcpMaterial('tls', tcp) } }],
      timeoutMs: 5_000,
      breakerMs: 0,
    });
    const watch = new TcpFilesWatch('tls', tcp, seen, (m) => bridge.setTls(generation, 0, m), log, 50);
    try {
      expect(signs()).toBe(true);
      const keyless = await material();
      // Both written before the watch's next look (this thread runs its timer only after them).
      writeFileSync(tcp.cert, keyless.certPem);
      writeFileSync(tcp.key, keyless.keyPem);
      const start = performance.now();
      while (lines.length === 0 && performance.now() - start < 10_000) await sleep(20);
      expect(lines.map((l) => [l.msg, l.err])).toEqual([
        [
          'key server TLS files changed but were refused: its next connections keep using the previous ones',
          `key server tls: its client key ${tcp.key} (tcp.key) is a keyless key (KEYEDGE KEYLESS KEY): the client key of a key server connection must be a local private key`,
        ],
      ]);
      // On a new connection too: a health verdict closes the one open.
      expect(bridge.setHealth(generation, 0, false)).toBe(true);
      expect(bridge.setHealth(generation, 0, true)).toBe(true);
      expect(signs(), bridge.stats().lastError).toBe(true);
      expect(bridge.stats().servers![0]!.signs).toBe(2);
    } finally {
      watch.stop();
      useKeyserver();
    }
  });
});

describe('a pool of key servers', () => {
  const server = (name: string) => bridge.stats().servers!.find((s) => s.name === name)!;

  it('a dead key server listed first: the sign fails over to the next within the handshake, and the dead one is skipped after', async () => {
    try {
      bridge.init({
        servers: [
          { name: 'dead', socketPath: join(stateDir, 'nobody-listens.sock') },
          { name: 'live', socketPath: ks.unixPath! },
        ],
        timeoutMs: TIMEOUT_MS,
        breakerMs: 60_000,
      });
      const before = bridge.stats();
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
      expect(bridge.stats().failovers).toBe(before.failovers! + 1);
      expect(server('dead')).toMatchObject({ state: 'cooling', signs: 0, failovers: 1, failures: { connect: 1, timeout: 0 } });
      expect(server('live')).toMatchObject({ state: 'up', signs: 1, failovers: 0 });
      // Its breaker is open: the next handshake goes straight to the live one.
      expect((await tlsHandshake(rsaServer.port, ca.certPem)).ok).toBe(true);
      expect(server('dead').failures.connect).toBe(1);
      expect(server('live').signs).toBe(2);
      expect(bridge.stats().failures).toEqual(before.failures);
    } finally {
      useKeyserver();
    }
  });

  it('a key server that hangs costs its share of the deadline, not the handshake, in a pool measured fast', async () => {
    const fake = await startFakeKeyserver(join(stateDir, 'pool-hang.sock'), ['never']);
    try {
      bridge.init({
        servers: [
          { name: 'live', socketPath: ks.unixPath! },
          { name: 'hangs', socketPath: join(stateDir, 'pool-hang.sock') },
        ],
        timeoutMs: 2_000,
        breakerMs: 60_000,
      });
      // The first sign measures the live one (a few ms); the next tries the never-measured one first.
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
      expect(server('hangs')).toMatchObject({ state: 'cooling', failovers: 1, failures: { timeout: 1 } });
      expect(server('live').signs).toBe(2);
    } finally {
      await fake.stop();
      useKeyserver();
    }
  });

  // With nothing measured, the first attempt took the whole deadline: the hanging server, listed first (unmeasured
  // servers tie), failed the sign alone, nothing got measured, and without health checks every sign after its
  // breaker closed again (at once with breakerMs 0) began the same way: every handshake failed, the live one unused.
  it('a key server that hangs, listed first in a pool measured by nothing and without health checks: every handshake succeeds on the next', async () => {
    const fake = await startFakeKeyserver(join(stateDir, 'pool-hang-first.sock'), ['never']);
    try {
      bridge.init({
        servers: [
          { name: 'hangs', socketPath: join(stateDir, 'pool-hang-first.sock') },
          { name: 'live', socketPath: ks.unixPath! },
        ],
        timeoutMs: 1_000,
        breakerMs: 0,
      });
      const outcomes: boolean[] = [];
      for (let i = 0; i < 3; i++) outcomes.push((await tlsHandshake(ecServer.port, ca.certPem)).ok);
      expect(outcomes, bridge.stats().lastError).toEqual([true, true, true]);
      expect(server('live').signs).toBe(3);
    } finally {
      await fake.stop();
      useKeyserver();
    }
  }, 30_000);

  // Each attempt used to get an equal share of the time left: with every server slower than timeoutMs / N
  // every attempt timed out, every sign failed (although any one server alone answers in time), and each
  // timeout opened a healthy server's breaker. Relays add 600 ms to every answer of the real key server.
  const slowPool = async (answers: FakeAnswer[], run: () => Promise<void>): Promise<void> => {
    const paths = ['a', 'b'].map((n) => join(stateDir, `pool-slow-${n}.sock`));
    const relays = await Promise.all(paths.map((path) => startFakeKeyserver(path, answers, ks.unixPath!)));
    try {
      bridge.init({
        servers: [
          { name: 'a', socketPath: paths[0]! },
          { name: 'b', socketPath: paths[1]! },
        ],
        timeoutMs: 1_000,
        breakerMs: 0,
      });
      await run();
    } finally {
      await Promise.all(relays.map((relay) => relay.stop()));
      useKeyserver();
    }
  };
  const signOnce = (): boolean | string => {
    const data = Buffer.from('keyless');
    try {
      return verify('sha256', data, createPublicKey({ key: keys.ec.spki, format: 'der', type: 'spki' }), sign('sha256', data, keys.ec.pem));
    } catch {
      return bridge.stats().lastError;
    }
  };

  it('two key servers each slower than half the deadline: every sign succeeds, on both in turn', async () => {
    await slowPool(['slow'], async () => {
      const before = { ...failures() };
      for (let i = 0; i < 6; i++) expect(signOnce(), `sign ${i}`).toBe(true);
      expect(failures()).toEqual(before);
      expect(bridge.stats().servers!.map((s) => [s.name, s.state, s.signs > 0, s.failures.timeout])).toEqual([
        ['a', 'up', true, 0],
        ['b', 'up', true, 0],
      ]);
    });
  }, 30_000);

  it('a pool measured fast that slows down: the sign that meets it fails, and the next ones wait for the slow answers', async () => {
    // Each relay answers its first request at once, then every one 600 ms late.
    await slowPool(['relay', 'slow', 'slow', 'slow', 'slow', 'slow', 'slow', 'slow'], async () => {
      const outcomes = [];
      for (let i = 0; i < 6; i++) outcomes.push(signOnce() === true);
      expect(outcomes, bridge.stats().lastError).toEqual([true, true, false, true, true, true]);
    });
  }, 30_000);

  // Never measured (they never sign), such servers scored best and were tried before the live one on
  // every handshake, each time a reconnect and an exchange (up to their share of the deadline) for nothing.
  const broken: { name: string; answer: FakeAnswer; failures: Partial<bridge.KeylessStats['failures']> }[] = [
    { name: 'garbles its answers', answer: 'wrong-id', failures: { protocol: 1 } },
    { name: 'refuses every sign (OVERLOADED)', answer: 'error-optional', failures: { remote: 1 } },
    { name: 'drops the connection mid-answer', answer: 'cut', failures: { connect: 1 } },
  ];
  for (const b of broken) {
    it(`a key server that ${b.name} is skipped after one failure, not tried first on every sign`, async () => {
      const path = join(stateDir, `pool-${b.answer}.sock`);
      const fake = await startFakeKeyserver(path, [b.answer], ks.unixPath!);
      try {
        bridge.init({
          servers: [
            { name: 'live', socketPath: ks.unixPath! },
            { name: 'broken', socketPath: path },
          ],
          timeoutMs: 2_000,
          breakerMs: 60_000,
        });
        for (let i = 0; i < 5; i++) expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
        expect(server('broken')).toMatchObject({ state: 'cooling', signs: 0, failovers: 1, failures: b.failures });
        expect(server('live').signs).toBe(5);
      } finally {
        await fake.stop();
        useKeyserver();
      }
    });
  }

  it('SIGN_FAILED benches no key server: it may be about one key, and a client asking for that name again must not bench the pool', async () => {
    // Each sign goes to the failing server first (never measured, it scores best), fails over and signs on the live one.
    const path = join(stateDir, 'pool-sign-failed.sock');
    const fake = await startFakeKeyserver(path, ['sign-failed'], ks.unixPath!);
    try {
      bridge.init({
        servers: [
          { name: 'live', socketPath: ks.unixPath! },
          { name: 'failing', socketPath: path },
        ],
        timeoutMs: 2_000,
        breakerMs: 60_000,
      });
      for (let i = 0; i < 3; i++) expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
      expect(server('failing').state).toBe('up');
      expect(server('failing').failures.remote).toBeGreaterThanOrEqual(1);
      expect(server('live').signs).toBe(3);
    } finally {
      await fake.stop();
      useKeyserver();
    }
  });

  it('an ERROR about the key (UNKNOWN_KEY) benches no key server: the handshakes with other keys go on', async () => {
    // Else one handshake for a key the pool lacks would open every breaker and fail all handshakes.
    const local = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spki = local.publicKey.export({ type: 'spki', format: 'der' });
    const unknown = await startTlsServer({ key: bridge.keylessKeyPem(keyIdOf(spki), spki), cert: await issueForSpki(ca, spki, 'ec') });
    try {
      bridge.init({
        servers: [
          { name: 'a', socketPath: ks.unixPath! },
          { name: 'b', socketPath: ks.unixPath! },
        ],
        timeoutMs: 2_000,
        breakerMs: 60_000,
      });
      expect((await tlsHandshake(unknown.port, ca.certPem)).ok).toBe(false);
      expect(bridge.stats().lastError).toContain('UNKNOWN_KEY');
      expect([server('a').state, server('b').state]).toEqual(['up', 'up']);
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
    } finally {
      await unknown.close();
      useKeyserver();
    }
  });

  it('with health checks, a server reported down stays out until reported up, then is tried first; a stale verdict is ignored', async () => {
    try {
      const generation = bridge.init({
        servers: [
          { name: 'a', socketPath: ks.unixPath! },
          { name: 'b', socketPath: ks.unixPath! },
        ],
        timeoutMs: TIMEOUT_MS,
        breakerMs: 0,
        healthChecked: true,
      });
      expect(bridge.setHealth(generation, 0, false)).toBe(true);
      for (let i = 0; i < 3; i++) expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
      expect(server('a')).toMatchObject({ state: 'down', signs: 0 });
      expect(server('b').signs).toBe(3);
      expect(bridge.setHealth(generation + 1, 0, true)).toBe(false);
      expect(bridge.setHealth(generation, 5, true)).toBe(false);
      expect(server('a').state).toBe('down');
      expect(bridge.setHealth(generation, 0, true)).toBe(true);
      expect(server('a')).toMatchObject({ state: 'up', rejoins: 1 });
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(true);
      expect(server('a').signs).toBe(1);
    } finally {
      useKeyserver();
    }
  });

  it('init() refuses an empty pool, a bad name, and a pool next to a single endpoint', () => {
    expect(() => bridge.init({ servers: [] })).toThrow(/servers must be an array of 1 to 16/);
    expect(() => bridge.init({ servers: [{ name: 'Bad Name', socketPath: ks.unixPath! }] })).toThrow(/name must be/);
    expect(() => bridge.init({ servers: [{ socketPath: ks.unixPath! }], socketPath: ks.unixPath! })).toThrow(/not both/);
    expect(() => bridge.init({ servers: [{ name: 'x' }] })).toThrow(/exactly one of socketPath and tls/);
    useKeyserver();
  });
});

describe('mutual TLS transport', () => {
  function useTls(overrides: Partial<bridge.KeylessTlsEndpoint> = {}): void {
    bridge.init({
      timeoutMs: 5000, // generous: a loaded CI machine, and a TLS handshake on each (re)connect
      breakerMs: 0,
      tls: {
        host: '127.0.0.1',
        port: ks.tcpPort!,
        caPem: readFileSync(pki.caFile, 'utf8'),
        certPem: readFileSync(pki.clients.edge!.cert, 'utf8'),
        keyPem: readFileSync(pki.clients.edge!.key, 'utf8'),
        ...overrides,
      },
    });
  }

  it('signs over TCP + mutual TLS 1.3, one connection for many handshakes', async () => {
    try {
      useTls();
      const before = await signCount(ks.adminPort);
      for (let i = 0; i < 3; i++) {
        const result = await tlsHandshake(ecServer.port, ca.certPem);
        expect(result.error).toBeUndefined();
      }
      expect((await sClient(rsaServer.port, caFile, ['-tls1_2', '-sigalgs', 'RSA+SHA256'])).code).toBe(0);
      expect(await signCount(ks.adminPort)).toBe(before + 4);
      const metrics = await (await fetch(`http://127.0.0.1:${ks.adminPort}/metrics`)).text();
      expect(metrics).toMatch(/keyedge_keyserver_connections\{transport="tls"\} 1\b/);
    } finally {
      useKeyserver();
    }
  });

  it('refuses a key server whose certificate is not from the configured CA, and a client certificate the key server does not trust', async () => {
    try {
      useTls({ caPem: pki.otherCa.certPem });
      const before = failures().connect;
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(false);
      expect(failures().connect, bridge.stats().lastError).toBe(before + 1);
      expect(bridge.stats().lastError).toMatch(/TLS handshake: server certificate: /);

      // TLS 1.3: the key server refuses our certificate after our side of the
      // handshake is done, so the refusal arrives as an alert instead of an answer.
      useTls({ certPem: readFileSync(pki.foreignClient.cert, 'utf8'), keyPem: readFileSync(pki.foreignClient.key, 'utf8') });
      const start = performance.now();
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(false);
      expect(performance.now() - start).toBeLessThan(2000); // noticed at once, not at the 5 s deadline
      expect(failures().connect, bridge.stats().lastError).toBe(before + 2);
      expect(bridge.stats().lastError).toMatch(/key server at tls:.*: receive: /);

      expect(() => useTls({ keyPem: pki.otherCa.keyPem })).toThrow(expect.objectContaining({ code: 'KEYEDGE_ERR_CONFIG' }));
    } finally {
      useKeyserver();
    }
  });

  it('a host name whose first address refuses (::1, the key server listening on 127.0.0.1 only): the next one is tried', (context) => {
    // The host name used to be reached at its first address only. The child signs with the bridge while
    // its getaddrinfo() answers ::1 then 127.0.0.1 for localhost (a dual-stack /etc/hosts), which the
    // key server's certificate names.
    const preload = buildDualStackResolver(stateDir);
    if (preload === undefined) context.skip('no C compiler to build the resolver shim');
    const script = `
      const b = require(process.env.ADDON);
      const fs = require('node:fs');
      const [ca, cert, key] = process.env.PEMS.split(',').map((f) => fs.readFileSync(f, 'utf8'));
      b.init({ tls: { host: 'localhost', port: Number(process.env.PORT), caPem: ca, certPem: cert, keyPem: key }, timeoutMs: 5000, breakerMs: 0 });
      for (let i = 0; i < 2; i++) {
        try { require('node:crypto').sign('sha256', Buffer.from('keyless'), process.env.PEM); console.log('signed'); } catch { console.log('failed: ' + b.stats().lastError); }
      }
      console.log('connect failures ' + b.stats().failures.connect);`;
    const child = spawnSync(process.execPath, ['-e', script], {
      env: {
        ...process.env,
        ADDON,
        LD_PRELOAD: preload,
        DUAL_STACK_NAME: 'localhost',
        PORT: String(ks.tcpPort),
        PEM: keys.ec.pem,
        PEMS: [pki.caFile, pki.clients.edge!.cert, pki.clients.edge!.key].join(','),
      },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(child.stderr).toBe('');
    expect(child.stdout.trim().split('\n')).toEqual(['signed', 'signed', 'connect failures 0']);
  });

  it('an endpoint that answers with something other than TLS fails the sign at once, not by spinning until the deadline', async () => {
    // libssl leaves "wants to read" set after failing on a record it read, and the socket stays readable:
    // the transport used to poll and call again, burning the CPU for the whole deadline.
    const peer = await startNotTlsServer();
    try {
      useTls({ port: peer.port }); // a 5 s deadline
      const before = { ...failures() };
      const start = performance.now();
      const cpu = process.cpuUsage();
      expect((await tlsHandshake(ecServer.port, ca.certPem)).ok).toBe(false);
      const elapsed = performance.now() - start;
      const used = process.cpuUsage(cpu);
      expect(bridge.stats().lastError).toMatch(/TLS handshake: .*wrong version number/);
      expect(failures().connect).toBe(before.connect + 1);
      expect(failures().timeout).toBe(before.timeout);
      expect(elapsed).toBeLessThan(2500);
      expect((used.user + used.system) / 1000).toBeLessThan(1500);
    } finally {
      await peer.stop();
      useKeyserver();
    }
  });

  it('in a pool, the next TLS key server after such an endpoint signs: its failure is not taken for the next one', async () => {
    // libssl clears the error queue as a handshake call starts: the first endpoint's error is gone
    // then, which must not read as an error raised by the next server's handshake.
    const peer = await startNotTlsServer();
    try {
      const endpoint = (port: number) => ({
        host: '127.0.0.1',
        port,
        caPem: readFileSync(pki.caFile, 'utf8'),
        certPem: readFileSync(pki.clients.edge!.cert, 'utf8'),
        keyPem: readFileSync(pki.clients.edge!.key, 'utf8'),
      });
      bridge.init({
        servers: [
          { name: 'not-tls', tls: endpoint(peer.port) },
          { name: 'live', tls: endpoint(ks.tcpPort!) },
        ],
        timeoutMs: 5000,
        breakerMs: 0,
      });
      const start = performance.now();
      const result = await tlsHandshake(ecServer.port, ca.certPem);
      expect(result.ok, bridge.stats().lastError).toBe(true);
      expect(performance.now() - start).toBeLessThan(2500);
      expect(bridge.stats().servers!.map((s) => [s.name, s.signs, s.failures.connect])).toEqual([
        ['not-tls', 0, 1],
        ['live', 1, 0],
      ]);
    } finally {
      await peer.stop();
      useKeyserver();
    }
  });
});

describe('init()', () => {
  it('needs exactly one endpoint and sane limits', () => {
    expect(() => bridge.init({})).toThrow(expect.objectContaining({ code: 'KEYEDGE_ERR_CONFIG' }));
    expect(() => bridge.init({ socketPath: ks.unixPath!, timeoutMs: 0 })).toThrow(/timeoutMs/);
    expect(() => bridge.init({ socketPath: 'x'.repeat(200) })).toThrow(/socketPath/);
    useKeyserver(); // idempotent
    useKeyserver();
  });

  it('refuses numbers outside int range, NaN and infinities before converting them (UB in C; only UBSan tells)', () => {
    // The release build refused these before the range check too (x86-64 turns such a cast into INT_MIN);
    // an addon built with gcc -fsanitize=float-cast-overflow died on the first one (src/addon.c, get_int).
    for (const timeoutMs of [1e12, Number.NaN, Number.POSITIVE_INFINITY, -(2 ** 31) - 1, 2 ** 32 + 250]) {
      expect(() => bridge.init({ socketPath: ks.unixPath!, timeoutMs })).toThrow(/timeoutMs must be an integer/);
    }
    const endpoint = { host: '127.0.0.1', port: 2 ** 32 + 443, caPem: 'x', certPem: 'x', keyPem: 'x' };
    expect(() => bridge.init({ tls: endpoint })).toThrow(/port must be an integer/);
    useKeyserver();
  });
});

describe('the KeyObject guard', () => {
  it('assertNotKeyless and loadPrivateKey refuse keyless keys with KEYEDGE_ERR_KEY_UNSUPPORTED', () => {
    expect(() => bridge.assertNotKeyless(keys.ec.pem)).toThrow(KeyedgeError);
    expect(() => bridge.assertNotKeyless(Buffer.from(keys.rsa.pem))).toThrow(expect.objectContaining({ code: 'KEYEDGE_ERR_KEY_UNSUPPORTED' }));
    expect(() => bridge.loadPrivateKey(keys.ec.pem)).toThrow(expect.objectContaining({ code: 'KEYEDGE_ERR_KEY_UNSUPPORTED' }));
    expect(() => bridge.loadPrivateKey({ key: keys.ec.pem })).toThrow(KeyedgeError);
    const ordinary = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    expect(bridge.loadPrivateKey(ordinary).asymmetricKeyType).toBe('ec');
  });

  it('without the guard, node aborts the process (or answers nothing) on asymmetricKeyDetails and JWK export of a keyless key', () => {
    const script = `
      const b = require(process.env.ADDON);
      b.init({ socketPath: '/nonexistent/keyserver.sock' });
      const key = require('node:crypto').createPrivateKey(process.env.PEM);
      console.log('created', key.asymmetricKeyType);
      const result = process.env.WHAT === 'jwk' ? key.export({ format: 'jwk' }) : key.asymmetricKeyDetails;
      console.log('survived', JSON.stringify(result ?? null, (_, v) => (typeof v === 'bigint' ? String(v) : v)));`;
    for (const kind of ['ec', 'rsa'] as const) {
      for (const what of ['details', 'jwk']) {
        const child = spawnSync(process.execPath, ['-e', script], {
          env: { ...process.env, ADDON, PEM: keys[kind].pem, WHAT: what },
          encoding: 'utf8',
          timeout: 20_000,
        });
        expect(child.stdout).toContain(`created ${kind}`);
        if (NODE_MAJOR >= 24 && child.signal === null) {
          // Node 24's key code (ncrypto: `if (!rsa) return false;` where Node
          // 20/22 CHECK) no longer aborts on a key without a legacy RSA or EC
          // structure: the details come from the provider's parameters (an
          // empty object in earlier 24.x for RSA) and a JWK export throws
          // "Failed to export JWK" (EC) or "… RSA private key" (undefined in
          // earlier 24.x).
          // (Node 22 has OpenSSL 3.5 too and still aborts: this is Node, not
          // OpenSSL.) The guard refuses them on every version all the same.
          if (what === 'jwk' && child.status !== 0) {
            expect(child.stderr).toMatch(/Failed to export (JWK|RSA private key)/);
            continue;
          }
          expect(child.status, child.stderr).toBe(0);
          expect(child.stdout).toMatch(/^survived (\{\}|null|\{"namedCurve":"prime256v1"\}|\{"modulusLength":2048,"publicExponent":"65537"\})$/m);
          continue;
        }
        expect(child.stdout).not.toContain('survived');
        expect(child.signal).toBe('SIGABRT');
        expect(child.stderr).toMatch(/Assertion failed/);
      }
    }
    // What does work on such a KeyObject: the public half.
    const publicKey = createPublicKey(keys.ec.pem);
    expect(
      createHash('sha256')
        .update(publicKey.export({ type: 'spki', format: 'der' }))
        .digest('hex'),
    ).toBe(keys.ec.id);
  });
});
