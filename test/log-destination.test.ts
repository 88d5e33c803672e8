import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO } from './helpers/basics.js';

// The product's log destination (keyserver/shared/log.ts): batched lines on
// stdout, written on the event loop when stdout is a regular file and on
// libuv's thread pool otherwise. Either way no line is lost, and a batch is
// out within LOG_FLUSH_MS of its last line.
const LINES = 1000;
const SCRIPT = `
import { readFileSync, fstatSync } from 'node:fs';
import { createLogger, LOG_FLUSH_MS } from ${JSON.stringify(pathToFileURL(join(REPO, 'dist/keyserver/shared/log.js')).href)};
const log = createLogger('log-test', 'info');
for (let i = 0; i < ${LINES}; i++) log.info({ access: true, i }, 'request');
await new Promise((resolve) => setTimeout(resolve, 3 * LOG_FLUSH_MS));
// Before exit: what a file holds already (a pipe cannot be read back).
const seen = fstatSync(1).isFile() ? readFileSync('/proc/self/fd/1', 'utf8').split('\\n').filter(Boolean).length : -1;
process.stderr.write(JSON.stringify({ seen }) + '\\n');
`;

const dir = mkdtempSync(join(tmpdir(), 'keyedge-log-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function runChild(stdout: number | 'pipe'): Promise<{ stdout: string; stderr: string; code: number | null }> {
  const script = join(dir, 'log-child.mjs');
  writeFileSync(script, SCRIPT);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script], { cwd: REPO, stdio: ['ignore', stdout, 'pipe'] });
    let out = '';
    let err = '';
    child.stdout?.setEncoding('utf8').on('data', (t: string) => (out += t));
    child.stderr!.setEncoding('utf8').on('data', (t: string) => (err += t));
    child.once('error', reject);
    child.once('close', (code) => resolve({ stdout: out, stderr: err, code }));
  });
}

function accessLines(text: string): number[] {
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => (JSON.parse(line) as { i: number }).i);
}

describe('the log destination', () => {
  it('stdout a regular file: every line is in the file within the flush period, in order, before the process exits', async () => {
    const file = join(dir, 'stdout.log');
    const fd = openSync(file, 'w');
    const result = await runChild(fd);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stderr.trim())).toEqual({ seen: LINES });
    expect(accessLines(readFileSync(file, 'utf8'))).toEqual([...Array(LINES).keys()]);
  });

  it('stdout a pipe: every line arrives, in order', async () => {
    const result = await runChild('pipe');
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stderr.trim())).toEqual({ seen: -1 });
    expect(accessLines(result.stdout)).toEqual([...Array(LINES).keys()]);
  });
});
