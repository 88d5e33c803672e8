/**
 * End to end through a real key server and the real SoftHSM2 token: every key
 * type with every algorithm it admits, over the unix socket and mutual TLS,
 * checked with node:crypto against the public key the server hands out.
 */
import { constants, createHash, createPublicKey, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { KeyserverConfig } from '../config/schema.js';
import { KeyserverClient } from '../keyserver/client/client.js';
import { RemoteError } from '../keyserver/shared/errors.js';
import { Algorithm, ALGORITHMS, type AlgorithmByte, type AlgorithmName, ErrorCode } from '../keyserver/protocol/constants.js';
import type { RunningKeyserver } from '../keyserver/server/daemon.js';
import { findSoftHsmModule } from '../keyserver/token/embedded.js';
import { KEY_TYPES, type KeyType } from '../keyserver/token/key-generate.js';
import { removeDir, runCli, sleep, tempDir } from './helpers/basics.js';
import {
  captureLog,
  connectUnix,
  digestOf,
  type LogCapture,
  metricValue,
  type ProvisionedKey,
  provisionKeys,
  startTestKeyserver,
  testConfig,
  verifies,
  writeConfigFile,
} from './helpers/keyserver.js';
import { createTestPki, type TestPkiFiles } from './helpers/pki.js';

const EC_ALGORITHMS = ALGORITHMS.filter((a) => a.scheme === 'ecdsa');
const RSA_ALGORITHMS = ALGORITHMS.filter((a) => a.scheme !== 'ecdsa');
const CASES = KEY_TYPES.flatMap((type) => (type.startsWith('ec') ? EC_ALGORITHMS : RSA_ALGORITHMS).map((a) => ({ type, algorithm: a.byte, name: a.name })));

let stateDir: string;
let config: KeyserverConfig;
let configFile: string;
let pki: TestPkiFiles;
let keys: Record<string, ProvisionedKey>;
let importedPem: string;
let logs: LogCapture;
let server: RunningKeyserver;
let unix: KeyserverClient;

beforeAll(async () => {
  stateDir = tempDir();
  pki = await createTestPki(stateDir, [{ commonName: 'edge-1' }]);
  const tcp = { host: '127.0.0.1', port: 0, cert: pki.server.cert, key: pki.server.key, clientCa: pki.caFile };
  const overrides = { listen: { tcp }, clients: [{ name: 'edge-1', match: { commonName: 'edge-1' }, keys: '*' }] };
  config = testConfig(stateDir, overrides);
  configFile = writeConfigFile(stateDir, overrides);
  importedPem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }) as string;
  expect(importedPem).toMatch(/^-----BEGIN RSA PRIVATE KEY-----/);
  keys = provisionKeys(config, [...KEY_TYPES.map((type) => ({ label: type, type })), { label: 'imported', pem: importedPem }]);
  logs = captureLog();
  server = await startTestKeyserver(config, logs);
  unix = await connectUnix(server);
});

afterAll(async () => {
  unix?.close();
  await server?.close();
  if (stateDir !== undefined) removeDir(stateDir);
});

/** The key id `keyedge key generate` printed. */
const keyIdOf = (stdout: string): string => /key id: ([0-9a-f]{64})/.exec(stdout)![1]!;

function tlsClient(): Promise<KeyserverClient> {
  const client = pki.clients['edge-1']!;
  return KeyserverClient.connect({
    tcp: { host: '127.0.0.1', port: server.tcpPort!, ca: pki.caFile, cert: client.cert, key: client.key, servername: 'localhost' },
    timeoutMs: 10_000,
  });
}

/** Signs a fresh message and checks the signature against the key the server returns. */
async function signAndVerify(client: KeyserverClient, key: ProvisionedKey, algorithm: AlgorithmByte): Promise<Buffer> {
  const spki = await client.getPublicKey(key.keyId);
  expect(createHash('sha256').update(spki).digest('hex')).toBe(key.keyId);
  const publicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  const message = randomBytes(100);
  const signature = await client.sign(key.keyId, algorithm, digestOf(algorithm, message));
  expect(verifies(algorithm, message, publicKey, signature)).toBe(true);
  // and not over some other message
  expect(verifies(algorithm, randomBytes(100), publicKey, signature)).toBe(false);
  return signature;
}

describe('every key type and algorithm over the unix socket', () => {
  it.each(CASES)('$type $name', async ({ type, algorithm }) => {
    const key = keys[type]!;
    const spki = await unix.getPublicKey(key.keyId);
    expect(spki.equals(key.spki)).toBe(true);
    const signature = await signAndVerify(unix, key, algorithm);
    if (key.kind === 'ec') {
      // DER ECDSA-Sig-Value, not PKCS#11's r || s
      expect(signature[0]).toBe(0x30);
      expect(signature[1]).toBe(signature.length - 2);
    } else {
      expect(signature.length).toBe(Number(type.slice('rsa-'.length)) / 8);
    }
  });

  it('PSS signatures are randomised and carry a salt as long as the hash', async () => {
    const key = keys['rsa-2048']!;
    const message = randomBytes(32);
    const digest = digestOf(Algorithm.RSA_PSS_SHA384, message);
    const [a, b] = await Promise.all([unix.sign(key.keyId, Algorithm.RSA_PSS_SHA384, digest), unix.sign(key.keyId, Algorithm.RSA_PSS_SHA384, digest)]);
    expect(a.equals(b)).toBe(false);
    expect(verifies(Algorithm.RSA_PSS_SHA384, message, key.publicKey, a)).toBe(true);
    // recover the salt length through verification: only 48 is accepted
    const pss = (saltLength: number) => verify('sha384', message, { key: key.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength }, a);
    expect(pss(48)).toBe(true);
    expect(pss(32)).toBe(false);
  });

  it('PKCS#1 v1.5 signatures are deterministic and wrap the digest in its DigestInfo', async () => {
    const key = keys['rsa-3072']!;
    const message = randomBytes(32);
    const digest = digestOf(Algorithm.RSA_PKCS1_SHA512, message);
    const a = await unix.sign(key.keyId, Algorithm.RSA_PKCS1_SHA512, digest);
    const b = await unix.sign(key.keyId, Algorithm.RSA_PKCS1_SHA512, digest);
    expect(a.equals(b)).toBe(true);
    expect(verifies(Algorithm.RSA_PKCS1_SHA512, message, key.publicKey, a)).toBe(true);
  });
});

describe('over mutual TLS', () => {
  const tlsCases: [KeyType, AlgorithmName][] = [
    ['ec-p256', 'ECDSA_SHA256'],
    ['ec-p384', 'ECDSA_SHA384'],
    ['rsa-2048', 'RSA_PSS_SHA256'],
    ['rsa-2048', 'RSA_PKCS1_SHA256'],
    ['rsa-4096', 'RSA_PSS_SHA512'],
  ];
  it.each(tlsCases)('%s %s', async (type, name) => {
    const algorithm = Algorithm[name];
    const client = await tlsClient();
    try {
      await signAndVerify(client, keys[type]!, algorithm);
    } finally {
      client.close();
    }
  });
});

describe('concurrency', () => {
  it('answers 200 pipelined signs on one connection, each matched to its own request', async () => {
    const plan = Array.from({ length: 200 }, (_, i) => {
      const key = i % 2 === 0 ? keys['ec-p256']! : keys['rsa-2048']!;
      const algorithm = key.kind === 'ec' ? Algorithm.ECDSA_SHA256 : i % 4 === 1 ? Algorithm.RSA_PSS_SHA256 : Algorithm.RSA_PKCS1_SHA256;
      return { key, algorithm, message: Buffer.from(`message ${i} ${randomBytes(8).toString('hex')}`) };
    });
    const pings = Array.from({ length: 20 }, (_, i) => Buffer.from(`ping ${i}`));
    const signs = plan.map((p) => unix.sign(p.key.keyId, p.algorithm, digestOf(p.algorithm, p.message)));
    const pongs = pings.map((payload) => unix.ping(payload));
    expect(unix.inFlight).toBe(220);
    const [signatures, echoed] = await Promise.all([Promise.all(signs), Promise.all(pongs)]);
    signatures.forEach((signature, i) => {
      const p = plan[i]!;
      expect(verifies(p.algorithm, p.message, p.key.publicKey, signature), `sign #${i}`).toBe(true);
      // a signature meant for a neighbouring request would not verify here
      const other = plan[(i + 2) % plan.length]!;
      expect(verifies(p.algorithm, other.message, p.key.publicKey, signature)).toBe(false);
    });
    echoed.forEach((payload, i) => void expect(payload.equals(pings[i]!)).toBe(true));
    expect(unix.inFlight).toBe(0);
  });

  it('serves several connections at once', async () => {
    const clients = await Promise.all([connectUnix(server), connectUnix(server), tlsClient(), tlsClient()]);
    try {
      const key = keys['ec-p384']!;
      const results = await Promise.all(
        clients.flatMap((client) =>
          Array.from({ length: 10 }, async () => {
            const message = randomBytes(20);
            return verifies(
              Algorithm.ECDSA_SHA512,
              message,
              key.publicKey,
              await client.sign(key.keyId, Algorithm.ECDSA_SHA512, digestOf(Algorithm.ECDSA_SHA512, message)),
            );
          }),
        ),
      );
      expect(results).toHaveLength(40);
      expect(results.every(Boolean)).toBe(true);
    } finally {
      for (const client of clients) client.close();
    }
  });
});

describe('keys from outside', () => {
  it('an imported PKCS#1 RSA key signs, and the token holds the same public key', async () => {
    const key = keys.imported!;
    const expected = createPublicKey(importedPem).export({ type: 'spki', format: 'der' });
    expect((await unix.getPublicKey(key.keyId)).equals(expected)).toBe(true);
    for (const algorithm of [Algorithm.RSA_PKCS1_SHA256, Algorithm.RSA_PSS_SHA256, Algorithm.RSA_PSS_SHA512]) {
      const message = randomBytes(50);
      const signature = await unix.sign(key.keyId, algorithm, digestOf(algorithm, message));
      // verified with the public half of the original PEM, not the server's answer
      expect(verifies(algorithm, message, createPublicKey(importedPem), signature)).toBe(true);
    }
  });

  it('a key generated by the CLI while the server runs is usable without a restart', async () => {
    const started = Date.now();
    const result = await runCli(['key', 'generate', '--config', configFile, '--type', 'ec-p256', '--label', 'added-live']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const keyId = /key id: ([0-9a-f]{64})/.exec(result.stdout)?.[1];
    expect(keyId).toBeDefined();
    // The store rescans on an unknown id at most once a second; nothing here calls rescanKeys().
    await sleep(Math.max(0, 1100 - (Date.now() - started)));
    const spki = await unix.getPublicKey(keyId!);
    expect(createHash('sha256').update(spki).digest('hex')).toBe(keyId);
    const message = randomBytes(64);
    const signature = await unix.sign(keyId!, Algorithm.ECDSA_SHA256, digestOf(Algorithm.ECDSA_SHA256, message));
    expect(verifies(Algorithm.ECDSA_SHA256, message, createPublicKey({ key: spki, format: 'der', type: 'spki' }), signature)).toBe(true);
    expect(logs.find(/token keys loaded/).some((line) => JSON.stringify(line).includes(keyId!))).toBe(true);
  });

  it('a key deleted while the server runs becomes UNKNOWN_KEY and the scan logs it gone; imported again, it signs again', async () => {
    // A deleted key stayed listed: every sign was SIGN_FAILED (CKR_OBJECT_HANDLE_INVALID, blamed on the token) and,
    // imported again under a new handle, it was never signed with until a restart, as only unknown ids made a scan.
    const key = keys.imported!;
    const signOnce = async (): Promise<unknown> => {
      const message = randomBytes(30);
      const signature = await unix.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, message)).catch((e: unknown) => e);
      return Buffer.isBuffer(signature) ? verifies(Algorithm.RSA_PSS_SHA256, message, key.publicKey, signature) : signature;
    };
    expect(await signOnce()).toBe(true);
    const deleted = await runCli(['key', 'delete', '--config', configFile, '--key', 'imported']);
    expect(deleted.code, deleted.stderr).toBe(0);
    // The token's handle fails once its session copy is looked at again (once a second); from then on the key is unknown.
    let answer: unknown;
    for (let i = 0; i < 40 && !(answer instanceof RemoteError && answer.wireCode === ErrorCode.UNKNOWN_KEY); i++) {
      answer = await signOnce();
      if (answer === true) await sleep(100);
    }
    expect((answer as RemoteError).wireCode).toBe(ErrorCode.UNKNOWN_KEY);
    expect(logs.find(/^token keys no longer found$/).some((line) => JSON.stringify(line).includes(key.keyId))).toBe(true);

    const pemFile = join(stateDir, 'imported-again.pem');
    writeFileSync(pemFile, importedPem, { mode: 0o600 });
    const imported = await runCli(['key', 'import', '--config', configFile, '--in', pemFile, '--label', 'imported']);
    expect(imported.code, imported.stderr).toBe(0);
    // An unknown id is looked for again at most once a second.
    await sleep(1_100);
    expect(await signOnce()).toBe(true);
  });

  it('a key id the token does not hold stays UNKNOWN_KEY, even after a rescan', async () => {
    server.rescanKeys();
    const missing = randomBytes(32);
    const err = await unix.sign(missing, Algorithm.ECDSA_SHA256, randomBytes(32)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect((err as RemoteError).wireCode).toBe(ErrorCode.UNKNOWN_KEY);
  });
});

describe('a token re-created while the server runs', () => {
  it('other processes logging in to the token while it is checked: not opened again for nothing', async () => {
    // Before: a check of the token (C_GetTokenInfo) that raced another process's login failed (SoftHSM2 reads its token
    // file as the login rewrites it), and the token was opened again for nothing: every sign refused meanwhile.
    const env = { ...process.env, SOFTHSM2_CONF: join(stateDir, 'token', 'softhsm2.conf') };
    const pin = readFileSync(join(stateDir, 'token', 'user.pin'), 'utf8').trim();
    const logins = `const p11 = require(${JSON.stringify(createRequire(import.meta.url).resolve('pkcs11js'))});
      const p = new p11.PKCS11(); p.load(${JSON.stringify(findSoftHsmModule())}); p.C_Initialize();
      const slot = p.C_GetSlotList(true)[0]; const end = Date.now() + 5000;
      while (Date.now() < end) { const s = p.C_OpenSession(slot, p11.CKF_SERIAL_SESSION); try { p.C_Login(s, p11.CKU_USER, process.env.PIN); p.C_Logout(s); } catch {} p.C_CloseSession(s); }`;
    const storms = [1, 2].map(() => spawn(process.execPath, ['-e', logins], { env: { ...env, PIN: pin }, stdio: 'ignore' }));
    const reopened = logs.find(/^the token is no longer the one opened/).length;
    await sleep(300);
    for (let i = 0; i < 4; i++) {
      server.rescanKeys();
      await sleep(1_100);
    }
    await Promise.all(storms.map((child) => new Promise((resolve) => (child.exitCode !== null ? resolve(null) : child.on('exit', resolve)))));
    expect(logs.find(/^the token is no longer the one opened/)).toHaveLength(reopened);
  });

  it('deleted and initialised again under the same label: the server opens it again and signs with its keys, connections kept', async () => {
    // Before: SoftHSM2 kept the old sessions valid but empty and showed the new token only to a module initialised
    // again, so every sign was UNKNOWN_KEY, a rescan (SIGHUP) included, until the key server was restarted.
    const env = { ...process.env, SOFTHSM2_CONF: join(stateDir, 'token', 'softhsm2.conf') };
    const tokenDir = join(stateDir, 'token');
    const [pin, soPin] = ['user.pin', 'so.pin'].map((file) => readFileSync(join(tokenDir, file), 'utf8').trim());
    const softhsm = (args: string[]): void => void execFileSync('softhsm2-util', args, { env, stdio: 'ignore' });
    softhsm(['--delete-token', '--token', 'keyedge']);
    softhsm(['--init-token', '--free', '--label', 'keyedge', '--pin', pin!, '--so-pin', soPin!]);
    const generated = await runCli(['key', 'generate', '--config', configFile, '--type', 'ec-p256', '--label', 'after-recreate']);
    expect(generated.code, generated.stderr).toBe(0);
    const keyId = keyIdOf(generated.stdout);
    let answer: unknown;
    const message = randomBytes(64);
    // A request for the new key finds it unknown and the old keys gone, which makes the server look at the token.
    for (let i = 0; i < 50 && !Buffer.isBuffer(answer); i++) {
      answer = await unix.sign(keyId, Algorithm.ECDSA_SHA256, digestOf(Algorithm.ECDSA_SHA256, message)).catch((e: unknown) => e);
      if (!Buffer.isBuffer(answer)) await sleep(200);
    }
    expect(Buffer.isBuffer(answer), String(answer)).toBe(true);
    const spki = await unix.getPublicKey(keyId);
    expect(verifies(Algorithm.ECDSA_SHA256, message, createPublicKey({ key: spki, format: 'der', type: 'spki' }), answer as Buffer)).toBe(true);
    // The new token's signing threads sign too (a burst goes past what the event loop signs itself).
    await vi.waitFor(async () => expect(await metricValue(server, 'keyedge_keyserver_sign_threads_up')).toBe(2), { timeout: 10_000, interval: 100 });
    const burst = await Promise.all(
      Array.from({ length: 100 }, async () => {
        const m = randomBytes(32);
        const signature = await unix.sign(keyId, Algorithm.ECDSA_SHA256, digestOf(Algorithm.ECDSA_SHA256, m));
        return verifies(Algorithm.ECDSA_SHA256, m, createPublicKey({ key: spki, format: 'der', type: 'spki' }), signature);
      }),
    );
    expect(burst.every(Boolean)).toBe(true);
    // The keys of the old token are gone with it.
    const old = await unix.sign(keys['ec-p256']!.keyId, Algorithm.ECDSA_SHA256, randomBytes(32)).catch((e: unknown) => e);
    expect((old as RemoteError).wireCode).toBe(ErrorCode.UNKNOWN_KEY);
    expect(logs.find(/^the token is no longer the one opened/)).toHaveLength(1);
    expect(logs.find(/^token opened again$/)).toHaveLength(1);

    // Again, and this time only a rescan (what SIGHUP does) looks: it finds the token replaced too.
    softhsm(['--delete-token', '--token', 'keyedge']);
    softhsm(['--init-token', '--free', '--label', 'keyedge', '--pin', pin!, '--so-pin', soPin!]);
    // One look at the token a second at most.
    await sleep(1_100);
    server.rescanKeys();
    for (let i = 0; i < 50 && logs.find(/^token opened again$/).length < 2; i++) await sleep(100);
    expect(logs.find(/^token opened again$/)).toHaveLength(2);
    const gone = await unix.sign(keyId, Algorithm.ECDSA_SHA256, randomBytes(32)).catch((e: unknown) => e);
    expect((gone as RemoteError).wireCode).toBe(ErrorCode.UNKNOWN_KEY);
  });

  it('deleted, then back with another PIN, then with its own: tried every second with no request, never logging a PIN, and serving again once it can', async () => {
    // Before: a failed attempt was tried again only on the next request, and a key server answering /healthz 503 may get
    // none (taken out of service), so it stayed unready for ever after the token came back; and a PIN the token refused
    // was tried on it every second, which locks the PIN of an HSM within seconds.
    const env = { ...process.env, SOFTHSM2_CONF: join(stateDir, 'token', 'softhsm2.conf') };
    const tokenDir = join(stateDir, 'token');
    const [pin, soPin] = ['user.pin', 'so.pin'].map((file) => readFileSync(join(tokenDir, file), 'utf8').trim());
    const otherPin = randomBytes(8).toString('hex');
    const softhsm = (args: string[]): void => void execFileSync('softhsm2-util', args, { env, stdio: 'ignore' });
    const healthz = async (): Promise<number> => (await fetch(`http://127.0.0.1:${server.adminPort}/healthz`)).status;
    const reopens = (result: string): Promise<number> => metricValue(server, 'keyedge_keyserver_token_reopens_total', { result });
    const [failedBefore, openedBefore] = [await reopens('failed'), await reopens('opened')];
    // A key in the token to lose (an earlier case may have left it empty), found by a rescan.
    const generated = await runCli(['key', 'generate', '--config', configFile, '--type', 'ec-p256', '--label', 'before-delete']);
    expect(generated.code, generated.stderr).toBe(0);
    server.rescanKeys();
    expect(await metricValue(server, 'keyedge_keyserver_keys')).toBeGreaterThan(0);
    // The token's sessions lost (as a network HSM's are when its link drops: here closed through the module, which the key
    // server shares in this process), and the token gone: the next sign is refused for the lost session and starts a
    // reopen at once, with no key scan before it.
    const module = new pkcs11js.PKCS11();
    module.load(findSoftHsmModule());
    try {
      module.C_Initialize();
    } catch (err) {
      if (!/CKR_CRYPTOKI_ALREADY_INITIALIZED/.test((err as Error).message)) throw err;
    }
    const slot = module.C_GetSlotList(true).find((s) => module.C_GetTokenInfo(s).label.trim() === 'keyedge')!;
    module.C_CloseAllSessions(slot);
    softhsm(['--delete-token', '--token', 'keyedge']);
    // One look at the token a second at most.
    await sleep(1_100);
    const lost = await unix.sign(keyIdOf(generated.stdout), Algorithm.ECDSA_SHA256, randomBytes(32)).catch((e: unknown) => e);
    expect(String(lost)).toMatch(/SIGN_FAILED.*CKR_SESSION_HANDLE_INVALID/);
    await vi.waitFor(async () => expect(await reopens('failed')).toBeGreaterThan(failedBefore), { timeout: 15_000, interval: 100 });
    expect(await healthz()).toBe(503);
    // No key can sign while the token is not open: the gauge says so. Before: it kept the last scan's count.
    expect(await metricValue(server, 'keyedge_keyserver_keys')).toBe(0);
    softhsm(['--init-token', '--free', '--label', 'keyedge', '--pin', otherPin, '--so-pin', soPin!]);
    // No request from here on: the attempts go on by themselves; this PIN is refused, once.
    const failedThen = await reopens('failed');
    await vi.waitFor(async () => expect(await reopens('failed')).toBeGreaterThan(failedThen + 1), { timeout: 15_000, interval: 100 });
    expect(await healthz()).toBe(503);
    const failures = (): string[] => logs.find(/^the token cannot be opened/).map((line) => String((line.err as { message?: string }).message));
    const loginRefused = (): string[] => failures().filter((reason) => reason.startsWith("login to token 'keyedge' refused: CKR_PIN_INCORRECT"));
    // Once refused, that PIN is not tried on that token again (an HSM locks a PIN after a few wrong logins)...
    await vi.waitFor(() => expect(failures().at(-1)).toMatch(/^not logging in to token 'keyedge' again with the PIN it refused \(CKR_PIN_INCORRECT\)/), {
      timeout: 15_000,
      interval: 100,
    });
    expect(loginRefused()).toHaveLength(1);
    // ...unless the operator asks (SIGHUP): one login again.
    server.rescanKeys();
    await vi.waitFor(() => expect(loginRefused()).toHaveLength(2), { timeout: 15_000, interval: 100 });
    // Initialised again with the PIN configured: another token (serial), so the PIN is tried on it.
    softhsm(['--delete-token', '--token', 'keyedge']);
    softhsm(['--init-token', '--free', '--label', 'keyedge', '--pin', pin!, '--so-pin', soPin!]);
    await vi.waitFor(async () => expect(await healthz()).toBe(200), { timeout: 15_000, interval: 100 });
    expect(await reopens('opened')).toBe(openedBefore + 1);
    // The connection kept through it all still answers.
    expect((await unix.ping(Buffer.from('still here'))).toString()).toBe('still here');
    // Each reason logged once (a minute at most) as it comes, with where the PIN comes from; PINs never.
    expect(failures()[0]).toMatch(/^no token with label 'keyedge'/);
    expect(loginRefused()[0]).toMatch(/\(the PIN comes from /);
    expect(logs.text()).not.toContain(pin!);
    expect(logs.text()).not.toContain(otherPin);
  }, 90_000);
});
