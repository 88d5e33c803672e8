/**
 * The keyserver-sign bench's scenarios: raw token sessions, and the key server over unix or mutual TLS (the lean client,
 * load.ts); the exploration that picks the pipeline setting (connections × in flight), and the one-in-flight
 * latency after the rounds.
 */
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import os from 'node:os';
import { fmt } from '../harness/report.js';
import type { Scenario } from '../harness/rounds.js';
import type { Log } from '../harness/runner.js';
import { median, round } from '../harness/stats.js';
import { connectTls, connectUnix, type KeyserverLab, type KeyserverProcess } from '../lab/keyserver.js';
import type { BenchKey } from './keys.js';
import { measureWindow, PipelinedSignLoad, RawToken, type WindowResult } from './load.js';

/** Raw sessions: cores and 2 × cores; the faster is the ceiling. */
export const RAW_SESSION_COUNTS = [...new Set([os.availableParallelism(), 2 * os.availableParallelism()])];

export type Transport = 'unix' | 'tls';
export type Path = 'raw' | Transport;

/** C connections to the key server, D requests in flight on each. */
export type Pipeline = { readonly connections: number; readonly depth: number };

export const pipelineName = (p: Pipeline): string => `${p.connections}x${p.depth}`;

export function parsePipeline(text: string): Pipeline {
  const m = /^(\d+)x(\d+)$/.exec(text);
  if (m === null || Number(m[1]) < 1 || Number(m[2]) < 1) throw new Error(`a pipeline setting looks like 2x32 (connections x in flight), got '${text}'`);
  return { connections: Number(m[1]), depth: Number(m[2]) };
}

/** The exploration's candidates; a smaller one within EXPLORE_TOLERANCE of the best wins (fewer in flight, lower latency). */
export const PIPELINE_CANDIDATES: readonly Pipeline[] = [1, 2, 4].flatMap((connections) => [32, 64].map((depth) => ({ connections, depth })));
export const EXPLORE_TOLERANCE = 0.03;

export interface BenchScenario extends Scenario<WindowResult> {
  readonly key: BenchKey;
  readonly path: Path;
  /** "N sessions" for raw, "CxD" for the key server. */
  readonly setting: string;
  close(): void;
}

/** What the scenarios sign with: the raw token opened in this process, the key server. */
export interface SignRig {
  readonly lab: KeyserverLab;
  readonly raw?: RawToken;
  readonly server: KeyserverProcess;
  readonly digests: readonly Buffer[];
  /** Key id (hex) by BenchKey id. */
  readonly keyIds: ReadonlyMap<string, string>;
  readonly rampMs: number;
}

type RigOptions = { readonly rampMs: number; readonly nodeArgs?: readonly string[]; readonly rawSessions?: number };

/** Generates `keys` in the lab's token, opens it here with `rawSessions` sessions (if given) and starts the key server with `nodeArgs`. */
export async function startRig(lab: KeyserverLab, keys: readonly BenchKey[], o: RigOptions, log: Log): Promise<SignRig> {
  const keyIds = new Map<string, string>();
  for (const key of keys) {
    keyIds.set(key.id, await lab.generateKey(key.type, key.label));
    log(`generated ${key.title} key ${keyIds.get(key.id)!.slice(0, 16)}… with keyedge key generate`);
  }
  const raw = o.rawSessions === undefined ? undefined : new RawToken(lab.configPath, o.rawSessions);
  const server = await lab.startServer({ nodeArgs: o.nodeArgs ?? [] });
  log(`key server pid ${server.pid}, unix ${server.unixPath}, tcp 127.0.0.1:${server.tcpPort}, sessions ${raw?.config.pkcs11.sessions ?? 'default'}`);
  return { lab, raw, server, digests: Array.from({ length: 16 }, () => randomBytes(32)), keyIds, rampMs: o.rampMs };
}

const rawLoad = (rig: SignRig, key: BenchKey, sessions: number) => rig.raw!.load((k) => k.keyId === rig.keyIds.get(key.id), key, sessions, rig.digests);

export function rawScenario(rig: SignRig, key: BenchKey, sessions: number): BenchScenario {
  const load = rawLoad(rig, key, sessions);
  const run = (durationMs: number, { signal }: { signal: AbortSignal | undefined }) => measureWindow(load, { durationMs, rampMs: rig.rampMs, signal });
  return { name: `raw-${key.id}-${sessions}s`, key, path: 'raw', setting: `${sessions} sessions`, run, close: () => undefined };
}

/** `pipeline.connections` connections to the key server, each with `pipeline.depth` requests in flight. */
export async function connectLoad(rig: SignRig, key: BenchKey, transport: Transport, pipeline: Pipeline) {
  const { lab, server } = rig;
  const spec = { keyId: Buffer.from(rig.keyIds.get(key.id)!, 'hex'), algorithm: key.algorithm, digests: rig.digests };
  const sockets: net.Socket[] = [];
  const close = () => {
    for (const socket of sockets) socket.destroy();
  };
  try {
    for (let i = 0; i < pipeline.connections; i++)
      sockets.push(transport === 'unix' ? await connectUnix(server.unixPath) : await connectTls(server.tcpPort, lab.tls));
    return { load: new PipelinedSignLoad(sockets, spec, pipeline.depth), close };
  } catch (err) {
    close();
    throw err;
  }
}

/** Connections are opened at the first run and kept, as the proxy keeps them. */
export function keyserverScenario(rig: SignRig, key: BenchKey, transport: Transport, pipeline: Pipeline): BenchScenario {
  let connected: Awaited<ReturnType<typeof connectLoad>> | undefined;
  return {
    name: `${transport}-${key.id}`,
    key,
    path: transport,
    setting: pipelineName(pipeline),
    async run(durationMs, { signal }) {
      connected ??= await connectLoad(rig, key, transport, pipeline);
      return measureWindow(connected.load, { durationMs, rampMs: rig.rampMs, serverPid: rig.server.pid, signal });
    },
    close: () => connected?.close(),
  };
}

/** A fresh connection set for one window, closed after it. */
async function oneWindow(rig: SignRig, key: BenchKey, transport: Transport, pipeline: Pipeline, durationMs: number, signal: AbortSignal) {
  const c = await connectLoad(rig, key, transport, pipeline);
  try {
    return await measureWindow(c.load, { durationMs, rampMs: rig.rampMs, serverPid: rig.server.pid, signal });
  } finally {
    c.close();
  }
}

export type ExploreRow = Awaited<ReturnType<typeof explorePipeline>>['rows'][number];

/** Every candidate over the unix socket, `passes` times (alternate passes reversed); the smallest within EXPLORE_TOLERANCE of the best wins. */
export async function explorePipeline(rig: SignRig, key: BenchKey, exploreMs: number, passes: number, signal: AbortSignal, log: Log) {
  const runs = new Map<Pipeline, WindowResult[]>(PIPELINE_CANDIDATES.map((p) => [p, []]));
  // Warm the server for this key first, so the first candidate is not the cold one.
  await oneWindow(rig, key, 'unix', PIPELINE_CANDIDATES[2]!, exploreMs, signal);
  for (let pass = 0; pass < passes; pass++) {
    for (const candidate of pass % 2 === 0 ? PIPELINE_CANDIDATES : [...PIPELINE_CANDIDATES].reverse()) {
      const r = await oneWindow(rig, key, 'unix', candidate, exploreMs, signal);
      if (r.errors > 0) throw new Error(`exploration ${key.id} ${pipelineName(candidate)}: ${r.errors} errors, first: ${r.firstError}`);
      runs.get(candidate)!.push(r);
    }
  }
  const rows = PIPELINE_CANDIDATES.map((p) => {
    const rates = runs.get(p)!.map((r) => r.signsPerSecond);
    const meanSignsPerSecond = rates.reduce((a, b) => a + b, 0) / rates.length;
    const p99Us = median(runs.get(p)!.map((r) => r.latency.p99Us));
    return { key: key.title, pipeline: pipelineName(p), signsPerSecond: rates.map((v) => round(v)), meanSignsPerSecond, p99Us };
  });
  const best = Math.max(...rows.map((r) => r.meanSignsPerSecond));
  const inFlight = (p: Pipeline) => p.connections * p.depth;
  const chosen = PIPELINE_CANDIDATES.filter((_, i) => rows[i]!.meanSignsPerSecond >= best * (1 - EXPLORE_TOLERANCE)).sort(
    (a, b) => inFlight(a) - inFlight(b) || a.connections - b.connections,
  )[0]!;
  for (const r of rows) log(`  explore ${key.id} ${r.pipeline.padEnd(5)} ${fmt(r.meanSignsPerSecond).padStart(8)} signs/s  p99 ${fmt(r.p99Us)} µs`);
  log(`  explore ${key.id}: chose ${pipelineName(chosen)}`);
  return { chosen, rows };
}

export type IdleLatencyRow = Awaited<ReturnType<typeof idleLatency>>;

/** One request in flight on an idle key server (raw: one session): the round trip one handshake waits for. */
export async function idleLatency(rig: SignRig, key: BenchKey, path: Path, durationMs: number, signal: AbortSignal, log: Log) {
  signal.throwIfAborted();
  const r =
    path === 'raw'
      ? await measureWindow(rawLoad(rig, key, 1), { durationMs, rampMs: rig.rampMs, signal })
      : await oneWindow(rig, key, path, { connections: 1, depth: 1 }, durationMs, signal);
  log(`idle latency ${key.id} ${path.padEnd(4)} p50 ${fmt(r.latency.p50Us)} p99 ${fmt(r.latency.p99Us)} µs (${fmt(r.signsPerSecond)} signs/s, 1 in flight)`);
  return { key: key.title as string, path, signsPerSecond: r.signsPerSecond, p50Us: r.latency.p50Us, p99Us: r.latency.p99Us, errors: r.errors };
}
