/**
 * Closed-loop signing loads and the measuring window around them.
 *
 * A load keeps a fixed number of signatures outstanding and starts a new one
 * as each finishes, until stopped:
 * - RawSignLoad: pkcs11js in this process, one loop per PKCS#11 session,
 *   C_SignInit then C_Sign in pkcs11js's callback form (the C_Sign runs on a
 *   libuv pool thread). Nothing else: the ceiling the token allows.
 * - PipelinedSignLoad: a lean key-server client over already-connected
 *   sockets (unix or TLS), `depth` requests in flight per connection. Each
 *   in-flight slot has its own request id and a pre-encoded SIGN frame (the
 *   project's codec), so sending costs one write and no allocation; answers
 *   go through the project's FrameReader and decodeResponse, and every answer
 *   must be a SIGNATURE (anything else counts as an error).
 * - LibraryClientSignLoad: the same over the project's KeyserverClient
 *   (promise, timer and Map entry per request): what the CLI and tests use.
 *
 * `measureWindow` lets a load ramp up, then takes the window's figures from
 * counters and CPU readings at its two ends while the load keeps running, so
 * neither the ramp-up nor the drain is in the figures.
 */
import type net from 'node:net';
import type pkcs11js from 'pkcs11js';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import { decodeResponse, encodeRequest } from '../../keyserver/protocol/codec.js';
import type { AlgorithmByte } from '../../keyserver/protocol/constants.js';
import { FrameReader } from '../../keyserver/protocol/framer.js';
import { type CpuTimes, delta, machineCpu, procCpu, selfCpu, threadCpu, totalUs } from '../harness/proc-cpu.js';
import { sleep } from '../harness/rounds.js';
import { ClosedLoop, nowNs } from '../harness/loop.js';
import type { LatencyRecorder, LatencySummary } from '../harness/stats.js';

export interface SignLoad {
  /** Signatures completed successfully so far. */
  readonly completed: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  /** While true, each completed request's latency is recorded. */
  recording: boolean;
  readonly latency: LatencyRecorder;
  start(): void;
  /** Cumulative load-specific counters (e.g. time spent in C_SignInit); measureWindow reports their deltas per sign. */
  counters(): Record<string, number>;
  /** Stops issuing and resolves once nothing is outstanding (or after `timeoutMs`, with the count still out). */
  stop(timeoutMs?: number): Promise<number>;
}

/** The shared loop bookkeeping, plus the load-specific counters measureWindow reports per sign. */
abstract class LoadBase extends ClosedLoop implements SignLoad {
  counters(): Record<string, number> {
    return {};
  }
}

export interface RawKey {
  readonly handle: pkcs11js.Handle;
  readonly mechanism: pkcs11js.Mechanism;
  /** Signature buffer size: 2 × field bytes (ECDSA r||s) or the modulus bytes (RSA). */
  readonly outputBytes: number;
}

/** One back-to-back C_SignInit + async C_Sign loop per session. */
export class RawSignLoad extends LoadBase {
  readonly #pkcs11: pkcs11js.PKCS11;
  readonly #sessions: readonly pkcs11js.Handle[];
  readonly #key: RawKey;
  readonly #digests: readonly Buffer[];
  /** Nanoseconds spent inside C_SignInit, which pkcs11js runs synchronously on this (the main) thread. */
  #signInitNs = 0;

  constructor(pkcs11: pkcs11js.PKCS11, sessions: readonly pkcs11js.Handle[], key: RawKey, digests: readonly Buffer[]) {
    super();
    this.#pkcs11 = pkcs11;
    this.#sessions = sessions;
    this.#key = key;
    this.#digests = digests;
  }

  protected begin(): void {
    this.outstanding = this.#sessions.length;
    this.#sessions.forEach((session, i) => void this.#loop(session, this.#digests[i % this.#digests.length]!, Buffer.alloc(this.#key.outputBytes)));
  }

  #loop(session: pkcs11js.Handle, digest: Buffer, out: Buffer): void {
    if (this.stopped) return this.retire();
    const started = nowNs();
    try {
      this.#pkcs11.C_SignInit(session, this.#key.mechanism, this.#key.handle);
    } catch (err) {
      this.done(started, (err as Error).message);
      return this.retire(); // a session that cannot init will not recover in a benchmark
    }
    this.#signInitNs += nowNs() - started;
    this.#pkcs11.C_Sign(session, digest, out, (err: Error | null) => {
      this.done(started, err === null ? undefined : err.message);
      if (err !== null) return this.retire();
      this.#loop(session, digest, out);
    });
  }

  override counters(): Record<string, number> {
    return { signInitUs: this.#signInitNs / 1e3 };
  }
}

export interface SignRequestSpec {
  readonly keyId: Buffer;
  readonly algorithm: AlgorithmByte;
  /** Digests to sign; slot i uses digests[i % length]. */
  readonly digests: readonly Buffer[];
}

/** The lean pipelining client: pre-encoded frames, id = slot, corked writes per read. */
export class PipelinedSignLoad extends LoadBase {
  readonly #sockets: readonly net.Socket[];
  readonly #depth: number;
  readonly #frames: Buffer[][];
  readonly #started: Float64Array[];

  constructor(sockets: readonly net.Socket[], spec: SignRequestSpec, depth: number) {
    super();
    this.#sockets = sockets;
    this.#depth = depth;
    this.#frames = sockets.map((_, c) =>
      Array.from({ length: depth }, (_, slot) =>
        encodeRequest({ op: 'sign', id: slot, keyId: spec.keyId, algorithm: spec.algorithm, digest: spec.digests[(c * depth + slot) % spec.digests.length]! }),
      ),
    );
    this.#started = sockets.map(() => new Float64Array(depth));
    sockets.forEach((socket, c) => {
      const reader = new FrameReader({
        maxBodyBytes: 16384,
        onFrame: (frame) => this.#onFrame(c, frame),
        onError: (err) => socket.destroy(err),
      });
      // Answers arriving together are followed by one write of all the new requests.
      socket.on('data', (chunk: Buffer) => {
        socket.cork();
        reader.push(chunk);
        socket.uncork();
      });
      socket.on('close', () => {
        if (!this.stopped) {
          this.errors++;
          this.firstError ??= `connection ${c} closed by the key server`;
        }
      });
    });
  }

  protected begin(): void {
    this.outstanding = this.#sockets.length * this.#depth;
    this.#sockets.forEach((socket, c) => {
      socket.cork();
      for (let slot = 0; slot < this.#depth; slot++) this.#send(c, slot);
      socket.uncork();
    });
  }

  #send(c: number, slot: number): void {
    this.#started[c]![slot] = nowNs();
    this.#sockets[c]!.write(this.#frames[c]![slot]!);
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
    if (slot >= this.#depth) {
      this.errors++;
      this.firstError ??= `answer for unknown request id ${slot}`;
      return;
    }
    this.done(this.#started[c]![slot]!, error);
    if (this.stopped) this.retire();
    else this.#send(c, slot);
  }
}

/** `depth` concurrent loops per KeyserverClient, each awaiting client.sign(). */
export class LibraryClientSignLoad extends LoadBase {
  readonly #clients: readonly KeyserverClient[];
  readonly #spec: SignRequestSpec;
  readonly #depth: number;

  constructor(clients: readonly KeyserverClient[], spec: SignRequestSpec, depth: number) {
    super();
    this.#clients = clients;
    this.#spec = spec;
    this.#depth = depth;
  }

  protected begin(): void {
    this.outstanding = this.#clients.length * this.#depth;
    this.#clients.forEach((client, c) => {
      for (let slot = 0; slot < this.#depth; slot++) void this.#loop(client, this.#spec.digests[(c * this.#depth + slot) % this.#spec.digests.length]!);
    });
  }

  async #loop(client: KeyserverClient, digest: Buffer): Promise<void> {
    while (!this.stopped) {
      const started = nowNs();
      try {
        await client.sign(this.#spec.keyId, this.#spec.algorithm, digest);
        this.done(started, undefined);
      } catch (err) {
        this.done(started, (err as Error).message);
        if ((err as { code?: string }).code === 'KEYEDGE_ERR_CLOSED') break;
      }
    }
    this.retire();
  }
}

export interface WindowOptions {
  readonly durationMs: number;
  /** Load runs this long before the window opens. */
  readonly rampMs: number;
  /** The key server's pid, for its CPU time; undefined for in-process loads. */
  readonly serverPid?: number;
  readonly signal?: AbortSignal;
}

export interface WindowResult {
  readonly signs: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  readonly seconds: number;
  readonly signsPerSecond: number;
  readonly latency: LatencySummary;
  /** This (bench) process: process.cpuUsage() delta per sign. For raw loads that includes the token's work. */
  readonly clientCpuUsPerSign: number;
  /** Cores' worth of CPU this process used during the window. */
  readonly clientCpuCores: number;
  readonly server?: {
    /** utime+stime of the key server process per sign, from /proc/<pid>/stat. */
    readonly cpuUsPerSign: number;
    readonly userUsPerSign: number;
    readonly systemUsPerSign: number;
    /** Main thread (JavaScript, socket syscalls) per sign, from /proc/<pid>/task/<pid>/stat. */
    readonly mainThreadUsPerSign: number;
    /** All other threads (libuv pool: C_Sign; V8: GC) per sign. */
    readonly otherThreadsUsPerSign: number;
    readonly cpuCores: number;
  };
  /**
   * The whole machine during the window, in cores: busy (any process), idle, stolen by the hypervisor, and
   * `otherCores`: busy minus this process and the key server, i.e. load from anything else sharing the machine.
   */
  readonly machine: { readonly busyCores: number; readonly idleCores: number; readonly stealCores: number; readonly otherCores: number };
  /** Load-specific counters per sign (RawSignLoad: signInitUs, the main-thread time in C_SignInit). */
  readonly perSign: Record<string, number>;
  /** Requests still outstanding when stop() gave up waiting (should be 0). */
  readonly undrained: number;
}

/** Starts `load`, measures a window of `durationMs` after `rampMs`, stops it and waits for it to drain. */
export async function measureWindow(load: SignLoad, options: WindowOptions): Promise<WindowResult> {
  load.latency.reset();
  load.start();
  let result: Omit<WindowResult, 'undrained'>;
  let undrained = 0;
  try {
    await sleep(options.rampMs, options.signal);
    const pid = options.serverPid;
    const t0 = nowNs();
    const c0 = load.completed;
    const e0 = load.errors;
    const self0 = selfCpu();
    const machine0 = machineCpu();
    const server0 = pid !== undefined ? procCpu(pid) : undefined;
    const threads0 = pid !== undefined ? threadCpu(pid) : undefined;
    const counters0 = load.counters();
    load.recording = true;
    await sleep(options.durationMs, options.signal);
    load.recording = false;
    const t1 = nowNs();
    const c1 = load.completed;
    const e1 = load.errors;
    const self1 = selfCpu();
    const machine1 = machineCpu();
    const server1 = pid !== undefined ? procCpu(pid) : undefined;
    const threads1 = pid !== undefined ? threadCpu(pid) : undefined;
    const counters1 = load.counters();

    const seconds = (t1 - t0) / 1e9;
    const signs = c1 - c0;
    const per = (t: CpuTimes) => (signs > 0 ? totalUs(t) / signs : Number.NaN);
    const client = delta(self0, self1);
    let server: WindowResult['server'];
    if (server0 !== undefined && server1 !== undefined && threads0 !== undefined && threads1 !== undefined) {
      const s = delta(server0, server1);
      server = {
        cpuUsPerSign: per(s),
        userUsPerSign: signs > 0 ? s.userUs / signs : Number.NaN,
        systemUsPerSign: signs > 0 ? s.systemUs / signs : Number.NaN,
        mainThreadUsPerSign: per(delta(threads0.main, threads1.main)),
        otherThreadsUsPerSign: per(delta(threads0.others, threads1.others)),
        cpuCores: totalUs(s) / 1e6 / seconds,
      };
    }
    const busyCores = (machine1.busyUs - machine0.busyUs) / 1e6 / seconds;
    result = {
      signs,
      errors: e1 - e0,
      firstError: load.firstError,
      seconds,
      signsPerSecond: signs / seconds,
      latency: load.latency.summary(),
      clientCpuUsPerSign: per(client),
      clientCpuCores: totalUs(client) / 1e6 / seconds,
      machine: {
        busyCores,
        idleCores: (machine1.idleUs - machine0.idleUs) / 1e6 / seconds,
        stealCores: (machine1.stealUs - machine0.stealUs) / 1e6 / seconds,
        otherCores: Math.max(0, busyCores - totalUs(client) / 1e6 / seconds - (server?.cpuCores ?? 0)),
      },
      perSign: Object.fromEntries(Object.entries(counters1).map(([k, v]) => [k, signs > 0 ? (v - (counters0[k] ?? 0)) / signs : Number.NaN])),
      ...(server !== undefined ? { server } : {}),
    };
  } finally {
    undrained = await load.stop();
    if (undrained > 0) process.stderr.write(`warning: ${undrained} requests still outstanding after stop\n`);
  }
  return { ...result, undrained };
}
