/**
 * Where the key server's time goes under a signing load: the server under `node --cpu-prof`, one key type over one
 * transport with the lean client, and the functions that cost most per sign (self and inclusive), next to the
 * process's CPU per sign from /proc. Sampling costs a few percent and V8 samples the main thread by wall clock: this
 * finds hot spots, main.ts sizes them. The .cpuprofile is kept for DevTools or speedscope. `--help` for the options.
 */
import { mkdirSync, readdirSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseCli } from '../harness/cli.js';
import { summarizeProfile } from '../harness/cpuprofile.js';
import { exitOnInterrupt, runBench } from '../harness/runner.js';
import { topFunctionsTables } from '../harness/profile-table.js';
import { dateStamp, fmt } from '../harness/report.js';
import { KeyserverLab } from '../lab/keyserver.js';
import { BENCH_KEYS, measureWindow, openLoad, parsePipeline, pipelineName, startRig } from './load.js';

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

const TABLE = {
  key: { kind: 'string', arg: 'ec|rsa', def: 'ec', choices: ['ec', 'rsa'], help: 'key type' },
  transport: { kind: 'string', arg: 'unix|tls', def: 'unix', choices: ['unix', 'tls'], help: 'how to reach the key server' },
  seconds: { kind: 'number', arg: 'SEC', def: 8, min: 0.5, help: 'length of the profiled load' },
  pipeline: { kind: 'string', arg: 'CxD', help: "C connections x D requests in flight each (default: the bench's for the key)" },
  sessions: { kind: 'number', arg: 'N', min: 1, integer: true, help: "the key server's pkcs11.sessions (default: product default)" },
  interval: { kind: 'number', arg: 'US', def: 100, min: 1, integer: true, help: 'sampling interval (--cpu-prof-interval)' },
  top: { kind: 'number', arg: 'N', def: 30, min: 1, integer: true, help: 'functions per table' },
  out: { kind: 'string', arg: 'DIR', def: 'bench/results/tmp/profiles', help: 'where the .cpuprofile is kept' },
} as const;

async function main(): Promise<number> {
  const v = parseCli('keyserver-sign/profile.js', TABLE);
  if (v === undefined) return 0;
  const key = BENCH_KEYS.find((k) => k.id === v.key)!;
  const transport = v.transport as 'unix' | 'tls';
  const pipeline = parsePipeline(v.pipeline ?? key.pipeline);
  const outDir = resolve(v.out);
  mkdirSync(outDir, { recursive: true });
  const lab = new KeyserverLab(v.sessions === undefined ? {} : { sessions: v.sessions });
  exitOnInterrupt(() => lab.cleanup());
  try {
    // Every thread of the server writes CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile; thread 0 is the main one.
    const nodeArgs = ['--cpu-prof', '--cpu-prof-dir', outDir, '--cpu-prof-interval', String(v.interval)];
    const rig = await startRig(lab, [key], { rampMs: 500, nodeArgs }, (line) => process.stderr.write(`${line}\n`));
    const connected = await openLoad(rig, key, { path: transport, pipeline });
    const window = await measureWindow(connected.load, { durationMs: v.seconds * 1000, rampMs: 500, serverPid: connected.serverPid });
    const totalSigns = connected.load.completed;
    connected.close();
    await rig.server.stop(10_000);

    const file = readdirSync(outDir).find((f) => f.startsWith('CPU.') && f.includes(`.${rig.server.pid}.0.`) && f.endsWith('.cpuprofile'));
    if (file === undefined) throw new Error(`no profile of the key server's main thread in ${outDir}`);
    const kept = join(outDir, `${dateStamp()}-keyserver-${key.id}-${transport}-${pipelineName(pipeline)}.cpuprofile`);
    renameSync(join(outDir, file), kept);
    const summary = summarizeProfile(kept, REPO_ROOT);
    const s = window.server!;
    process.stdout.write(
      [
        `# key server profile: ${key.title} over ${transport}, ${pipelineName(pipeline)}, sessions ${v.sessions ?? 'default'}`,
        '',
        `window: ${fmt(window.signsPerSecond)} signs/s; server CPU ${fmt(s.cpuUsPerSign, 1)} µs/sign (main thread ${fmt(s.mainThreadUsPerSign, 1)}, other threads ${fmt(s.otherThreadsUsPerSign, 1)}; user ${fmt(s.userUsPerSign, 1)}, system ${fmt(s.systemUsPerSign, 1)}); ${fmt(s.cpuCores, 2)} cores`,
        `profile: ${fmt(summary.busyUs / 1000)} ms busy on the main thread over ${fmt(totalSigns)} signs = ${fmt(summary.busyUs / totalSigns, 1)} µs/sign (includes start-up); idle ${fmt(summary.idleUs / 1000)} ms`,
        `kept ${kept}`,
        '',
        ...topFunctionsTables(summary.functions, '##', { top: v.top, unit: 'µs/sign', per: (us) => us / totalSigns, decimals: 2 }),
      ].join('\n'),
    );
    return 0;
  } finally {
    lab.cleanup();
  }
}

runBench('keyserver-profile', main());
