/**
 * Closed-loop signing loads (harness/stats.ts) and the measuring window around them:
 * - RawSignLoad: pkcs11js in this process, one loop per session, C_SignInit then C_Sign in its callback form (the sign
 *   runs on a libuv pool thread): the ceiling the token allows.
 * - PipelinedSignLoad: the lean key-server client over connected sockets, `depth` requests in flight per connection,
 *   one pre-encoded SIGN frame per slot (id = slot), answers cut by the project's FrameReader and checked by
 *   decodeResponse, the requests one read triggers sent in one corked write: as little client CPU as possible, so the
 *   server's cost is what shows.
 * - LibraryClientSignLoad: the project's KeyserverClient (a promise, timer and Map entry per request), what the CLI and
 *   tests use.
 * `measureWindow` reads every counter at both ends of a window while the load keeps running, so ramp-up and drain stay
 * out of the figures.
 */
import type net from 'node:net';
import type pkcs11js from 'pkcs11js';
import { loadKeyserverConfig } from '../../config/load.js';
import type { KeyserverConfig } from '../../config/schema.js';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import { decodeResponse, encodeRequest } from '../../keyserver/protocol/codec.js';
import type { AlgorithmByte } from '../../keyserver/protocol/constants.js';
import { FrameReader } from '../../keyserver/protocol/framer.js';
import { tokenOptions } from '../../keyserver/server/daemon.js';
import { listKeys, type TokenKey } from '../../keyserver/token/keys.js';
import { Token } from '../../keyserver/token/token.js';
import { ClosedLoop, nowNs } from '../harness/stats.js';
import { type CpuTimes, delta, machineCpu, procCpu, selfCpu, type ThreadCpu, threadCpu, totalUs } from '../harness/proc-cpu.js';
import { sleep } from '../harness/rounds.js';
import type { BenchKey } from './keys.js';

/** A signing load: a closed loop, with load-specific cumulative counters that measureWindow reports per sign. */
export type SignLoad = ClosedLoop & { counters?(): Record<string, number> };

export class RawSignLoad extends ClosedLoop {
  /** Time inside C_SignInit, which pkcs11js runs on this (the main) thread. */
  #signInitNs = 0;

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
    this.#signInitNs += nowNs() - started;
    this.pkcs11.C_Sign(session, digest, out, (err: Error | null) => {
      this.done(started, err?.message);
      if (err !== null) return this.retire();
      this.#loop(session, digest, out);
    });
  }

  counters(): Record<string, number> {
    return { signInitUs: this.#signInitNs / 1e3 };
  }
}

/**
 * The key server's token opened in this process for raw signing (one PKCS#11
 * module per process: one per run, in a process that opened no other), with
 * `sessions` sessions; `load` makes a RawSignLoad on the first n of them.
 */
export class RawToken {
  readonly config: KeyserverConfig;
  readonly token: Token;
  readonly keys: readonly TokenKey[];
  readonly sessions: pkcs11js.Handle[] = [];

  constructor(configPath: string, sessions: number) {
    this.config = loadKeyserverConfig(configPath);
    this.token = Token.open(tokenOptions(this.config));
    this.keys = listKeys(this.token);
    for (let i = 0; i < sessions; i++) this.sessions.push(this.token.openSession());
  }

  /** A load signing with the token key `which` picks, with `key`'s mechanism, on `sessions` sessions. */
  load(which: (k: TokenKey) => boolean, key: BenchKey, sessions: number, digests: readonly Buffer[]): RawSignLoad {
    const tokenKey = this.keys.find(which);
    if (tokenKey === undefined) throw new Error(`no such key in the token for ${key.title}`);
    return new RawSignLoad(this.token.pkcs11, this.sessions.slice(0, sessions), tokenKey.privateHandle, key, digests);
  }

  close(): void {
    for (const s of this.sessions) this.token.closeSession(s);
    this.token.close();
  }
}

interface SignRequestSpec {
  readonly keyId: Buffer;
  readonly algorithm: AlgorithmByte;
  /** Slot i of connection c signs digests[(c × depth + i) % length]. */
  readonly digests: readonly Buffer[];
}

const digestOf = (spec: SignRequestSpec, depth: number, c: number, slot: number): Buffer => spec.digests[(c * depth + slot) % spec.digests.length]!;

export class PipelinedSignLoad extends ClosedLoop {
  readonly #frames: Buffer[][];
  readonly #started: Float64Array[];

  constructor(
    readonly sockets: readonly net.Socket[],
    spec: SignRequestSpec,
    readonly depth: number,
  ) {
    super();
    this.#frames = sockets.map((_, c) =>
      Array.from({ length: depth }, (_, id) =>
        encodeRequest({ op: 'sign', id, keyId: spec.keyId, algorithm: spec.algorithm, digest: digestOf(spec, depth, c, id) }),
      ),
    );
    this.#started = sockets.map(() => new Float64Array(depth));
    sockets.forEach((socket, c) => {
      const reader = new FrameReader({ maxBodyBytes: 16384, onFrame: (frame) => this.#onFrame(c, frame), onError: (err) => socket.destroy(err) });
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

export class LibraryClientSignLoad extends ClosedLoop {
  constructor(
    readonly clients: readonly KeyserverClient[],
    readonly spec: SignRequestSpec,
    readonly depth: number,
  ) {
    super();
  }

  protected begin(): void {
    this.outstanding = this.clients.length * this.depth;
    this.clients.forEach((client, c) => {
      for (let slot = 0; slot < this.depth; slot++) void this.#loop(client, digestOf(this.spec, this.depth, c, slot));
    });
  }

  async #loop(client: KeyserverClient, digest: Buffer): Promise<void> {
    while (!this.stopped) {
      const started = nowNs();
      try {
        await client.sign(this.spec.keyId, this.spec.algorithm, digest);
        this.done(started, undefined);
      } catch (err) {
        this.done(started, (err as Error).message);
        if ((err as { code?: string }).code === 'KEYEDGE_ERR_CLOSED') break;
      }
    }
    this.retire();
  }
}

interface WindowOptions {
  readonly durationMs: number;
  /** The load runs this long before the window opens. */
  readonly rampMs: number;
  /** The key server's pid, for its CPU; absent for in-process loads. */
  readonly serverPid?: number;
  readonly signal?: AbortSignal;
}

/** One window's figures (bench/README.md, "What the figures mean"): CPU per sign in µs, cores in cores of the window. */
export type WindowResult = Awaited<ReturnType<typeof measureWindow>>;

function snapshot(load: SignLoad, pid: number | undefined) {
  return {
    ns: nowNs(),
    completed: load.completed,
    errors: load.errors,
    self: selfCpu(),
    machine: machineCpu(),
    server: pid === undefined ? undefined : { all: procCpu(pid), threads: threadCpu(pid) },
    counters: load.counters?.() ?? {},
  };
}

/**
 * The key server's CPU per sign: all of it, user and system, and by thread (main: JavaScript, framing, socket
 * syscalls; others: the signing workers, V8's helpers).
 */
function serverPerSign(s: CpuTimes, a: ThreadCpu, b: ThreadCpu, perSign: (us: number) => number, cores: (us: number) => number) {
  const threads = (pick: 'main' | 'others') => perSign(totalUs(delta(a[pick], b[pick])));
  return {
    cpuUsPerSign: perSign(totalUs(s)),
    userUsPerSign: perSign(s.userUs),
    systemUsPerSign: perSign(s.systemUs),
    mainThreadUsPerSign: threads('main'),
    otherThreadsUsPerSign: threads('others'),
    cpuCores: cores(totalUs(s)),
  };
}

/** Starts `load`, measures a window of `durationMs` after `rampMs`, stops it and waits for it to drain. */
export async function measureWindow(load: SignLoad, options: WindowOptions) {
  load.latency.reset();
  load.start();
  try {
    await sleep(options.rampMs, options.signal);
    const a = snapshot(load, options.serverPid);
    load.recording = true;
    await sleep(options.durationMs, options.signal);
    load.recording = false;
    const b = snapshot(load, options.serverPid);
    const seconds = (b.ns - a.ns) / 1e9;
    const signs = b.completed - a.completed;
    const perSign = (us: number) => (signs > 0 ? us / signs : Number.NaN);
    const cores = (us: number) => us / 1e6 / seconds;
    const client = totalUs(delta(a.self, b.self));
    const server = a.server && b.server && serverPerSign(delta(a.server.all, b.server.all), a.server.threads, b.server.threads, perSign, cores);
    const busyCores = cores(b.machine.busyUs - a.machine.busyUs);
    const result = {
      signs,
      errors: b.errors - a.errors,
      firstError: load.firstError,
      seconds,
      signsPerSecond: signs / seconds,
      latency: load.latency.summary(),
      clientCpuUsPerSign: perSign(client),
      clientCpuCores: cores(client),
      machine: {
        busyCores,
        idleCores: cores(b.machine.idleUs - a.machine.idleUs),
        stealCores: cores(b.machine.stealUs - a.machine.stealUs),
        otherCores: Math.max(0, busyCores - cores(client) - (server?.cpuCores ?? 0)),
      },
      perSign: Object.fromEntries(Object.entries(b.counters).map(([k, v]) => [k, perSign(v - (a.counters[k] ?? 0))])),
      ...(server === undefined ? {} : { server }),
    };
    // Requests still outstanding when stop() gave up waiting (should be 0).
    const undrained = await load.stop();
    if (undrained > 0) process.stderr.write(`warning: ${undrained} requests still outstanding after stop\n`);
    return { ...result, undrained };
  } catch (err) {
    await load.stop();
    throw err;
  }
}
