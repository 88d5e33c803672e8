import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { CLI, sleep } from './helpers/basics.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { createTestPki, type TestPkiFiles } from './helpers/pki.js';
import { freePort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// A pool of two real key servers on one SoftHSM2 token (the lab's, on its
// unix socket, and a second process on the same state directory reached over
// TCP with mutual TLS: both transports a pool may mix), a two-worker
// `keyedge proxy` listing both, and a load of new TLS connections
// (a full handshake each, so a signature each). Key server "b" is SIGKILLed
// mid-load, then restarted.
//
// The bound: a killed key server's sockets are closed by the kernel at once,
// so an attempt on it (in flight, or a connect) fails at once and the sign is
// retried on "a" within the same deadline: 0 failed handshakes, unless "a"
// fails too.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;
let pki: TestPkiFiles;
let portB: number;
let configB: string;
let serverB: ChildProcess | undefined;

async function startServerB(): Promise<void> {
  const child = spawn(process.execPath, [CLI, 'keyserver', '--config', configB], { stdio: ['ignore', 'ignore', 'inherit'] });
  serverB = child;
  // A node start and a token login take seconds on a loaded 2-core machine.
  await waitFor(
    'key server b',
    async () => {
      if (child.exitCode !== null) throw new Error(`key server b exited (${child.exitCode})`);
      try {
        const client = await KeyserverClient.connect({
          tcp: { host: '127.0.0.1', port: portB, servername: 'localhost', ca: pki.caFile, cert: pki.clients.edge!.cert, key: pki.clients.edge!.key },
        });
        await client.ping();
        client.close();
        return true;
      } catch {
        return undefined;
      }
    },
    30_000,
  );
}

interface PoolFigures {
  readonly signs: Record<string, number>;
  readonly failovers: Record<string, number>;
  readonly rejoins: Record<string, number>;
  readonly down: Record<string, number>;
  readonly connectFailures: Record<string, number>;
  readonly failedSigns: number;
}

/** The proxy's per-key-server series, summed over its workers by the primary's /metrics. */
async function poolFigures(): Promise<PoolFigures> {
  const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
  const series = (name: string, extra = ''): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const m of text.matchAll(new RegExp(`^keyedge_proxy_${name}\\{([^}]*)\\} (\\S+)$`, 'gm'))) {
      const server = /server="([^"]*)"/.exec(m[1]!)?.[1];
      if (server !== undefined && m[1]!.includes(extra)) out[server] = (out[server] ?? 0) + Number(m[2]);
    }
    return out;
  };
  let failedSigns = 0;
  for (const m of text.matchAll(/^keyedge_proxy_keyless_failures_total\{[^}]*\} (\S+)$/gm)) failedSigns += Number(m[1]);
  return {
    signs: series('keyserver_signs_total'),
    failovers: series('keyserver_failovers_total'),
    rejoins: series('keyserver_rejoins_total'),
    down: series('keyserver_down'),
    connectFailures: series('keyserver_failures_total', 'reason="connect"'),
    failedSigns,
  };
}

/** New TLS connections in `concurrency` loops until stopped: each a full handshake (no session offered). */
function handshakeLoad(port: number, concurrency: number): { readonly ok: () => number; readonly failed: () => string[]; stop(): Promise<void> } {
  let ok = 0;
  let running = true;
  const failed: string[] = [];
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername: 'ec.lab.test', ca, timeout: 15_000 });
      socket.once('secureConnect', () => {
        ok++;
        socket.destroy();
        resolve();
      });
      socket.once('timeout', () => socket.destroy(new Error('no handshake within 15 s')));
      socket.once('error', (err) => {
        failed.push(err.message);
        resolve();
      });
    });
  const loops = Array.from({ length: concurrency }, async () => {
    while (running) await one();
  });
  return {
    ok: () => ok,
    failed: () => failed,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  // The second key server: the same state directory (so the same token and PIN), its own mutual-TLS port (the same
  // one when it restarts) and admin port; the proxy is its one client, by the common name of its client certificate.
  pki = await createTestPki(lab.dir, [{ commonName: 'edge' }]);
  portB = await freePort();
  configB = join(lab.dir, 'keyserver-b.json');
  writeFileSync(
    configB,
    JSON.stringify({
      stateDir: './state',
      listen: { unix: null, tcp: { host: '127.0.0.1', port: portB, cert: pki.server.cert, key: pki.server.key, clientCa: pki.caFile } },
      clients: [{ name: 'edge', match: { commonName: 'edge' }, keys: '*' }],
      admin: { host: '127.0.0.1', port: await freePort() },
      log: { level: 'warn' },
    }),
  );
  await startServerB();
  const ec = await lab.certificate('ec', lab.keys.ec, ['ec.lab.test']);
  // The proxy's client key group-readable, as a careless install leaves it: named at start (checked below).
  chmodSync(pki.clients.edge!.key, 0o640);
  proxy = await startClusterProxy(
    lab,
    'pool',
    (ports) =>
      storeProxyConfig(lab, ports, {
        keyserver: {
          servers: [
            { name: 'a', socket: lab.socket },
            {
              name: 'b',
              tcp: { host: '127.0.0.1', port: portB, servername: 'localhost', ca: pki.caFile, cert: pki.clients.edge!.cert, key: pki.clients.edge!.key },
            },
          ],
          // Real margins for a loaded 2-core machine; the failover happens within this deadline.
          timeoutMs: 1_000,
          healthIntervalMs: 200,
        },
        certificates: [{ name: 'ec', chain: ec.file }],
        log: { level: 'warn' },
      }),
    {},
    // A proxy start takes a minute when the machine is loaded many times over.
    90_000,
  );
}, 180_000);

afterAll(async () => {
  await proxy?.stop();
  // A process killed by a signal keeps exitCode null: signalCode says it is gone.
  if (serverB !== undefined && serverB.exitCode === null && serverB.signalCode === null) {
    const exited = new Promise((resolve) => serverB!.once('exit', resolve));
    serverB.kill('SIGKILL');
    await exited;
  }
  await lab?.close();
});

describe('a pool of two key servers behind a two-worker proxy', () => {
  it('names its mutual-TLS client key file at start when others may read it, with its mode, never the key', () => {
    const warned = proxy.lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith("key server b's client key file "));
    expect(warned).toHaveLength(1);
    expect(warned[0]?.msg).toMatch(/is open to its group or others \(mode 0640\): chmod 600 it/);
    expect(JSON.stringify(proxy.lines)).not.toContain('PRIVATE KEY');
  });

  it('one key server SIGKILLed under load: no failed handshake, the other carries the signs, the dead one rejoins when back', async () => {
    const load = handshakeLoad(proxy.port, 4);
    try {
      // Both serve: the choice re-measures an idle server, so "b" gets signs too.
      const before = await waitFor(
        'load, and signs on both key servers',
        async () => {
          const f = await poolFigures();
          return load.ok() >= 100 && (f.signs.a ?? 0) > 0 && (f.signs.b ?? 0) > 0 ? f : undefined;
        },
        60_000,
      );

      const killedAt = load.ok();
      const exited = new Promise((resolve) => serverB!.once('exit', resolve));
      serverB!.kill('SIGKILL');
      await exited;
      // Long enough for many handshakes with "b" gone; the health checks (200 ms) take it out in every worker.
      const outage = await waitFor(
        'handshakes with b dead, b down in both workers',
        async () => {
          const f = await poolFigures();
          return load.ok() > killedAt + 200 && (f.down.b ?? 0) === 2 ? f : undefined;
        },
        60_000,
      );
      await sleep(1_000);
      const duringOutage = await poolFigures();
      const signedInOutage = (duringOutage.signs.a ?? 0) - (outage.signs.a ?? 0);
      expect(signedInOutage, '"a" carried the signs').toBeGreaterThan(0);
      expect(duringOutage.signs.b, '"b" is dead: no sign').toBe(outage.signs.b);
      expect(duringOutage.down.a ?? 0).toBe(0);

      const restartedAt = load.ok();
      await startServerB();
      const back = await waitFor(
        '"b" back in both workers and signing again',
        async () => {
          const f = await poolFigures();
          return (f.rejoins.b ?? 0) >= 2 && (f.down.b ?? 0) === 0 && (f.signs.b ?? 0) > (duringOutage.signs.b ?? 0) ? f : undefined;
        },
        60_000,
      );
      await load.stop();
      const total = load.ok();
      console.log(
        `key-server pool: ${total} handshakes (${killedAt} before the kill, ${restartedAt - killedAt} while "b" was dead or starting, ${total - restartedAt} after), ` +
          `${load.failed().length} failed; signs a=${back.signs.a} b=${back.signs.b} (before the kill a=${before.signs.a} b=${before.signs.b}; ` +
          `"a" signed ${signedInOutage} in the 1 s after "b" was out in both workers); failovers from b=${back.failovers.b ?? 0}, ` +
          `connect failures on b=${back.connectFailures.b ?? 0}, rejoins of b=${back.rejoins.b}, failed signs=${back.failedSigns}`,
      );
      expect(load.failed(), 'failed handshakes').toEqual([]);
      expect(back.failedSigns, 'signs that failed on every key server').toBe(0);
    } finally {
      await load.stop();
    }
  }, 240_000);

  it('with every key server gone a handshake fails and the workers stay up; the first one back serves again', async () => {
    const handshake = (): Promise<boolean> =>
      new Promise((resolve) => {
        const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername: 'ec.lab.test', ca });
        socket.once('secureConnect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      });
    const exited = new Promise((resolve) => serverB!.once('exit', resolve));
    serverB!.kill('SIGKILL');
    await exited;
    await lab.stopKeyserver();
    expect(await handshake()).toBe(false);
    expect((await poolFigures()).failedSigns).toBeGreaterThan(0);
    // Down in every worker, both of them: the breakers alone decide, so the first server back is used at once.
    await lab.startKeyserver();
    await waitFor('handshakes through "a" again', async () => ((await handshake()) ? true : undefined), 15_000);
    expect(await handshake()).toBe(true);
  }, 60_000);
});
