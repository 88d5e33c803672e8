/**
 * Where the key server's time goes under a signing load: runs it under
 * `node --cpu-prof`, drives one key type over one transport with the lean
 * pipelining client, and prints the functions that cost the most per sign
 * (self and inclusive µs per sign), next to the process's CPU per sign from
 * /proc. The .cpuprofile is kept for Chrome DevTools / speedscope.
 *
 * Usage: node dist/bench/keyserver-profile.js [--key ec|rsa] [--transport unix|tls]
 *          [--seconds N] [--pipeline CxD] [--sessions N] [--interval US] [--top N] [--out DIR]
 *
 * Sampling costs a few percent; the absolute figures are for finding hot
 * spots, keyserver-sign.js is the benchmark.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import type net from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BENCH_KEYS, parsePipeline, pipelineName } from './keys.js';
import { summarizeProfile } from '../harness/cpuprofile.js';
import { connectTls, connectUnix, KeyserverLab } from '../lab/keyserver.js';
import { dateStamp, fmt, markdownTable } from '../harness/report.js';
import { measureWindow, PipelinedSignLoad } from './load.js';

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      key: { type: 'string', default: 'ec' },
      transport: { type: 'string', default: 'unix' },
      seconds: { type: 'string', default: '8' },
      pipeline: { type: 'string', default: '2x64' },
      sessions: { type: 'string' },
      interval: { type: 'string', default: '100' },
      top: { type: 'string', default: '30' },
      out: { type: 'string', default: 'bench/results/tmp/profiles' },
    },
  });
  const key = BENCH_KEYS.find((k) => k.id === values.key);
  if (key === undefined) throw new Error(`--key must be ${BENCH_KEYS.map((k) => k.id).join(' or ')}`);
  if (values.transport !== 'unix' && values.transport !== 'tls') throw new Error('--transport must be unix or tls');
  const pipeline = parsePipeline(values.pipeline);
  const outDir = resolve(values.out);
  const profDir = join(outDir, `tmp-${process.pid}`);
  mkdirSync(profDir, { recursive: true });

  const lab = new KeyserverLab({ ...(values.sessions !== undefined ? { sessions: Number(values.sessions) } : {}) });
  process.on('exit', () => lab.cleanup());
  process.on('SIGINT', () => process.exit(130));
  const sockets: net.Socket[] = [];
  try {
    const keyId = Buffer.from(await lab.generateKey(key.type, key.label), 'hex');
    const server = await lab.startServer({ nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir, '--cpu-prof-interval', values.interval] });
    for (let i = 0; i < pipeline.connections; i++) {
      sockets.push(values.transport === 'unix' ? await connectUnix(server.unixPath) : await connectTls(server.tcpPort, lab.tls));
    }
    const digests = Array.from({ length: 16 }, () => randomBytes(32));
    const load = new PipelinedSignLoad(sockets, { keyId, algorithm: key.algorithm, digests }, pipeline.depth);
    const window = await measureWindow(load, { durationMs: Number(values.seconds) * 1000, rampMs: 500, serverPid: server.pid });
    const totalSigns = load.completed;
    for (const s of sockets) s.destroy();
    await server.stop(10_000);

    const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
    if (file === undefined) throw new Error(`no profile written in ${profDir}`);
    const kept = join(outDir, `${dateStamp()}-keyserver-${key.id}-${values.transport}-${pipelineName(pipeline)}.cpuprofile`);
    renameSync(join(profDir, file), kept);

    const summary = summarizeProfile(kept, REPO_ROOT);
    const perSign = (us: number) => us / totalSigns;
    const top = Number(values.top);
    const s = window.server!;
    process.stdout.write(
      [
        `# key server profile: ${key.title} over ${values.transport}, ${pipelineName(pipeline)}, sessions ${(lab.config.pkcs11 as { sessions?: number }).sessions ?? 'default'}`,
        '',
        `window: ${fmt(window.signsPerSecond)} signs/s; server CPU ${fmt(s.cpuUsPerSign, 1)} µs/sign (main thread ${fmt(s.mainThreadUsPerSign, 1)}, other threads ${fmt(s.otherThreadsUsPerSign, 1)}; user ${fmt(s.userUsPerSign, 1)}, system ${fmt(s.systemUsPerSign, 1)}); ${fmt(s.cpuCores, 2)} cores`,
        `profile: ${fmt(summary.busyUs / 1000)} ms busy on the main thread over ${fmt(totalSigns)} signs = ${fmt(perSign(summary.busyUs), 1)} µs/sign (includes start-up); idle ${fmt(summary.idleUs / 1000)} ms`,
        `kept ${kept}`,
        '',
        '## by self time',
        '',
        markdownTable(
          ['function', 'self µs/sign', 'self %', 'inclusive µs/sign', 'incl %'],
          summary.functions
            .slice(0, top)
            .map((f) => [f.function, fmt(perSign(f.selfUs), 2), fmt(f.selfPct, 1), fmt(perSign(f.inclusiveUs), 2), fmt(f.inclusivePct, 1)]),
          ['left', 'right', 'right', 'right', 'right'],
        ),
        '',
        '## by inclusive time',
        '',
        markdownTable(
          ['function', 'inclusive µs/sign', 'incl %', 'self µs/sign'],
          [...summary.functions]
            .sort((a, b) => b.inclusiveUs - a.inclusiveUs)
            .slice(0, top)
            .map((f) => [f.function, fmt(perSign(f.inclusiveUs), 2), fmt(f.inclusivePct, 1), fmt(perSign(f.selfUs), 2)]),
          ['left', 'right', 'right', 'right'],
        ),
        '',
      ].join('\n'),
    );
    return 0;
  } finally {
    for (const s of sockets) s.destroy();
    lab.cleanup();
    try {
      for (const f of readdirSync(profDir)) renameSync(join(profDir, f), join(outDir, f));
      rmSync(profDir, { recursive: true, force: true });
    } catch {
      // nothing left to move
    }
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`keyserver-profile: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
