/**
 * The benchmark suite: the key server sign, handshake and keep-alive benches one after the other (each its own child
 * process, so none measures while another runs), their summary rows collected into `<date>-suite.{json,md,svg}` (one
 * table, one chart: bench/harness/chart.ts); `--compare OLD.json` then flags scenarios that moved by more than the
 * threshold (bench/harness/summary.ts, exit status 1). `--quick` runs each bench's quick mode (ECDSA P-256 only, no
 * package installs) into `<date>-suite-quick.*`, so a smoke run never overwrites the day's full result. Builds
 * nothing.
 *
 * Usage: node dist/bench/suite/run.js [--quick] [--out DIR] [--only LIST] [--compare OLD.json] [--threshold PCT]
 * (npm run bench -- --quick)
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { listOf, parseCli, std } from '../harness/cli.js';
import { renderChart } from '../harness/chart.js';
import { compareSummaries, formatComparison } from '../harness/summary.js';
import { describeMachine } from '../harness/report.js';
import { runBench } from '../harness/runner.js';
import { columnTable, dateStamp, fmt, writeReport } from '../harness/report.js';
import { readSummary, type SummaryRow } from '../harness/summary.js';

const TABLE = {
  quick: std.quick("each bench's quick mode, ECDSA P-256 only, no package installs (a smoke run: a few minutes; rough figures)"),
  out: { kind: 'string', arg: 'DIR', def: 'bench/results', help: 'where every bench and the suite write' },
  only: { kind: 'string', arg: 'LIST', help: 'keyserver-sign,handshake,keepalive (default all)' },
  compare: {
    kind: 'string',
    arg: 'OLD.json',
    help: 'compare the new suite result with OLD (a suite or a single bench result); exit status 1 when a scenario moved by more than the threshold',
  },
  threshold: { kind: 'number', arg: 'PCT', def: 10, min: 0.1, help: 'for --compare' },
  node: { ...std.node, help: 'passed to the handshake bench: its Node servers also under these Node majors, e.g. 20,22,24' },
} as const;

/** Each bench runs `dist/bench/<name>/main.js --out DIR`, plus these arguments under --quick. */
const BENCHES: Readonly<Record<string, readonly string[]>> = {
  'keyserver-sign': ['--quick', '--keys', 'ec', '--paths', 'unix'],
  handshake: ['--quick', '--keys', 'ec'],
  keepalive: ['--quick', '--no-install', '--warmup', '1', '--measure', '1'],
};

const HERE = fileURLToPath(new URL('..', import.meta.url));
const KEYEDGE_CLI = fileURLToPath(new URL('../../keyedge.cjs', import.meta.url));

/** A bench's run: the result file it wrote in this run, if any, its rows, and `note`: why there are none or why they are suspect. */
type BenchOutcome = Awaited<ReturnType<typeof runOne>>;

/** The newest `<date>-<name>[-quick].json` in `dir` written at or after `since` (ms). */
function findResult(dir: string, name: string, since: number): string | undefined {
  if (!existsSync(dir)) return undefined;
  const pattern = new RegExp(`^\\d{4}-\\d{2}-\\d{2}-${name}(-quick)?\\.json$`);
  return readdirSync(dir)
    .filter((f) => pattern.test(f))
    .map((f) => ({ f: join(dir, f), t: statSync(join(dir, f)).mtimeMs }))
    .filter(({ t }) => t >= since - 1000)
    .sort((a, b) => b.t - a.t)[0]?.f;
}

/**
 * Runs one bench; a bench that has not finished after `limitMs` (each bounds its own clients, so this is a last resort)
 * is stopped (SIGTERM: it stops what it started; SIGKILL 30 s later) and the suite goes on with the next.
 */
function runChild(args: readonly string[], limitMs: number, log: (line: string) => void): Promise<number | null> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    // The child's Markdown table goes to our stderr with its progress lines; stdout is the suite's own table.
    child.stdout!.pipe(process.stderr);
    const limit = setTimeout(() => {
      log(`not finished after ${limitMs / 60_000} min: stopping it`);
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 30_000).unref();
    }, limitMs);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(limit);
      if (signal !== null) log(`killed by ${signal}`);
      resolvePromise(code);
    });
  });
}

/** `out` is the directory as given (for the children and the command shown), `outDir` the same resolved. */
async function runOne(name: string, args: readonly string[], out: string, outDir: string, log: (line: string) => void) {
  const script = `${name}/main.js`;
  const command = `node dist/bench/${script} ${[...args, '--out', out].join(' ')}`;
  const started = Date.now();
  log(`${name}: ${command}`);
  const exitCode = await runChild([join(HERE, script), ...args, '--out', out], (args.includes('--quick') ? 20 : 90) * 60_000, log);
  const seconds = (Date.now() - started) / 1000;
  const resultFile = findResult(outDir, name, started);
  let rows: SummaryRow[] = [];
  let note: string | undefined;
  if (resultFile === undefined) note = `no result file (exit status ${exitCode})`;
  else {
    try {
      rows = readSummary(JSON.parse(readFileSync(resultFile, 'utf8')), resultFile).map((r) => ({ ...r, bench: name }));
    } catch (err) {
      note = (err as Error).message;
    }
    if (exitCode !== 0 && note === undefined) note = `exit status ${exitCode}: requests failed during measurement, figures suspect (see ${resultFile})`;
  }
  log(`${name}: ${rows.length} scenario(s) in ${fmt(seconds, 0)} s${note === undefined ? '' : ` (${note})`}`);
  return { name, command, exitCode, seconds, resultFile, rows, note };
}

function suiteMarkdown(date: string, quick: boolean, machine: ReturnType<typeof describeMachine>, outcomes: readonly BenchOutcome[], svgName: string): string {
  const table = columnTable(
    outcomes.flatMap((o) => o.rows),
    [
      ['bench', 'left', (r) => r.bench],
      ['scenario', 'left', (r) => (r.label === r.scenario ? r.scenario : `${r.scenario}: ${r.label}`)],
      ['rate', 'right', (r) => (r.skipped === undefined ? `${r.clientSaturated ? '≥ ' : ''}${fmt(r.rate)} /s` : `skipped: ${r.skipped}`)],
      ['spread', 'right', (r) => fmt(r.spreadPct, 0) + (Number.isFinite(r.spreadPct) ? '%' : '')],
      ['server CPU', 'right', (r) => (r.skipped === undefined ? `${fmt(r.serverCpuUs, 1)} µs/${r.unit}` : '–')],
      ['p50 / p99 ms', 'right', (r) => `${fmt(r.p50Ms, 1)} / ${fmt(r.p99Ms, 1)}`],
      ['errors', 'right', (r) => String(r.errors)],
      ['other load (cores)', 'right', (r) => fmt(r.otherCores, 2)],
    ],
  );
  const failed = outcomes.filter((o) => o.note !== undefined);
  return [
    `# Benchmark suite, ${date}${quick ? ' (quick: rough figures)' : ''}`,
    '',
    `Machine: ${machine.cpuModel}, ${machine.cores} cores, Node ${machine.node}, OpenSSL ${machine.openssl}. Command: \`${machine.commandLine}\`.`,
    '',
    `![benchmark chart](${svgName})`,
    '',
    table,
    '',
    'rate = units per second (median over rounds; "≥": the client saturated its core). spread = (max − min) / median of the',
    'rate over rounds. server CPU = utime + stime of the server processes per unit, from /proc (the figure to compare; see',
    'each bench\'s own report for what "server" covers). other load = cores other processes used during the windows',
    '(median): this machine is shared, and above ~0.25 the rates are depressed and the spread wide; CPU per unit holds up better.',
    '',
    "Each bench's full report:",
    '',
    ...outcomes.map((o) => {
      const md = o.resultFile === undefined ? undefined : basename(o.resultFile).replace(/\.json$/, '.md');
      return `- ${o.name}: ${md === undefined ? '(no result)' : `[${md}](${md})`} (${fmt(o.seconds, 0)} s; \`${o.command}\`)`;
    }),
    ...(failed.length === 0 ? [] : ['', ...failed.map((o) => `**${o.name}: ${o.note}**`)]),
    '',
  ].join('\n');
}

async function main(): Promise<number> {
  const values = parseCli('suite/run.js', TABLE);
  if (values === undefined) return 0;
  const started = Date.now();
  const log = (line: string) => process.stderr.write(`[suite ${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  const threshold = values.threshold / 100;
  const only = values.only === undefined ? Object.keys(BENCHES) : listOf(values.only, '--only', Object.keys(BENCHES));
  // Read OLD before spending minutes measuring.
  const oldRows = values.compare === undefined ? undefined : readSummary(JSON.parse(readFileSync(values.compare, 'utf8')), values.compare);

  const missing = [KEYEDGE_CLI, ...only.map((name) => join(HERE, name, 'main.js'))].filter((f) => !existsSync(f));
  if (missing.length > 0) throw new Error(`not built: ${missing.join(', ')} missing. Run \`npx tsc -p .\` (npm run build) first.`);

  const out = resolve(values.out);
  const quick = values.quick;
  const machine = describeMachine();
  const outcomes: BenchOutcome[] = [];
  for (const name of Object.keys(BENCHES).filter((b) => only.includes(b))) {
    const args = [...(quick ? BENCHES[name]! : []), ...(name === 'handshake' && values.node !== undefined ? ['--node', values.node] : [])];
    outcomes.push(await runOne(name, args, values.out, out, log));
  }

  const date = dateStamp();
  const name = quick ? 'suite-quick' : 'suite';
  const svgName = `${date}-${name}.svg`;
  const rows = outcomes.flatMap((o) => o.rows);
  const markdown = suiteMarkdown(date, quick, machine, outcomes, svgName);
  const benches = outcomes.map(({ rows: _rows, ...o }) => o);
  const json = { benchmark: 'suite', date, quick, machine, benches, summary: rows, durationSeconds: (Date.now() - started) / 1000 };
  const written = writeReport(out, name, json, markdown, date);
  const svg = renderChart({
    title: `keyedge benchmarks, ${date}${quick ? ' (quick)' : ''}`,
    subtitle: `${machine.cpuModel}, ${machine.cores} cores, Node ${machine.node}; servers and client pinned to separate CPUs (each bench's report says which)`,
    rows,
  });
  writeFileSync(join(out, svgName), `${svg}\n`);
  process.stdout.write(`${markdown}\n`);
  log(`wrote ${written.jsonPath}, ${written.markdownPath} and ${join(out, svgName)}`);

  let status = outcomes.some((o) => o.note !== undefined) ? 1 : 0;
  if (oldRows !== undefined) {
    const comparison = compareSummaries(oldRows, rows, { threshold });
    process.stdout.write(`\n## Compared with ${values.compare}\n\n${formatComparison(comparison)}`);
    if (comparison.flagged.length > 0) status = 1;
  }
  return status;
}

runBench('bench', main());
