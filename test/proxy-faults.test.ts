import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sClient } from './helpers/clients.js';
import { sleep } from './helpers/basics.js';
import { type ProxyChild, startProxyChild } from './helpers/proxy-child.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// The key server going away (stopped, or hung) under load, seen from a proxy
// worker in its own process: handshakes fail with an alert, the worker stays
// up and is never blocked longer than the RPC deadline, and recovers by itself.
const TIMEOUT_MS = 250;
const BREAKER_MS = 200;
// A noisy 2-core machine: one event-loop stall of a few hundred ms from elsewhere (seen: 424 ms against 400) is
// not what is tested; a block that outlived the deadline would run for the key server's whole outage (seconds).
const SLACK_MS = 600;
const ALERT = /alert internal error|alert number 80/i;

let lab: KeylessLab;
let ca: string;
let chain: string;
const children: ProxyChild[] = [];
const hangSockets = new Set<net.Socket>();
let hangServer: net.Server | undefined;
let hangConnections = 0;

function childConfig(socket: string): Record<string, unknown> {
  return {
    stateDir: join(lab.dir, 'state'),
    workers: 1,
    admin: null,
    log: { level: 'warn' },
    listen: [{ host: '127.0.0.1', port: 0 }],
    keyserver: { socket, timeoutMs: TIMEOUT_MS, breakerMs: BREAKER_MS },
    certificates: [{ name: 'ec', chain }],
    domains: [{ name: '*.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` }],
  };
}

async function proxyChild(name: string, socket: string): Promise<ProxyChild> {
  const child = await startProxyChild(lab.dir, name, childConfig(socket));
  children.push(child);
  return child;
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  chain = (await lab.certificate('ec', lab.keys.ec, ['ec.lab.test'])).file;
});
afterAll(async () => {
  for (const child of children) await child.stop();
  for (const socket of hangSockets) socket.destroy();
  await new Promise((resolve) => (hangServer === undefined ? resolve(undefined) : hangServer.close(resolve)));
  await lab?.close();
});

interface Outcome {
  readonly ok: boolean;
  readonly ms: number;
  readonly error?: string;
}

/** One full handshake (node:tls keeps no session unless given one), closed at once. */
function handshake(port: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const start = performance.now();
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'ec.lab.test', ca });
    socket.setTimeout(5000, () => socket.destroy(new Error('client timeout')));
    socket.once('secureConnect', () => {
      socket.destroy();
      resolve({ ok: true, ms: performance.now() - start });
    });
    socket.once('error', (err) => resolve({ ok: false, ms: performance.now() - start, error: err.message }));
  });
}

/** `loops` clients making new connections back to back (with a short pause); `take()` returns the outcomes since the last take. */
function startLoad(port: number, loops = 4): { take(): Outcome[]; stop(): Promise<void> } {
  let running = true;
  let outcomes: Outcome[] = [];
  const loop = async (): Promise<void> => {
    while (running) {
      outcomes.push(await handshake(port));
      await sleep(30);
    }
  };
  const all = Promise.all(Array.from({ length: loops }, loop));
  return {
    take() {
      const taken = outcomes;
      outcomes = [];
      return taken;
    },
    async stop() {
      running = false;
      await all;
    },
  };
}

const summary = (outcomes: readonly Outcome[]): string =>
  JSON.stringify({
    ok: outcomes.filter((o) => o.ok).length,
    failed: outcomes.filter((o) => !o.ok).length,
    errors: [...new Set(outcomes.map((o) => o.error).filter(Boolean))],
  });

describe('key server faults under load', () => {
  it('stopped: alerts while away, no stall beyond the deadline, and recovery within a second of its return', async () => {
    const proxy = await proxyChild('stop', lab.socket);
    const load = startLoad(proxy.port);
    try {
      // Phase 1: key server up.
      await proxy.stats(); // resets the delay histogram
      await sleep(1500);
      const up = load.take();
      expect(up.length, summary(up)).toBeGreaterThan(10);
      expect(
        up.every((o) => o.ok),
        summary(up),
      ).toBe(true);
      const upStats = await proxy.stats();
      expect(upStats.maxDelayMs).toBeLessThan(TIMEOUT_MS + SLACK_MS);

      // Phase 2: key server stopped while the load runs.
      const before = upStats.bridge.failures;
      await lab.stopKeyserver();
      await sleep(100);
      load.take(); // handshakes in flight while it stopped
      await proxy.stats();
      await sleep(1500);
      const down = load.take();
      expect(down.length, summary(down)).toBeGreaterThan(10);
      expect(
        down.filter((o) => o.ok),
        summary(down),
      ).toHaveLength(0);
      expect(
        down.some((o) => ALERT.test(o.error ?? '')),
        summary(down),
      ).toBe(true);
      expect(down.filter((o) => !ALERT.test(o.error ?? '')).length, summary(down)).toBeLessThanOrEqual(down.length / 10);
      // Still up: it accepts, and answers a handshake with internal_error.
      expect(proxy.alive()).toBe(true);
      const alert = await sClient(proxy.port, 'ec.lab.test', lab.caFile);
      expect(alert.stdout).not.toContain('HTTP/1.1');
      expect(alert.stderr).toMatch(ALERT);
      const downStats = await proxy.stats();
      expect(downStats.maxDelayMs, JSON.stringify(downStats)).toBeLessThan(TIMEOUT_MS + SLACK_MS);
      const after = downStats.bridge.failures;
      expect(after.connect - before.connect, JSON.stringify(downStats)).toBeGreaterThan(0);
      expect(after.connect + after.breaker - before.connect - before.breaker).toBeGreaterThanOrEqual(down.length);

      // Phase 3: key server back (startKeyserver resolves once it answers a ping); no proxy restart.
      await lab.startKeyserver();
      const back = performance.now();
      let first: Outcome | undefined;
      while (first === undefined && performance.now() - back < 5000) {
        const result = await handshake(proxy.port);
        if (result.ok) first = result;
        else await sleep(10);
      }
      const recoveryMs = performance.now() - back;
      expect(first?.ok).toBe(true);
      expect(recoveryMs).toBeLessThan(1000);
      await sleep(BREAKER_MS + 100);
      load.take(); // handshakes that began before the return
      await sleep(1500);
      const again = load.take();
      expect(again.length, summary(again)).toBeGreaterThan(10);
      expect(
        again.every((o) => o.ok),
        summary(again),
      ).toBe(true);
      expect(proxy.alive()).toBe(true);
      console.info(
        `down: ${summary(down)}; recovery ${recoveryMs.toFixed(0)} ms; max event-loop delay up ${upStats.maxDelayMs.toFixed(0)} ms, down ${downStats.maxDelayMs.toFixed(0)} ms`,
      );
    } finally {
      await load.stop();
    }
  });

  it('hung (accepts, never answers): alerts after about the deadline, no stall beyond it, the worker stays up', async () => {
    const hangPath = join(lab.dir, 'hang.sock');
    hangServer = net.createServer((socket) => {
      hangConnections++;
      hangSockets.add(socket);
      socket.on('error', () => undefined);
      socket.once('close', () => hangSockets.delete(socket));
    });
    await new Promise<void>((resolve) => hangServer!.listen(hangPath, resolve));
    const proxy = await proxyChild('hang', hangPath);
    await proxy.stats();
    await sleep(50); // let the child's histogram timer tick first

    const first = await handshake(proxy.port);
    expect(first.ok).toBe(false);
    expect(first.error).toMatch(ALERT);
    expect(first.ms).toBeGreaterThanOrEqual(150);
    expect(first.ms).toBeLessThan(1500);
    await sleep(50); // let the histogram record the stall
    const single = await proxy.stats();
    expect(single.bridge.failures.timeout).toBe(1);
    expect(single.maxDelayMs, JSON.stringify(single)).toBeGreaterThan(TIMEOUT_MS / 2); // the measurement sees the block...
    expect(single.maxDelayMs, JSON.stringify(single)).toBeLessThan(TIMEOUT_MS + SLACK_MS); // ...and it ends at the deadline

    const load = startLoad(proxy.port);
    try {
      await sleep(2000);
    } finally {
      await load.stop();
    }
    const outcomes = load.take();
    expect(outcomes.length, summary(outcomes)).toBeGreaterThan(4);
    expect(
      outcomes.filter((o) => o.ok),
      summary(outcomes),
    ).toHaveLength(0);
    expect(
      outcomes.some((o) => ALERT.test(o.error ?? '')),
      summary(outcomes),
    ).toBe(true);
    expect(proxy.alive()).toBe(true);
    const stats = await proxy.stats();
    expect(stats.maxDelayMs, JSON.stringify(stats)).toBeLessThan(TIMEOUT_MS + SLACK_MS);
    expect(stats.bridge.failures.timeout, JSON.stringify(stats)).toBeGreaterThan(1);
    expect(stats.bridge.failures.breaker, JSON.stringify(stats)).toBeGreaterThan(0);
    expect(stats.bridge.signs).toBe(0);
    expect(hangConnections).toBeGreaterThan(1); // it did reach the hung server, and reconnected after each timeout
    console.info(
      `hang: ${summary(outcomes)}; first failure after ${first.ms.toFixed(0)} ms; max event-loop delay ${single.maxDelayMs.toFixed(0)} / ${stats.maxDelayMs.toFixed(0)} ms`,
    );
  });
});
