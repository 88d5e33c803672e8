/**
 * The daemon-neutral loading pipeline: read a JSON file (read-json.ts), lay
 * overrides over it (overrides.ts), validate against a schema that rejects
 * unknown keys (problems.ts), resolve defaults and paths with the daemon's
 * own resolver, deep-freeze (deep-freeze.ts). Each daemon's loader
 * (load.ts) is this pipeline with its schema and resolver.
 */
import path from 'node:path';
import type { z } from 'zod';
import { deepFreeze } from './deep-freeze.js';
import { mergeOverrides } from './overrides.js';
import { validateConfig } from './problems.js';
import { readJsonConfig } from './read-json.js';

/** `source` of a config built without a file. */
export const DEFAULTS_SOURCE = '(defaults)';

/** Where a config came from: its file (or DEFAULTS_SOURCE) and the directory its relative paths are relative to. */
export interface ConfigOrigin {
  readonly source: string;
  readonly baseDir: string;
}

/**
 * The whole pipeline for a daemon: read `file` (or start from {} when there
 * is none), lay `overrides` over it, validate, `resolve` (defaults, paths),
 * deep-freeze. Relative paths are resolved by `resolve` against
 * `origin.baseDir`: the file's directory, or the working directory without a
 * file.
 */
export function loadJsonConfig<S extends z.ZodType, T>(
  file: string | undefined,
  schema: S,
  resolve: (value: z.output<S>, origin: ConfigOrigin) => T,
  overrides?: unknown,
): T {
  const source = file === undefined ? DEFAULTS_SOURCE : path.resolve(file);
  const baseDir = file === undefined ? process.cwd() : path.dirname(source);
  const raw = mergeOverrides(file === undefined ? {} : readJsonConfig(source), overrides);
  return deepFreeze(resolve(validateConfig(schema, raw, source), { source, baseDir }));
}
