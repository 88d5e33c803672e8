/**
 * The queue of signs waiting for a signing thread (sign-queue.ts) through the
 * threads' faults: a thread held in the token that comes back, a thread that
 * dies with signs queued. `keyedge keyserver` run as it is deployed, with
 * faults injected into its signing threads by a preloaded module
 * (NODE_OPTIONS=--require), driven by files in a control directory:
 * `thread-hang` holds a thread's C_Sign on a FIFO no one writes to (as an HSM
 * that stopped answering) until the test opens it for writing,
 * `thread-crash` ends a thread at its next C_Sign; `sign-short-main` and
 * `sign-short-thread` give the next C_Sign on the event loop or on a thread (once)
 * a one-byte signature buffer, which SoftHSM2 answers CKR_BUFFER_TOO_SMALL,
 * leaving the sign operation active on that session.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, existsSync, mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { afterEach, beforeAll, expect, it } from 'vitest';
import { encodeRequest } from '../keyserver/protocol/codec.js';
import { Algorithm, errorCodeName } from '../keyserver/protocol/constants.js';
import { CLI, removeDir, tempDir } from './helpers/basics.js';
import { digestOf, metricValue, type ProvisionedKey, provisionKeys, RawConnection, testConfig, verifies, writeConfigFile } from './helpers/keyserver.js';
import { waitFor } from './helpers/proxy-cluster.js';

const INJECT = `
const { existsSync, openSync, unlinkSync } = require('node:fs');
const { join } = require('node:path');
const Module = require('node:module');
const { isMainThread } = require('node:worker_threads');
const dir = process.env.KS_FAULTS;
const load = Module._load;
/** Whether this call takes the one-shot fault name (the first to remove its file, of every thread). */
const once = (name) => {
  try {
    unlinkSync(join(dir, name));
    return true;
  } catch {
    return false;
  }
};
Module._load = function (request, ...rest) {
  const loaded = load.call(this, request, ...rest);
  if (!/pkcs11js[\\\\/]index\\.js$/.test(request) || loaded.PKCS11.prototype.injected) return loaded;
  const proto = loaded.PKCS11.prototype;
  const sign = proto.C_Sign;
  proto.C_Sign = function (...args) {
    // The token's own answer to a signature buffer too small: CKR_BUFFER_TOO_SMALL, the operation left active (v2.40 §5.2).
    if (once(isMainThread ? 'sign-short-main' : 'sign-short-thread')) return sign.call(this, args[0], args[1], args[2].subarray(0, 1));
    if (isMainThread) return sign.apply(this, args);
    if (existsSync(join(dir, 'thread-crash'))) process.exit(7);
    if (existsSync(join(dir, 'thread-hang'))) openSync(join(dir, 'hang-fifo'), 'r');
    return sign.apply(this, args);
  };
  proto.injected = true;
  return loaded;
};
`;

let dir: string;
let control: string;
let key: ProvisionedKey;
let child: ChildProcess | undefined;
let output = '';
let adminPort = 0;
const connections: RawConnection[] = [];

beforeAll(() => {
  dir = tempDir();
  control = join(dir, 'faults');
  mkdirSync(control);
  writeFileSync(join(dir, 'inject.cjs'), INJECT);
  execFileSync('mkfifo', [join(control, 'hang-fifo')]);
  key = provisionKeys(testConfig(dir), [{ label: 'rsa', type: 'rsa-2048' }]).rsa!;
  return () => removeDir(dir);
}, 60_000);

afterEach(async () => {
  for (const connection of connections.splice(0)) connection.close();
  for (const name of ['thread-hang', 'thread-crash', 'sign-short-main', 'sign-short-thread']) fault(name, false);
  const running = child;
  child = undefined;
  if (running === undefined || running.exitCode !== null || running.signalCode !== null) return;
  const exited = new Promise((resolve) => running.once('exit', resolve));
  running.kill('SIGKILL');
  await exited;
});

function fault(name: string, on: boolean): void {
  if (on) writeFileSync(join(control, name), '');
  else rmSync(join(control, name), { force: true });
}

/** Lets the C_Sign calls held on the FIFO go on: a writer opens it (non-blocking: it fails if no call waits there). */
function releaseHang(): void {
  closeSync(openSync(join(control, 'hang-fifo'), constants.O_WRONLY | constants.O_NONBLOCK));
}

/** The key server's log lines with this message. */
function logLines(msg: RegExp): Record<string, unknown>[] {
  return output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => typeof line.msg === 'string' && msg.test(line.msg));
}

/** `threads`: its signing threads (pkcs11.sessions), all of them up before it resolves. */
async function startKeyserver(limits: Record<string, number>, threads = 2): Promise<ChildProcess> {
  const configFile = writeConfigFile(dir, { log: { level: 'info' }, limits, pkcs11: { sessions: threads } });
  output = '';
  const started = spawn(process.execPath, [CLI, 'keyserver', '--config', configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NODE_OPTIONS: `--require=${join(dir, 'inject.cjs')}`, KS_FAULTS: control },
  });
  child = started;
  for (const stream of [started.stdout!, started.stderr!]) stream.on('data', (chunk: Buffer) => void (output += chunk.toString()));
  const ready = await waitFor(
    'the key server to be ready',
    () => {
      if (started.exitCode !== null) throw new Error(`the key server exited:\n${output.slice(-1500)}`);
      return logLines(/^key server ready$/)[0];
      // A start on a loaded machine (every core busy) was seen past the default 15 s.
    },
    30_000,
  );
  adminPort = (ready.admin as { port: number }).port;
  await waitFor('the signing threads up', async () => (await metricValue({ adminPort }, 'keyedge_keyserver_sign_threads_up')) === threads || undefined);
  return started;
}

async function connect(): Promise<RawConnection> {
  const connection = await RawConnection.connect(testConfig(dir).listen.unix!.path);
  connections.push(connection);
  return connection;
}

let nextId = 1;
/** Signs a signing thread holds at most: two batches of eight (sign-thread.ts WINDOW, BATCH_MAX). */
const BATCHES_HELD = 16;

/** `count` RSA signs written on `connection` in one write; their ids and messages. */
function writeSigns(connection: RawConnection, count: number): { id: number; message: Buffer }[] {
  const signs = Array.from({ length: count }, () => ({ id: nextId++, message: randomBytes(40) }));
  const frames = signs.map(({ id, message }) =>
    encodeRequest({
      op: 'sign',
      id,
      keyId: Buffer.from(key.keyId, 'hex'),
      algorithm: Algorithm.RSA_PSS_SHA256,
      digest: digestOf(Algorithm.RSA_PSS_SHA256, message),
    }),
  );
  connection.write(Buffer.concat(frames));
  return signs;
}

it('signs queued while the threads were held in the token are taken once the threads come back: SIGTERM then stops the key server', async () => {
  // A request deadline of 500 ms: a thread on one batch for 1 s is stuck.
  const server = await startKeyserver({ requestTimeoutMs: 500, shutdownGraceMs: 1_000 });
  fault('thread-hang', true);
  const connection = await connect();
  const signs = writeSigns(connection, 200);
  // Each answered: those held DEADLINE_EXCEEDED (the signs the threads hold, and those queued behind them).
  const answers = await Promise.all(signs.map(({ id }) => connection.answer(id, 10_000)));
  expect(answers.every((answer, i) => answer.id === signs[i]!.id)).toBe(true);
  await waitFor('the threads stuck', () => logLines(/^calls into the token on the signing threads .* are not coming back/)[0], 10_000);
  fault('thread-hang', false);
  releaseHang();
  await waitFor('the threads back', () => logLines(/^the calls into the token came back/)[0], 10_000);
  // Before: the threads' answers after the hang found them still marked stuck (until the watch's next look) and took
  // no more signs; nothing asked again, so the signs queued behind them stayed queued (their clients answered
  // DEADLINE_EXCEEDED), and the stop waited for them past its grace, until its backstop ended the process.
  const exited = new Promise((resolve) => server.once('exit', resolve));
  server.kill('SIGTERM');
  await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 15_000))]);
  expect(logLines(/did not stop within its grace/).length).toBe(0);
  expect(logLines(/^key server stopped$/).length).toBe(1);
}, 60_000);

it("the last signing thread dying: a closed connection's queued signs are dropped, not signed on the event loop ahead of the answers of those still open", async () => {
  // A deadline no loaded machine reaches (the threads are stuck only past twice it): every sign is still wanted, or dropped for its connection.
  await startKeyserver({ requestTimeoutMs: 20_000, shutdownGraceMs: 1_000 });
  fault('thread-hang', true);
  const gone = await connect();
  const open = await connect();
  writeSigns(gone, 250);
  const opens = writeSigns(open, 20);
  // Every sign read, and the count waiting steady: those signed on the event loop at once (its budget takes a burst of
  // them, more when the loop is slowed), the threads holding their first batches, the rest queued.
  let last = -1;
  await waitFor('the signs read', async () => {
    const inFlight = await metricValue({ adminPort }, 'keyedge_keyserver_in_flight_requests');
    const signed = await metricValue({ adminPort }, 'keyedge_keyserver_requests_total', { op: 'sign', result: 'ok' });
    const settled = inFlight === last && inFlight + signed === 270;
    last = inFlight;
    return settled || undefined;
  });
  // The closed connection's signs still waiting: all of them but those answered at once.
  const waiting = 250 - gone.responses.length;
  expect(waiting).toBeGreaterThan(100);
  gone.close();
  await waitFor(
    'the closed connection seen',
    async () => (await metricValue({ adminPort }, 'keyedge_keyserver_connections', { transport: 'unix' })) === 1 || undefined,
  );
  // Both threads end at their next C_Sign: the signs they held and those queued are made on the event loop.
  fault('thread-crash', true);
  fault('thread-hang', false);
  releaseHang();
  const answers = await Promise.all(opens.map(({ id }) => open.answer(id, 30_000)));
  expect(
    answers.every((answer, i) => answer.op === 'signature' && verifies(Algorithm.RSA_PSS_SHA256, opens[i]!.message, key.publicKey, answer.signature)),
  ).toBe(true);
  // The open connection's answers say nothing of the closed one's signs: all 20 may have been signed on the event loop
  // as they were read (its budget refills while the loop is slowed), answered before the threads died, and the drops,
  // read then, were not counted yet (0). The closed connection's requests leave the in-flight count as each is dropped
  // (counted first) or signed, and their deadline is far off.
  await waitFor(
    "the closed connection's signs settled",
    async () => (await metricValue({ adminPort }, 'keyedge_keyserver_in_flight_requests')) === 0 || undefined,
    30_000,
  );
  // Before: all of the closed connection's signs were signed on the event loop (those queued, and those its threads
  // held), for nobody, and the open connection's answers went out only once they were done. Each is dropped now,
  // all but a few at most: the one each thread was in when released, if it was its batch's last (a batch posted is
  // not taken back).
  const dropped = await metricValue({ adminPort }, 'keyedge_keyserver_signs_dropped_total', { reason: 'closed' });
  expect(dropped).toBeGreaterThanOrEqual(waiting - 5);
  expect(dropped).toBeLessThanOrEqual(waiting);
}, 60_000);

it('the last signing thread dying with thousands of signs queued: they are signed on the event loop within its budget, a turn at a time, not in one stall', async () => {
  // The longest request deadline: on a loaded machine the event loop's share of a core signs the queue for many seconds.
  await startKeyserver({ requestTimeoutMs: 60_000, shutdownGraceMs: 1_000 });
  fault('thread-hang', true);
  const connections = await Promise.all(Array.from({ length: 16 }, () => connect()));
  const signs = connections.map((connection) => writeSigns(connection, 250));
  const total = 16 * 250;
  let last = -1;
  await waitFor('the signs read', async () => {
    const inFlight = await metricValue({ adminPort }, 'keyedge_keyserver_in_flight_requests');
    const signed = await metricValue({ adminPort }, 'keyedge_keyserver_requests_total', { op: 'sign', result: 'ok' });
    const settled = inFlight === last && inFlight + signed === total;
    last = inFlight;
    return settled || undefined;
  });
  expect(last).toBeGreaterThan(total / 2);
  // Both threads end at their next C_Sign (and each restart at its first): the queue is the event loop's.
  fault('thread-crash', true);
  fault('thread-hang', false);
  releaseHang();
  // The longest a scrape of /metrics waits while the queue is signed (each on a connection of its own: one kept alive
  // may be closed by the server as it is reused). Before, every queued sign was made at once, in one turn of the event
  // loop: 4,000 RSA-2048 signs held it (answers, /healthz, /metrics) for 2.5 s and more.
  let slowestMs = 0;
  for (const end = performance.now() + 60_000; performance.now() < end; ) {
    const asked = performance.now();
    const metrics = await new Promise<string>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port: adminPort, path: '/metrics', agent: false }, (res) => {
          let text = '';
          res.on('data', (chunk: Buffer) => void (text += chunk.toString()));
          res.on('end', () => resolve(text));
        })
        .on('error', reject);
    });
    slowestMs = Math.max(slowestMs, performance.now() - asked);
    if (/^keyedge_keyserver_in_flight_requests 0$/m.test(metrics)) break;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  for (const [c, connection] of connections.entries()) {
    const answers = await Promise.all(signs[c]!.map(({ id }) => connection.answer(id, 10_000)));
    const verified = answers.filter(
      (answer, i) => answer.op === 'signature' && verifies(Algorithm.RSA_PSS_SHA256, signs[c]![i]!.message, key.publicKey, answer.signature),
    );
    expect(verified.length, `connection ${c}`).toBe(250);
  }
  // Inline signing takes at most three quarters of the loop's time, a couple of milliseconds a turn: a scrape waits
  // a few turns. A second is the margin for a loaded machine.
  expect(slowestMs).toBeLessThan(1_000);
}, 90_000);

it("a signing thread dying: the signs it held are made again in the order they were asked for, ahead of their connection's others", async () => {
  // One thread: it holds two batches in the token (BATCHES_HELD signs), the rest of the signs queued behind them.
  await startKeyserver({ requestTimeoutMs: 20_000, shutdownGraceMs: 1_000 }, 1);
  fault('thread-hang', true);
  const connection = await connect();
  const signs = writeSigns(connection, 100);
  let last = -1;
  await waitFor('the signs read', async () => {
    const inFlight = await metricValue({ adminPort }, 'keyedge_keyserver_in_flight_requests');
    const settled = inFlight === last && inFlight + connection.responses.length === signs.length;
    last = inFlight;
    return settled || undefined;
  });
  // Those answered so far were signed on the event loop as they were read (its budget refilling between reads).
  const answeredBefore = connection.responses.length;
  // The thread ends at its next C_Sign (and each restart at its first): its signs and the queue are the event loop's.
  fault('thread-crash', true);
  fault('thread-hang', false);
  releaseHang();
  await Promise.all(signs.map(({ id }) => connection.answer(id, 20_000)));
  expect(connection.responses.every((answer) => answer.op === 'signature')).toBe(true);
  // Before: each of the dead thread's signs was put back at the head of its connection's queue, oldest first, so
  // they were made newest first: "2 ... 17" answered "17 16 ... 2".
  const order = connection.responses.slice(answeredBefore).map((answer) => answer.id);
  expect(order.length).toBeGreaterThan(BATCHES_HELD);
  expect(order.join(' ')).toBe([...order].sort((a, b) => a - b).join(' '));
}, 60_000);

it('a connection answered DEADLINE_EXCEEDED again and again cannot pile up signs in the queue past its cap on requests in flight', async () => {
  // A short deadline: the flooder's signs, one a turn behind 20 other connections' signs, expire queued. Each
  // DEADLINE_EXCEEDED gives the flooder a place back under its cap, and it fills it at once.
  await startKeyserver({ requestTimeoutMs: 200, shutdownGraceMs: 1_000 });
  const cap = 256;
  let running = true;
  /** A connection that writes a sign for each answer it gets: `depth` of them always in flight. */
  const keepBusy = async (depth: number): Promise<RawConnection> => {
    const connection = await connect();
    let written = depth;
    connection.socket.on('data', () => {
      const missing = depth - (written - connection.responses.length);
      if (!running || missing <= 0) return;
      written += missing;
      writeSigns(connection, missing);
    });
    writeSigns(connection, depth);
    return connection;
  };
  const flooder = await keepBusy(cap);
  const others = await Promise.all(Array.from({ length: 20 }, () => keepBusy(8)));
  await new Promise((resolve) => setTimeout(resolve, 8_000));
  flooder.close();
  // The other connections' signs keep the queue turning while the flooder's signs, all of them dropped as its
  // connection closed, are counted.
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  running = false;
  for (const other of others) other.close();
  let last = -1;
  const dropped = await waitFor('the drops counted', async () => {
    const count = await metricValue({ adminPort }, 'keyedge_keyserver_signs_dropped_total', { reason: 'closed' });
    const settled = count === last ? count : undefined;
    last = count;
    await new Promise((resolve) => setTimeout(resolve, 200));
    return settled;
  });
  // Its signs still queued when it closed (its cap at most, and those expired since its last turn) plus the others'
  // (160 at most), each dropped and counted. Before: a turn dropped one expired sign of a flow, as it took one wanted
  // sign, so the flooder's expired signs left the queue one per round of the other connections' turns and piled up as
  // it filled its freed places, growing for as long as it kept at it: 1,350 to 3,442 after these 8 s, from a
  // connection capped at 256 in flight.
  expect(dropped).toBeLessThan(2 * cap);
}, 60_000);

it('a C_Sign that leaves its operation active (CKR_BUFFER_TOO_SMALL) fails that sign only: the session signs on, inline and on the threads', async () => {
  await startKeyserver({ requestTimeoutMs: 20_000 });
  const connection = await connect();
  const failures = new Set<string>();
  /** Writes `count` signs at once and waits for them: how many were answered with a signature that verifies. */
  const signBurst = async (count: number): Promise<number> => {
    const signs = writeSigns(connection, count);
    const answers = await Promise.all(signs.map(({ id }) => connection.answer(id, 30_000)));
    for (const answer of answers) if (answer.op === 'error') failures.add(`${answer.code}: ${answer.detail}`);
    return answers.filter((answer, i) => answer.op === 'signature' && verifies(Algorithm.RSA_PSS_SHA256, signs[i]!.message, key.publicKey, answer.signature))
      .length;
  };
  // One at a time: each is signed on the event loop (its budget is full at such a rate), on its own session.
  fault('sign-short-main', true);
  let signed = 0;
  for (let i = 0; i < 51; i++) signed += await signBurst(1);
  expect(existsSync(join(control, 'sign-short-main')), 'no sign was made on the event loop').toBe(false);
  // Before: every sign after the faulty one was SIGN_FAILED (C_SignInit: CKR_OPERATION_ACTIVE) until a restart.
  expect(signed, `signed on the event loop after its C_Sign left the operation active; refusals: ${[...failures].join('; ')}`).toBe(50);
  // Bursts past the inline budget: most go to the threads, one of which meets the fault.
  fault('sign-short-thread', true);
  let failed = 0;
  for (let round = 0; round < 10 && existsSync(join(control, 'sign-short-thread')); round++) failed += 100 - (await signBurst(100));
  expect(existsSync(join(control, 'sign-short-thread')), 'no sign reached a thread').toBe(false);
  expect(failed, `refusals: ${[...failures].join('; ')}`).toBeLessThanOrEqual(1);
  signed = 0;
  for (let round = 0; round < 3; round++) signed += await signBurst(100);
  expect(signed, `signed after a thread's C_Sign left the operation active; refusals: ${[...failures].join('; ')}`).toBe(300);
}, 90_000);

it("signs answered DEADLINE_EXCEEDED while still queued keep their connection's places: its queue stays within its cap on requests in flight", async () => {
  // The threads held in the token: nothing leaves the queue but by a turn, and no turn comes. A client sends its
  // cap's worth of signs, waits for every answer, and again, five times.
  await startKeyserver({ requestTimeoutMs: 300, shutdownGraceMs: 1_000 });
  const cap = 256;
  fault('thread-hang', true);
  const connection = await connect();
  const codes = new Map<string, number>();
  for (let round = 0; round < 5; round++) {
    const signs = writeSigns(connection, cap);
    for (const answer of await Promise.all(signs.map(({ id }) => connection.answer(id, 10_000)))) {
      const code = answer.op === 'error' ? errorCodeName(answer.code) : answer.op;
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
  }
  fault('thread-hang', false);
  releaseHang();
  // Every sign the threads held or the queue kept leaves it now: dropped at its turn, its deadline past.
  let last = -1;
  const dropped = await waitFor(
    'the drops counted',
    async () => {
      const count = await metricValue({ adminPort }, 'keyedge_keyserver_signs_dropped_total', { reason: 'deadline' });
      const settled = count === last && count > 0 ? count : undefined;
      last = count;
      await new Promise((resolve) => setTimeout(resolve, 300));
      return settled;
    },
    20_000,
  );
  // Before: each DEADLINE_EXCEEDED freed a place while its sign stayed queued, and each round queued another cap's
  // worth but for what the event loop signed at once: 5 rounds left well over a thousand queued. Now the later
  // rounds are answered OVERLOADED once the expired signs hold every place.
  expect(dropped, JSON.stringify(Object.fromEntries(codes))).toBeLessThanOrEqual(cap);
  expect(codes.get('OVERLOADED') ?? 0).toBeGreaterThan(0);
}, 90_000);
