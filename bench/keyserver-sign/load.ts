/**
 * The key types keyserver-sign signs with, its closed-loop signing loads (harness/stats.ts) and their measuring window:
 * - RawSignLoad: pkcs11js here, one loop per session, C_SignInit then C_Sign in its callback form (on a libuv pool
 *   thread): the ceiling the token allows.
 * - PipelinedSignLoad: the lean key-server client (bench/README.md, "Which client, and why"): `depth` pre-encoded SIGN
 *   frames in flight per connection, the requests one read triggers in one corked write, so the server's cost shows.
 * - measureWindow: every counter read at both ends of a window while the load runs: ramp-up and drain stay out.
 */
import type net from 'node:net';
import pkcs11js from 'pkcs11js';
import { loadKeyserverConfig } from '../../config/load.js';
import type { KeyserverConfig } from '../../config/schema.js';
import { decodeResponse, encodeRequest } from '../../keyserver/protocol/codec.js';
import type { AlgorithmByte } from '../../keyserver/protocol/constants.js';
import { FrameReader } from '../../keyserver/protocol/framer.js';
import { tokenOptions } from '../../keyserver/server/daemon.js';
import { listKeys } from '../../keyserver/token/keys.js';
import { Token } from '../../keyserver/token/token.js';
import { delta, perUnit, snapshot, threadCpu, totalUs, usageBetween } from '../harness/proc-cpu.js';
import { sleep } from '../harness/rounds.js';
import { ClosedLoop, nowNs } from '../harness/stats.js';

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
