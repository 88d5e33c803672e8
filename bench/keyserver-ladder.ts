/**
 * Where the key server's signing path loses against raw pkcs11js, one piece
 * at a time, in one process and without sockets. Each step adds one part of
 * the server's own code path (keyserver/token/sign.ts, session-pool.ts,
 * server/service.ts) to the previous one:
 *
 *   A raw-cb     C_SignInit + C_Sign (callback form), one loop per session:
 *                the raw ceiling of keyserver-sign.js
 *   B raw-async  the same with `await C_SignAsync` (pkcs11js's promisified form)
 *   C pool       `depth` loops sharing a SessionPool, signing with signDigest()
 *                (what service.ts does, minus the rest)
 *   D +abort     C with an AbortController per request whose signal goes to
 *                pool.acquire(), as service.ts does for its deadline
 *   E +der       D plus the r||s -> DER conversion service.ts does with
 *                @peculiar/x509's AsnEcSignatureFormatter (ECDSA only)
 *   F service    SigningService.handle() itself: key lookup, authorisation,
 *                deadline timer, metrics, usage counts
 *   W workers    what-if, not the product: C_SignInit + C_Sign both run
 *                synchronously in worker_threads (one session each), the main
 *                thread only queues requests and posts batches of them, so
 *                neither PKCS#11 call runs on the event loop
 *
 * The steps run interleaved over rounds (bench/lib/rounds.ts). The CPU per
 * sign of this process and of its main thread (/proc) show what each piece
 * costs; the difference between F and the key server over a socket
 * (keyserver-sign.js) is the transport's share.
 *
 * Usage: node dist/bench/keyserver-ladder.js [--key ec|rsa] [--sessions N] [--depth N]
 *          [--rounds N] [--measure SEC] [--warmup SEC]
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import type pkcs11js from 'pkcs11js';
import { loadKeyserverConfig } from '../config/load.js';
import { createLogger } from '../keyserver/log.js';
import { unixIdentity } from '../keyserver/server/authz.js';
import { tokenOptions } from '../keyserver/server/daemon.js';
import { KeyStore } from '../keyserver/server/keystore.js';
import { KeyserverMetrics } from '../keyserver/server/metrics.js';
import { SigningService } from '../keyserver/server/service.js';
import { listKeys } from '../keyserver/token/keys.js';
import { SessionPool } from '../keyserver/token/session-pool.js';
import { signDigest, type SignRequest } from '../keyserver/token/sign.js';
import { Token } from '../keyserver/token/token.js';
import { AsnEcSignatureFormatter } from '../keyserver/x509.js';
import { BENCH_KEYS } from './lib/bench-keys.js';
import { KeyserverLab } from './lib/keyserver-lab.js';
import { describeMachine } from './lib/machine.js';
import { fmt, markdownTable } from './lib/report.js';
import { runRounds, type Scenario } from './lib/rounds.js';
import { ClosedLoopLoad, measureWindow, RawSignLoad, type SignLoad, type WindowResult } from './lib/sign-load.js';
import { median, spread } from './lib/stats.js';

/**
 * The what-if signer: worker threads that each own one session and run
 * C_SignInit + C_Sign synchronously. pkcs11js is loaded in every worker;
 * SoftHSM2 is initialised once per process, so a worker's C_Initialize gets
 * CKR_CRYPTOKI_ALREADY_INITIALIZED and carries on with the main thread's login
 * and session handles (PKCS#11 sessions belong to the process). Requests wait
 * in one queue; an idle worker takes up to 16 at once.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const pkcs11js = require(workerData.pkcs11jsPath);
const p = new pkcs11js.PKCS11();
p.load(workerData.module);
try { p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK }); } catch (e) { if (!/ALREADY_INITIALIZED/.test(e.message)) throw e; }
const session = Buffer.from(workerData.session);
const key = Buffer.from(workerData.key);
const out = Buffer.alloc(workerData.outputBytes);
parentPort.on('message', (batch) => {
  const answers = [];
  for (const [id, digest] of batch) {
    try {
      p.C_SignInit(session, workerData.mechanism, key);
      answers.push([id, Buffer.from(p.C_Sign(session, Buffer.from(digest), out)), null]);
    } catch (e) {
      answers.push([id, null, e.message]);
    }
  }
  parentPort.postMessage(answers);
});`;

class WorkerSigner {
  readonly #workers: Worker[];
  readonly #idle: Worker[];
  readonly #queue: [number, Buffer][] = [];
  readonly #pending = new Map<number, { resolve: (sig: Buffer) => void; reject: (err: Error) => void }>();
  #nextId = 0;

  constructor(count: number, data: { module: string; sessions: readonly pkcs11js.Handle[]; key: pkcs11js.Handle; mechanism: pkcs11js.Mechanism; outputBytes: number }) {
    const pkcs11jsPath = createRequire(import.meta.url).resolve('pkcs11js');
    this.#workers = Array.from(
      { length: count },
      (_, i) =>
        new Worker(WORKER_SOURCE, {
          eval: true,
          workerData: { pkcs11jsPath, module: data.module, session: data.sessions[i], key: data.key, mechanism: data.mechanism, outputBytes: data.outputBytes },
        }),
    );
    this.#idle = [...this.#workers];
    for (const worker of this.#workers) {
      worker.on('message', (answers: [number, Uint8Array | null, string | null][]) => {
        for (const [id, sig, err] of answers) {
          const pending = this.#pending.get(id);
          this.#pending.delete(id);
          if (err !== null || sig === null) pending?.reject(new Error(err ?? 'no signature'));
          else pending?.resolve(Buffer.from(sig));
        }
        this.#idle.push(worker);
        this.#pump();
      });
    }
  }

  sign(digest: Buffer): Promise<Buffer> {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#queue.push([id, digest]);
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) this.#idle.pop()!.postMessage(this.#queue.splice(0, 16));
  }

  close(): Promise<unknown> {
    return Promise.all(this.#workers.map((w) => w.terminate()));
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      key: { type: 'string', default: 'ec' },
      sessions: { type: 'string' },
      depth: { type: 'string', default: '128' },
      rounds: { type: 'string', default: '4' },
      measure: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '1' },
    },
  });
  const key = BENCH_KEYS.find((k) => k.id === values.key);
  if (key === undefined) throw new Error(`--key must be ${BENCH_KEYS.map((k) => k.id).join(' or ')}`);
  // The product default (config/schema.ts): one session per core, at least two.
  const sessions = values.sessions !== undefined ? Number(values.sessions) : Math.max(2, os.availableParallelism());
  const depth = Number(values.depth);
  const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  if (threads < sessions) process.stderr.write(`warning: UV_THREADPOOL_SIZE=${threads} < ${sessions} sessions; set it (the keyedge launcher uses sessions + 4)\n`);

  const lab = new KeyserverLab();
  process.on('exit', () => lab.cleanup());
  process.on('SIGINT', () => process.exit(130));
  let token: Token | undefined;
  let pool: SessionPool | undefined;
  let workers: WorkerSigner | undefined;
  const rawSessions: pkcs11js.Handle[] = [];
  try {
    const keyIdHex = await lab.generateKey(key.type, key.label);
    const keyId = Buffer.from(keyIdHex, 'hex');
    const openOptions = tokenOptions(loadKeyserverConfig(lab.configPath));
    token = Token.open(openOptions);
    const t = token;
    const tokenKey = listKeys(t).find((k) => k.keyId === keyIdHex)!;
    const log = createLogger('ladder', 'silent');
    const metrics = new KeyserverMetrics();
    pool = new SessionPool(t, sessions);
    const p = pool;
    const keys = new KeyStore(t, log, () => undefined);
    const service = new SigningService({ token: t, pool: p, keys, metrics, log, requestTimeoutMs: 2000 });
    const client = unixIdentity('*');
    const formatter = new AsnEcSignatureFormatter();
    const digest = randomBytes(32);
    const request: SignRequest = { scheme: key.id === 'ec' ? 'ecdsa' : 'rsa-pss', hash: 'sha256', digest };
    const pkcs11 = t.pkcs11;
    for (let i = 0; i < sessions; i++) rawSessions.push(t.openSession());
    const handles = rawSessions;

    const workerSessions = Array.from({ length: sessions }, () => t.openSession());
    rawSessions.push(...workerSessions);
    workers = new WorkerSigner(sessions, { module: openOptions.modulePath, sessions: workerSessions, key: tokenKey.privateHandle, mechanism: key.mechanism, outputBytes: key.outputBytes });
    const w = workers;
    const pooled = async (signal: AbortSignal | undefined): Promise<Buffer> => {
      const session = await p.acquire(signal);
      try {
        return await signDigest(pkcs11, session, tokenKey, request);
      } finally {
        p.release(session);
      }
    };
    const steps: { name: string; what: string; load: SignLoad }[] = [
      {
        name: 'A raw-cb',
        what: 'C_SignInit + C_Sign(callback), 1 loop/session',
        load: new RawSignLoad(pkcs11, handles, { handle: tokenKey.privateHandle, mechanism: key.mechanism, outputBytes: key.outputBytes }, [digest]),
      },
      {
        name: 'B raw-async',
        what: 'C_SignInit + await C_SignAsync, 1 loop/session',
        load: new ClosedLoopLoad(sessions, (i) => {
          pkcs11.C_SignInit(handles[i]!, key.mechanism, tokenKey.privateHandle);
          return pkcs11.C_SignAsync(handles[i]!, digest, Buffer.allocUnsafe(key.outputBytes));
        }),
      },
      { name: 'C pool', what: `${depth} loops: SessionPool + signDigest()`, load: new ClosedLoopLoad(depth, () => pooled(undefined)) },
      { name: 'D +abort', what: 'C + AbortController signal to acquire()', load: new ClosedLoopLoad(depth, () => pooled(new AbortController().signal)) },
      {
        name: 'E +der',
        what: key.id === 'ec' ? 'D + AsnEcSignatureFormatter r||s -> DER' : 'D (no DER step for RSA)',
        load: new ClosedLoopLoad(depth, async () => {
          const raw = await pooled(new AbortController().signal);
          if (key.id === 'ec') Buffer.from(formatter.toAsnSignature({ name: 'ECDSA', namedCurve: 'P-256' } as EcKeyAlgorithm, new Uint8Array(raw))!);
        }),
      },
      {
        name: 'F service',
        what: 'SigningService.handle()',
        load: new ClosedLoopLoad(depth, async (i) => {
          const response = await service.handle({ op: 'sign', id: i, keyId, algorithm: key.algorithm, digest }, client);
          if (response.op !== 'signature') throw new Error(`service answered ${response.op}`);
        }),
      },
      { name: 'W workers', what: `what-if: SignInit + Sign in ${sessions} worker_threads`, load: new ClosedLoopLoad(depth, () => w.sign(digest)) },
    ];
    const scenarios: Scenario<WindowResult>[] = steps.map((s) => ({
      name: s.name,
      run: (durationMs) => measureWindow(s.load, { durationMs, rampMs: 300, selfMainThread: true }),
    }));
    process.stderr.write(`${key.title}: ${sessions} sessions, ${depth} in flight for C-F, libuv threads ${threads}\n`);
    const { results } = await runRounds(scenarios, {
      rounds: Number(values.rounds),
      warmupMs: Number(values.warmup) * 1000,
      measureMs: Number(values.measure) * 1000,
      settleMs: 200,
      onRun: ({ scenario, context, result }) =>
        process.stderr.write(
          `${context.phase === 'warmup' ? 'warm-up' : `round ${context.round + 1}`} ${scenario.padEnd(12)} ${fmt(result.signsPerSecond).padStart(7)} signs/s ${fmt(result.clientCpuUsPerSign, 0)} µs/sign (main ${fmt(result.clientMainThreadUsPerSign ?? Number.NaN, 0)}) others ${fmt(result.machine.otherCores, 2)} cores\n`,
        ),
    });
    const machine = describeMachine();
    const rows = steps.map((s) => {
      const r = results.get(s.name)!;
      const rate = spread(r.map((x) => x.signsPerSecond));
      const cpu = median(r.map((x) => x.clientCpuUsPerSign));
      const main = median(r.map((x) => x.clientMainThreadUsPerSign ?? Number.NaN));
      return [s.name, s.what, fmt(rate.median), `${fmt(rate.min)}–${fmt(rate.max)}`, fmt(cpu, 0), fmt(main, 0), fmt(median(r.map((x) => x.machine.otherCores)), 2)];
    });
    process.stdout.write(
      [
        `# key server signing path, step by step: ${key.title}`,
        '',
        `${machine.cpuModel}, ${machine.cores} cores, Node ${machine.node}, SoftHSM2 ${machine.softhsm2 ?? '?'}; ${sessions} sessions, ${depth} in flight (C-F), ${values.rounds} rounds of ${values.measure} s`,
        '',
        markdownTable(
          ['step', 'what', 'signs/s (median)', 'min–max', 'CPU µs/sign', 'main thread µs/sign', 'others (cores)'],
          rows,
          ['left', 'left', 'right', 'right', 'right', 'right', 'right'],
        ),
        '',
      ].join('\n'),
    );
    return 0;
  } finally {
    await workers?.close();
    pool?.close();
    if (token !== undefined) {
      for (const s of rawSessions) token.closeSession(s);
      token.close();
    }
    lab.cleanup();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`keyserver-ladder: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
