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
 * one worker, key files), the node:https floor (floor.ts: fixed answer,
 * no origin), and floor.ts as a bare forwarder to the same origin through
 * undici's dispatch (`bare-undici`) or node:http's native-llhttp client
 * (`bare-node-http`), one after the other, with the demo origin; ECDSA P-256
 * certificate for `bench.test` from a throwaway CA. Client: ab (`-f TLS1.3`,
 * without `-k` for (a), `-k` for (b)), after a warm-up of the same loads.
 *
 * Usage: node dist/bench/handshake/layers.js [--profiler cpu-prof|none|callgrind]
 *          [--full N] [--keepalive N] [--warmup N] [--concurrency C]
 *          [--servers inmemory,floor] [--log-level info] [--out DIR] [--keep-temp]
 * Prints Markdown; --out writes it (and the JSON) as <date>-layers.{md,json}.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { delta, type ThreadCpu, threadCpu } from '../harness/proc-cpu.js';
import { fmt, markdownTable, writeReport } from '../harness/report.js';
import { freePort, type ManagedProcess, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { KEYEDGE_CLI } from '../lab/keyserver.js';
import { LabPki } from '../lab/pki.js';
import type { FloorConfig } from './floor.js';
import type { InMemoryConfig } from './inmemory.js';
import { LAYERS, type LayerSplit, splitProfile } from './layer-split.js';

const execFileAsync = promisify(execFile);
const INMEMORY = fileURLToPath(new URL('./inmemory.js', import.meta.url));
const FLOOR = fileURLToPath(new URL('./floor.js', import.meta.url));
const HOST = 'bench.test';

const { values: v } = parseArgs({
  options: {
    profiler: { type: 'string', default: 'cpu-prof' },
    full: { type: 'string', default: '3000' },
    keepalive: { type: 'string', default: '30000' },
    warmup: { type: 'string', default: '3000' },
    concurrency: { type: 'string', default: '8' },
    servers: { type: 'string', default: 'inmemory,floor' },
    'log-level': { type: 'string', default: 'info' },
    interval: { type: 'string', default: '50' },
    out: { type: 'string' },
    'keep-temp': { type: 'boolean', default: false },
  },
});
const profiler = v.profiler as 'cpu-prof' | 'none' | 'callgrind';
if (!['cpu-prof', 'none', 'callgrind'].includes(profiler)) throw new Error('--profiler must be cpu-prof, none or callgrind');
const counts = { full: Number(v.full), keepalive: Number(v.keepalive), warmup: Number(v.warmup), concurrency: Number(v.concurrency) };
const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);

interface Measured {
  readonly server: string;
  readonly load: 'full' | 'keepalive';
  readonly operations: number;
  /** cpu-prof: the split; callgrind: instructions and the top native functions. */
  readonly split?: LayerSplit;
  readonly instructions?: number;
  /** callgrind: the main thread's (the event loop: our code, Node's, OpenSSL's); the rest is V8's compiler and GC threads and libuv's pool. */
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

function wrapper(dir: string, name: string): string[] {
  if (profiler === 'none') return [process.execPath];
  if (profiler === 'cpu-prof') return [process.execPath, '--cpu-prof', '--cpu-prof-dir', join(dir, `prof-${name}`), '--cpu-prof-interval', v.interval!];
  return [
    'valgrind',
    '--tool=callgrind',
    '--trace-children=yes',
    '--instr-atstart=no',
    '--dump-instr=no',
    // One file per thread and dump: the main thread's count is exact, apart from V8's compiler and GC threads.
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
  let pid: number | undefined;
  await waitFor(
    'in-memory ready',
    () => {
      const line = readFileSync(proc.logFile, 'utf8')
        .split('\n')
        .find((l) => l.includes('"in-memory ready"'));
      if (line !== undefined) pid = (JSON.parse(line) as { workers: number[] }).workers[0];
      return pid !== undefined;
    },
    600_000,
    proc,
  );
  return pid!;
}

async function callgrindControl(pid: number, ...args: string[]): Promise<void> {
  await execFileAsync('callgrind_control', [...args, String(pid)]);
}

/** Instructions of one thread's callgrind dump, and its native functions by inclusive instructions (cycle artefacts above the total left out). */
function readCallgrind(file: string): { instructions: number; top: { fn: string; inclusive: number }[] } {
  const text = readFileSync(file, 'utf8');
  const instructions = Number(/^(?:summary|totals):\s+(\d+)/m.exec(text)?.[1] ?? 'NaN');
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

/** Dump `n` (1-based) of `pid`: every thread's instructions, the main thread's (thread 1) apart, and its top functions. */
function readDump(dir: string, name: string, pid: number, n: number): { instructions: number; main: number; top: { fn: string; inclusive: number }[] } {
  const prefix = `callgrind-${name}.${pid}.${n}-`;
  const files = readdirSync(dir).filter((x) => x.startsWith(prefix));
  const main = files.find((x) => x === `${prefix}01`);
  if (main === undefined) throw new Error(`no callgrind dump ${n} of pid ${pid}`);
  let instructions = 0;
  for (const file of files) instructions += readCallgrind(join(dir, file)).instructions;
  const { instructions: mainInstructions, top } = readCallgrind(join(dir, main));
  return { instructions, main: mainInstructions, top };
}

async function measureServer(dir: string, name: string, ports: { origin: number }): Promise<Measured[]> {
  const port = await freePort();
  const admin = await freePort();
  const f = (x: string) => join(dir, x);
  const file = f(`${name}.json`);
  const bare = name === 'bare-undici' ? 'undici' : name === 'bare-node-http' ? 'node-http' : undefined;
  const floorLike = name === 'floor' || bare !== undefined;
  const config = floorLike
    ? ({
        port,
        admin,
        certificates: [{ serverName: HOST, chain: f('server-chain.pem'), key: f('server.key') }],
        ...(bare === undefined ? {} : { forward: { origin: `http://127.0.0.1:${ports.origin}`, client: bare } }),
      } satisfies FloorConfig)
    : ({
        host: '127.0.0.1',
        port,
        workers: 1,
        profile: 'intermediate',
        certificates: [{ name: 'ec', chain: f('server-chain.pem'), key: f('server.key') }],
        domains: [{ name: HOST, origin: `http://127.0.0.1:${ports.origin}` }],
        admin: { host: '127.0.0.1', port: admin },
        logLevel: v['log-level']!,
        hstsMaxAgeSeconds: 63_072_000,
        ocspStapling: true,
        shutdownGraceMs: 10_000,
      } satisfies InMemoryConfig);
  writeFileSync(file, JSON.stringify(config));
  mkdirSync(f(`prof-${name}`), { recursive: true });
  const proc = spawnManaged(name, [...wrapper(dir, name), floorLike ? FLOOR : INMEMORY, '--config', file], f(`${name}.log`), undefined, dir);
  const out: Measured[] = [];
  try {
    const pid = await servingPid(proc, name, admin);
    await ab(port, counts.warmup, false);
    await ab(port, counts.warmup * 10, true);
    const windows: { load: 'full' | 'keepalive'; operations: number; fromUs: number; toUs: number; cpu: ThreadCpu }[] = [];
    for (const load of ['full', 'keepalive'] as const) {
      const operations = load === 'full' ? counts.full : counts.keepalive;
      if (profiler === 'callgrind') await callgrindControl(pid, '-i', 'on');
      const fromUs = nowUs();
      const cpu0 = threadCpu(pid);
      await ab(port, operations, load === 'keepalive');
      const cpu1 = threadCpu(pid);
      const toUs = nowUs();
      if (profiler === 'callgrind') {
        await callgrindControl(pid, '-d', load);
        await callgrindControl(pid, '-i', 'off');
      }
      windows.push({ load, operations, fromUs, toUs, cpu: { main: delta(cpu0.main, cpu1.main), others: delta(cpu0.others, cpu1.others) } });
    }
    await proc.stop(profiler === 'callgrind' ? 300_000 : 30_000);
    for (const w of windows) {
      if (profiler === 'none') out.push({ server: name, load: w.load, operations: w.operations, cpu: w.cpu });
      else if (profiler === 'cpu-prof') {
        const profile = readdirSync(f(`prof-${name}`)).find((x) => x.includes(`.${pid}.`));
        if (profile === undefined) throw new Error(`no profile of pid ${pid} in ${f(`prof-${name}`)}`);
        out.push({ server: name, load: w.load, operations: w.operations, split: splitProfile(join(f(`prof-${name}`), profile), w), cpu: w.cpu });
      } else {
        const { instructions, main, top } = readDump(dir, name, pid, w.load === 'full' ? 1 : 2);
        out.push({ server: name, load: w.load, operations: w.operations, instructions, mainInstructions: main, topFunctions: top });
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
      `(a) ${counts.full} × (new connection, full TLS 1.3 handshake, one GET), (b) ${counts.keepalive} keep-alive GETs on ${counts.concurrency} connections.`,
    '',
  ];
  if (profiler === 'none') lines.push(cpuTable(results, 'no profiler'), '');
  else if (profiler === 'cpu-prof') {
    const cols = results.map((r) => `${r.server} ${r.load === 'full' ? '(a) full' : '(b) keep-alive'}`);
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
    for (const server of v.servers!.split(',')) results.push(...(await measureServer(dir, server, ports)));
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
