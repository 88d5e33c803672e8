/**
 * A config's problems, reported: schema issues (zod) turned into one problem
 * per offending key, each naming its dotted path and what was expected, and
 * all of them gathered into one ConfigError. Why one error listing every
 * problem: an operator fixes the file once instead of once per key. What was
 * found is described, never quoted (a string there may be a misplaced PIN).
 * Used by the loader (load-json.ts) and by whatever validates config-shaped
 * data later (store routes, store metadata).
 */
import type { z } from 'zod';
import { ConfigError } from './errors.js';

/** One problem found in a config: dotted key path (`clients[0].keys`, '' for the whole file) and what was expected. */
export interface ConfigProblem {
  readonly path: string;
  readonly message: string;
}

type Issue = z.core.$ZodIssue;
type Segment = PropertyKey;

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;
/**
 * An unknown key quoted in an error: a misspelt setting (`stateDr`, `timeoutMS`) is letters, `_` and `-`. A key
 * with a digit or anything else may be a secret typed as a key (`"pin": { "86427531": … }`, a token pasted where a
 * name goes), and the error goes to stderr and logs: its place and length are said instead.
 */
const NAME_LIKE = /^[A-Za-z_-]{1,64}$/;

export function formatPath(segments: readonly Segment[]): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (typeof s === 'string' && IDENTIFIER.test(s)) out += out === '' ? s : `.${s}`;
    else out += `[${JSON.stringify(String(s))}]`;
  }
  return out;
}

function valueAt(root: unknown, segments: readonly Segment[]): unknown {
  let v = root;
  for (const s of segments) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, s)) return undefined;
    v = (v as Record<PropertyKey, unknown>)[s];
  }
  return v;
}

/**
 * What was found instead, without ever quoting a string: a string in a config
 * may be a PIN typed where it does not belong, and this text goes to logs. A
 * number is quoted only where a number was expected (a port out of range); in
 * place of a path or a name it may be a numeric PIN (`"pin": { "file": 123456 }`
 * was answered "got 123456").
 */
function describe(v: unknown, numberExpected: boolean): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  switch (typeof v) {
    case 'string':
      return 'a string';
    case 'number':
      return numberExpected ? String(v) : 'a number';
    case 'boolean':
      return String(v);
    case 'object':
      return 'an object';
    default:
      return typeof v;
  }
}

/**
 * A union's issue lists every branch's failures; the useful ones are those of
 * the branch whose type matched (an array of key ids with one bad id, say),
 * since the other branches only say "not a string".
 */
function matchedBranch(issue: Issue & { code: 'invalid_union' }): readonly Issue[] | undefined {
  const typeMatched = issue.errors.filter((branch) => !branch.some((i) => i.path.length === 0 && (i.code === 'invalid_type' || i.code === 'invalid_value')));
  return typeMatched.length === 1 ? typeMatched[0] : undefined;
}

/**
 * Turns schema issues into one problem per offending key, each naming its
 * path and what was expected; unknown keys are reported one by one so each
 * line points at the key to fix. `raw` is the validated input, used to say
 * what was found instead.
 */
export function formatIssues(issues: readonly Issue[], raw: unknown, prefix: readonly Segment[] = []): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  for (const issue of issues) {
    const at = [...prefix, ...issue.path];
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        out.push(
          NAME_LIKE.test(key)
            ? { path: formatPath([...at, key]), message: issue.message }
            : { path: formatPath(at), message: `${issue.message} (a key of ${key.length} characters, not quoted: it could be a secret)` },
        );
      }
      continue;
    }
    if (issue.code === 'invalid_union') {
      const branch = matchedBranch(issue);
      if (branch) {
        out.push(...formatIssues(branch, raw, at));
        continue;
      }
    }
    const found = valueAt(raw, at);
    let message = issue.message;
    if (found === undefined && issue.code === 'invalid_type') {
      message = `missing; ${message}`;
    } else if (
      // "got" completes an "expected ..." sentence; custom messages (the
      // literal-PIN refusal) stand on their own.
      message.startsWith('expected') &&
      (issue.code === 'invalid_type' ||
        issue.code === 'invalid_union' ||
        ((issue.code === 'too_big' || issue.code === 'too_small') && typeof found === 'number'))
    ) {
      const numberExpected =
        issue.code === 'too_big' || issue.code === 'too_small' || (issue.code === 'invalid_type' && ['number', 'int'].includes(issue.expected));
      message = `${message}, got ${describe(found, numberExpected)}`;
    }
    out.push({ path: formatPath(at), message });
  }
  return out;
}

/** One ConfigError for all problems: the first on the first line, the others below it, one per line. */
export function configError(source: string, problems: readonly ConfigProblem[], options?: { cause?: unknown }): ConfigError {
  const unique = [...new Map(problems.map((p) => [`${p.path}\0${p.message}`, p])).values()];
  const [first, ...rest] = unique;
  if (!first) return new ConfigError(source, '', 'invalid configuration', options);
  const lines = rest.map((p) => `  ${p.path ? `${p.path}: ` : ''}${p.message}`);
  return new ConfigError(source, first.path, [first.message, ...lines].join('\n'), options);
}

/** Validates `raw` against `schema`; throws one ConfigError listing every problem. */
export function validateConfig<S extends z.ZodType>(schema: S, raw: unknown, source: string): z.output<S> {
  const result = schema.safeParse(raw);
  if (result.success) return result.data;
  throw configError(source, formatIssues(result.error.issues, raw));
}
