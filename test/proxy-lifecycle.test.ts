import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AbuseOrigin, alive, metricSum, RawClient, startAbuseOrigin, workerPids } from './helpers/abuse.js';
import { removeDir, sleep, tempDir } from './helpers/basics.js';
import { ADMIN_TOKEN, type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// The primary's life under signals and dying workers, with real processes: a
// second SIGTERM, a SIGINT or a SIGHUP while it drains; a SIGHUP while it
// starts; a SIGTERM while its workers start; a worker that dies at every
// start; a fork the system refuses. Faults are injected by a module preloaded
// into every process (NODE_OPTIONS=--import), driven by files in a control
// directory: in the primary it can hold the first fork (a slow start it
// reports), have the forks fail (spawn-cwd), and on
// SIGUSR2 it throws and rejects a promise nothing handles; in a worker
// it can stall the start (before it listens for the primary's messages), hang
// in it for a minute, or exit at once (a crash loop).
const HOST = 'life.lab.test';
const INJECT = `
import cluster from 'node:cluster';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
const dir = process.env.LIFECYCLE_CONTROL;
const block = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
if (dir !== undefined && cluster.isPrimary) {
  const fork = cluster.fork.bind(cluster);
  let forks = 0;
  cluster.fork = (...args) => {
    if (++forks === 1 && existsSync(join(dir, 'slow-first-fork'))) {
      writeFileSync(join(dir, 'forking'), String(process.pid));
      block(2000);
    }
    // A fork the system refuses: a working directory that is no directory fails the spawn, later (ENOENT: said by
    // 'error', as EAGAIN at a pids cgroup's limit is) or at once (ENOTDIR: thrown, as ENOMEM is).
    cluster.setupPrimary({ cwd: existsSync(join(dir, 'spawn-cwd')) ? readFileSync(join(dir, 'spawn-cwd'), 'utf8') : undefined });
    // Workers without this module, when a test needs none of their faults.
    const worker = existsSync(join(dir, 'plain-workers')) ? fork({ NODE_OPTIONS: '' }) : fork(...args);
    if (forks === 1) setTimeout(() => writeFileSync(join(dir, 'forked'), String(process.pid)), 300);
    return worker;
  };
  process.on('SIGUSR2', () => {
    void Promise.reject(Object.assign(new Error('injected rejection'), { code: 'TEST_INJECTED' }));
    setImmediate(() => {
      throw Object.assign(new Error('injected exception'), { code: 'TEST_INJECTED' });
    });
  });
} else if (dir !== undefined) {
  // Metrics snapshots of every wrong shape, as a worker in a corrupted state might send them.
  process.on('SIGUSR2', () => {
    for (const metrics of [[null], [{ name: 'x', type: 'counter', values: 5 }], [{ type: 'counter', values: [] }], [{ name: 'y', type: 'counter', values: [{ value: 1 }] }], [{ name: 'z', type: 'counter', values: [null] }]]) {
      process.send({ type: 'keyedge:metrics', full: false, metrics });
      process.send({ type: 'keyedge:metrics', full: true, metrics });
    }
    // From then on, every snapshot it sends holds a metric without an aggregator, or with one prom-client does not
    // have: taken, AggregatorRegistry.aggregate threw at every scrape (500), and after the worker's exit for good.
    const send = process.send.bind(process);
    let odd = 0;
    process.send = (message, ...rest) => {
      if (message?.type !== 'keyedge:metrics' && message?.type !== 'keyedge:metrics-final') return send(message, ...rest);
      const extra = { name: 'odd_total', help: 'odd', type: 'counter', values: [{ value: 1, labels: {} }] };
      return send({ ...message, metrics: [...message.metrics, ++odd % 2 === 0 ? { ...extra, aggregator: 'bogus' } : extra] }, ...rest);
    };
  });
  // Counts the primary's requests for a whole registry (a scrape's), in a file per worker.
  let full = 0;
  process.on('message', (message) => {
    if (message?.type === 'keyedge:metrics-request' && message.full === true) writeFileSync(join(dir, 'full-' + process.pid), String(++full));
  });
  // Dies as a reload reaches it when the file 'exit-on-apply' names it: a worker lost mid-reload (a crash, the OOM killer).
  process.on('message', (message) => {
    const file = join(dir, 'exit-on-apply');
    if (message?.type === 'keyedge:apply' && existsSync(file) && readFileSync(file, 'utf8') === String(process.pid)) process.exit(3);
  });
  if (existsSync(join(dir, 'crash'))) setTimeout(() => process.exit(3), 20);
  if (existsSync(join(dir, 'slow-worker'))) block(existsSync(join(dir, 'slow-worker-ms')) ? Number(readFileSync(join(dir, 'slow-worker-ms'), 'utf8')) : 3000);
  if (existsSync(join(dir, 'hang-worker'))) block(60_000);
}
`;

let dir: string;
let lab: KeylessLab;
let origin: AbuseOrigin;
let ca: string;
let certFile: string;
const running: ClusterProxy[] = [];

beforeAll(async () => {
  dir = tempDir('keyedge-lifecycle-');
  writeFileSync(join(dir, 'inject.mjs'), INJECT);
  lab = await startKeylessLab();
  origin = await startAbuseOrigin();
  ca = readFileSync(lab.caFile, 'utf8');
  certFile = (await lab.certificate('life', lab.keys.ec, [HOST])).file;
}, 60_000);

afterAll(async () => {
  // Each stops on its own (SIGTERM, its workers drain): side by side rather than one after another.
  await Promise.all(running.map((proxy) => proxy.stop()));
  await origin?.close();
  await lab?.close();
  if (dir !== undefined) removeDir(dir);
});

/** `keyedge proxy` with two workers (unless `extra` says otherwise) serving HOST, its control directory `control` (created empty). */
/** `rescanSeconds`: the store's rescan period, when the test must not have a rescan's apply extend a worker's allowance. */
async function startProxy(name: string, control: string, extra: Record<string, unknown> = {}, rescanSeconds?: number): Promise<ClusterProxy> {
  // Made before the first await: the caller may put files in it as soon as this returns its promise.
  rmSync(control, { recursive: true, force: true });
  mkdirSync(control, { recursive: true });
  const proxy = await startClusterProxy(
    lab,
    name,
    (p) => {
      writeFileSync(join(p.storeDir, 'life.pem'), readFileSync(certFile));
      const store = rescanSeconds === undefined ? {} : { certStore: { dir: p.storeDir, rescanSeconds } };
      // A state directory of its own (the lab's is shared by default): proxies run side by side here, and a primary
      // hands its workers their configuration through files in it (worker-config-*.json).
      return storeProxyConfig(lab, p, { domains: [{ name: HOST, origin: origin.url }], stateDir: join(control, 'state'), ...store, ...extra });
    },
    { NODE_OPTIONS: `--import=${pathToFileURL(join(dir, 'inject.mjs')).href}`, LIFECYCLE_CONTROL: control },
    75_000,
  );
  running.push(proxy);
  return proxy;
}

/**
 * How often a case asks /readyz while a replacement worker starts or waits out the crash loop's pause (seconds): every
 * 100 ms, as startClusterProxy does, rather than waitFor's 25 ms (each check is an HTTP request the primary answers).
 */
const READY_POLL_MS = 100;

const get = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;

async function answered(proxy: ClusterProxy, path: string): Promise<string> {
  const client = new RawClient(proxy.port, ca, HOST);
  await client.secure;
  client.write(get(path));
  await client.receivedAtLeast(1);
  client.tls.destroy();
  return client.head;
}

// Two chains side by side (describe.concurrent), one proxy at a time in each, of about the same length (some 80 s
// each, measured; the fork-refusal case is in the second chain for that): most of these cases wait seconds on the
// supervisor's own bounds and pauses (a silent worker's, a start's, the crash loop's) or on an answer the origin
// holds. Every case has its own proxy, state and control directories; what they share (the lab's key server, the
// origin, each case asking it for paths of its own) none of them stops or counts.
describe.concurrent('a blocked worker, and signals while the primary drains', () => {
  describe.sequential('a worker whose event loop is blocked (SIGSTOP)', () => {
    const SILENT_MS = 10_000;
    // Also the bound of the proxy's first two workers' starts (the setting is read once): at 10 s, at a load average of
    // 16 both were killed as hung and the proxy stopped (3 starts in a row failed) before the case began.
    const START_MS = 20_000;
    it('does not hold /metrics scrapes (each answers within its 2 s wait), and is killed and replaced while the other serves; a replacement that hangs in its start is killed after workerStartTimeoutMs and replaced after the crash-loop pause', async () => {
      // No store rescan within the test (one would give the stopped worker 30 s more while it waits for its apply).
      // Silence is judged at 10 s (30 s by default, 10 s the least allowed): two of the 5 s metrics polls, which the serving
      // worker answers. A start is given START_MS (60 s by default): a healthy one takes a second or two on a loaded
      // machine, and more than 10 s at a load average of 16.
      const control = join(dir, 'hung');
      const proxy = await startProxy('hung', control, { workerStartTimeoutMs: START_MS, workerSilentTimeoutMs: SILENT_MS }, 3600);
      const [survivor, victim] = await waitFor('two workers listening', () =>
        workerPids(proxy).listening.length === 2 ? workerPids(proxy).listening : undefined,
      );
      process.kill(victim!, 'SIGSTOP');
      const stoppedAt = Date.now();
      // Its replacement hangs in its start (before it listens for the primary's messages).
      writeFileSync(join(control, 'hang-worker'), '');
      try {
        const scrapes = await Promise.all(
          Array.from({ length: 50 }, async () => {
            const started = Date.now();
            const response = await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`);
            await response.text();
            return { status: response.status, ms: Date.now() - started };
          }),
        );
        for (const scrape of scrapes) expect(scrape.status).toBe(200);
        expect(Math.max(...scrapes.map((s) => s.ms))).toBeLessThan(8_000);
        expect(await answered(proxy, '/while-hung/answer?size=16')).toMatch(/^HTTP\/1\.1 200 /);
        // Silent for SILENT_MS, judged every 5 s; a generous margin.
        const killed = await waitFor(
          'the primary to kill it',
          () => proxy.lines.find((l) => l.msg === 'proxy worker unresponsive (its event loop is blocked); killing it'),
          100_000,
        );
        expect(killed.pid).toBe(victim);
        expect(Number(killed.silentMs)).toBeGreaterThanOrEqual(SILENT_MS);
        expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(SILENT_MS);
        await waitFor('it to be gone', () => (alive(victim!) ? undefined : true), 10_000);
        const hung = await waitFor(
          'the hung replacement killed',
          () => proxy.lines.find((l) => l.msg === `proxy worker did not become ready within ${START_MS} ms; killing it`),
          START_MS + 30_000,
        );
        rmSync(join(control, 'hang-worker'));
        const death = await waitFor('its death', () => proxy.lines.find((l) => l.msg === 'proxy worker died; starting a replacement' && l.pid === hung.pid));
        expect(death.restartInMs).toBeGreaterThanOrEqual(1_000);
        // Which deaths were counted, should there be another than the two above.
        const deaths = JSON.stringify(proxy.lines.filter((l) => String(l.msg).startsWith('proxy worker')).map((l) => [l.time, l.pid, l.msg]));
        expect(await metricSum(proxy, 'keyedge_proxy_worker_restarts_total'), deaths).toBe(2);
        await waitFor('a replacement', () => workerPids(proxy).listening.find((p) => p !== survivor && p !== victim), 30_000);
        await waitFor(
          'readiness',
          async () => ((await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`)).status === 200 ? true : undefined),
          30_000,
          READY_POLL_MS,
        );
        expect(alive(survivor!)).toBe(true);
      } finally {
        if (alive(victim!)) process.kill(victim!, 'SIGCONT');
      }
    }, 200_000);
  });

  describe.sequential('signals while the primary drains', () => {
    it('a second SIGTERM, a SIGINT and a SIGHUP, to the primary and to every worker, do not cut the drain: the request in flight is answered whole, the primary stops cleanly', async () => {
      const proxy = await startProxy('drain', join(dir, 'drain'));
      const client = new RawClient(proxy.port, ca, HOST);
      await client.secure;
      client.write(get('/inflight/answer?size=4096&delayMs=3000'));
      await waitFor('the request at the origin', () => (origin.open().includes('inflight') ? true : undefined));
      process.kill(proxy.pid, 'SIGTERM');
      await sleep(300);
      // Then to every process, as a supervisor that signals the whole group (systemd's control-group kill) does, twice.
      const workers = workerPids(proxy).listening;
      for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGTERM'] as const) {
        // A process that one of them ended is gone for the next (ESRCH): what the assertions below show.
        for (const pid of [proxy.pid, ...workers]) if (alive(pid)) process.kill(pid, signal);
        await sleep(100);
      }
      await client.receivedAtLeast(4096, 15_000);
      expect(client.head).toMatch(/^HTTP\/1\.1 200 /);
      client.tls.destroy();
      await waitFor('the primary to exit', () => (alive(proxy.pid) ? undefined : true), 20_000);
      expect(proxy.lines.some((l) => l.msg === 'proxy stopped')).toBe(true);
      for (const pid of workerPids(proxy).listening) expect(alive(pid)).toBe(false);
    }, 120_000);
  });

  describe.sequential('an admin client that never finishes its request', () => {
    it('does not keep the stopped primary running', async () => {
      // One worker: what is judged is the primary's admin listener, and an idle worker's stop.
      const proxy = await startProxy('admin-open', join(dir, 'admin-open'), { workers: 1 });
      const socket = net.connect(proxy.adminPort, '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise((resolve) => socket.once('connect', resolve));
      // An upload with the token, its body still to come: read until the 60 s request deadline.
      socket.write(`PUT /certs/slow HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer ${ADMIN_TOKEN}\r\nContent-Length: 100000\r\n\r\nabc`);
      await sleep(200);
      const signalled = Date.now();
      process.kill(proxy.pid, 'SIGTERM');
      await waitFor('the primary to exit', () => (alive(proxy.pid) ? undefined : true), 30_000);
      socket.destroy();
      // Idle workers stop at once; the admin request's 60 s deadline must not be waited for.
      expect(Date.now() - signalled).toBeLessThan(8_000);
    }, 120_000);
  });
  describe.sequential('two proxies sharing a state directory', () => {
    it("a worker one forks starts on its own primary's configuration, not on the other's, written meanwhile", async () => {
      // One key server's socket in the state directory, the default ./var: two proxies of one host may well share it.
      const shared = join(dir, 'shared-state');
      const [a, b] = await Promise.all([
        startProxy('share-a', join(dir, 'share-a'), { stateDir: shared }),
        startProxy('share-b', join(dir, 'share-b'), { stateDir: shared }),
      ]);
      const listening = (proxy: ClusterProxy) => proxy.lines.filter((l) => l.msg === 'proxy worker listening');
      const [, victimA] = await waitFor('two workers of a', () => (listening(a).length === 2 ? listening(a).map((l) => l.pid as number) : undefined));
      const [, victimB] = await waitFor('two workers of b', () => (listening(b).length === 2 ? listening(b).map((l) => l.pid as number) : undefined));
      // a's replacement is forked (its configuration written), then stalls before it reads it, while b forks one of its own.
      writeFileSync(join(dir, 'share-a', 'slow-worker-ms'), '8000');
      writeFileSync(join(dir, 'share-a', 'slow-worker'), '');
      process.kill(victimA!, 'SIGKILL');
      await waitFor("a's replacement forked", () => a.lines.find((l) => l.msg === 'proxy worker died; starting a replacement' && l.pid === victimA));
      rmSync(join(dir, 'share-a', 'slow-worker'));
      process.kill(victimB!, 'SIGKILL');
      await waitFor("b's replacement listening", () => (listening(b).length === 3 ? true : undefined), 30_000);
      // What a's replacement said first: it listens on a's port, or it could not start (b's port, held by b's primary).
      const said = await waitFor(
        "a's replacement to listen or fail",
        () => a.lines.find((l) => l.msg === 'a replacement proxy worker could not start') ?? (listening(a).length === 3 ? listening(a)[2] : undefined),
        45_000,
      );
      expect(said.msg, JSON.stringify(said)).toBe('proxy worker listening');
      expect(said.ports).toEqual([a.port]);
      expect(await answered(a, '/shared-state/answer?size=16')).toMatch(/^HTTP\/1\.1 200 /);
      await Promise.all([a.stop(), b.stop()]);
      // Each fork's file went once its worker read it, or died.
      expect(readdirSync(shared).filter((f) => f.startsWith('worker-config'))).toEqual([]);
    }, 150_000);
  });
});

describe.concurrent('workers that die or hang at every start, and the other cases', () => {
  // The proxy the SIGHUP case below started, once it has shown what that case judges: the three cases of 'one proxy'
  // run on it rather than on a proxy of their own (a primary and two workers started, some 4 s of CPU).
  let hungUp: { control: string; proxy: ClusterProxy } | undefined;

  describe.sequential('a worker that dies at every start', () => {
    it('is restarted with a growing pause while the other worker serves, and shows in the log, /metrics and /readyz', async () => {
      const control = join(dir, 'crash');
      const proxy = await startProxy('crash', control);
      const [survivor, victim] = await waitFor('two workers listening', () =>
        workerPids(proxy).listening.length === 2 ? workerPids(proxy).listening : undefined,
      );
      writeFileSync(join(control, 'crash'), '');
      process.kill(victim!, 'SIGKILL');
      const from = Date.now();
      // The SIGKILL's death and two at start, within about 5 s: a doubling to judge (a fixed 1 s pause has none).
      const deaths = await waitFor(
        'three deaths',
        () => {
          const logged = proxy.lines.filter((l) => l.msg === 'proxy worker died; starting a replacement');
          return logged.length >= 3 ? logged : undefined;
        },
        45_000,
      );
      // The first death (the SIGKILL) may come within 5 s of the start or not; each quick one after it doubles the pause.
      const pauses = deaths.map((d) => d.restartInMs as number);
      expect(pauses[1]).toBeGreaterThanOrEqual(1000);
      for (let i = 2; i < pauses.length; i++) expect(pauses[i], JSON.stringify(pauses)).toBe(Math.min(2 * pauses[i - 1]!, 30_000));
      // Each pause is waited before the replacement is forked, not only logged: a death comes no sooner than the pause before it.
      const times = deaths.map((d) => Date.parse(d.time as string));
      for (let i = 1; i < deaths.length; i++) expect(times[i]! - times[i - 1]!, JSON.stringify({ pauses, times })).toBeGreaterThanOrEqual(pauses[i - 1]!);
      expect(await metricSum(proxy, 'keyedge_proxy_worker_restarts_total')).toBeGreaterThanOrEqual(deaths.length);
      const ready = await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.text()).toMatch(/1 of 2 workers/);
      // The other worker serves throughout.
      expect(alive(survivor!)).toBe(true);
      for (let i = 0; i < 4; i++) expect(await answered(proxy, `/during-loop-${i}/answer?size=16`)).toMatch(/^HTTP\/1\.1 200 /);
      // Once the fault is gone, the next restart serves.
      rmSync(join(control, 'crash'));
      await waitFor(
        'two workers again',
        async () => ((await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`)).status === 200 ? true : undefined),
        45_000,
        READY_POLL_MS,
      );
      expect(Date.now() - from).toBeLessThan(60_000);
    }, 120_000);
  });

  describe.sequential('a replacement the system refuses to fork', () => {
    it('does not stop the proxy: each refusal, said later or at once, is logged and tried again after the growing pause while the other worker serves; once forks work, a replacement serves', async () => {
      const control = join(dir, 'spawn');
      const proxy = await startProxy('spawn', control);
      const [survivor, victim] = await waitFor('two workers listening', () =>
        workerPids(proxy).listening.length === 2 ? workerPids(proxy).listening : undefined,
      );
      const refused = (code: string) => proxy.lines.filter((l) => l.msg === 'proxy worker could not be forked; trying again' && l.code === code);
      const uncaught = () => proxy.lines.find((l) => l.pid === proxy.pid && typeof l.kind === 'string');
      // Refused later (ENOENT, said by 'error' on the worker), then at once (ENOTDIR, thrown by cluster.fork).
      writeFileSync(join(control, 'spawn-cwd'), join(control, 'no-such-dir'));
      process.kill(victim!, 'SIGKILL');
      await waitFor('two refusals said later', () => uncaught() ?? (refused('ENOENT').length >= 2 ? true : undefined), 30_000);
      writeFileSync(join(control, 'not-a-dir'), '');
      writeFileSync(join(control, 'spawn-cwd'), join(control, 'not-a-dir'));
      await waitFor('a refusal said at once', () => uncaught() ?? (refused('ENOTDIR').length >= 1 ? true : undefined), 30_000);
      expect(uncaught(), 'an uncaught error in the primary').toBeUndefined();
      const pauses = [...refused('ENOENT'), ...refused('ENOTDIR')].map((l) => l.restartInMs as number);
      for (let i = 1; i < pauses.length; i++) expect(pauses[i], JSON.stringify(pauses)).toBe(Math.min(2 * pauses[i - 1]!, 30_000));
      expect(alive(proxy.pid), 'the primary').toBe(true);
      expect(alive(survivor!), 'the other worker').toBe(true);
      expect(await answered(proxy, '/while-refused/answer?size=16')).toMatch(/^HTTP\/1\.1 200 /);
      rmSync(join(control, 'spawn-cwd'));
      await waitFor('a replacement', () => workerPids(proxy).listening.find((p) => p !== survivor && p !== victim), 45_000);
      await waitFor(
        'readiness',
        async () => ((await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`)).status === 200 ? true : undefined),
        30_000,
        READY_POLL_MS,
      );
      expect(await metricSum(proxy, 'keyedge_proxy_worker_restarts_total')).toBeGreaterThanOrEqual(1 + pauses.length);
      expect(alive(proxy.pid), 'the primary').toBe(true);
    }, 150_000);
  });
  describe.sequential('workers that hang in their start', () => {
    it('when every worker hangs in its start, the start fails with the reason instead of waiting for ever', async () => {
      const control = join(dir, 'hang-all');
      const starting = startProxy('hang-all', control, { workerStartTimeoutMs: 1_500 });
      writeFileSync(join(control, 'hang-worker'), '');
      // Two starts time out at 1.5 s, the next after a 1 s pause: about 5 s.
      await expect(starting).rejects.toThrow(
        /the proxy exited \(1\).*no proxy worker became ready: 3 starts in a row failed, the last one not ready within 1500 ms/,
      );
    }, 60_000);
  });

  describe.sequential('an uncaught error in the primary', () => {
    it('is logged, and the proxy stops as on SIGTERM: the request in flight is answered whole, the workers exit, the primary exits', async () => {
      const control = join(dir, 'primary-fault');
      // One worker: what is judged is the primary's uncaught error and the drain it starts (the worker's, with the
      // request in flight on it), not which of several workers the request went to.
      const starting = startProxy('primary-fault', control, { workers: 1 });
      writeFileSync(join(control, 'plain-workers'), '');
      const proxy = await starting;
      const workers = await waitFor('the worker listening', () => (workerPids(proxy).listening.length === 1 ? workerPids(proxy).listening : undefined));
      const client = new RawClient(proxy.port, ca, HOST);
      await client.secure;
      client.write(get('/primary-fault/answer?size=4096&delayMs=3000'));
      await sleep(300);
      process.kill(proxy.pid, 'SIGUSR2');
      const logged = await waitFor('the uncaught-error log lines', () => {
        const lines = proxy.lines.filter((l) => l.pid === proxy.pid && typeof l.kind === 'string');
        return lines.length >= 2 ? lines : undefined;
      });
      expect(logged.map((l) => l.kind).sort()).toEqual(['uncaughtException', 'unhandledRejection']);
      expect(logged[0]).toMatchObject({ level: 50, code: 'TEST_INJECTED', msg: expect.stringMatching(/the proxy stops \(its workers drain\)/) });
      // Node's default ended the primary at once, and its workers with it: the request was cut.
      await client.receivedAtLeast(4096, 15_000);
      expect(client.head).toMatch(/^HTTP\/1\.1 200 /);
      client.tls.destroy();
      await waitFor('the primary to exit', () => (alive(proxy.pid) ? undefined : true), 20_000);
      expect(proxy.lines.some((l) => l.msg === 'proxy stopped')).toBe(true);
      for (const pid of workers) expect(alive(pid)).toBe(false);
    }, 120_000);
  });

  describe.sequential('signals while the proxy starts', () => {
    it('a SIGHUP before the workers are forked does not end the primary: it starts, and reloads once', async () => {
      const control = join(dir, 'hangup');
      const starting = startProxy('hangup', control);
      writeFileSync(join(control, 'slow-first-fork'), '');
      const pid = Number(
        await waitFor('the primary to fork', () => (existsSync(join(control, 'forking')) ? readFileSync(join(control, 'forking'), 'utf8') : undefined), 60_000),
      );
      for (let i = 0; i < 20; i++) process.kill(pid, 'SIGHUP');
      await sleep(2_500);
      expect(alive(pid), 'the primary after the SIGHUPs').toBe(true);
      const proxy = await starting;
      expect(alive(proxy.pid)).toBe(true);
      await waitFor('the reload SIGHUP asked for', () => proxy.lines.find((l) => l.msg === 'reload done' && l.trigger === 'signal'), 15_000);
      expect(await answered(proxy, '/after-hangup/answer?size=16')).toMatch(/^HTTP\/1\.1 200 /);
      hungUp = { control, proxy };
    }, 120_000);

    it('a SIGTERM while the workers start, before they listen for messages, stops the proxy at once, not after the grace period', async () => {
      const control = join(dir, 'term');
      // One worker: the primary's stop while a worker starts is what is judged.
      const starting = startProxy('term', control, { workers: 1 }).then(
        () => 'ready',
        (err: Error) => err.message,
      );
      writeFileSync(join(control, 'slow-worker'), '');
      const pid = Number(
        await waitFor('the primary to fork', () => (existsSync(join(control, 'forked')) ? readFileSync(join(control, 'forked'), 'utf8') : undefined), 60_000),
      );
      const signalled = Date.now();
      process.kill(pid, 'SIGTERM');
      // The workers stall 3 s before they listen; the grace period (10 s) and its 5 s slack would take 15 s.
      await waitFor('the primary to exit', () => (alive(pid) ? undefined : true), 30_000);
      expect(Date.now() - signalled).toBeLessThan(9_000);
      expect(await starting).toMatch(/the proxy exited \(0\)/);
    }, 120_000);
  });

  // One proxy for these cases, in this order: none of them stops it, the storm must see no worker die yet and the
  // scrapes no restart, and only the last two kill a worker. It is the SIGHUP case's (two workers with the fault module,
  // none died, none restarted; its one reload done), or, had that case failed before it was ready, one of their own.
  describe.sequential('one proxy, four cases in turn', () => {
    let control: string;
    let proxy: ClusterProxy;
    beforeAll(async () => {
      hungUp ??= { control: join(dir, 'shared'), proxy: await startProxy('shared', join(dir, 'shared')) };
      ({ control, proxy } = hungUp);
    }, 90_000);

    describe('many scrapes at once', () => {
      it("50 concurrent /metrics scrapes share the workers' answers: each worker is asked for its registry a few times, not 50", async () => {
        const workers = await waitFor('two workers listening', () => (workerPids(proxy).listening.length === 2 ? workerPids(proxy).listening : undefined));
        const asked = (): number[] =>
          workers.map((pid) => (existsSync(join(control, `full-${pid}`)) ? Number(readFileSync(join(control, `full-${pid}`), 'utf8')) : 0));
        const before = asked();
        const bodies = await Promise.all(Array.from({ length: 50 }, async () => (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text()));
        for (const body of bodies) expect(body).toMatch(/keyedge_proxy_worker_restarts_total 0/);
        const after = asked();
        for (let i = 0; i < workers.length; i++) expect(after[i]! - before[i]!, `worker ${workers[i]}`).toBeLessThan(20);
      }, 120_000);
    });

    describe('a SIGHUP storm', () => {
      it('100 SIGHUPs within a second: reloads one at a time (those meanwhile folded), each ok; the proxy serves throughout', async () => {
        const before = proxy.lines.length;
        for (let i = 0; i < 100; i++) {
          process.kill(proxy.pid, 'SIGHUP');
          await sleep(10);
        }
        expect(await answered(proxy, '/during-storm/answer?size=16')).toMatch(/^HTTP\/1\.1 200 /);
        await sleep(3_000);
        const reloads = proxy.lines.slice(before).filter((l) => l.msg === 'reload done' && l.trigger === 'signal');
        // A reload takes a few ms here, so most get one of their own; those that come while one runs fold into the next.
        expect(reloads.length).toBeGreaterThanOrEqual(1);
        expect(reloads.length).toBeLessThanOrEqual(100);
        expect(reloads.filter((r) => r.result !== 'ok')).toEqual([]);
        expect(alive(proxy.pid)).toBe(true);
        expect(workerPids(proxy).died).toEqual([]);
      }, 120_000);
    });

    describe('IPC messages of unexpected shapes', () => {
      it("metrics snapshots a worker sends malformed are ignored: the primary goes on, /metrics answers, the worker's death is summed", async () => {
        const [, victim] = await waitFor('two workers listening', () => (workerPids(proxy).listening.length === 2 ? workerPids(proxy).listening : undefined));
        process.kill(victim!, 'SIGUSR2');
        await sleep(1_000);
        expect(alive(proxy.pid), 'the primary').toBe(true);
        expect((await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).status).toBe(200);
        // Its exit folds its last snapshot into the retired sums: a malformed one would throw there.
        process.kill(victim!, 'SIGKILL');
        await waitFor('a replacement', () => (workerPids(proxy).died.includes(victim!) ? true : undefined), 15_000);
        await sleep(1_000);
        expect(alive(proxy.pid), 'the primary').toBe(true);
        const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
        expect(text).toMatch(/keyedge_proxy_worker_restarts_total 1/);
        expect(await answered(proxy, '/after-shapes/answer?size=16')).toMatch(/^HTTP\/1\.1 200 /);
      }, 120_000);
    });

    describe('a worker lost mid-reload', () => {
      it('the reload is committed and answered as such (200, the worker named in `notApplied`), and the replacement serves it', async () => {
        const alive = (): number[] => {
          const { listening, died } = workerPids(proxy);
          return listening.filter((pid) => !died.includes(pid));
        };
        const [victim] = await waitFor('two workers listening', () => (alive().length === 2 ? alive() : undefined));
        writeFileSync(join(control, 'exit-on-apply'), String(victim));
        const reload = await proxy.admin('POST', '/reload');
        rmSync(join(control, 'exit-on-apply'));
        // It was answered 409 (which says the config was refused, nothing taken) with `error` "worker N: exited".
        expect(reload.status, reload.text).toBe(200);
        const report = JSON.parse(reload.text) as Record<string, unknown>;
        expect(report).toMatchObject({ result: 'ok', notApplied: [expect.stringMatching(/^worker \d+: exited/)] });
        expect(report.error).toBeUndefined();
        await waitFor('the replacement', () => (workerPids(proxy).died.includes(victim!) && alive().length === 2 ? true : undefined), 30_000);
        const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
        expect(text).not.toMatch(/keyedge_proxy_reloads_total\{trigger="admin",result="partial"\}/);
        expect(await answered(proxy, '/after-lost/answer?size=16')).toMatch(/^HTTP\/1\.1 200 /);
      }, 120_000);
    });
  });
});
