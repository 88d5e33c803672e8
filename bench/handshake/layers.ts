/**
 * Where a proxy worker's CPU goes, layer by layer (issue 12's per-layer
 * table), for (a) a full TLS 1.3 handshake + one proxied 1 KiB GET and (b) a
 * keep-alive GET, with measures that do not depend on how busy the machine
 * is: a fixed number of operations, and either
 *   --profiler cpu-prof   (default) V8 samples of the worker's main thread,
 *                         split into layers by layer-split.ts: shares (%);
 *   --profiler none       no profiler: /proc CPU time per operation only, main
 *                         thread (user, system) and other threads (the libuv
 *                         pool, V8's GC and compiler): with a profiler its
 *                         sampling thread would be among them;
 *   --profiler callgrind  the worker under valgrind's callgrind, switched on
 *                         for the measured operations only: instructions per
 *                         operation (exact, whatever else runs), and the
 *                         native functions with the most inclusive instructions.
 *
 * Servers: the in-memory proxy (inmemory.ts: the real cluster and worker,
 * one worker, key files), the node:https floor and the node:http2 floor
 * (floor.ts: fixed answer, no origin; `floor-h2` offers only h2), one after
 * the other, with the demo origin; ECDSA P-256 certificate for `bench.test`
 * from a throwaway CA. Loads (`--loads`), each after a warm-up:
 *   full          ab -f TLS1.3, a new connection per GET (HTTP/1.0, no keep-alive);
 *   keepalive     ab -k, `--concurrency` connections;
 *   full-h1       h2load --h1, a new connection per GET (HTTP/1.1, then closed);
 *   full-h2       h2load, ALPN h2, a new connection per GET (preface,
 *                 SETTINGS, one stream, GOAWAY): with full-h1, the same
 *                 client, what h2 costs at the handshake (issue 13);
 *   keepalive-h2  h2load -c 4 -m 10 (bench/keepalive's h2 load): 10 streams
 *                 in flight on each of 4 connections;
 *   alpn-h1, alpn-h2  the handshake bench's ALPN client (alpn.ts, node:tls and
 *                 node:http2 in this process, `--concurrency` loops): a new
 *                 connection per GET, Connection: close for h1, the client's
 *                 GOAWAY for h2.
 * A server is given only the loads of the protocols it speaks. floor.ts also
 * runs as a bare forwarder to the same origin through undici's dispatch
 * (`bare-undici`) or node:http's native-llhttp client (`bare-node-http`):
 * what the origin hop costs with nothing of keyedge's.
 *
 * Usage: node dist/bench/handshake/layers.js [--profiler cpu-prof|none|callgrind] [--loads LIST] [options]   (--help)
 * Prints Markdown; --out writes it (and the JSON) as <date>-layers-<profiler>.{md,json}.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseCli, std } from '../harness/cli.js';
import { delta, type ThreadCpu, threadCpu } from '../harness/proc-cpu.js';
import { fmt, markdownTable, writeReport } from '../harness/report.js';
import { freePort, type ManagedProcess, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { KEYEDGE_CLI } from '../lab/keyserver.js';
import { LabPki } from '../lab/pki.js';
import { AlpnLoad, type AlpnProtocol } from './alpn.js';
import { callgrindInstructions } from './callgrind-cost.js';
import { inMemoryWorkerPid } from './inmemory-pid.js';
import type { FloorConfig } from './floor.js';
import { fileKeyConfig } from './lab.js';
import { LAYERS, type LayerSplit, splitProfile } from './layer-split.js';
import { extraServer } from './lean-forwarder.js';

const execFileAsync = promisify(execFile);
const INMEMORY = fileURLToPath(new URL('./inmemory.js', import.meta.url));
const FLOOR = fileURLToPath(new URL('./floor.js', import.meta.url));
const HOST = 'bench.test';

const TABLE = {
  profiler: { kind: 'string', arg: 'NAME', def: 'cpu-prof', choices: ['cpu-prof', 'none', 'callgrind'], help: 'what measures the worker (see above)' },
  full: { kind: 'number', arg: 'N', def: 3000, min: 1, integer: true, help: '(a) full handshakes + GET measured' },
  keepalive: { kind: 'number', arg: 'N', def: 30_000, min: 1, integer: true, help: '(b) keep-alive GETs measured' },
  warmup: { kind: 'number', arg: 'N', def: 3000, min: 0, integer: true, help: 'warm-up: N full handshakes, then 10 N keep-alive GETs' },
  concurrency: { kind: 'number', arg: 'C', def: 8, min: 1, integer: true, help: 'ab -c' },
  servers: {
    kind: 'string',
    arg: 'LIST',
    def: 'inmemory,floor',
    help: 'inmemory, floor, floor-h2, bare-undici, bare-node-http, bare-llhttp, nginx, in this order',
  },
  loads: { kind: 'string', arg: 'LIST', def: 'full,keepalive', help: 'full, keepalive, full-h1, full-h2, keepalive-h2, alpn-h1, alpn-h2 (see above)' },
  'log-level': std.logLevel,
  interval: { kind: 'number', arg: 'US', def: 50, min: 1, integer: true, help: 'node --cpu-prof-interval' },
  out: { kind: 'string', arg: 'DIR', help: 'also write <date>-layers-<profiler>.{md,json} into DIR' },
  'keep-temp': std.keepTemp,
} as const;
const parsed = parseCli('handshake/layers.js', TABLE);
if (parsed === undefined) process.exit(0);
const v = parsed;
const profiler = v.profiler as 'cpu-prof' | 'none' | 'callgrind';
const counts = { full: v.full, keepalive: v.keepalive, warmup: v.warmup, concurrency: v.concurrency };
const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);
const LOADS = ['full', 'keepalive', 'full-h1', 'full-h2', 'keepalive-h2', 'alpn-h1', 'alpn-h2'] as const;
type Load = (typeof LOADS)[number];
const loads = v.loads.split(',') as Load[];
for (const l of loads) if (!LOADS.includes(l)) throw new Error(`--loads: '${l}' is not one of ${LOADS.join(', ')}`);
const isFull = (load: Load): boolean => load.startsWith('full') || load.startsWith('alpn');
/** The floors and bare forwarders speak one protocol each (floor-h2 only h2, the others only HTTP/1.x); the proxy both. */
const speaks = (server: string, load: Load): boolean => server === 'inmemory' || (server === 'floor-h2') === load.endsWith('-h2');

interface Measured {
  readonly server: string;
  readonly load: Load;
  readonly operations: number;
  /** cpu-prof: the split; callgrind: instructions and the top native functions. */
  readonly split?: LayerSplit;
  readonly instructions?: number;
  /** callgrind: the main thread's part of `instructions` (the rest: libuv's pool, V8's compiler and GC threads). */
  readonly mainInstructions?: number;
  readonly topFunctions?: readonly { fn: string; inclusive: number }[];
  /** CPU time the serving process used over the window (/proc, 10 ms ticks): consumed, not a rate, so load moves it little. */
  readonly cpu?: ThreadCpu;
}

async function ab(port: number, n: number, keepAlive: boolean): Promise<void> {
  const args = ['-q', '-r', '-n', String(n), '-c', String(counts.concurrency), '-s', '120', '-f', 'TLS1.3', '-H', `Host: ${HOST}`];
  if (keepAlive) args.push('-k');
  const { stdout } = await execFileAsync('ab', [...args, `https://127.0.0.1:${port}/`], { maxBuffer: 1 << 22 });
  const failed = Number(/Failed requests:\s+(\d+)/.exec(stdout)?.[1] ?? 'NaN');
  const non2xx = Number(/Non-2xx responses:\s+(\d+)/.exec(stdout)?.[1] ?? '0');
  if (failed !== 0 || non2xx !== 0) throw new Error(`ab: ${failed} failed, ${non2xx} non-2xx requests`);
}

/**
 * h2load (Debian nghttp2-client): `n` GETs, a new connection for each
 * (`full`), or on 4 connections with 10 streams in flight. Returns how many
 * got a 2xx: under valgrind a connection now and then times out, and the
 * operations counted are the ones served; more than 2% failed throws.
 */
async function h2load(port: number, n: number, protocol: 'h2' | 'http/1.1', full: boolean): Promise<number> {
  const batch = full ? counts.concurrency : n;
  let served = 0;
  for (let done = 0; done < n; done += batch) {
    const size = Math.min(batch, n - done);
    // One request per client, as many clients as requests: each connection does one GET and closes.
    const shape = full ? ['-n', String(size), '-c', String(size)] : ['-n', String(size), '-c', '4', '-m', '10'];
    const args = [...shape, `--npn-list=${protocol}`, `--connect-to=127.0.0.1:${port}`, `https://${HOST}:${port}/`];
    const { stdout } = await execFileAsync('h2load', args, { maxBuffer: 1 << 22 });
    served += Number(/status codes: (\d+) 2xx/.exec(stdout)?.[1] ?? 'NaN');
  }
  if (!(served >= n * 0.98)) throw new Error(`h2load: ${served} of ${n} requests got a 2xx`);
  return served;
}

/** The handshake bench's ALPN client until `n` connections completed; returns how many did (a loop or two more). */
async function alpn(port: number, n: number, protocol: AlpnProtocol, ca: string): Promise<number> {
  const load = new AlpnLoad({ port, serverName: HOST, ca, loops: counts.concurrency, protocol });
  load.start();
  while (load.completed + load.errors < n) await new Promise((r) => setTimeout(r, 20));
  if ((await load.stop(300_000)) !== 0) throw new Error('alpn: connections still out');
  if (load.errors !== 0) throw new Error(`alpn ${protocol}: ${load.errors} failed (${load.firstError})`);
  return load.completed;
}

/** Runs `n` operations of `load` against the server on `port`; returns how many ran. */
async function drive(load: Load, port: number, n: number, ca: string): Promise<number> {
  if (load === 'alpn-h1' || load === 'alpn-h2') return alpn(port, n, load === 'alpn-h1' ? 'http/1.1' : 'h2', ca);
  if (load !== 'full' && load !== 'keepalive') return h2load(port, n, load === 'full-h1' ? 'http/1.1' : 'h2', isFull(load));
  await ab(port, n, load === 'keepalive');
  return n;
}

function wrapper(dir: string, name: string): string[] {
  if (profiler === 'none') return [process.execPath];
  if (profiler === 'cpu-prof') return [process.execPath, '--cpu-prof', '--cpu-prof-dir', join(dir, `prof-${name}`), '--cpu-prof-interval', String(v.interval)];
  return [
    'valgrind',
    '--tool=callgrind',
    '--trace-children=yes',
    '--instr-atstart=no',
    '--dump-instr=no',
    // One file per thread and dump: the main thread apart from libuv's pool and V8's helpers (JIT, GC).
    '--separate-threads=yes',
    `--callgrind-out-file=${join(dir, `callgrind-${name}.%p`)}`,
    process.execPath,
  ];
}

/** The pid that serves: the in-memory cluster's one worker (from its ready line), or the floor process itself. */
async function servingPid(proc: ManagedProcess, name: string, admin: number): Promise<number> {
  if (name !== 'inmemory') {
    await waitFor(name, () => tcpOpen(admin), 600_000, proc);
    // Under valgrind the process we spawned is valgrind itself, which execs node in place: same pid.
    return proc.pid;
  }
  return inMemoryWorkerPid(proc);
}

async function callgrindControl(pid: number, ...args: string[]): Promise<void> {
  await execFileAsync('callgrind_control', [...args, String(pid)]);
}

/** Instructions of a callgrind dump, and its native functions by inclusive instructions. */
function readCallgrind(file: string): { instructions: number; top: { fn: string; inclusive: number }[] } {
  const instructions = callgrindInstructions(file);
  const out = execFileSync('callgrind_annotate', ['--inclusive=yes', '--threshold=100', file], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const top: { fn: string; inclusive: number }[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*([\d,]+)\s+\([^)]*\)\s+(.*)$/.exec(line);
    if (m === null || top.length >= 80) continue;
    const inclusive = Number(m[1]!.replaceAll(',', ''));
    if (inclusive <= instructions) top.push({ inclusive, fn: m[2]!.replace(/ \[[^\]]*\]$/, '') });
  }
  return { instructions, top };
}

async function measureServer(dir: string, name: string, ports: { origin: number }, ca: string): Promise<Measured[]> {
  const port = await freePort();
  const admin = await freePort();
  const f = (x: string) => join(dir, x);
  const file = f(`${name}.json`);
  const certs = [{ name: 'ec', serverName: HOST, chain: f('server-chain.pem'), key: f('server.key') }];
  const origin = `http://127.0.0.1:${ports.origin}`;
  const o = { port, admin, workers: 1, profile: 'intermediate', logLevel: v['log-level'], origin, domain: HOST } as const;
  const bare = name === 'bare-undici' ? 'undici' : name === 'bare-node-http' ? 'node-http' : undefined;
  const floorLike = name.startsWith('floor') || bare !== undefined;
  const base = fileKeyConfig(floorLike ? 'node-floor' : 'inmemory', certs, o);
  const config = !floorLike
    ? base
    : ({
        ...(base as FloorConfig),
        ...(name === 'floor-h2' ? { h2: true } : {}),
        ...(bare === undefined ? {} : { forward: { origin, client: bare } }),
      } satisfies FloorConfig);
  writeFileSync(file, JSON.stringify(config));
  mkdirSync(f(`prof-${name}`), { recursive: true });
  // bare-llhttp (the leanest Node forwarder) and nginx (the keep-alive bench's config): lean-forwarder.ts.
  const extra = extraServer(
    {
      name,
      dir,
      port,
      admin,
      origin,
      chain: certs[0]!.chain,
      key: certs[0]!.key,
      serverName: HOST,
      accessLog: ['trace', 'debug', 'info'].includes(v['log-level']),
    },
    wrapper(dir, name),
  );
  const proc = spawnManaged(name, extra ?? [...wrapper(dir, name), floorLike ? FLOOR : INMEMORY, '--config', file], f(`${name}.log`), undefined, dir);
  const out: Measured[] = [];
  try {
    const pid = await servingPid(proc, name, admin);
    const mine = loads.filter((l) => speaks(name, l));
    for (const load of mine) await drive(load, port, isFull(load) ? counts.warmup : counts.warmup * 10, ca);
    const windows: { load: Load; operations: number; fromUs: number; toUs: number; cpu: ThreadCpu }[] = [];
    for (const load of mine) {
      const wanted = isFull(load) ? counts.full : counts.keepalive;
      if (profiler === 'callgrind') await callgrindControl(pid, '-i', 'on');
      const fromUs = nowUs();
      const cpu0 = threadCpu(pid);
      const operations = await drive(load, port, wanted, ca);
      const cpu1 = threadCpu(pid);
      const toUs = nowUs();
      if (profiler === 'callgrind') {
        await callgrindControl(pid, '-d', load);
        await callgrindControl(pid, '-i', 'off');
      }
      windows.push({ load, operations, fromUs, toUs, cpu: { main: delta(cpu0.main, cpu1.main), others: delta(cpu0.others, cpu1.others) } });
    }
    await proc.stop(profiler === 'callgrind' ? 300_000 : 30_000);
    for (const [i, w] of windows.entries()) {
      if (profiler === 'none') out.push({ server: name, load: w.load, operations: w.operations, cpu: w.cpu });
      else if (profiler === 'cpu-prof') {
        const profile = readdirSync(f(`prof-${name}`)).find((x) => x.includes(`.${pid}.`));
        if (profile === undefined) throw new Error(`no profile of pid ${pid} in ${f(`prof-${name}`)}`);
        out.push({ server: name, load: w.load, operations: w.operations, split: splitProfile(join(f(`prof-${name}`), profile), w), cpu: w.cpu });
      } else {
        // The i-th dump's files, one per thread: <prefix>.<dump>-<thread>, thread 01 the main one.
        const prefix = `callgrind-${name}.${pid}.${i + 1}-`;
        const threads = readdirSync(dir).filter((x) => x.startsWith(prefix));
        if (!threads.includes(`${prefix}01`)) throw new Error(`no callgrind dump of pid ${pid}'s main thread for ${w.load}`);
        const { instructions: mainInstructions, top } = readCallgrind(f(`${prefix}01`));
        const instructions = threads.reduce((sum, t) => sum + callgrindInstructions(f(t)), 0);
        out.push({ server: name, load: w.load, operations: w.operations, instructions, mainInstructions, topFunctions: top });
      }
    }
  } finally {
    proc.kill();
  }
  return out;
}

/** CPU time of the serving process over the measured operations, µs per operation, from /proc. */
function cpuTable(results: readonly Measured[], note: string): string {
  const table = markdownTable(
    ['server, load', 'main thread user', 'main thread system', 'other threads (libuv pool, V8 GC and JIT)', 'total'],
    results.map((r) => {
      const per = (us: number) => fmt(us / r.operations);
      const c = r.cpu!;
      const total = c.main.userUs + c.main.systemUs + c.others.userUs + c.others.systemUs;
      return [`${r.server} ${r.load}`, per(c.main.userUs), per(c.main.systemUs), per(c.others.userUs + c.others.systemUs), per(total)];
    }),
    ['left', 'right', 'right', 'right', 'right'],
  );
  return [
    `CPU time of the serving process over the same operations (/proc utime + stime, 10 ms ticks, µs per operation; ${note}).`,
    'The floor has no origin connection; the in-memory cluster primary, idle here, is not counted.',
    '',
    table,
  ].join('\n');
}

function report(results: readonly Measured[]): string {
  const lines = [
    `# Per-layer CPU of a proxy worker (${profiler}), ${new Date().toISOString().slice(0, 10)}`,
    '',
    `Command: \`node dist/bench/handshake/layers.js ${process.argv.slice(2).join(' ')}\``,
    `Node ${process.version}; ECDSA P-256; ab -c ${counts.concurrency}; warm-up ${counts.warmup} full + ${counts.warmup * 10} keep-alive; ` +
      `loads ${loads.join(', ')}: full* ${counts.full} × (new connection, full TLS 1.3 handshake, one GET), keepalive ${counts.keepalive} GETs on ${counts.concurrency} connections, keepalive-h2 ${counts.keepalive} GETs on 4 connections × 10 streams.`,
    '',
  ];
  if (profiler === 'none') lines.push(cpuTable(results, 'no profiler'), '');
  else if (profiler === 'cpu-prof') {
    const cols = results.map((r) => `${r.server} ${r.load}`);
    const rows = LAYERS.map((layer) => [
      layer,
      ...results.map((r) => `${fmt((100 * r.split!.byLayer[layer]) / r.split!.busyUs, 1)}% · ${fmt(r.split!.byLayer[layer] / r.operations)}`),
    ]);
    rows.push(['**sampled busy µs per operation**', ...results.map((r) => `**${fmt(r.split!.busyUs / r.operations)}**`)]);
    lines.push(
      "Share of the worker main thread's sampled busy time · sampled µs per operation (wall-clock sampling: the µs",
      "move with the machine's load, the shares much less).",
      '',
      markdownTable(['layer', ...cols], rows, ['left', ...cols.map(() => 'right' as const)]),
      '',
      cpuTable(results, 'with the profiler on, other threads include its sampling thread: see `--profiler none`'),
      '',
      '## Costliest frames (self) per layer',
      '',
    );
    for (const r of results) {
      lines.push(`### ${r.server}, ${r.load}`, '');
      const frameRows = LAYERS.flatMap((layer) => r.split!.topFrames[layer].slice(0, 3).map((t) => [layer, t.frame, fmt(t.us / r.operations, 1)]));
      lines.push(markdownTable(['layer', 'frame', 'µs/op'], frameRows, ['left', 'left', 'right']), '');
    }
  } else {
    // The other threads (V8's optimizing compiler, concurrent marking and sweeping, libuv's pool) apart: a short warm-up under valgrind leaves compiling to do.
    const rows = results.map((r) => [
      r.server,
      r.load,
      fmt(r.operations),
      fmt(r.instructions! / r.operations),
      fmt(r.mainInstructions! / r.operations),
      fmt((r.instructions! - r.mainInstructions!) / r.operations),
    ]);
    const header = ['server', 'load', 'operations', 'instructions per operation', 'main thread', 'other threads (V8 JIT and GC, libuv pool)'];
    lines.push(markdownTable(header, rows, ['left', 'left', 'right', 'right', 'right', 'right']), '');
    for (const r of results) {
      lines.push(`### ${r.server}, ${r.load}: main thread's native functions by inclusive instructions per operation`, '');
      const top = r.topFunctions!.slice(0, 30).map((t) => [t.fn, fmt(t.inclusive / r.operations)]);
      lines.push(markdownTable(['function', 'instructions/op'], top, ['left', 'right']), '');
    }
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'keyedge-layers-'));
  let origin: ManagedProcess | undefined;
  try {
    const pki = new LabPki(dir, 'keyedge layers CA');
    pki.fileCert('ec-p256', HOST, 'server');
    const ports = { origin: await freePort() };
    origin = spawnManaged('origin', [process.execPath, KEYEDGE_CLI, 'demo-origin', '--port', String(ports.origin)], join(dir, 'origin.log'), undefined, dir);
    await waitFor('demo origin', () => tcpOpen(ports.origin), 30_000, origin);
    const results: Measured[] = [];
    for (const server of v.servers.split(',')) results.push(...(await measureServer(dir, server, ports, readFileSync(pki.caFile, 'utf8'))));
    const markdown = report(results);
    process.stdout.write(`${markdown}\n`);
    if (v.out !== undefined) writeReport(v.out, `layers-${profiler}`, { profiler, counts, results }, markdown);
  } finally {
    origin?.kill();
    if (v['keep-temp']) process.stderr.write(`kept ${dir}\n`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

await main();
