/**
 * A token that gives back wrong RSA signatures: the key server sends none of them.
 *
 * The fault is real, not mocked: SoftHSM2 holds an RSA private key object whose private exponent has one bit flipped
 * (as a stored key corrupted in an HSM would be) and no CRT values, so the token signs with the wrong exponent and
 * returns bytes that do not verify with the key's public key (its modulus and public exponent, which are right).
 * Signs are pipelined past the event loop's inline budget (sign-workers.ts), so both the inline path and the signing
 * threads give back such signatures. `keyedge key csr` (a child process, beside the running key server) signs with
 * the same token.
 *
 * Before the check (sign-verify.ts), every one of them was sent to the client as a SIGNATURE: a wrong RSA-CRT
 * signature so sent gives the key away to whoever sees it (sign-verify.ts).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { KeyserverClient } from '../keyserver/client/client.js';
import { Algorithm, type AlgorithmByte } from '../keyserver/protocol/constants.js';
import type { RunningKeyserver } from '../keyserver/server/daemon.js';
import { keyIdOf } from '../keyserver/shared/key-id.js';
import { removeDir, runCli, tempDir } from './helpers/basics.js';
import {
  captureLog,
  connectUnix,
  digestOf,
  type LogCapture,
  metricValue,
  type ProvisionedKey,
  provisionKeys,
  readUserPin,
  startTestKeyserver,
  testConfig,
  verifies,
  writeConfigFile,
} from './helpers/keyserver.js';

/** Signs pipelined on one connection: well past the event loop's inline budget (a dozen RSA-2048 signs at most). */
const PIPELINED = 64;
const BURST = 3;

let stateDir: string;
let keys: Record<string, ProvisionedKey>;
let faultyKeyId: string;
let server: RunningKeyserver;
let logs: LogCapture;
let client: KeyserverClient;

const b64 = (value: bigint): Buffer => {
  const hex = value.toString(16);
  return Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, 'hex');
};

beforeAll(async () => {
  stateDir = tempDir();
  const config = testConfig(stateDir, { log: { rateLimitBurst: BURST, rateLimitIntervalSeconds: 3_600 } });
  keys = provisionKeys(
    config,
    [
      { label: 'rsa', type: 'rsa-2048' },
      { label: 'ec', type: 'ec-p256' },
    ],
    (token) => {
      const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      const jwk = privateKey.export({ format: 'jwk' });
      const n = Buffer.from(jwk.n!, 'base64url');
      const e = Buffer.from(jwk.e!, 'base64url');
      // One bit of the private exponent flipped: the key as a corrupted store would hold it.
      const d = BigInt(`0x${Buffer.from(jwk.d!, 'base64url').toString('hex')}`) ^ (1n << 100n);
      faultyKeyId = keyIdOf(publicKey.export({ type: 'spki', format: 'der' }));
      token.pkcs11.C_CreateObject(token.management, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_LABEL, value: 'faulty' },
        { type: pkcs11js.CKA_ID, value: Buffer.from(faultyKeyId, 'hex') },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_SIGN, value: true },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
        { type: pkcs11js.CKA_MODULUS, value: n },
        { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: e },
        { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: b64(d) },
      ]);
    },
  );
  logs = captureLog();
  server = await startTestKeyserver(config, logs);
  client = await connectUnix(server);
}, 60_000);

afterAll(async () => {
  client?.close();
  await server?.close();
  if (stateDir !== undefined) removeDir(stateDir);
});

/** `count` signs of random messages with `keyId`, pipelined on `client`, settled. */
function pipelined(keyId: string, algorithm: AlgorithmByte, count: number): Promise<{ message: Buffer; answer: PromiseSettledResult<Buffer> }[]> {
  const messages = Array.from({ length: count }, () => randomBytes(40));
  return Promise.all(
    messages.map(async (message) => ({
      message,
      answer: await Promise.allSettled([client.sign(keyId, algorithm, digestOf(algorithm, message))]).then(([settled]) => settled!),
    })),
  );
}

it('a token that gives back RSA signatures that do not verify, inline or on a thread: none is sent, each sign is answered SIGN_FAILED', async () => {
  for (const algorithm of [Algorithm.RSA_PSS_SHA256, Algorithm.RSA_PKCS1_SHA384]) {
    const results = await pipelined(faultyKeyId, algorithm, PIPELINED);
    const sent = results.filter(({ answer }) => answer.status === 'fulfilled').length;
    expect(sent, `signatures sent for algorithm 0x${algorithm.toString(16)}`).toBe(0);
    for (const { answer } of results) {
      expect(String((answer as PromiseRejectedResult).reason)).toMatch(/SIGN_FAILED.*did not verify; not sent/);
    }
  }
  expect(await metricValue(server, 'keyedge_keyserver_signatures_refused_total', { algorithm: 'RSA_PSS_SHA256' })).toBe(PIPELINED);
  expect(await metricValue(server, 'keyedge_keyserver_signatures_refused_total', { algorithm: 'RSA_PKCS1_SHA384' })).toBe(PIPELINED);
  expect(await metricValue(server, 'keyedge_keyserver_signatures_refused_total', { algorithm: 'RSA_PSS_SHA512' })).toBe(0);
  expect(await metricValue(server, 'keyedge_keyserver_requests_total', { op: 'sign', algorithm: 'RSA_PSS_SHA256', result: 'SIGN_FAILED' })).toBe(PIPELINED);

  // Logged at error level, per key and within the limiter's burst: 128 refusals made BURST lines, not 128.
  const lines = logs.find(/^the token gave back a signature that does not verify/);
  expect(lines.length).toBe(BURST);
  expect(lines[0]).toMatchObject({ level: 50, keyId: faultyKeyId, algorithm: 'RSA_PSS_SHA256', reason: expect.stringMatching(/\(mismatch\)/) });
  // Nothing else logged the refusals on their own (the generic refusal line is not written twice).
  expect(logs.find(/did not verify; not sent/).length).toBe(0);
  expect(logs.text()).not.toContain(readUserPin(stateDir));
});

it('the same key server signs with its sound keys, RSA (both paths) and ECDSA, and each signature verifies', async () => {
  for (const [key, algorithm] of [
    [keys.rsa!, Algorithm.RSA_PSS_SHA256],
    [keys.rsa!, Algorithm.RSA_PKCS1_SHA256],
    [keys.rsa!, Algorithm.RSA_PSS_SHA512],
    [keys.ec!, Algorithm.ECDSA_SHA256],
  ] as const) {
    const results = await pipelined(key.keyId, algorithm, PIPELINED);
    for (const [i, { message, answer }] of results.entries()) {
      expect(answer.status, `sign #${i}, algorithm 0x${algorithm.toString(16)}`).toBe('fulfilled');
      expect(verifies(algorithm, message, key.publicKey, (answer as PromiseFulfilledResult<Buffer>).value)).toBe(true);
    }
  }
  expect(await metricValue(server, 'keyedge_keyserver_signatures_refused_total', { algorithm: 'RSA_PSS_SHA512' })).toBe(0);
});

it('keyedge key csr with that key: refused KEYEDGE_ERR_TOKEN_SIGNATURE, no CSR written (a CA sees its signature too)', async () => {
  const out = join(stateDir, 'faulty.csr');
  const configFile = writeConfigFile(stateDir);
  const result = await runCli(['key', 'csr', '--config', configFile, '--key', 'faulty', '--domain', 'shop.example', '--out', out]);
  expect(result.code, result.stderr).not.toBe(0);
  expect(result.stderr).toMatch(/KEYEDGE_ERR_TOKEN_SIGNATURE.*does not verify with the key's public key \(mismatch\); not sent/);
  expect(existsSync(out)).toBe(false);
  // The sound RSA key still makes one.
  const good = await runCli(['key', 'csr', '--config', configFile, '--key', 'rsa', '--domain', 'shop.example', '--out', join(stateDir, 'rsa.csr')]);
  expect(good.code, good.stderr).toBe(0);
});
