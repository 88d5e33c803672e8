/**
 * What a subcommand looks like, and the one argument parser they share
 * (node:util parseArgs, strict: an unknown flag is a usage error).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from './errors.js';

export interface Command {
  readonly name: string;
  readonly summary: string;
  /** Resolves with the process exit status. */
  run(argv: readonly string[]): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** Parses `argv` against `options`; `--help` is always accepted and reported as `help`. */
export function parseCommandArgs<T extends Options>(argv: readonly string[], options: T, usage: string) {
  try {
    return parseArgs({
      args: [...argv],
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: false,
      strict: true,
    });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${usage}`);
  }
}

export function requireOption(value: string | undefined, flag: string, usage: string): string {
  if (value === undefined || value === '') throw new UsageError(`missing ${flag}\n\n${usage}`);
  return value;
}
