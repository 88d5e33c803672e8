/**
 * The key server process keeps signing through its signing threads' failures
 * and a failing token scan on SIGHUP: `keyedge keyserver` run as it is
 * deployed, with faults injected by a module preloaded into every thread
 * (NODE_OPTIONS=--require), driven by files in a control directory:
 * `thread-start` makes a signing thread's load of pkcs11js fail with EMFILE
 * (as under a file limit), `thread-crash` ends a thread in the middle of its
 * batch, `scan` makes the main thread's token scan (C_FindObjectsInit) fail,
 * `thread-hang` makes a thread's C_Sign block for good (an open(2) of a FIFO
 * no one writes to: a call stuck in native code, as in an HSM that stopped
 * answering, which no worker.terminate() interrupts), `inline-hang` the same
 * for the main thread's C_Sign (a sign made on the event loop), `scan-hang`
 * for its C_FindObjectsInit (a key scan), `login-hang` for its C_Login,
 * `info-fail` makes its C_GetTokenInfo fail (the token check of a token
 * re-created), `thread-init-hang` holds a signing thread's C_Initialize (its
 * start), `thread-init-slow` makes it SLOW_START_MS long, `sign-empty` makes every C_Sign give back an empty
 * signature (a broken token), `sign-flip` flips one bit in the middle of every signature C_Sign gives back (a
 * faulty token or HSM, as a wrong RSA-CRT half would). The last cases start key servers of their own, since a hang
 * on the event loop, or one that holds a reopen, ends the process.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, existsSync, mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { Algorithm } from '../keyserver/protocol/constants.js';
import { CLI, removeDir, tempDir } from './helpers/basics.js';
import { digestOf, metricValue, type ProvisionedKey, provisionKeys, readUserPin, testConfig, verifies, writeConfigFile } from './helpers/keyserver.js';
import { waitFor } from './helpers/proxy-cluster.js';

/** How long `thread-init-slow` holds a signing thread's C_Initialize: past the signs' bound (1 s at a 500 ms deadline), short of a start's. */
const SLOW_START_MS = 3_000;

const INJECT = `
const { existsSync } = require('node:fs');
const { join } = require('node:path');
const Module = require('node:module');
const { isMainThread } = require('node:worker_threads');
const dir = process.env.KS_FAULTS;
const PKCS11JS = /pkcs11js[\\\\/]index\\.js$/;
const load = Module._load;
Module._load = function (request, ...rest) {
  if (!PKCS11JS.test(request)) return load.call(this, request, ...rest);
  if (!isMainThread && existsSync(join(dir, 'thread-start'))) {
    throw Object.assign(new Error("EMFILE: too many open files, open '" + request + "'"), { code: 'EMFILE' });
  }
  const pkcs11js = load.call(this, request, ...rest);
  const proto = pkcs11js.PKCS11.prototype;
  if (isMainThread && !proto.injected) {
    const find = proto.C_FindObjectsInit;
    proto.C_FindObjectsInit = function (...args) {
      if (existsSync(join(dir, 'scan'))) throw new Error('CKR_DEVICE_ERROR (injected)');
      if (existsSync(join(dir, 'scan-hang'))) require('node:fs').openSync(join(dir, 'hang-fifo'), 'r');
      return find.apply(this, args);
    };
    const info = proto.C_GetTokenInfo;
    proto.C_GetTokenInfo = function (...args) {
      if (existsSync(join(dir, 'info-fail'))) throw new Error('CKR_GENERAL_ERROR (injected)');
      return info.apply(this, args);
    };
    const login = proto.C_Login;
    proto.C_Login = function (...args) {
      if (existsSync(join(dir, 'login-hang'))) require('node:fs').openSync(join(dir, 'hang-fifo'), 'r');
      return login.apply(this, args);
    };
    const sign = proto.C_Sign;
    proto.C_Sign = function (...args) {
      if (existsSync(join(dir, 'inline-hang'))) require('node:fs').openSync(join(dir, 'hang-fifo'), 'r');
      // The native C_Sign gives the signature's length; pkcs11js's wrapper cuts its output buffer to it.
      const length = sign.apply(this, args);
      if (existsSync(join(dir, 'sign-flip'))) args[2][length >> 1] ^= 0x01;
      return existsSync(join(dir, 'sign-empty')) ? 0 : length;
    };
  } else if (!proto.injected) {
    const initialize = proto.C_Initialize;
    proto.C_Initialize = function (...args) {
      if (existsSync(join(dir, 'thread-init-hang'))) require('node:fs').openSync(join(dir, 'hang-fifo'), 'r');
      if (existsSync(join(dir, 'thread-init-slow'))) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ${SLOW_START_MS});
      return initialize.apply(this, args);
    };
    const sign = proto.C_Sign;
    proto.C_Sign = function (...args) {
      if (existsSync(join(dir, 'thread-crash'))) process.exit(7);
      if (existsSync(join(dir, 'thread-hang'))) require('node:fs').openSync(join(dir, 'hang-fifo'), 'r');
      // The native C_Sign gives the signature's length; pkcs11js's wrapper cuts its output buffer to it.
      const length = sign.apply(this, args);
      if (existsSync(join(dir, 'sign-flip'))) args[2][length >> 1] ^= 0x01;
      return existsSync(join(dir, 'sign-empty')) ? 0 : length;
    };
  }
  proto.injected = true;
  return pkcs11js;
};
`;

let dir: string;
let control: string;
let key: ProvisionedKey;
let child: ChildProcess;
/** The limits `child` was started with. */
let childLimits = '';
let output = '';
let client: KeyserverClient;
let adminPort: number;

/** `keyedge_keyserver_sign_threads_up` from the admin listener. */
const threadsUp = (): Promise<number> => metricValue({ adminPort }, 'keyedge_keyserver_sign_threads_up');

/** Kept short for the case that stops the key server with a sign hung in the token. */
const SHUTDOWN_GRACE_MS = 1_000;

/** The child's log lines with this message; throws once the key server has exited. */
function logLines(msg: RegExp): Record<string, unknown>[] {
  if (child.exitCode !== null || child.signalCode !== null)
    throw new Error(`the key server exited (${child.exitCode ?? child.signalCode}):\n${output.slice(-1500)}`);
  return loggedLines(msg);
}

/** The child's log lines with this message, exited or not. */
function loggedLines(msg: RegExp): Record<string, unknown>[] {
  return output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => typeof line.msg === 'string' && msg.test(line.msg));
}

const fault = (name: string, on: boolean): void => {
  if (on) writeFileSync(join(control, name), '');
  else rmSync(join(control, name), { force: true });
};

/** 200 RSA signs (or `count`) pipelined on one connection, past the event loop's inline budget: each must verify. */
async function burst(count = 200): Promise<void> {
  const messages = Array.from({ length: count }, () => randomBytes(40));
  const signatures = await Promise.all(messages.map((m) => client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, m))));
  signatures.forEach((signature, i) => void expect(verifies(Algorithm.RSA_PSS_SHA256, messages[i]!, key.publicKey, signature), `sign #${i}`).toBe(true));
}

/** Runs `keyedge keyserver` with these config limits and the faults preloaded, as `child`. */
function spawnKeyserver(limits: Record<string, number>): void {
  const configFile = writeConfigFile(dir, { log: { level: 'info' }, limits });
  childLimits = JSON.stringify(limits);
  output = '';
  child = spawn(process.execPath, [CLI, 'keyserver', '--config', configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NODE_OPTIONS: `--require=${join(dir, 'inject.cjs')}`, KS_FAULTS: control },
  });
  for (const stream of [child.stdout!, child.stderr!]) stream.on('data', (chunk: Buffer) => void (output += chunk.toString()));
}

/** Starts `keyedge keyserver` with these config limits, the faults preloaded, and connects `client` to it. */
async function startKeyserverProcess(limits: Record<string, number>): Promise<void> {
  spawnKeyserver(limits);
  const ready = await waitFor('the key server to be ready', () => logLines(/^key server ready$/)[0]);
  adminPort = (ready.admin as { port: number }).port;
  client = await KeyserverClient.connect({ unixPath: testConfig(dir).listen.unix!.path, timeoutMs: 10_000 });
}

/** The FIFO a hung C_Sign waits on (opened for reading; nobody writes). */
function hangFifo(): void {
  if (!existsSync(join(control, 'hang-fifo'))) execFileSync('mkfifo', [join(control, 'hang-fifo')]);
}

beforeAll(async () => {
  dir = tempDir();
  control = join(dir, 'faults');
  writeFileSync(join(dir, 'inject.cjs'), INJECT);
  key = provisionKeys(testConfig(dir), [{ label: 'rsa', type: 'rsa-2048' }]).rsa!;
  mkdirSync(control);
  // Every signing thread fails its start from the first.
  fault('thread-start', true);
  await startKeyserverProcess({ shutdownGraceMs: SHUTDOWN_GRACE_MS });
}, 60_000);

afterAll(async () => {
  client?.close();
  if (child !== undefined && child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await new Promise((resolve) => child.once('exit', resolve));
    clearTimeout(killer);
  }
  if (dir !== undefined) removeDir(dir);
});

it('signing threads that fail to start are logged and restarted with a backoff; signs go on inline meanwhile', async () => {
  // Before: the threads died silently after "ready", and once all had, every sign was refused until a restart.
  await burst();
  expect(logLines(/^key server ready$/)[0]).toMatchObject({ sessions: 2, threadsUp: 0 });
  await waitFor('a failed restart', () => logLines(/^signing thread failed/).length >= 4 || undefined);
  const failed = logLines(/^signing thread failed/);
  expect(failed[0]).toMatchObject({ code: 'EMFILE', error: expect.stringContaining('EMFILE') });
  expect(new Set(failed.map((line) => line.thread))).toEqual(new Set([0, 1]));
  // An operator sees it without the logs: no thread up.
  expect(await threadsUp()).toBe(0);
  // The backoff doubles for each failure in a row.
  const delays = failed.filter((line) => line.thread === 0).map((line) => line.restartInMs);
  expect(delays.slice(0, 2)).toEqual([100, 200]);
  await burst();

  fault('thread-start', false);
  await waitFor('both threads back', () => new Set(logLines(/^signing thread restarted$/).map((line) => line.thread)).size === 2 || undefined);
  expect(await threadsUp()).toBe(2);
  await burst();
  expect(output).not.toContain(readUserPin(dir));
});

it('a thread dying in the middle of its batch: its signs are made again elsewhere, none lost, and it comes back', async () => {
  const before = logLines(/^signing thread failed/).length;
  const restarted = logLines(/^signing thread restarted$/).length;
  fault('thread-crash', true);
  await burst();
  // Log lines reach stdout in batches.
  const crashed = await waitFor('the crash logged', () => {
    const lines = logLines(/^signing thread failed/).slice(before);
    return lines.length > 0 ? lines : undefined;
  });
  expect(crashed[0]!.error).toMatch(/exited with code 7/);
  expect(crashed.some((line) => (line.jobs as number) > 0)).toBe(true);
  fault('thread-crash', false);
  await waitFor('a thread back', () => logLines(/^signing thread restarted$/).length > restarted || undefined);
  await burst();
});

it('a token that gives back an empty signature, inline or on a thread: each sign refused SIGN_FAILED, and the key server goes on', async () => {
  // Before: the answer's encoder threw, from the socket's data handler (inline) or a thread's callback, and the process ended.
  fault('sign-empty', true);
  try {
    const messages = Array.from({ length: 200 }, () => randomBytes(40));
    const answers = await Promise.allSettled(messages.map((m) => client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, m))));
    for (const answer of answers) {
      expect(answer.status).toBe('rejected');
      // An RSA signature is checked before the answer's bound (sign-verify.ts): an empty one is refused as one of the wrong length.
      expect(String((answer as PromiseRejectedResult).reason)).toMatch(/SIGN_FAILED.*did not verify; not sent/);
    }
  } finally {
    fault('sign-empty', false);
  }
  await burst();
  expect(child.exitCode).toBeNull();
});

it('a token that flips a bit of each RSA signature, inline or on a thread: none is sent, each sign refused SIGN_FAILED and counted', async () => {
  // Before: each was sent as the token gave it, a signature that does not verify (a wrong RSA-CRT one gives the key away).
  const refused = (): Promise<number> => metricValue({ adminPort }, 'keyedge_keyserver_signatures_refused_total', { algorithm: 'RSA_PSS_SHA256' });
  const before = await refused();
  fault('sign-flip', true);
  try {
    const messages = Array.from({ length: 200 }, () => randomBytes(40));
    const answers = await Promise.allSettled(messages.map((m) => client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, m))));
    expect(answers.filter((answer) => answer.status === 'fulfilled').length, 'signatures sent').toBe(0);
    for (const answer of answers) expect(String((answer as PromiseRejectedResult).reason)).toMatch(/SIGN_FAILED.*did not verify; not sent/);
  } finally {
    fault('sign-flip', false);
  }
  expect((await refused()) - before).toBe(200);
  const lines = logLines(/^the token gave back a signature that does not verify with the key's public key/);
  expect(lines.length).toBeGreaterThan(0);
  expect(lines[0]).toMatchObject({ level: 50, keyId: key.keyId, algorithm: 'RSA_PSS_SHA256' });
  await burst();
  expect(child.exitCode).toBeNull();
});

it('SIGHUP with a token scan that fails: logged, and the key server keeps running and signing', async () => {
  // Before: the scan's throw in the signal handler ended the process.
  fault('scan', true);
  child.kill('SIGHUP');
  await waitFor('the scan failure', () => logLines(/^SIGHUP: the token scan failed/).length > 0 || undefined);
  expect(logLines(/^SIGHUP: the token scan failed/)[0]!.err).toMatchObject({ message: expect.stringContaining('CKR_DEVICE_ERROR') });
  fault('scan', false);
  await burst();
  expect(child.exitCode).toBeNull();
  child.kill('SIGHUP');
  await waitFor('a second SIGHUP', () => logLines(/^SIGHUP: rescanning the token$/).length === 2 || undefined);
  await burst();
});

it('a sign that hangs inside the token: its thread is logged and counted as stuck, the client answered meanwhile', async () => {
  // Before: nothing said the token had stopped answering; only the clients' DEADLINE_EXCEEDED showed anything.
  hangFifo();
  fault('thread-hang', true);
  const messages = Array.from({ length: 200 }, () => randomBytes(40));
  const results = await Promise.allSettled(messages.map((m) => client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, m))));
  const refused = results.filter((result) => result.status === 'rejected');
  // Past the inline budget, signs went to the threads and hung there: answered DEADLINE_EXCEEDED, not left waiting.
  expect(refused.length).toBeGreaterThan(0);
  expect(String(refused[0]!.reason)).toMatch(/DEADLINE_EXCEEDED/);
  // Twice limits.requestTimeoutMs (2 s by default), checked every second.
  const stuck = await waitFor('the stuck signs logged', () => logLines(/^calls into the token on the signing threads .* are not coming back/)[0], 10_000);
  expect(stuck).toMatchObject({ threads: expect.any(Number), signs: expect.any(Number), stuckAfterMs: 4_000 });
  expect(stuck.threads as number).toBeGreaterThanOrEqual(1);
  expect(stuck.longestMs as number).toBeGreaterThan(4_000);
  expect(await metricValue({ adminPort }, 'keyedge_keyserver_sign_threads_stuck')).toBeGreaterThanOrEqual(1);

  // While a thread is stuck, nothing is signed on the event loop (the token would hold it too): refused at once, and
  // the key server keeps answering. Before: the loop signed it, and was held with the thread.
  fault('inline-hang', true);
  const refusedNow = await client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, randomBytes(32))).catch((e: unknown) => e);
  fault('inline-hang', false);
  expect(String(refusedNow)).toMatch(/SIGN_FAILED.*the token is not answering/);
  expect(await metricValue({ adminPort }, 'keyedge_keyserver_sign_threads_stuck')).toBeGreaterThanOrEqual(1);
  // Every sign refused, so not healthy: a load balancer sends signs to another key server. Before: 200 'ok'.
  const health = await fetch(`http://127.0.0.1:${adminPort}/healthz`, { signal: AbortSignal.timeout(5_000) });
  expect({ status: health.status, text: await health.text() }).toEqual({ status: 503, text: 'unhealthy\n' });
}, 20_000);

it('SIGTERM with a sign hung inside the token: the key server stops after its grace, saying so, rather than never', async () => {
  // Before: the stop waited for the hung sign for ever (and a normal exit joins the stuck thread).
  const stopping = Date.now();
  child.kill('SIGTERM');
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const bound = new Promise((resolve) => setTimeout(resolve, SHUTDOWN_GRACE_MS + 8_000).unref());
  await Promise.race([exited, bound]);
  expect(child.signalCode, `still running ${Date.now() - stopping} ms after SIGTERM:\n${output.slice(-1500)}`).toBe('SIGTERM');
  const line = loggedLines(/^key server stopping with signs still inside the token/)[0];
  expect(line).toMatchObject({ signsInToken: expect.any(Number), shutdownGraceMs: SHUTDOWN_GRACE_MS });
  expect(output).not.toContain(readUserPin(dir));
}, 20_000);

/** Ends the key server left from the cases before (they end it themselves; a case run alone finds it up). */
async function endChild(): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

/** The limits of the key server the cases on a signing thread's start share: a call held 1 s is stuck (a sign's bound). */
const START_CASES_LIMITS = { shutdownGraceMs: 1_000, requestTimeoutMs: 500, tokenStallExitMs: 2_000 };

/** The key server of START_CASES_LIMITS: the one running if it has them, else a new one, with no fault set. */
async function startCasesKeyserver(): Promise<void> {
  for (const name of ['thread-start', 'inline-hang', 'scan-hang', 'thread-hang', 'info-fail', 'thread-init-hang', 'thread-init-slow']) fault(name, false);
  hangFifo();
  if (child.exitCode === null && child.signalCode === null && childLimits === JSON.stringify(START_CASES_LIMITS)) return;
  client.close();
  await endChild();
  await startKeyserverProcess(START_CASES_LIMITS);
}

/**
 * Makes both signing threads die in a batch and start again into a C_Initialize the token holds (`thread-init-hang`)
 * or makes slow (`thread-init-slow`). Their signs are made again inline, or refused while the threads count as stuck:
 * settled, not checked.
 */
async function threadsStartAgainInto(startFault: 'thread-init-hang' | 'thread-init-slow'): Promise<void> {
  const before = loggedLines(/^signing thread failed/).length;
  fault(startFault, true);
  fault('thread-crash', true);
  const messages = Array.from({ length: 200 }, () => randomBytes(40));
  await Promise.allSettled(messages.map((m) => client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, m))));
  const failed = (): Set<unknown> =>
    new Set(
      logLines(/^signing thread failed/)
        .slice(before)
        .map((line) => line.thread),
    );
  await waitFor('both threads failed', () => failed().size === 2 || undefined);
  fault('thread-crash', false);
}

/** Lets the calls blocked on the FIFO go on: a writer opens it (non-blocking: it fails if no call waits there). */
function releaseHang(): void {
  closeSync(openSync(join(control, 'hang-fifo'), constants.O_WRONLY | constants.O_NONBLOCK));
}

it('calls into the token held on the event loop: warned within about twice the request deadline, and the serving process ended past limits.tokenStallExitMs', async () => {
  // Before: the event loop itself was held, for ever: no line, no /healthz or /metrics, and SIGTERM never handled.
  client.close();
  await endChild();
  fault('thread-start', false);
  fault('thread-hang', false);
  hangFifo();
  // A request deadline of 500 ms: a call held 1 s is stuck, and one held 3 s ends the process.
  const endMs = 3_000;
  await startKeyserverProcess({ shutdownGraceMs: 2_000, requestTimeoutMs: 500, tokenStallExitMs: endMs });
  const held = (call: string): Record<string, unknown> | undefined =>
    loggedLines(/^a call into the token on the event loop is not coming back/).find((line) => line.call === call);

  // A key scan (SIGHUP) the token holds: warned, and once it comes back, so is that.
  fault('scan-hang', true);
  child.kill('SIGHUP');
  const scan = await waitFor('the held scan logged', () => held('C_FindObjectsInit'), 10_000);
  expect(scan).toMatchObject({ level: 40, stuckAfterMs: 1_000, endAfterMs: endMs });
  expect(scan.heldMs as number).toBeGreaterThanOrEqual(1_000);
  // The line logged as the scan began comes before the watch's (written by the watch; before, after the scan came back).
  const order = (msg: string): number => output.split('\n').findIndex((line) => line.includes(msg));
  expect(order('"msg":"SIGHUP: rescanning the token"')).toBeGreaterThanOrEqual(0);
  expect(order('"msg":"SIGHUP: rescanning the token"')).toBeLessThan(order('"call":"C_FindObjectsInit"'));
  fault('scan-hang', false);
  releaseHang();
  await waitFor('the scan back', () => loggedLines(/^the call into the token on the event loop came back$/)[0], 10_000);
  expect(await metricValue({ adminPort }, 'keyedge_keyserver_keys')).toBe(1);

  // A sign on the event loop (one on an idle key server is made there) the token holds, never answered; just before
  // it, a request refused and logged (an ECDSA sign with the RSA key): its line is held in the logger's batch, whose
  // timer runs on the loop the token then holds.
  fault('inline-hang', true);
  const refusal = client.sign(key.keyId, Algorithm.ECDSA_SHA256, digestOf(Algorithm.ECDSA_SHA256, randomBytes(32))).catch((e: unknown) => e);
  const answer = client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, randomBytes(32))).catch((e: unknown) => e);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const sign = await waitFor('the held sign logged', () => held('C_Sign'), 10_000);
  expect(sign.heldMs as number).toBeGreaterThanOrEqual(1_000);
  // Nothing on the loop answers meanwhile, a supervisor's SIGTERM included: the process is ended all the same.
  child.kill('SIGTERM');
  await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 10_000).unref())]);
  expect(child.signalCode, `still running:\n${output.slice(-1500)}`).toBe('SIGKILL');
  const ended = loggedLines(/^a call into the token on the event loop has not come back past its bound/);
  expect(ended).toHaveLength(1);
  expect(ended[0]).toMatchObject({ level: 50, call: 'C_Sign' });
  expect(ended[0]!.heldMs as number).toBeGreaterThanOrEqual(endMs);
  // Refused, but its answer may not have left before the loop was held.
  expect(String(await refusal)).toMatch(/ALGORITHM_MISMATCH|closed/i);
  expect(String(await answer)).toMatch(/closed/i);
  // The line logged just before the hang reached the log, before the watch's. Before: held in the batch, lost at the kill.
  const lines = output.split('\n');
  const refused = lines.findIndex((line) => line.includes('"code":"ALGORITHM_MISMATCH"'));
  expect(refused, `the refusal's line:\n${output.slice(-1500)}`).toBeGreaterThanOrEqual(0);
  expect(refused).toBeLessThan(lines.findIndex((line) => line.includes('"call":"C_Sign"')));
  // A line the watch wrote for a call that came back is not written again by the logger.
  expect(loggedLines(/^SIGHUP: rescanning the token$/)).toHaveLength(1);
  expect(output).not.toContain(readUserPin(dir));
  fault('inline-hang', false);
}, 30_000);

it('a token to open again while a sign hangs inside it: the process ends past limits.tokenStallExitMs, naming the call, rather than serving no key for ever', async () => {
  // Before: the reopen waited for the hung sign before C_Finalize, for ever, every sign refused SIGN_FAILED meanwhile.
  client.close();
  await endChild();
  for (const name of ['thread-start', 'inline-hang', 'scan-hang']) fault(name, false);
  hangFifo();
  const endMs = 2_000;
  await startKeyserverProcess({ shutdownGraceMs: 1_000, requestTimeoutMs: 500, tokenStallExitMs: endMs });
  fault('thread-hang', true);
  // Past the event loop's inline budget, signs go to the threads and hang there (their clients answered DEADLINE_EXCEEDED).
  const signs = Array.from({ length: 200 }, () =>
    client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, randomBytes(32))).catch((e: unknown) => e),
  );
  await waitFor('a thread stuck', () => logLines(/^calls into the token on the signing threads .* are not coming back/)[0], 10_000);
  // The token's check fails from now on, as for a token re-created: confirmed over a second, then it is opened again.
  fault('info-fail', true);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGHUP');
  await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, endMs + 10_000).unref())]);
  expect(child.signalCode, `still running:\n${output.slice(-1500)}`).toBe('SIGKILL');
  expect(loggedLines(/^the token is no longer the one opened/)).toHaveLength(1);
  const ended = loggedLines(/^calls into the token on the signing threads .* have not come back past limits.tokenStallExitMs/);
  expect(ended).toHaveLength(1);
  expect(ended[0]).toMatchObject({ level: 50, calls: ['C_Sign'], tokenStallExitMs: endMs });
  expect(ended[0]!.heldMs as number).toBeGreaterThanOrEqual(endMs);
  await Promise.all(signs);
  expect(output).not.toContain(readUserPin(dir));
  fault('info-fail', false);
  fault('thread-hang', false);
}, 30_000);

it('signing threads slow to start again (a loaded machine, a slow C_Initialize): not taken for a token that does not answer, and signs go on meanwhile', async () => {
  // Before: a start was held to a sign's bound (twice limits.requestTimeoutMs, at least 1 s): one slower than that was
  // warned about as a token not answering and counted stuck, and while both threads were, every sign was refused.
  await startCasesKeyserver();
  const restarted = loggedLines(/^signing thread restarted$/).length;
  await threadsStartAgainInto('thread-init-slow');
  const startedAgain = Date.now();
  // Both threads in their start for SLOW_START_MS, past a sign's bound (1 s, checked every second): signed inline.
  while (Date.now() - startedAgain < SLOW_START_MS - 500) {
    const message = randomBytes(32);
    const signature = await client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, message));
    expect(verifies(Algorithm.RSA_PSS_SHA256, message, key.publicKey, signature)).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  fault('thread-init-slow', false);
  await waitFor('both threads back', () => logLines(/^signing thread restarted$/).length >= restarted + 2 || undefined, 10_000);
  expect(loggedLines(/^calls into the token on the signing threads .* are not coming back/)).toHaveLength(0);
  expect(await metricValue({ adminPort }, 'keyedge_keyserver_sign_threads_stuck')).toBe(0);
  // A few: 200 at this key server's 500 ms deadline outran it on a loaded machine, which is not what is checked here.
  await burst(20);
}, 20_000);

it("a token to open again while signing threads are slow in their start (past limits.tokenStallExitMs, short of a start's bound): the reopen waits for them, and the process goes on", async () => {
  // Before: the reopen held a thread in its start to limits.tokenStallExitMs (2 s here) as it holds a sign: a start
  // slowed past it (a loaded machine, a slow C_Initialize) ended the process, whose supervisor would only start it
  // again into the same slow start. A start has a bound of its own (5 s), as the stuck-thread watch has.
  await startCasesKeyserver();
  const restarted = loggedLines(/^signing thread restarted$/).length;
  await threadsStartAgainInto('thread-init-slow');
  fault('info-fail', true);
  child.kill('SIGHUP');
  await waitFor('the reopen', () => logLines(/^the token is no longer the one opened/)[0], 10_000);
  // The old threads are in their slow start by now (they began it 100 ms after failing, the reopen a second later):
  // the new ones start as usual.
  fault('info-fail', false);
  fault('thread-init-slow', false);
  await waitFor('the token opened again', () => logLines(/^token opened again$/)[0], 15_000);
  // The reopen came while both threads were still in their start: it waited for them, not for nothing.
  const order = (msg: RegExp): number[] =>
    output
      .split('\n')
      .map((line, index) => (msg.test(line) ? index : -1))
      .filter((index) => index >= 0);
  const reopenAt = order(/"msg":"the token is no longer the one opened/).at(-1) as number;
  expect(order(/"msg":"signing thread restarted"/).slice(restarted)[0]).toBeGreaterThan(reopenAt);
  expect(loggedLines(/have not come back past limits.tokenStallExitMs/)).toHaveLength(0);
  expect(child.exitCode ?? child.signalCode).toBeNull();
  await burst(20);
  // The next cases want threads up from the start: a key server of their own.
  await endChild();
}, 30_000);

it('a token to open again while a signing thread is held in its start (C_Initialize): the process ends past limits.tokenStallExitMs, rather than waiting for the thread for ever', async () => {
  // Before: the reopen stopped the threads with worker.terminate(), which waits for a thread inside native code to come
  // back to JS: for ever, the key server serving no key meanwhile.
  await startCasesKeyserver();
  const endMs = START_CASES_LIMITS.tokenStallExitMs;
  await threadsStartAgainInto('thread-init-hang');
  // Stuck as a thread on a sign is, with no reopen or stop to show it: warned, counted, and nothing signed on the event
  // loop (the token holds one call; the next made there would hold everything). Before: nothing until a reopen or a stop.
  const stuck = await waitFor(
    'the threads held in their start logged',
    () => logLines(/^calls into the token on the signing threads .* are not coming back/)[0],
    10_000,
  );
  // A start's bound (5 s), not a sign's (1 s): a slow start is not a token not answering (the case before).
  expect(stuck).toMatchObject({ level: 40, signs: 0, calls: ['C_Initialize'], stuckAfterMs: 1_000, startStuckAfterMs: 5_000 });
  // Judged once a second, and rounded: a thread found at 5,000.4 ms is logged as 5000.
  expect(stuck.longestMs as number).toBeGreaterThanOrEqual(5_000);
  await waitFor(
    'both threads counted stuck',
    async () => (await metricValue({ adminPort }, 'keyedge_keyserver_sign_threads_stuck')) === 2 || undefined,
    10_000,
  );
  const refused = await client.sign(key.keyId, Algorithm.RSA_PSS_SHA256, digestOf(Algorithm.RSA_PSS_SHA256, randomBytes(32))).catch((e: unknown) => e);
  expect(String(refused)).toMatch(/SIGN_FAILED.*the token is not answering/);
  expect(loggedLines(/^the token is no longer the one opened/)).toHaveLength(0);
  fault('info-fail', true);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGHUP');
  // Read whether or not the process has ended: the threads were held past tokenStallExitMs before the reopen came (a
  // start is stuck only past 5 s), so it may end the moment it logs the reopen.
  await waitFor('the reopen', () => loggedLines(/^the token is no longer the one opened/)[0], 10_000);
  fault('info-fail', false);
  await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, endMs + 10_000).unref())]);
  expect(child.signalCode, `still running:\n${output.slice(-1500)}`).toBe('SIGKILL');
  const ended = loggedLines(/^calls into the token on the signing threads .* have not come back past limits.tokenStallExitMs/);
  expect(ended).toHaveLength(1);
  expect(ended[0]).toMatchObject({ level: 50, calls: ['C_Initialize'], tokenStallExitMs: endMs });
  expect(output).not.toContain(readUserPin(dir));
  fault('thread-init-hang', false);
}, 30_000);

it('SIGTERM with a signing thread held in its start: the key server stops after its grace, leaving the token unfinalized, rather than waiting for the thread', async () => {
  // Before: the stop waited in worker.terminate() for the thread to come back from the token, until the backstop ended
  // it (limits.shutdownGraceMs and 5 s later, 'did not stop within its grace').
  await endChild();
  for (const name of ['thread-start', 'inline-hang', 'scan-hang', 'thread-hang', 'info-fail', 'thread-init-hang', 'thread-init-slow']) fault(name, false);
  hangFifo();
  const graceMs = 500;
  await startKeyserverProcess({ shutdownGraceMs: graceMs, requestTimeoutMs: 500 });
  await threadsStartAgainInto('thread-init-hang');
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, graceMs + 4_000).unref())]);
  expect(child.signalCode, `not ended by the signal:\n${output.slice(-1500)}`).toBe('SIGTERM');
  expect(loggedLines(/^key server stopping with signs still inside the token/)[0]).toMatchObject({ threadsInToken: 2, calls: ['C_Initialize'] });
  expect(loggedLines(/did not stop within its grace/)).toHaveLength(0);
  fault('thread-init-hang', false);
}, 20_000);

it('a token that does not answer the login at start: warned, not a start hung silently, and not ended (a slow open would only start again)', async () => {
  // Before: the watch began after the token was opened; a C_Login that never came back held the start silently, for ever.
  await endChild();
  hangFifo();
  fault('login-hang', true);
  spawnKeyserver({ shutdownGraceMs: 500, requestTimeoutMs: 500, tokenStallExitMs: 1_000 });
  const warned = await waitFor('the held login logged', () => loggedLines(/^a call into the token on the event loop is not coming back/)[0], 10_000);
  expect(warned).toMatchObject({ level: 40, call: 'C_Login' });
  // Past tokenStallExitMs and then some: a start is not ended by the watch (the supervisor's start timeout is the bound).
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  expect(child.exitCode === null && child.signalCode === null, `ended:\n${output.slice(-1500)}`).toBe(true);
  expect(loggedLines(/^a call into the token on the event loop has not come back past its bound/)).toHaveLength(0);
  expect(output).not.toContain(readUserPin(dir));
  fault('login-hang', false);
  await endChild();
}, 20_000);
