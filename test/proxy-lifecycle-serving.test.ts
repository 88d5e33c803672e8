import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type AbuseOrigin, alive, RawClient, startAbuseOrigin } from './helpers/abuse.js';
import { CLI, removeDir, tempDir } from './helpers/basics.js';
import { type ClusterPorts, jsonLinesOf, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { freePort, type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// A worker that serves keeps serving, and finishes what it took, whatever happens beside it: another worker's first
// start failing, or its primary killed (SIGKILL, the OOM killer). Real processes: a primary and two workers, a slow
// origin answer in flight on the serving worker while the fault happens. Faults are injected by a module preloaded
// into every process (NODE_OPTIONS=--import), driven by files in a control directory: in the worker with id 2 its
// first listen waits for `fail-now`, then fails as a listen fails when the process is out of file descriptors (EMFILE);
// the worker with id 1 can serve without its readiness reaching the primary (`hold-ready`).
const HOST = 'serving.lab.test';
const INJECT = `
import cluster from 'node:cluster';
import net from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
const dir = process.env.SERVING_CONTROL;
if (dir !== undefined && cluster.worker?.id === 2 && existsSync(join(dir, 'fail-second-start'))) {
  const listen = net.Server.prototype.listen;
  let first = true;
  net.Server.prototype.listen = function (...args) {
    if (!first) return listen.apply(this, args);
    first = false;
    const poll = setInterval(() => {
      if (!existsSync(join(dir, 'fail-now'))) return;
      clearInterval(poll);
      this.emit('error', Object.assign(new Error('listen EMFILE: too many open files'), { code: 'EMFILE', errno: -24, syscall: 'listen' }));
    }, 50);
    return this;
  };
}
if (dir !== undefined && cluster.worker?.id === 1 && existsSync(join(dir, 'hold-ready'))) {
  // It serves, but its word that it does never reaches the primary (a message still on its way, for ever).
  const send = process.send.bind(process);
  process.send = (message, ...rest) => (message?.type === 'keyedge:ready' ? true : send(message, ...rest));
}
`;

let dir: string;
let lab: KeylessLab;
let origin: AbuseOrigin;
let ca: string;
let certFile: string;
/** Every proxy a case started, to end whatever of it is left, whether the case passed or not. */
const started: Proxy[] = [];

beforeAll(async () => {
  dir = tempDir('keyedge-serving-');
  writeFileSync(join(dir, 'inject.mjs'), INJECT);
  lab = await startKeylessLab();
  origin = await startAbuseOrigin();
  ca = readFileSync(lab.caFile, 'utf8');
  certFile = (await lab.certificate('serving', lab.keys.ec, [HOST])).file;
}, 60_000);

afterEach(() => {
  for (const proxy of started.splice(0)) proxy.kill();
});

afterAll(async () => {
  await origin?.close();
  await lab?.close();
  if (dir !== undefined) removeDir(dir);
});

interface Proxy {
  readonly port: number;
  readonly adminPort: number;
  readonly control: string;
  readonly child: ChildProcess;
  readonly lines: Record<string, unknown>[];
  readonly exited: Promise<number | null>;
  /** Processes left of it: the primary and every worker, found by the config file on their command line (a worker outlives a killed primary). */
  processes(): number[];
  /** SIGKILLs every process left of it. */
  kill(): void;
}

/**
 * `keyedge proxy` with two workers serving HOST, started without waiting for every worker (which startClusterProxy
 * does, by /readyz): a case here acts while one of them is still starting.
 */
async function startProxy(name: string, extra: Record<string, unknown> = {}): Promise<Proxy> {
  const control = join(dir, name);
  mkdirSync(join(control, 'certs'), { recursive: true });
  writeFileSync(join(control, 'certs', 'serving.pem'), readFileSync(certFile));
  const ports: ClusterPorts = {
    port: await freePort(),
    adminPort: await freePort(),
    storeDir: join(control, 'certs'),
    tokenFile: join(control, 'admin.token'),
  };
  writeFileSync(ports.tokenFile, 'test-admin-token-0123456789\n', { mode: 0o600 });
  const configFile = join(control, 'proxy.json');
  const config = storeProxyConfig(lab, ports, { domains: [{ name: HOST, origin: origin.url }], stateDir: join(control, 'state'), ...extra });
  writeFileSync(configFile, JSON.stringify(config));
  const child = spawn(process.execPath, [CLI, 'proxy', '--config', configFile], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, NODE_OPTIONS: `--import=${pathToFileURL(join(dir, 'inject.mjs')).href}`, SERVING_CONTROL: control },
  });
  const lines = jsonLinesOf(child.stdout!);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const processes = (): number[] => {
    const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
    return out
      .split('\n')
      .filter((line) => line.includes(configFile) && !line.includes(' ps '))
      .map((line) => Number.parseInt(line.trim(), 10))
      .filter((pid) => Number.isInteger(pid) && pid > 1);
  };
  const proxy: Proxy = {
    port: ports.port,
    adminPort: ports.adminPort,
    control,
    child,
    lines,
    exited,
    processes,
    kill() {
      for (const pid of processes()) if (alive(pid)) process.kill(pid, 'SIGKILL');
    },
  };
  started.push(proxy);
  return proxy;
}

/** Whether `pid` runs: an exited worker whose primary is gone is a zombie until init reaps it, which kill(pid, 0) still finds. */
function running(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0] !== 'Z';
  } catch {
    return false;
  }
}

const listeningWorkers = (proxy: Proxy): number[] => proxy.lines.filter((l) => l.msg === 'proxy worker listening').map((l) => l.pid as number);

/** A request for a slow answer (the origin waits `delayMs` before it sends 4 KiB), once it reached the origin. */
async function inFlight(proxy: Proxy, tag: string, delayMs: number): Promise<RawClient> {
  const client = new RawClient(proxy.port, ca, HOST);
  await client.secure;
  client.write(`GET /${tag}/answer?size=4096&delayMs=${delayMs} HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
  await waitFor('the request at the origin', () => (origin.open().includes(tag) ? true : undefined));
  return client;
}

describe('a worker that fails its first start while another serves', () => {
  it('does not stop the proxy: the request in flight on the serving worker is answered whole, the failed one is replaced and serves', async () => {
    const proxy = await startProxy('first-start');
    writeFileSync(join(proxy.control, 'fail-second-start'), '');
    const [serving] = await waitFor('the first worker listening', () => (listeningWorkers(proxy).length === 1 ? listeningWorkers(proxy) : undefined), 60_000);
    const client = await inFlight(proxy, 'first-start', 4_000);
    writeFileSync(join(proxy.control, 'fail-now'), '');
    // The answer comes some 4 s after the request reached the origin: the worker serving it must be there then.
    await client.receivedAtLeast(4096, 20_000);
    expect(client.head, JSON.stringify(proxy.lines.slice(-5))).toMatch(/^HTTP\/1\.1 200 /);
    expect(client.received).toBeGreaterThanOrEqual(4096);
    client.tls.destroy();
    const failed = proxy.lines.find((l) => l.msg === 'a proxy worker could not start; another serves, so it is replaced');
    expect(failed, JSON.stringify(proxy.lines.slice(-5))).toMatchObject({ level: 50, code: 'KEYEDGE_ERR_SETUP', reason: expect.stringMatching(/EMFILE/) });
    expect(alive(proxy.child.pid!), 'the primary').toBe(true);
    expect(alive(serving!), 'the serving worker').toBe(true);
    // The failed worker's replacement (worker 3, no fault) serves: both serve again.
    // Every 100 ms, as startClusterProxy's: each check is an HTTP request the primary answers, while a replacement starts for seconds.
    await waitFor('readiness', async () => ((await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`)).status === 200 ? true : undefined), 45_000, 100);
    proxy.child.kill('SIGTERM');
    expect(await proxy.exited).toBe(0);
  }, 120_000);
});

describe('a first start that fails while the primary has not yet heard the other worker say it serves', () => {
  it('ends the proxy with the reason once that worker has drained: the request in flight on it is answered whole', async () => {
    const proxy = await startProxy('unheard');
    writeFileSync(join(proxy.control, 'fail-second-start'), '');
    writeFileSync(join(proxy.control, 'hold-ready'), '');
    await waitFor('the first worker listening', () => (listeningWorkers(proxy).length === 1 ? true : undefined), 60_000);
    const client = await inFlight(proxy, 'unheard', 4_000);
    writeFileSync(join(proxy.control, 'fail-now'), '');
    await client.receivedAtLeast(4096, 20_000);
    expect(client.head, JSON.stringify(proxy.lines.slice(-5))).toMatch(/^HTTP\/1\.1 200 /);
    expect(client.received).toBeGreaterThanOrEqual(4096);
    client.tls.destroy();
    // The start failed, and says so: no worker was known to serve.
    expect(await proxy.exited).toBe(1);
    expect(proxy.lines.find((l) => l.msg === 'a proxy worker could not start; stopping')).toMatchObject({ reason: expect.stringMatching(/EMFILE/) });
    // Every 200 ms, as the cases below: each check is a `ps` run.
    await waitFor('no process of it left', () => (proxy.processes().length === 0 ? true : undefined), 10_000, 200);
  }, 120_000);
});

describe('a primary killed (SIGKILL) while its workers serve', () => {
  it('its workers stop accepting, answer the request in flight whole, cut one that outlives the grace period, and exit by then: no process is left', async () => {
    const GRACE_MS = 8_000;
    const proxy = await startProxy('primary-killed', { shutdownGraceMs: GRACE_MS });
    await waitFor('both workers listening', () => (listeningWorkers(proxy).length === 2 ? true : undefined), 60_000);
    const workers = proxy.processes().filter((pid) => pid !== proxy.child.pid);
    expect(workers).toHaveLength(2);
    // One answer within the grace period, one far past it (the origin holds it two minutes).
    const short = await inFlight(proxy, 'killed-short', 3_000);
    const long = await inFlight(proxy, 'killed-long', 120_000);
    process.kill(proxy.child.pid!, 'SIGKILL');
    const killedAt = Date.now();
    // New connections are refused at once: each worker held its own descriptor of the listening socket, now closed.
    const refused = (): Promise<true | undefined> =>
      new Promise((resolve) => {
        const socket = net.connect(proxy.port, '127.0.0.1');
        socket.once('connect', () => {
          socket.destroy();
          resolve(undefined);
        });
        socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED' ? true : undefined));
      });
    await waitFor('new connections refused', refused, 5_000, 100);
    await short.receivedAtLeast(4096, 20_000);
    expect(short.head, JSON.stringify(proxy.lines.slice(-5))).toMatch(/^HTTP\/1\.1 200 /);
    expect(short.received).toBeGreaterThanOrEqual(4096);
    short.tls.destroy();
    // Every worker exits by the grace period (and its slack), whatever is still open: nothing outlives the proxy.
    await waitFor('no process of it left', () => (proxy.processes().length === 0 ? true : undefined), GRACE_MS + 15_000, 200);
    expect(Date.now() - killedAt).toBeLessThan(60_000);
    await long.finish();
    for (const pid of workers) {
      expect(running(pid), `worker ${pid}`).toBe(false);
      expect(
        proxy.lines.find(
          (l) => l.pid === pid && l.msg === 'the proxy primary is gone: this worker stops accepting, finishes its requests in flight, and exits',
        ),
      ).toBeDefined();
    }
  }, 120_000);

  it('killed while it stops them (an impatient `kill -9` after SIGTERM): the worker already draining finishes the request in flight, then exits', async () => {
    // One worker: what is judged is a drain begun on the primary's word going on without it.
    const proxy = await startProxy('killed-while-stopping', { workers: 1 });
    await waitFor('the worker listening', () => (listeningWorkers(proxy).length === 1 ? true : undefined), 60_000);
    const client = await inFlight(proxy, 'killed-while-stopping', 3_000);
    process.kill(proxy.child.pid!, 'SIGTERM');
    await waitFor('the stop begun', () => proxy.lines.find((l) => l.msg === 'stopping proxy workers'));
    process.kill(proxy.child.pid!, 'SIGKILL');
    await client.receivedAtLeast(4096, 20_000);
    expect(client.head, JSON.stringify(proxy.lines.slice(-5))).toMatch(/^HTTP\/1\.1 200 /);
    expect(client.received).toBeGreaterThanOrEqual(4096);
    client.tls.destroy();
    await waitFor('no process of it left', () => (proxy.processes().length === 0 ? true : undefined), 25_000, 200);
  }, 120_000);
});
