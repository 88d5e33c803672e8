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

/** The client's clock starts before its first requests reach the origin (start-up, 64 handshakes): it runs this much longer. */
const CLIENT_MARGIN_MS = 2500;

export type RunResult = Awaited<ReturnType<typeof runOnce>>;

export async function runOnce(lab: KeepaliveLab, options: Options, server: ServerId, h2: boolean, durationMs: number, context: RunContext) {
  const count0 = await lab.originCount();
  const client = { serverName: SERVER_NAME, durationSec: (options.rampMs + durationMs + CLIENT_MARGIN_MS) / 1000, cpus: options.clientCpus };
  const port = lab.port(server);
  const ac = h2
    ? startH2load({ ...client, port, connections: options.h2Connections, streams: options.h2Streams })
    : startAutocannon({ ...client, url: `https://127.0.0.1:${port}/`, connections: options.connections });
  try {
    for (const started = Date.now(); (await lab.originCount()) <= count0; await sleep(25, context.signal)) {
      if (ac.exited()) throw new Error('the client exited before sending a request');
      if (Date.now() - started > 15_000) throw new Error('no request reached the origin within 15 s of starting the client');
    }
    await sleep(options.rampMs, context.signal);
    const pid = (p: { pid: number } | undefined) => (p === undefined ? [] : [p.pid]);
    const tracked = [
      { name: 'proxy', roots: () => pid(lab.servers.get(server)) },
      { name: 'keyserver', roots: () => (server === 'keyedge' ? pid(lab.keyserver) : []) },
      { name: 'origin', roots: () => pid(lab.origin) },
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
      requests,
      requestsPerSecond: requests / usage.seconds,
      /** The server's processes (keyedge: proxy + key server, whose part is ≈ 0: a keep-alive connection signs once). */
      serverUs: per('proxy', 'keyserver'),
      proxyUs: per('proxy'),
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
