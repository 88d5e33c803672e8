/**
 * What a subcommand looks like, and the one argument parser they share
 * (node:util parseArgs, strict: an unknown flag is a usage error).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from './errors.js';

export interface Command {
  readonly name: string;
  /** Resolves with the process exit status. */
  run(argv: readonly string[]): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig['options']>;

let done: string | undefined;

/**
 * What the running command has done by the time it writes its output (`key 'x' (key id …) was generated …`): said on
 * stderr if standard output cannot be written (a full disk under `> file`), as keyedge.ts reports that.
 */
export function noteDone(what: string): void {
  done = what;
}

/** The last noteDone(), if any. */
export function doneSoFar(): string | undefined {
  return done;
}

/**
 * Parses `argv` against `options`; `--help` is always accepted and reported as `help`. A value option given twice (not
 * `multiple`) is a usage error: parseArgs keeps the last, so `key delete --key a … --key b` destroyed b, and a second
 * `--config` quietly chose another token or store.
 */
export function parseCommandArgs<T extends Options>(argv: readonly string[], options: T, usage: string) {
  const parsed = (() => {
    try {
      return parseArgs({
        args: [...argv],
        options: { ...options, help: { type: 'boolean', short: 'h' } },
        allowPositionals: false,
        strict: true,
        tokens: true,
      });
    } catch (err) {
      throw new UsageError(`${(err as Error).message}\n\n${usage}`);
    }
  })();
  const seen = new Set<string>();
  for (const token of parsed.tokens) {
    if (token.kind !== 'option' || token.value === undefined || options[token.name]?.multiple === true) continue;
    if (seen.has(token.name)) throw new UsageError(`--${token.name} given more than once: give it once\n\n${usage}`);
    seen.add(token.name);
  }
  return { values: parsed.values };
}

export function requireOption(value: string | undefined, flag: string, usage: string): string {
  if (value === undefined || value === '') throw new UsageError(`missing ${flag}\n\n${usage}`);
  return value;
}

/** A plain-text table: `header` then `rows`, columns padded to their widest cell, two spaces apart, no trailing blanks. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows]
    .map(
      (row) =>
        `${row
          .map((cell, i) => cell.padEnd(widths[i]!))
          .join('  ')
          .trimEnd()}\n`,
    )
    .join('');
}
