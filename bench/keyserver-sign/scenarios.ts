/**
 * The keyserver-sign bench's scenarios: raw token sessions, and the key server over unix or mutual TLS with the lean or
 * the library client; the exploration that picks the pipeline setting (connections × in flight), and the one-in-flight
 * latency after the rounds.
 */
import type net from 'node:net';
import { KeyserverClient } from '../../keyserver/client/client.js';
import type { Log } from '../harness/runner.js';
import { fmt } from '../harness/report.js';
import type { Scenario } from '../harness/rounds.js';
import { median, round } from '../harness/stats.js';
import { connectTls, connectUnix, type KeyserverLab, type KeyserverProcess } from '../lab/keyserver.js';
import { type BenchKey, type Pipeline, pipelineName } from './keys.js';
import { LibraryClientSignLoad, measureWindow, PipelinedSignLoad, type RawSignLoad, type SignLoad, type WindowResult } from './load.js';

export type Transport = 'unix' | 'tls';
export type Path = 'raw' | Transport;

/** Candidate settings of the exploration, and how close to the best a smaller one may be and still win (fewer in flight, lower latency). */
export const PIPELINE_CANDIDATES: readonly Pipeline[] = [1, 2, 4].flatMap((connections) => [32, 64].map((depth) => ({ connections, depth })));
export const EXPLORE_TOLERANCE = 0.03;

export interface BenchScenario extends Scenario<WindowResult> {
  readonly key: BenchKey;
  readonly path: Path;
  /** "N sessions" for raw, "CxD" for the key server. */
  readonly setting: string;
  close(): void;
}

/** What the key-server scenarios connect with. */
export interface SignRig {
  readonly lab: KeyserverLab;
  readonly server: KeyserverProcess;
  readonly client: 'lean' | 'library';
  readonly digests: readonly Buffer[];
  /** Key id (hex) by BenchKey id. */
  readonly keyIds: ReadonlyMap<string, string>;
  readonly rampMs: number;
}

export function rawScenario(key: BenchKey, load: RawSignLoad, rampMs: number): BenchScenario {
  const n = load.sessions.length;
  return {
    name: `raw-${key.id}-${n}s`,
    key,
    path: 'raw',
    setting: `${n} sessions`,
    run: (durationMs, context) => measureWindow(load, { durationMs, rampMs, signal: context.signal }),
    close: () => undefined,
  };
}

/** `pipeline.connections` connections to the key server, each with `pipeline.depth` requests in flight. */
export async function connectLoad(rig: SignRig, key: BenchKey, transport: Transport, pipeline: Pipeline): Promise<{ load: SignLoad; close(): void }> {
  const { lab, server } = rig;
  const spec = { keyId: Buffer.from(rig.keyIds.get(key.id)!, 'hex'), algorithm: key.algorithm, digests: rig.digests };
  const opened: (net.Socket | KeyserverClient)[] = [];
  const close = () => opened.forEach((c) => void (c instanceof KeyserverClient ? c.close() : c.destroy()));
  try {
    if (rig.client === 'library') {
      const tcp = { host: '127.0.0.1', port: server.tcpPort, ca: lab.tls.ca, cert: lab.tls.clientCert, key: lab.tls.clientKey, servername: lab.tls.serverName };
      const options = { ...(transport === 'unix' ? { unixPath: server.unixPath } : { tcp }), maxInFlight: pipeline.depth, timeoutMs: 10_000 };
      for (let i = 0; i < pipeline.connections; i++) opened.push(await KeyserverClient.connect(options));
      return { load: new LibraryClientSignLoad(opened as KeyserverClient[], spec, pipeline.depth), close };
    }
    for (let i = 0; i < pipeline.connections; i++)
      opened.push(transport === 'unix' ? await connectUnix(server.unixPath) : await connectTls(server.tcpPort, lab.tls));
    return { load: new PipelinedSignLoad(opened as net.Socket[], spec, pipeline.depth), close };
  } catch (err) {
    close();
    throw err;
  }
}

export function keyserverScenario(rig: SignRig, key: BenchKey, transport: Transport, pipeline: Pipeline): BenchScenario {
  let connected: Awaited<ReturnType<typeof connectLoad>> | undefined;
  return {
    name: `${transport}-${key.id}`,
    key,
    path: transport,
    setting: pipelineName(pipeline),
    async run(durationMs, context) {
      // Connections are opened once and kept, as the proxy keeps them.
      connected ??= await connectLoad(rig, key, transport, pipeline);
      return measureWindow(connected.load, { durationMs, rampMs: rig.rampMs, serverPid: rig.server.pid, signal: context.signal });
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
export async function idleLatency(rig: SignRig, key: BenchKey, path: Path, raw: () => RawSignLoad, durationMs: number, signal: AbortSignal, log: Log) {
  signal.throwIfAborted();
  const r =
    path === 'raw'
      ? await measureWindow(raw(), { durationMs, rampMs: rig.rampMs, signal })
      : await oneWindow(rig, key, path, { connections: 1, depth: 1 }, durationMs, signal);
  log(`idle latency ${key.id} ${path.padEnd(4)} p50 ${fmt(r.latency.p50Us)} p99 ${fmt(r.latency.p99Us)} µs (${fmt(r.signsPerSecond)} signs/s, 1 in flight)`);
  return { key: key.title as string, path, signsPerSecond: r.signsPerSecond, p50Us: r.latency.p50Us, p99Us: r.latency.p99Us, errors: r.errors };
}
