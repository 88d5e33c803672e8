/**
 * The instructions of one callgrind dump file as the sum of its self costs
 * (every cost line but the inclusive one after each `calls=`). Its `summary:`
 * line cannot be trusted when instrumentation was switched on mid-run
 * (`--instr-atstart=no`): calls entered before it return unseen, and the
 * summary wraps below zero. Pure but for reading the file.
 */
import { readFileSync } from 'node:fs';

export function callgrindInstructions(file: string): number {
  let total = 0;
  let skipNext = false;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (line.startsWith('calls=')) {
      skipNext = true;
      continue;
    }
    const m = /^[+\-*]?\d*\s+(\d+)$/.exec(line);
    if (m === null) continue;
    if (skipNext) skipNext = false;
    else total += Number(m[1]);
  }
  return total;
}
