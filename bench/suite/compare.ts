/**
 * Compares two benchmark result files: `node dist/bench/suite/compare.js OLD.json NEW.json [--threshold PCT]`. Either
 * file may be a suite result (`<date>-suite.json`) or a single bench's (`<date>-handshake.json`, ...); scenarios are
 * matched by bench and name. Prints a table of each scenario's change in rate and server CPU per unit and exits 1,
 * naming them, when any scenario moved by more than the threshold (default 10%); 2 on bad input.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { numberOption } from '../harness/cli.js';
import { compareSummaries, formatComparison } from '../harness/summary.js';
import { readSummary, type SummaryRow } from '../harness/summary.js';

const USAGE = `Usage: node dist/bench/suite/compare.js OLD.json NEW.json [--threshold PCT]

  Compares two result files (suite or single bench) scenario by scenario.
  Exit status: 0 nothing moved by more than PCT (default 10), 1 something did,
  2 the files could not be read.
`;

function load(path: string): SummaryRow[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    return readSummary(JSON.parse(text), path);
  } catch (err) {
    throw err instanceof SyntaxError ? new Error(`${path} is not JSON: ${err.message}`) : err;
  }
}

function main(): number {
  const { values, positionals } = parseArgs({
    options: { threshold: { type: 'string' }, help: { type: 'boolean', default: false } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length !== 2) throw new Error(`expected two files, OLD.json and NEW.json; got ${positionals.length}\n\n${USAGE}`);
  const threshold = numberOption(values.threshold, '--threshold', 10, 0.1) / 100;
  const comparison = compareSummaries(load(positionals[0]!), load(positionals[1]!), { threshold });
  process.stdout.write(`Comparing ${positionals[0]} (old) with ${positionals[1]} (new)\n\n${formatComparison(comparison)}`);
  return comparison.flagged.length > 0 ? 1 : 0;
}

try {
  process.exitCode = main();
} catch (err) {
  process.stderr.write(`compare: ${(err as Error).message}\n`);
  process.exitCode = 2;
}
