/**
 * Reads a vitest run's output (a CI log) on stdin and writes
 * test/file-seconds.json's table on stdout: each file's seconds, from its
 * line ` ✓ test/x.test.ts (N tests) 12345ms` (or ` ❯`/` ×` for a failed one),
 * longest first. The table orders the suite (sequencer.ts).
 */
import { readFileSync } from 'node:fs';

const ESC = String.fromCharCode(27);
const text = readFileSync(0, 'utf8').replaceAll(new RegExp(`${ESC}\\[[0-9;]*m`, 'g'), '');
const seconds = {};
for (const match of text.matchAll(/^ [✓❯×↓] (test\/\S+\.test\.ts) \([^)]*\)(?: \d+ \w+)? (\d+)ms/gm)) {
  seconds[match[1]] = Math.round(Number(match[2]) / 100) / 10;
}
const sorted = Object.fromEntries(Object.entries(seconds).sort((a, b) => b[1] - a[1]));
process.stdout.write(`${JSON.stringify(sorted, null, 2)}\n`);
