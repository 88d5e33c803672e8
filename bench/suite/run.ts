/**
 * The benchmark suite: the key server sign, handshake and keep-alive benches one after the other (each a child process,
 * so none measures while another runs), their summary rows in `<date>-suite[-quick].{json,md,svg}`; `--compare OLD.json`
 * flags scenarios that moved beyond the threshold (exit status 1). Builds nothing.
 */
import { spawn } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderChart } from '../harness/chart.js';
import { listOf, parseCli, std } from '../harness/cli.js';
import { columnTable, dateStamp, describeMachine, fmt, type MachineInfo, machineLines } from '../harness/report.js';
import { type Log, publish, runBench } from '../harness/runner.js';
import { compareSummaries, formatComparison, readSummaryFile, type SummaryRow } from '../harness/summary.js';
import { KEYEDGE_CLI } from '../lab/keyserver.js';

const TABLE = {
  quick: std.quick("each bench's quick mode, ECDSA P-256 only, no package installs (a smoke run: a few minutes; rough figures)"),
  out: { kind: 'string', arg: 'DIR', def: 'bench/results', help: 'where every bench and the suite write' },
  only: { kind: 'string', arg: 'LIST', help: 'keyserver-sign,handshake,keepalive (default all)' },
  compare: { kind: 'string', arg: 'OLD.json', help: 'compare with OLD (suite or single bench); exit status 1 when a scenario moved beyond the threshold' },
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

/** Runs one bench and reads its rows; `note`: why there are none or why they are suspect. `limitMs`: a last resort. */
async function runOne(name: string, args: readonly string[], out: string, log: Log) {
  const script = `${name}/main.js`;
  const command = `node dist/bench/${script} ${[...args, '--out', out].join(' ')}`;
  const [started, limitMs] = [Date.now(), (args.includes('--quick') ? 20 : 90) * 60_000];
  log(`${name}: ${command}`);
  const exitCode = await new Promise<number | null>((resolveExit, reject) => {
    const child = spawn(process.execPath, [join(HERE, script), ...args, '--out', out], { stdio: ['ignore', 'pipe', 'inherit'] });
    // The child's Markdown goes to our stderr with its progress lines; stdout is the suite's own table.
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
      resolveExit(code);
    });
  });
  const seconds = (Date.now() - started) / 1000;
  // What this run of the bench wrote (runner.ts names it), not an older run's file.
  const written = join(resolve(out), `${dateStamp()}-${name}${args.includes('--quick') ? '-quick' : ''}.json`);
  const resultFile = existsSync(written) && statSync(written).mtimeMs >= started - 1000 ? written : undefined;
  let rows: SummaryRow[] = [];
  let note: string | undefined = `no result file (exit status ${exitCode})`;
  if (resultFile !== undefined) {
    try {
      rows = readSummaryFile(resultFile).map((r) => ({ ...r, bench: name }));
      note = exitCode === 0 ? undefined : `exit status ${exitCode}: requests failed during measurement, figures suspect (see ${resultFile})`;
    } catch (err) {
      note = (err as Error).message;
    }
  }
  log(`${name}: ${rows.length} scenario(s) in ${fmt(seconds, 0)} s${note === undefined ? '' : ` (${note})`}`);
  return { name, command, exitCode, seconds, resultFile, rows, note };
}

type BenchOutcome = Awaited<ReturnType<typeof runOne>>;

function suiteMarkdown(date: string, quick: boolean, machine: MachineInfo, outcomes: readonly BenchOutcome[], svgName: string): string {
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
  const reportLink = (o: BenchOutcome) => {
    const md = o.resultFile === undefined ? undefined : basename(o.resultFile).replace(/\.json$/, '.md');
    return `- ${o.name}: ${md === undefined ? '(no result)' : `[${md}](${md})`} (${fmt(o.seconds, 0)} s; \`${o.command}\`)`;
  };
  return [
    `# Benchmark suite, ${date}${quick ? ' (quick: rough figures)' : ''}`,
    '',
    ...machineLines(machine),
    '',
    `![benchmark chart](${svgName})`,
    '',
    table,
    '',
    'rate = units per second (median over rounds; "≥": the client saturated its core). spread = (max − min) / median of the rate over',
    "rounds. server CPU = utime + stime of the server processes per unit, from /proc (the figure to compare; see each bench's report",
    'for what "server" covers). other load = cores other processes used during the windows (median): this machine is shared, and',
    'above ~0.25 the rates are depressed and the spread wide; CPU per unit holds up better.',
    '',
    "Each bench's full report:",
    '',
    ...outcomes.map(reportLink),
    ...(failed.length === 0 ? [] : ['', ...failed.map((o) => `**${o.name}: ${o.note}**`)]),
    '',
  ].join('\n');
}

async function main(): Promise<number> {
  const values = parseCli('suite/run.js', TABLE);
  if (values === undefined) return 0;
  const started = Date.now();
  const log: Log = (line) => process.stderr.write(`[suite ${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);
  const only = values.only === undefined ? Object.keys(BENCHES) : listOf(values.only, '--only', Object.keys(BENCHES));
  // Read OLD before spending minutes measuring.
  const oldRows = values.compare === undefined ? undefined : readSummaryFile(values.compare);
  const missing = [KEYEDGE_CLI, ...only.map((name) => join(HERE, name, 'main.js'))].filter((f) => !existsSync(f));
  if (missing.length > 0) throw new Error(`not built: ${missing.join(', ')} missing. Run \`npx tsc -p .\` (npm run build) first.`);

  const { quick, out } = values;
  const machine = describeMachine();
  const outcomes: BenchOutcome[] = [];
  for (const name of Object.keys(BENCHES).filter((b) => only.includes(b))) {
    const node = name === 'handshake' && values.node !== undefined ? ['--node', values.node] : [];
    outcomes.push(await runOne(name, [...(quick ? BENCHES[name]! : []), ...node], out, log));
  }

  const [date, name] = [dateStamp(), quick ? 'suite-quick' : 'suite'];
  const svgName = `${date}-${name}.svg`;
  const rows = outcomes.flatMap((o) => o.rows);
  const benches = outcomes.map(({ rows: _rows, ...o }) => o);
  const json = { benchmark: 'suite', date, quick, machine, benches, summary: rows, durationSeconds: (Date.now() - started) / 1000 };
  const title = `keyedge benchmarks, ${date}${quick ? ' (quick)' : ''}`;
  const subtitle = `${machine.cpuModel}, ${machine.cores} cores, Node ${machine.node}; servers and client pinned to separate CPUs (each bench's report says which)`;
  publish(out, name, json, suiteMarkdown(date, quick, machine, outcomes, svgName), date, log);
  writeFileSync(join(resolve(out), svgName), `${renderChart({ title, subtitle, rows })}\n`);
  log(`wrote ${join(resolve(out), svgName)}`);

  let status = outcomes.some((o) => o.note !== undefined) ? 1 : 0;
  if (oldRows !== undefined) {
    const comparison = compareSummaries(oldRows, rows, { threshold: values.threshold / 100 });
    process.stdout.write(`\n## Compared with ${values.compare}\n\n${formatComparison(comparison)}`);
    if (comparison.flagged.length > 0) status = 1;
  }
  return status;
}

runBench('bench', main());
