/**
 * The order the suite's files start in (test/vitest.config.ts): longest
 * first, by test/file-seconds.json, each file's time in the last fresh-clone
 * CI run. CI starts from a clone with no vitest cache, and vitest then
 * orders files by size, which says little of how long a file runs: a long
 * file that starts last runs alone at the end, with two of the three places
 * idle (at 16438c6: 1,847 s of files in 725 s against 616 s for three full
 * places). Longest first (LPT) leaves only short files for the end.
 *
 * A file the table does not name (a new one) counts as UNLISTED_SECONDS:
 * ahead of the many short files. Stale or missing entries cost only time,
 * never a test. Refresh the table from a CI log with
 * `node test/helpers/file-seconds.mjs < ci.log > test/file-seconds.json`.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

const SECONDS: Readonly<Record<string, number>> = JSON.parse(readFileSync(new URL('../file-seconds.json', import.meta.url), 'utf8'));
const UNLISTED_SECONDS = 20;

export default class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    // vitest's own order (its cache when there is one, else size) breaks ties.
    const ordered = await super.sort(files);
    const root = this.ctx.config.root;
    const seconds = (spec: TestSpecification): number => SECONDS[relative(root, spec.moduleId)] ?? UNLISTED_SECONDS;
    return ordered
      .map((spec, index) => ({ spec, index, seconds: seconds(spec) }))
      .sort((a, b) => b.seconds - a.seconds || a.index - b.index)
      .map(({ spec }) => spec);
  }
}
