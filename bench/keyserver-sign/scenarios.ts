import type net from 'node:net';
import type pkcs11js from 'pkcs11js';
import { KeyserverClient } from '../../keyserver/client/client.js';
import { type BenchKey, type Pipeline, pipelineName } from './keys.js';
import { connectTls, connectUnix, type KeyserverLab, type KeyserverProcess } from '../lab/keyserver.js';
import { fmt } from '../harness/report.js';
import type { Scenario } from '../harness/rounds.js';
import { LibraryClientSignLoad, measureWindow, PipelinedSignLoad, RawSignLoad, type RawKey, type SignLoad, type WindowResult } from './load.js';
import { median, round } from '../harness/stats.js';
import { PIPELINE_CANDIDATES, EXPLORE_TOLERANCE, type Transport, type ClientKind, type Options } from './main.js';

export interface ScenarioInfo {
  readonly name: string;
  readonly key: BenchKey;
  readonly path: 'raw' | Transport;
  /** "N sessions" for raw, "CxD" for the key server. */
  readonly setting: string;
}

export interface BenchScenario extends Scenario<WindowResult>, ScenarioInfo {
  close(): void;
}

export function rawScenario(
  key: BenchKey,
  pkcs11: pkcs11js.PKCS11,
  sessions: readonly pkcs11js.Handle[],
  rawKey: RawKey,
  digests: Buffer[],
  options: Options,
): BenchScenario {
  const load = new RawSignLoad(pkcs11, sessions, rawKey, digests);
  return {
    name: `raw-${key.id}-${sessions.length}s`,
    key,
    path: 'raw',
    setting: `${sessions.length} sessions`,
    run: (durationMs, context) => measureWindow(load, { durationMs, rampMs: options.rampMs, signal: context.signal }),
    close: () => undefined,
  };
}

export interface Connected {
  readonly load: SignLoad;
  close(): void;
}

export async function connectLoad(
  server: KeyserverProcess,
  lab: KeyserverLab,
  transport: Transport,
  client: ClientKind,
  pipeline: Pipeline,
  keyId: Buffer,
  key: BenchKey,
  digests: Buffer[],
): Promise<Connected> {
  const spec = { keyId, algorithm: key.algorithm, digests };
  if (client === 'library') {
    const tcp = {
      host: '127.0.0.1',
      port: server.tcpPort,
      ca: lab.tls.ca,
      cert: lab.tls.clientCert,
      key: lab.tls.clientKey,
      servername: lab.tls.serverName,
    };
    const clients: KeyserverClient[] = [];
    try {
      for (let i = 0; i < pipeline.connections; i++) {
        clients.push(
          await KeyserverClient.connect({
            ...(transport === 'unix' ? { unixPath: server.unixPath } : { tcp }),
            maxInFlight: pipeline.depth,
            timeoutMs: 10_000,
          }),
        );
      }
    } catch (err) {
      clients.forEach((c) => void c.close());
      throw err;
    }
    return { load: new LibraryClientSignLoad(clients, spec, pipeline.depth), close: () => clients.forEach((c) => void c.close()) };
  }
  const sockets: net.Socket[] = [];
  try {
    for (let i = 0; i < pipeline.connections; i++) {
      sockets.push(transport === 'unix' ? await connectUnix(server.unixPath) : await connectTls(server.tcpPort, lab.tls));
    }
  } catch (err) {
    sockets.forEach((s) => void s.destroy());
    throw err;
  }
  return { load: new PipelinedSignLoad(sockets, spec, pipeline.depth), close: () => sockets.forEach((s) => void s.destroy()) };
}

export function keyserverScenario(
  key: BenchKey,
  transport: Transport,
  pipeline: Pipeline,
  connect: () => Promise<Connected>,
  serverPid: number,
  options: Options,
): BenchScenario {
  let connected: Connected | undefined;
  return {
    name: `${transport}-${key.id}`,
    key,
    path: transport,
    setting: pipelineName(pipeline),
    async run(durationMs, context) {
      // Connections are opened once and kept, as the proxy keeps them.
      connected ??= await connect();
      return measureWindow(connected.load, { durationMs, rampMs: options.rampMs, serverPid, signal: context.signal });
    },
    close: () => connected?.close(),
  };
}

// ---------------------------------------------------------------------------
// Exploration of the pipeline setting

export interface ExploreRow {
  readonly key: string;
  readonly pipeline: string;
  readonly signsPerSecond: number[];
  readonly meanSignsPerSecond: number;
  readonly p99Us: number;
}

export async function explorePipeline(
  key: BenchKey,
  connect: (p: Pipeline) => Promise<Connected>,
  serverPid: number,
  options: Options,
  signal: AbortSignal,
  log: (line: string) => void,
): Promise<{ chosen: Pipeline; rows: ExploreRow[] }> {
  const rates = new Map<string, number[]>(PIPELINE_CANDIDATES.map((p) => [pipelineName(p), []]));
  const p99 = new Map<string, number[]>(PIPELINE_CANDIDATES.map((p) => [pipelineName(p), []]));
  // Warm the server for this key first, so the first candidate is not the cold one.
  const warm = await connect(PIPELINE_CANDIDATES[2]!);
  try {
    await measureWindow(warm.load, { durationMs: options.exploreMs, rampMs: options.rampMs, serverPid, signal });
  } finally {
    warm.close();
  }
  for (let pass = 0; pass < options.explorePasses; pass++) {
    const order = pass % 2 === 0 ? PIPELINE_CANDIDATES : [...PIPELINE_CANDIDATES].reverse();
    for (const candidate of order) {
      const c = await connect(candidate);
      try {
        const r = await measureWindow(c.load, { durationMs: options.exploreMs, rampMs: options.rampMs, serverPid, signal });
        if (r.errors > 0) throw new Error(`exploration ${key.id} ${pipelineName(candidate)}: ${r.errors} errors, first: ${r.firstError}`);
        rates.get(pipelineName(candidate))!.push(r.signsPerSecond);
        p99.get(pipelineName(candidate))!.push(r.latency.p99Us);
      } finally {
        c.close();
      }
    }
  }
  const rows: ExploreRow[] = PIPELINE_CANDIDATES.map((p) => {
    const name = pipelineName(p);
    const r = rates.get(name)!;
    return {
      key: key.title,
      pipeline: name,
      signsPerSecond: r.map((v) => round(v)),
      meanSignsPerSecond: r.reduce((a, b) => a + b, 0) / r.length,
      p99Us: median(p99.get(name)!),
    };
  });
  const best = Math.max(...rows.map((r) => r.meanSignsPerSecond));
  const inFlight = (p: Pipeline) => p.connections * p.depth;
  const chosen = [...PIPELINE_CANDIDATES]
    .filter((p) => rows.find((r) => r.pipeline === pipelineName(p))!.meanSignsPerSecond >= best * (1 - EXPLORE_TOLERANCE))
    .sort((a, b) => inFlight(a) - inFlight(b) || a.connections - b.connections)[0]!;
  for (const r of rows) log(`  explore ${key.id} ${r.pipeline.padEnd(5)} ${fmt(r.meanSignsPerSecond).padStart(8)} signs/s  p99 ${fmt(r.p99Us)} µs`);
  log(`  explore ${key.id}: chose ${pipelineName(chosen)}`);
  return { chosen, rows };
}
