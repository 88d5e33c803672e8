/**
 * Start-up fails loudly and precisely (a KeyedgeError whose code and message
 * name the problem, with everything opened so far released), and shutdown is
 * graceful: signs in flight finish, new requests are refused.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { KeyedgeError } from '../keyserver/shared/errors.js';
import { Algorithm, ErrorCode } from '../keyserver/protocol/constants.js';
import type { RunningKeyserver } from '../keyserver/server/daemon.js';
import { findSoftHsmModule } from '../keyserver/token/embedded.js';
import { removeDir, runCli, tempDir } from './helpers/basics.js';
import {
  captureLog,
  connectUnix,
  digestOf,
  type ProvisionedKey,
  provisionKeys,
  readUserPin,
  startTestKeyserver,
  testConfig,
  verifies,
  writeConfigFile,
} from './helpers/keyserver.js';
import { createTestPki, type TestPkiFiles } from './helpers/pki.js';

let dir: string;
let pin: string;
let pki: TestPkiFiles;
let keys: Record<string, ProvisionedKey>;
let softhsm: string;

beforeAll(async () => {
  dir = tempDir();
  pki = await createTestPki(dir, []);
  // Also points SOFTHSM2_CONF at this directory's token, which the explicit-module cases below rely on.
  keys = provisionKeys(testConfig(dir), [
    { label: 'ec', type: 'ec-p256' },
    { label: 'rsa', type: 'rsa-2048' },
  ]);
  pin = readUserPin(dir);
  softhsm = findSoftHsmModule();
});
afterAll(() => removeDir(dir));

function pinFile(name: string, content: string): string {
  const file = join(dir, name);
  writeFileSync(file, `${content}\n`, { mode: 0o600 });
  return file;
}

/** Starts with these overrides, expecting failure; returns the error after checking it is a KeyedgeError with `code`. */
async function startFails(overrides: unknown, code: string): Promise<KeyedgeError> {
  const logs = captureLog();
  const err: unknown = await startTestKeyserver(testConfig(dir, overrides), logs).then(
    async (server) => {
      await server.close();
      return new Error('the key server started');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(KeyedgeError);
  expect((err as KeyedgeError).code).toBe(code);
  expect(String((err as Error).message)).not.toContain(pin);
  expect(logs.text()).not.toContain(pin);
  return err as KeyedgeError;
}

function tcpListen(port: number) {
  return { host: '127.0.0.1', port, cert: pki.server.cert, key: pki.server.key, clientCa: pki.caFile };
}
const CLIENTS = [{ name: 'edge', match: { commonName: 'edge' }, keys: '*' }];

function listening(server: net.Server, start: (server: net.Server) => void): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => resolve(server));
    start(server);
  });
}

async function expectServing(server: RunningKeyserver): Promise<void> {
  const client = await connectUnix(server);
  try {
    const message = randomBytes(16);
    const signature = await client.sign(keys.ec!.keyId, Algorithm.ECDSA_SHA256, digestOf(Algorithm.ECDSA_SHA256, message));
    expect(verifies(Algorithm.ECDSA_SHA256, message, keys.ec!.publicKey, signature)).toBe(true);
  } finally {
    client.close();
  }
}

describe('start-up errors', () => {
  it('a PKCS#11 module path that does not exist: KEYEDGE_ERR_TOKEN_MODULE naming the path', async () => {
    const module = join(dir, 'no-such-dir', 'libpkcs11-missing.so');
    const err = await startFails({ pkcs11: { module, pin: { file: pinFile('good.pin', pin) } } }, 'KEYEDGE_ERR_TOKEN_MODULE');
    expect(err.message).toContain(`cannot load PKCS#11 module ${module}`);
    expect(err.message).toContain('pkcs11.module');
  });

  it('a module file that is not a shared library: KEYEDGE_ERR_TOKEN_MODULE', async () => {
    const module = pinFile('not-a-module.so', 'this is text, not ELF');
    const err = await startFails({ pkcs11: { module, pin: { file: pinFile('good.pin', pin) } } }, 'KEYEDGE_ERR_TOKEN_MODULE');
    expect(err.message).toContain(module);
  });

  it('a token label that is not present: KEYEDGE_ERR_TOKEN_NOT_FOUND naming it and the tokens there are', async () => {
    const err = await startFails(
      { pkcs11: { module: softhsm, token: { label: 'no-such-token' }, pin: { file: pinFile('good.pin', pin) } } },
      'KEYEDGE_ERR_TOKEN_NOT_FOUND',
    );
    expect(err.message).toMatch(/no token with label 'no-such-token'/);
    expect(err.message).toMatch(/tokens present: 'keyedge'/);
  });

  it('a wrong PIN: KEYEDGE_ERR_TOKEN_LOGIN naming where the PIN came from, never the PIN', async () => {
    const wrong = `wrong${randomBytes(8).toString('hex')}`;
    const file = pinFile('wrong.pin', wrong);
    const err = await startFails({ pkcs11: { module: softhsm, token: { label: 'keyedge' }, pin: { file } } }, 'KEYEDGE_ERR_TOKEN_LOGIN');
    expect(err.message).toMatch(/login to token 'keyedge' refused: CKR_PIN_INCORRECT/);
    expect(err.message).toContain(`file ${file}`);
    expect(err.message).not.toContain(wrong);
  });

  it('the PIN variable unset or empty: KEYEDGE_ERR_TOKEN_PIN naming the variable', async () => {
    const name = 'KEYEDGE_TEST_PIN_NOT_SET';
    delete process.env[name];
    const err = await startFails({ pkcs11: { module: softhsm, pin: { env: name } } }, 'KEYEDGE_ERR_TOKEN_PIN');
    expect(err.message).toContain(`the PIN variable ${name} is not set`);
    process.env[name] = '';
    try {
      expect((await startFails({ pkcs11: { module: softhsm, pin: { env: name } } }, 'KEYEDGE_ERR_TOKEN_PIN')).message).toContain(name);
    } finally {
      delete process.env[name];
    }
  });

  it('a TCP port already in use: KEYEDGE_ERR_SETUP naming the address; the token is released', async () => {
    const blocker = await listening(net.createServer(), (s) => s.listen(0, '127.0.0.1'));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      // listen.unix is off here: see the known-bug test below
      const err = await startFails({ listen: { unix: null, tcp: tcpListen(port) }, clients: CLIENTS }, 'KEYEDGE_ERR_SETUP');
      expect(err.message).toBe(`cannot listen on tcp 127.0.0.1:${port}: EADDRINUSE`);
    } finally {
      blocker.close();
    }
    // the failed attempt finalised the module: the same process can start a key server now
    const server = await startTestKeyserver(testConfig(dir, { listen: { tcp: tcpListen(0) }, clients: CLIENTS }), captureLog());
    try {
      expect(server.tcpPort).toBeGreaterThan(0);
      await expectServing(server);
    } finally {
      await server.close();
    }
  });

  // KNOWN BUG (keyserver/server/daemon.ts): listeners are only added to the closers once all of them
  // listen, so a TCP failure leaves the unix listener open. Remove `.fails` once fixed.
  it('a TCP port already in use also releases the unix socket', async () => {
    const blocker = await listening(net.createServer(), (s) => s.listen(0, '127.0.0.1'));
    const port = (blocker.address() as net.AddressInfo).port;
    const path = join(dir, 'leak.sock');
    try {
      await startFails({ listen: { unix: { path }, tcp: tcpListen(port) }, clients: CLIENTS }, 'KEYEDGE_ERR_SETUP');
    } finally {
      blocker.close();
    }
    const connected = await new Promise<boolean>((resolve) => {
      const probe = net.connect(path, () => resolve(true)).on('error', () => resolve(false));
      probe.on('connect', () => probe.destroy());
    });
    expect(connected).toBe(false);
  });

  it('a unix socket path held by a live server: KEYEDGE_ERR_SETUP, and the socket is not taken over', async () => {
    const path = join(dir, 'held.sock');
    const holder = await listening(
      // the key server's liveness probe connects and hangs up at once: ignore its reset
      net.createServer((socket) => socket.on('error', () => undefined).end('holder\n')),
      (s) => s.listen(path),
    );
    try {
      const err = await startFails({ listen: { unix: { path } } }, 'KEYEDGE_ERR_SETUP');
      expect(err.message).toBe(`another process is already listening on ${path}`);
      const greeting = await new Promise<string>((resolve, reject) => {
        const socket = net.connect(path);
        let text = '';
        socket.on('data', (chunk) => (text += chunk.toString()));
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
      });
      expect(greeting).toBe('holder\n');
    } finally {
      holder.close();
    }
  });

  it('a regular file at the socket path: KEYEDGE_ERR_SETUP, and the file is left alone', async () => {
    const path = pinFile('not-a-socket', 'precious');
    const err = await startFails({ listen: { unix: { path } } }, 'KEYEDGE_ERR_SETUP');
    expect(err.message).toBe(`${path} exists and is not a socket; refusing to replace it`);
    expect(lstatSync(path).isFile()).toBe(true);
  });
});

describe('running and stopping', () => {
  it('the unix socket has mode 0600 from the moment it is bound, whatever the umask', async () => {
    // Bound with the umask's mode, then chmodded: under umask 0 it was 0777 meanwhile, and a connection made then (any
    // user, where the directory lets them through) stayed open after the chmod. Seen as listen() returns (bind is
    // synchronous for a path).
    const original = net.Server.prototype.listen;
    const modes: number[] = [];
    const spy = vi.spyOn(net.Server.prototype, 'listen').mockImplementation(function (this: net.Server, ...args: unknown[]) {
      const result = original.apply(this, args as Parameters<typeof original>);
      const path = args[0];
      if (typeof path === 'string' && existsSync(path)) modes.push(lstatSync(path).mode & 0o777);
      return result;
    });
    const umask = process.umask(0);
    try {
      const server = await startTestKeyserver(testConfig(dir), captureLog());
      await server.close();
    } finally {
      process.umask(umask);
      spy.mockRestore();
    }
    expect(modes).toEqual([0o600]);
  });

  it('the unix socket is created with mode 0600', async () => {
    const server = await startTestKeyserver(testConfig(dir), captureLog());
    try {
      const stat = lstatSync(server.unixPath!);
      expect(stat.isSocket()).toBe(true);
      expect(stat.mode & 0o777).toBe(0o600);
      expect(statSync(dir).mode & 0o077).toBe(0);
      await expectServing(server);
    } finally {
      await server.close();
    }
  });

  it('a PIN file open to others is warned about (server and `keyedge key`), naming the file and mode, never the PIN', async () => {
    // Read silently before: a PIN every local user could read went unremarked.
    const loose = pinFile('loose.pin', pin);
    chmodSync(loose, 0o644);
    const logs = captureLog();
    const server = await startTestKeyserver(testConfig(dir, { pkcs11: { pin: { file: loose } } }), logs);
    try {
      await expectServing(server);
    } finally {
      await server.close();
    }
    expect(logs.find(/^the PIN file .*loose\.pin is open to its group or others \(mode 0644\): chmod 600 it/)).toHaveLength(1);
    const cli = await runCli(['key', 'list', '--config', writeConfigFile(dir, { pkcs11: { pin: { file: loose } } })]);
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stderr).toMatch(/^keyedge warning: the PIN file .*loose\.pin is open to its group or others \(mode 0644\)/);
    expect(`${logs.text()}${cli.stdout}${cli.stderr}`).not.toContain(pin);
    // Owner only: nothing to say.
    const tight = captureLog();
    await (await startTestKeyserver(testConfig(dir, { pkcs11: { pin: { file: pinFile('tight.pin', pin) } } }), tight)).close();
    expect(tight.find(/PIN file/)).toEqual([]);
  });

  /** Starts a server, puts `count` RSA signs in flight on one connection and begins close(). */
  async function closeWhileSigning(count: number) {
    const logs = captureLog();
    const server = await startTestKeyserver(testConfig(dir), logs);
    const client = await connectUnix(server);
    const key = keys.rsa!;
    const messages = Array.from({ length: count }, () => randomBytes(16));
    const inFlight = messages.map((m) => client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, m)));
    let allSettled = false;
    const settled = Promise.allSettled(inFlight).finally(() => void (allSettled = true));
    const gauge = async () => (await server.metrics.inFlight.get()).values[0]?.value ?? 0;
    // Until a sign is seen running, or none is left to see: a loaded machine may answer them all between two looks.
    while ((await gauge()) === 0 && !allSettled) await new Promise((resolve) => setImmediate(resolve));
    const runningAtClose = await gauge();
    const closing = server.close();
    return { server, client, key, messages, settled, closing, runningAtClose, logs };
  }

  it('close() refuses new requests (SHUTTING_DOWN or closed), stops accepting, and finishes', async () => {
    const { server, client, key, messages, settled, closing, runningAtClose, logs } = await closeWhileSigning(40);
    expect(runningAtClose).toBeGreaterThan(1);
    const late = await client.request({ op: 'sign', keyId: Buffer.from(key.keyId, 'hex'), algorithm: Algorithm.RSA_PSS_SHA256, digest: randomBytes(32) }).then(
      (response) => response,
      (err: KeyedgeError) => err.code,
    );
    if (typeof late === 'string') expect(late).toBe('KEYEDGE_ERR_CLOSED');
    else expect(late).toMatchObject({ op: 'error', code: ErrorCode.SHUTTING_DOWN });
    await expect(KeyserverClient.connect({ unixPath: server.unixPath! })).rejects.toMatchObject({ code: 'KEYEDGE_ERR_CLOSED' });
    await closing;
    const results = await settled;
    // Every answer that did arrive is a valid signature (see the next test for the ones that do not).
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') expect(verifies(Algorithm.RSA_PSS_SHA256, messages[i]!, key.publicKey, r.value)).toBe(true);
      else expect(r.reason).toMatchObject({ code: 'KEYEDGE_ERR_CLOSED' });
    });
    expect(results.filter((r) => r.status === 'fulfilled').length).toBeGreaterThanOrEqual(40 - runningAtClose);
    expect(logs.find(/^key server shutting down$/)[0]).toMatchObject({ inFlight: runningAtClose });
    expect(logs.find(/^key server stopped$/)).toHaveLength(1);
    await expect(client.ping()).rejects.toMatchObject({ code: 'KEYEDGE_ERR_CLOSED' });
  });

  it('an admin connection left in the middle of its request (a stalled scraper) does not hold close()', async () => {
    // Before: close() waited for the admin listener's connections, a request never finished for Node's headersTimeout (a minute).
    const server = await startTestKeyserver(testConfig(dir, { limits: { shutdownGraceMs: 200 } }), captureLog());
    const stalled = net.connect(server.adminPort!, '127.0.0.1');
    stalled.on('error', () => {});
    await new Promise((resolve) => stalled.once('connect', resolve));
    stalled.write('GET /metrics HTTP/1.1\r\nHost: keyserver\r\n');
    await new Promise((resolve) => setTimeout(resolve, 100));
    try {
      const closed = await Promise.race([server.close().then(() => true), new Promise((resolve) => setTimeout(resolve, 8_000, false))]);
      expect(closed, 'close() still waiting 8 s later').toBe(true);
    } finally {
      stalled.destroy();
    }
  });

  // KNOWN BUG (keyserver/server/daemon.ts close() + connection.ts #send): the last answers are written
  // to a corked socket, and close() destroys it before the nextTick uncork. Remove `.fails` once fixed.
  it('every sign in flight when close() begins is answered', async () => {
    const { key, messages, settled, closing } = await closeWhileSigning(20);
    await closing;
    const signatures = await Promise.all(await settled.then((rs) => rs.map((r) => (r.status === 'fulfilled' ? r.value : Promise.reject(r.reason)))));
    signatures.forEach((s, i) => void expect(verifies(Algorithm.RSA_PSS_SHA256, messages[i]!, key.publicKey, s)).toBe(true));
  });
});
