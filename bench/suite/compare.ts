/**
 * Compares two benchmark result files (suite or single bench), scenario by scenario: each one's change in rate and
 * server CPU per unit; exits 1, naming them, when any moved by more than PCT (default 10%), 2 on bad input.
 */
import { parseArgs } from 'node:util';
import { numberOption } from '../harness/cli.js';
import { compareSummaries, formatComparison, readSummaryFile } from '../harness/summary.js';

const USAGE = `Usage: node dist/bench/suite/compare.js OLD.json NEW.json [--threshold PCT]

  Compares two result files (suite or single bench) scenario by scenario.
  Exit status: 0 nothing moved by more than PCT (default 10), 1 something did, 2 the files could not be read.
`;

function main(): number {
  const options = { threshold: { type: 'string' }, help: { type: 'boolean', default: false } } as const;
  const { values, positionals } = parseArgs({ options, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length !== 2) throw new Error(`expected two files, OLD.json and NEW.json; got ${positionals.length}\n\n${USAGE}`);
  const [oldFile, newFile] = positionals as [string, string];
  const threshold = numberOption(values.threshold, '--threshold', 10, 0.1) / 100;
  const comparison = compareSummaries(readSummaryFile(oldFile), readSummaryFile(newFile), { threshold });
  process.stdout.write(`Comparing ${oldFile} (old) with ${newFile} (new)\n\n${formatComparison(comparison)}`);
  return comparison.flagged.length > 0 ? 1 : 0;
}

try {
  process.exitCode = main();
} catch (err) {
  process.stderr.write(`compare: ${(err as Error).message}\n`);
  process.exitCode = 2;
}
