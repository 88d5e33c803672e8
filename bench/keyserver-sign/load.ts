/**
 * What keyserver-sign signs with and how it measures (main.ts, profile.ts): the key types; the rig (the lab's token
 * opened here, the key server started); closed-loop loads (harness/stats.ts) on a target: raw (RawSignLoad: pkcs11js
 * here, one C_SignInit + C_Sign loop per session, the sign on a libuv pool thread: the token's ceiling), unix or tls
 * (PipelinedSignLoad: the lean client, bench/README.md "Which client, and why"); measureWindow, every counter read at
 * both ends of a window while the load runs (ramp-up and drain stay out); the scenarios and the one-in-flight latency.
 */
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import os from 'node:os';
import pkcs11js from 'pkcs11js';
import { loadKeyserverConfig } from '../../config/load.js';
import type { KeyserverConfig } from '../../config/schema.js';
import { decodeResponse, encodeRequest } from '../../keyserver/protocol/codec.js';
import { Algorithm, type AlgorithmByte } from '../../keyserver/protocol/constants.js';
import { FrameReader } from '../../keyserver/protocol/framer.js';
import { tokenOptions } from '../../keyserver/token/open-options.js';
import { listKeys } from '../../keyserver/token/keys.js';
import { Token } from '../../keyserver/token/token.js';
import { delta, perUnit, snapshot, threadCpu, totalUs, usageBetween } from '../harness/proc-cpu.js';
import { fmt } from '../harness/report.js';
import { type RunContext, sleep } from '../harness/rounds.js';
import type { Log } from '../harness/runner.js';
import { ClosedLoop, nowNs } from '../harness/stats.js';
import { connectTls, connectUnix, type KeyserverLab } from '../lab/keyserver.js';

/**
 * mechanism: raw signing's (as keyserver/token/sign.ts); outputBytes: the raw signature's size (r||s, or the modulus);
 * pipeline: the key server's C connections × D in flight, what the former exploration chose
 * (bench/results/2026-12-0[34]-keyserver-sign.md): ECDSA gains up to 4x64, RSA is flat from 1x64 (within 3%).
 */
export const BENCH_KEYS = [
  {
    id: 'ec',
    title: 'ECDSA P-256',
    type: 'ec-p256',
    algorithm: 'ECDSA_SHA256',
    mechanism: { mechanism: pkcs11js.CKM_ECDSA },
    outputBytes: 64,
    pipeline: '4x64',
  },
  {
    id: 'rsa',
    title: 'RSA-2048',
    type: 'rsa-2048',
    algorithm: 'RSA_PSS_SHA256',
    // Salt = hash length, MGF1 with the same hash: RFC 8446 §4.2.3, as sign.ts.
    mechanism: {
      mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
      parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 } as pkcs11js.RsaPSS,
    },
    outputBytes: 256,
    pipeline: '2x64',
  },
] as const;

export type BenchKey = (typeof BENCH_KEYS)[number];

/** Raw sessions: cores and 2 × cores; the faster is the ceiling. */
export const RAW_SESSION_COUNTS = [...new Set([os.availableParallelism(), 2 * os.availableParallelism()])];

/** C connections to the key server, D requests in flight on each. */
export type Pipeline = { readonly connections: number; readonly depth: number };

export const pipelineName = (p: Pipeline): string => `${p.connections}x${p.depth}`;

export function parsePipeline(text: string): Pipeline {
  const m = /^(\d+)x(\d+)$/.exec(text);
  if (m === null || Number(m[1]) < 1 || Number(m[2]) < 1) throw new Error(`a pipeline setting looks like 2x32 (connections x in flight), got '${text}'`);
  return { connections: Number(m[1]), depth: Number(m[2]) };
}

/** What a load signs through: `sessions` raw sessions in this process, or the key server over `path`. */
export type Target = { readonly path: 'raw'; readonly sessions: number } | { readonly path: 'unix' | 'tls'; readonly pipeline: Pipeline };
export type Path = Target['path'];

class RawSignLoad extends ClosedLoop {
  constructor(
    readonly pkcs11: pkcs11js.PKCS11,
    readonly sessions: readonly pkcs11js.Handle[],
    readonly handle: pkcs11js.Handle,
    readonly key: BenchKey,
    readonly digests: readonly Buffer[],
  ) {
    super();
  }

  protected begin(): void {
    this.outstanding = this.sessions.length;
    for (const [i, session] of this.sessions.entries()) this.#loop(session, this.digests[i % this.digests.length]!, Buffer.alloc(this.key.outputBytes));
  }

  #loop(session: pkcs11js.Handle, digest: Buffer, out: Buffer): void {
    if (this.stopped) return this.retire();
    const started = nowNs();
    try {
      this.pkcs11.C_SignInit(session, this.key.mechanism, this.handle);
    } catch (err) {
      this.done(started, (err as Error).message);
      return this.retire(); // a session that cannot init will not recover in a benchmark
    }
    this.pkcs11.C_Sign(session, digest, out, (err: Error | null) => {
      this.done(started, err?.message);
      if (err !== null) return this.retire();
      this.#loop(session, digest, out);
    });
  }
}

/** The key server's token opened in this process (one PKCS#11 module per process: one per run) with `sessions` sessions. */
export class RawToken {
  readonly config: KeyserverConfig;
  readonly token: Token;
  readonly sessions: pkcs11js.Handle[] = [];

  constructor(configPath: string, sessions: number) {
    this.config = loadKeyserverConfig(configPath);
    this.token = Token.open(tokenOptions(this.config));
    for (let i = 0; i < sessions; i++) this.sessions.push(this.token.openSession());
  }

  /** A load signing with the key `keyId` (hex), with `key`'s mechanism, on the first `sessions` sessions. */
  load(keyId: string, key: BenchKey, sessions: number, digests: readonly Buffer[]): RawSignLoad {
    const handle = listKeys(this.token).find((k) => k.keyId === keyId)!.privateHandle;
    return new RawSignLoad(this.token.pkcs11, this.sessions.slice(0, sessions), handle, key, digests);
  }

  close(): void {
    for (const s of this.sessions) this.token.closeSession(s);
    this.token.close();
  }
}

/** `spec`: what it signs; slot i of connection c signs digests[(c × depth + i) % length]. */
export class PipelinedSignLoad extends ClosedLoop {
  readonly #frames: Buffer[][];
  readonly #started: Float64Array[];

  constructor(
    readonly sockets: readonly net.Socket[],
    spec: { readonly keyId: Buffer; readonly algorithm: AlgorithmByte; readonly digests: readonly Buffer[] },
    readonly depth: number,
  ) {
    super();
    const frame = (c: number, id: number) =>
      encodeRequest({ op: 'sign', id, keyId: spec.keyId, algorithm: spec.algorithm, digest: spec.digests[(c * depth + id) % spec.digests.length]! });
    this.#frames = sockets.map((_, c) => Array.from({ length: depth }, (_, id) => frame(c, id)));
    this.#started = sockets.map(() => new Float64Array(depth));
    sockets.forEach((socket, c) => {
      const reader = new FrameReader({ maxBodyBytes: 16384, onFrame: (f) => this.#onFrame(c, f), onError: (err) => socket.destroy(err) });
      socket.on('data', (chunk: Buffer) => {
        socket.cork();
        reader.push(chunk);
        socket.uncork();
      });
      socket.on('close', () => {
        if (!this.stopped) this.done(0, `connection ${c} closed by the key server`);
      });
    });
  }

  protected begin(): void {
    this.outstanding = this.sockets.length * this.depth;
    this.sockets.forEach((socket, c) => {
      socket.cork();
      for (let slot = 0; slot < this.depth; slot++) this.#send(c, slot);
      socket.uncork();
    });
  }

  #send(c: number, slot: number): void {
    this.#started[c]![slot] = nowNs();
    this.sockets[c]!.write(this.#frames[c]![slot]!);
  }

  #onFrame(c: number, frame: Buffer): void {
    let error: string | undefined;
    let slot: number;
    try {
      const response = decodeResponse(frame);
      slot = response.id;
      if (response.op === 'error') error = `key server error ${response.code}: ${response.detail}`;
      else if (response.op !== 'signature') error = `unexpected ${response.op} answer`;
    } catch (err) {
      error = `undecodable answer: ${(err as Error).message}`;
      slot = frame.length >= 8 ? frame.readUInt32BE(4) : 0;
    }
    if (slot >= this.depth) return this.done(0, `answer for unknown request id ${slot}`);
    this.done(this.#started[c]![slot]!, error);
    if (this.stopped) this.retire();
    else this.#send(c, slot);
  }
}

/** One window's figures (bench/README.md, "What the figures mean"): CPU per sign in µs, cores in cores of the window. */
export type WindowResult = Awaited<ReturnType<typeof measureWindow>>;

/**
 * Starts `load`, measures a window of `durationMs` after `rampMs`, stops it and waits for it to drain; `serverPid`: the
 * key server's, absent for in-process loads.
 */
export async function measureWindow(load: ClosedLoop, o: { durationMs: number; rampMs: number; serverPid?: number; signal?: AbortSignal }) {
  const pid = o.serverPid;
  const server = [{ name: 'server', roots: () => (pid === undefined ? [] : [pid]) }];
  // The key server's threads: main = JavaScript, framing, socket syscalls; others = the signing workers, V8's helpers.
  const read = () => ({ completed: load.completed, errors: load.errors, cpu: snapshot(server), threads: pid === undefined ? undefined : threadCpu(pid) });
  const window = async () => {
    await sleep(o.rampMs, o.signal);
    const a = read();
    load.recording = true;
    await sleep(o.durationMs, o.signal);
    load.recording = false;
    return [a, read()] as const;
  };
  load.latency.reset();
  load.start();
  // Requests still outstanding when stop() gave up waiting (should be 0).
  let undrained = 0;
  const [a, b] = await window().finally(async () => void (undrained = await load.stop()));
  if (undrained > 0) process.stderr.write(`warning: ${undrained} requests still outstanding after stop\n`);
  const usage = usageBetween(a.cpu, b.cpu);
  const signs = b.completed - a.completed;
  const { per, cores, otherCores } = perUnit(usage, signs);
  const perSign = (us: number) => (signs > 0 ? us / signs : Number.NaN);
  const thread = (pick: 'main' | 'others') => perSign(totalUs(delta(a.threads![pick], b.threads![pick])));
  const s = usage.groups.server!;
  return {
    signs,
    errors: b.errors - a.errors,
    firstError: load.firstError,
    seconds: usage.seconds,
    signsPerSecond: signs / usage.seconds,
    latency: load.latency.summary(),
    clientCpuUsPerSign: perSign(totalUs(delta(a.cpu.self, b.cpu.self))),
    clientCpuCores: usage.selfCores,
    machine: { busyCores: usage.machineBusyCores, stealCores: usage.stealCores, otherCores },
    server:
      pid === undefined
        ? undefined
        : {
            cpuUsPerSign: per('server'),
            userUsPerSign: perSign(s.userUs),
            systemUsPerSign: perSign(s.systemUs),
            mainThreadUsPerSign: thread('main'),
            otherThreadsUsPerSign: thread('others'),
            cpuCores: cores('server'),
          },
    undrained,
  };
}

/** What the scenarios sign with: the raw token opened in this process, the key server; `keyIds`: hex by BenchKey id. */
export type SignRig = Awaited<ReturnType<typeof startRig>>;

/** Generates `keys` in the lab's token, opens it here with `rawSessions` sessions (if given) and starts the key server with `nodeArgs`. */
export async function startRig(lab: KeyserverLab, keys: readonly BenchKey[], o: { rampMs: number; nodeArgs?: string[]; rawSessions?: number }, log: Log) {
  const keyIds = new Map<string, string>();
  for (const key of keys) {
    keyIds.set(key.id, await lab.generateKey(key.type, `bench-${key.type}`));
    log(`generated ${key.title} key ${keyIds.get(key.id)!.slice(0, 16)}… with keyedge key generate`);
  }
  const raw = o.rawSessions === undefined ? undefined : new RawToken(lab.configPath, o.rawSessions);
  const server = await lab.startServer({ nodeArgs: o.nodeArgs ?? [] });
  log(`key server pid ${server.pid}, unix ${server.unixPath}, tcp 127.0.0.1:${server.tcpPort}, sessions ${raw?.config.pkcs11.sessions ?? 'default'}`);
  return { lab, raw, server, digests: Array.from({ length: 16 }, () => randomBytes(32)), keyIds, rampMs: o.rampMs };
}

/** A load on `target`, with the key server's pid for its CPU (none for raw) and what closes its connections. */
export async function openLoad(rig: SignRig, key: BenchKey, target: Target) {
  const keyId = rig.keyIds.get(key.id)!;
  if (target.path === 'raw') return { load: rig.raw!.load(keyId, key, target.sessions, rig.digests), serverPid: undefined, close: () => undefined };
  const { lab, server } = rig;
  const sockets: net.Socket[] = [];
  const close = () => sockets.forEach((socket) => void socket.destroy());
  try {
    for (let i = 0; i < target.pipeline.connections; i++)
      sockets.push(target.path === 'unix' ? await connectUnix(server.unixPath) : await connectTls(server.tcpPort, lab.tls));
    const spec = { keyId: Buffer.from(keyId, 'hex'), algorithm: Algorithm[key.algorithm], digests: rig.digests };
    return { load: new PipelinedSignLoad(sockets, spec, target.pipeline.depth), serverPid: server.pid, close };
  } catch (err) {
    close();
    throw err;
  }
}

export type BenchScenario = ReturnType<typeof benchScenario>;

/** Opens its load at the first run and keeps it (the proxy keeps its connections); `setting`: "N sessions" or "CxD". */
export function benchScenario(rig: SignRig, key: BenchKey, target: Target) {
  let opened: Awaited<ReturnType<typeof openLoad>> | undefined;
  const raw = target.path === 'raw';
  return {
    name: raw ? `raw-${key.id}-${target.sessions}s` : `${target.path}-${key.id}`,
    key,
    path: target.path,
    setting: raw ? `${target.sessions} sessions` : pipelineName(target.pipeline),
    async run(durationMs: number, { signal }: Pick<RunContext, 'signal'>) {
      opened ??= await openLoad(rig, key, target);
      return measureWindow(opened.load, { durationMs, rampMs: rig.rampMs, serverPid: opened.serverPid, signal });
    },
    close: () => opened?.close(),
  };
}

/** One request in flight on an idle key server (raw: one session): the round trip one handshake waits for. */
export async function idleLatency(rig: SignRig, key: BenchKey, path: Path, durationMs: number, signal: AbortSignal, log: Log) {
  signal.throwIfAborted();
  const scenario = benchScenario(rig, key, path === 'raw' ? { path, sessions: 1 } : { path, pipeline: { connections: 1, depth: 1 } });
  const r = await scenario.run(durationMs, { signal }).finally(() => scenario.close());
  log(`idle latency ${key.id} ${path.padEnd(4)} p50 ${fmt(r.latency.p50Us)} p99 ${fmt(r.latency.p99Us)} µs (${fmt(r.signsPerSecond)} signs/s, 1 in flight)`);
  return { key: key.title as string, path, signsPerSecond: r.signsPerSecond, p50Us: r.latency.p50Us, p99Us: r.latency.p99Us, errors: r.errors };
}
