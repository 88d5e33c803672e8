/**
 * One run of one keep-alive scenario: start the client (autocannon, or h2load for HTTP/2), wait for traffic and the
 * ramp-up, read the origin's request counter and every process's CPU around the window, then take the client's report.
 * Requests are counted at the origin, so every server and protocol is counted alike.
 */
import { perUnit, snapshot, usageBetween } from '../harness/proc-cpu.js';
import { type RunContext, sleep } from '../harness/rounds.js';
import { startAutocannon, startH2load } from './clients.js';
import { type KeepaliveLab, SERVER_NAME, type ServerId } from './lab.js';
import type { Options } from './main.js';

/**
 * The client runs this much longer than ramp-up + window: its clock starts before its first requests reach the origin
 * (process start, 64 handshakes), which on a loaded machine takes well over a second.
 */
const CLIENT_MARGIN_MS = 2500;

export type RunResult = Awaited<ReturnType<typeof runOnce>>;
export type WindowResult = RunResult['window'];

export async function runOnce(lab: KeepaliveLab, options: Options, server: ServerId, h2: boolean, durationMs: number, context: RunContext) {
  const count0 = await lab.originCount();
  const client = { serverName: SERVER_NAME, durationSec: (options.rampMs + durationMs + CLIENT_MARGIN_MS) / 1000, cpus: options.clientCpus };
  const ac = h2
    ? startH2load({ ...client, port: lab.port(server), connections: options.h2Connections, streams: options.h2Streams })
    : startAutocannon({ ...client, url: `https://127.0.0.1:${lab.port(server)}/`, connections: options.connections });
  try {
    // Poll the origin's counter until requests flow (the client's start-up is a few hundred ms of loading).
    for (const started = Date.now(); (await lab.originCount()) <= count0; await sleep(25, context.signal)) {
      if (ac.exited()) throw new Error('the client exited before sending a request');
      if (Date.now() - started > 15_000) throw new Error('no request reached the origin within 15 s of starting the client');
    }
    await sleep(options.rampMs, context.signal);
    const pid = (p: { pid: number } | undefined) => (p === undefined ? [] : [p.pid]);
    const tracked = [
      { name: 'proxy', roots: () => pid(lab.servers.get(server)) },
      { name: 'keyserver', roots: () => (server === 'keyedge' ? pid(lab.keyserver) : []) },
      { name: 'origin', roots: () => [lab.origin?.pid ?? -1] },
      { name: 'client', roots: () => [ac.pid] },
    ];
    const [nA, sA] = [await lab.originCount(), snapshot(tracked)];
    await sleep(durationMs, context.signal);
    const [nB, sB] = [await lab.originCount(), snapshot(tracked)];
    if (ac.exited()) throw new Error(`${h2 ? 'h2load' : 'autocannon'} finished before the measurement window closed`);
    const usage = usageBetween(sA, sB);
    const requests = nB - nA;
    const { per, cores, otherCores } = perUnit(usage, requests);
    const window = {
      seconds: usage.seconds,
      /** Requests the origin served in the window. */
      requests,
      requestsPerSecond: requests / usage.seconds,
      /** The server's processes (keyedge: proxy + key server). */
      serverUs: per('proxy', 'keyserver'),
      proxyUs: per('proxy'),
      /** keyedge only: ≈ 0, keep-alive connections sign once, at their handshake. */
      keyserverUs: server === 'keyedge' ? per('keyserver') : undefined,
      originUs: per('origin'),
      clientUs: per('client'),
      clientCores: cores('client'),
      serverSideCores: cores('proxy', 'keyserver', 'origin'),
      machineBusyCores: usage.machineBusyCores,
      otherCores,
      usage,
    };
    // The client ends on its own at the end of its duration; a hung one is killed (harness/spawn.ts).
    return { window, client: await ac.stop(undefined, CLIENT_MARGIN_MS + 15_000) };
  } finally {
    ac.kill();
  }
}
