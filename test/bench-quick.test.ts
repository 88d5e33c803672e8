import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { readSummary } from '../bench/harness/summary.js';

const execFileAsync = promisify(execFile);
const KEEPALIVE = fileURLToPath(new URL('../dist/bench/keepalive/main.js', import.meta.url));

// Not a measurement (nothing here asserts a speed): the smallest scenario of the benchmark suite, the keyless proxy
// under keep-alive load, runs end to end, so the benchmarks cannot rot unnoticed. Needs only the product (no nginx,
// no caddy) and writes into a temp dir, never bench/results.
describe('benchmark smoke run', () => {
  const out = mkdtempSync(join(tmpdir(), 'keyedge-bench-quick-'));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it('keepalive --quick with the keyless proxy alone writes a complete result', { timeout: 120_000 }, async () => {
    const { stdout } = await execFileAsync(
      process.execPath,
      [
        KEEPALIVE,
        '--quick',
        '--servers',
        'keyedge',
        '--protocols',
        'h1',
        '--rounds',
        '1',
        '--warmup',
        '0.5',
        '--measure',
        '1',
        '--quiet-wait',
        '0',
        '--out',
        out,
      ],
      { timeout: 110_000, maxBuffer: 16 * 1024 * 1024 },
    );
    expect(stdout).toContain('# keepalive');
    const files = readdirSync(out);
    expect(files.filter((f) => /^\d{4}-\d{2}-\d{2}-keepalive-quick\.(json|md)$/.test(f))).toHaveLength(2);
    const json = JSON.parse(readFileSync(join(out, files.find((f) => f.endsWith('.json'))!), 'utf8')) as Record<string, unknown>;

    expect(json.benchmark).toBe('keepalive');
    const machine = json.machine as Record<string, unknown>;
    expect(machine.cores).toBeGreaterThan(0);
    expect(machine.node).toBe(process.version);
    expect(typeof machine.openssl).toBe('string');

    const rows = readSummary(json, 'keepalive result');
    expect(rows).toHaveLength(1);
    const [keyedge] = rows;
    expect(keyedge).toMatchObject({ bench: 'keepalive', scenario: 'keyedge', unit: 'request', errors: 0 });
    expect(keyedge!.skipped).toBeUndefined();
    expect(keyedge!.label).toMatch(/keyless, 1 worker/);
    expect(keyedge!.rate).toBeGreaterThan(0);
    expect(keyedge!.serverCpuUs).toBeGreaterThan(0);
    expect(keyedge!.p99Ms).toBeGreaterThanOrEqual(keyedge!.p50Ms);

    // The detailed figures behind the row: requests counted at the origin, CPU of the proxy and of the client.
    const [scenario] = json.scenarios as { perRound: { window: { requests: number; proxyUs: number; clientUs: number; originUs: number } }[] }[];
    const window = scenario!.perRound[0]!.window;
    expect(window.requests).toBeGreaterThan(0);
    expect(window.proxyUs).toBeGreaterThan(0);
    expect(window.clientUs).toBeGreaterThan(0);
    expect(window.originUs).toBeGreaterThan(0);
  });
});
