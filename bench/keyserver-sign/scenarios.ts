/**
 * The keyserver-sign bench's scenarios: raw token sessions, and the key server over unix or mutual TLS (the lean client,
 * load.ts) with a fixed pipeline setting (connections × in flight) per key; the one-in-flight latency after the rounds.
 */
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import os from 'node:os';
import { Algorithm } from '../../keyserver/protocol/constants.js';
import { fmt } from '../harness/report.js';
import type { RunContext } from '../harness/rounds.js';
import type { Log } from '../harness/runner.js';
import type { ClosedLoop } from '../harness/stats.js';
import { connectTls, connectUnix, type KeyserverLab } from '../lab/keyserver.js';
import { type BenchKey, measureWindow, PipelinedSignLoad, RawToken } from './load.js';

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
export async function openLoad(rig: SignRig, key: BenchKey, target: Target): Promise<{ load: ClosedLoop; serverPid?: number; close(): void }> {
  const keyId = rig.keyIds.get(key.id)!;
  if (target.path === 'raw') return { load: rig.raw!.load(keyId, key, target.sessions, rig.digests), close: () => undefined };
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
