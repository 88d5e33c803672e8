/**
 * The body of the verdict file (verdict-cache.ts) as compact JSON: the strings
 * thousands of verdicts share (issuer names, chain subjects, warnings, key
 * ids and SPKIs) are written once in tables and referred to by index, times
 * are epoch milliseconds, and each verdict is a tuple. At 100,000 entries
 * this is about a third of the size of one object per verdict, and reading
 * it is dominated by JSON.parse; every tuple's shape is then checked (by
 * hand: a zod parse per tuple cost ~2.5 s at 100,000 entries, more than the
 * JSON.parse) and every index against its table, so a file that parses is
 * either whole or refused, never used in part.
 *
 * Pure: text in, verdicts out (or a reason), and back.
 */
import { z } from 'zod';

/** What a chain's verdict holds (verdicts.ts): what the input and the issuer pool decide, nothing secret. */
export interface Verdict {
  /** The names served, lower-case. */
  readonly names: readonly string[];
  readonly keyId: string;
  /** The leaf's SubjectPublicKeyInfo, base64. */
  readonly spki: string;
  readonly serial: string;
  readonly issuer: string;
  /** ISO 8601. */
  readonly notBefore: string;
  readonly notAfter: string;
  /** Every chain certificate after the leaf: its subject and end (ISO 8601). */
  readonly chainExpiries: readonly { readonly subject: string; readonly notAfter: string }[];
  /** The leaf names an OCSP responder and the chain holds its issuer. */
  readonly stapled: boolean;
  /** Warnings found when judged that do not depend on the time. */
  readonly warnings: readonly string[];
  /** The validated chain (leaf first), when it is not the input text itself. */
  readonly chainPem?: string;
}

/** [names, key index, serial, issuer index, notBefore ms, notAfter ms, [subject index, notAfter ms][], stapled, warning indexes, chainPem?] */
type VerdictTuple =
  | [string[], number, string, number, number, number, [number, number][], boolean, number[]]
  | [string[], number, string, number, number, number, [number, number][], boolean, number[], string];

const natural = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const strings = (v: unknown, min: number): v is string[] => Array.isArray(v) && v.length >= min && v.every((s) => typeof s === 'string');

/** Whether `raw` has a verdict tuple's shape (the indexes are checked against their tables after). */
function isVerdictTuple(raw: unknown): raw is VerdictTuple {
  if (!Array.isArray(raw) || (raw.length !== 9 && raw.length !== 10)) return false;
  const [names, key, serial, issuer, notBefore, notAfter, expiries, stapled, warnings, chainPem] = raw as unknown[];
  return (
    strings(names, 1) &&
    natural(key) &&
    typeof serial === 'string' &&
    natural(issuer) &&
    natural(notBefore) &&
    natural(notAfter) &&
    Array.isArray(expiries) &&
    expiries.every((e) => Array.isArray(e) && e.length === 2 && natural(e[0]) && natural(e[1])) &&
    typeof stapled === 'boolean' &&
    Array.isArray(warnings) &&
    warnings.every(natural) &&
    (raw.length === 9 || typeof chainPem === 'string')
  );
}
const keysSchema = z.array(z.tuple([z.string().regex(/^[0-9a-f]{64}$/), z.base64()]));

interface Body {
  readonly strings: string[];
  readonly keys: [string, string][];
  readonly verdicts: Record<string, unknown>;
}

/** The body's outline (its few keys checked by zod, its many tuples by hand): or undefined. */
function bodyOf(value: unknown): Body | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const { strings: texts, keys, verdicts, ...rest } = value as Record<string, unknown>;
  if (Object.keys(rest).length > 0 || !strings(texts, 0) || !keysSchema.safeParse(keys).success) return undefined;
  if (typeof verdicts !== 'object' || verdicts === null || Array.isArray(verdicts)) return undefined;
  return { strings: texts, keys: keys as [string, string][], verdicts: verdicts as Record<string, unknown> };
}

export function encodeVerdicts(verdicts: ReadonlyMap<string, Verdict>): string {
  const strings: string[] = [];
  const stringIndex = new Map<string, number>();
  const keys: [string, string][] = [];
  const keyIndex = new Map<string, number>();
  const str = (s: string): number => {
    let i = stringIndex.get(s);
    if (i === undefined) {
      i = strings.push(s) - 1;
      stringIndex.set(s, i);
    }
    return i;
  };
  const key = (keyId: string, spki: string): number => {
    const id = `${keyId}\0${spki}`;
    let i = keyIndex.get(id);
    if (i === undefined) {
      i = keys.push([keyId, spki]) - 1;
      keyIndex.set(id, i);
    }
    return i;
  };
  const out: Record<string, VerdictTuple> = {};
  for (const [id, v] of verdicts) {
    const tuple: VerdictTuple = [
      [...v.names],
      key(v.keyId, v.spki),
      v.serial,
      str(v.issuer),
      Date.parse(v.notBefore),
      Date.parse(v.notAfter),
      v.chainExpiries.map((c) => [str(c.subject), Date.parse(c.notAfter)] as [number, number]),
      v.stapled,
      v.warnings.map(str),
    ];
    out[id] = v.chainPem === undefined ? tuple : [...tuple, v.chainPem];
  }
  return JSON.stringify({ strings, keys, verdicts: out });
}

/** The verdicts of `text`, or the reason it is refused whole. */
export function decodeVerdicts(text: string): Map<string, Verdict> | string {
  let body: Body | undefined;
  try {
    body = bodyOf(JSON.parse(text));
  } catch {
    // The parser's message may quote the file: it is not kept.
  }
  if (body === undefined) return 'is not a verdict file';
  const { strings, keys } = body;
  // Each distinct time is turned into text once: thousands of entries share a few.
  const isoOf = new Map<number, string>();
  const iso = (t: number): string | undefined => {
    let s = isoOf.get(t);
    if (s === undefined) {
      const d = new Date(t);
      if (Number.isNaN(d.getTime())) return undefined;
      s = d.toISOString();
      isoOf.set(t, s);
    }
    return s;
  };
  const verdicts = new Map<string, Verdict>();
  const inputId = /^[a-z]+:[0-9a-f]+$/;
  for (const [id, raw] of Object.entries(body.verdicts)) {
    const malformed = `holds a malformed verdict (${id.slice(0, 20)}…)`;
    if (!inputId.test(id) || !isVerdictTuple(raw)) return malformed;
    const [names, k, serial, issuer, notBefore, notAfter, expiries, stapled, warnings, chainPem] = raw;
    const key = keys[k];
    const issuerName = strings[issuer];
    const before = iso(notBefore);
    const after = iso(notAfter);
    const chainExpiries = expiries.map(([subject, end]) => ({ subject: strings[subject], notAfter: iso(end) }));
    const warningTexts = warnings.map((w) => strings[w]);
    if (
      key === undefined ||
      issuerName === undefined ||
      before === undefined ||
      after === undefined ||
      chainExpiries.some((c) => c.subject === undefined || c.notAfter === undefined) ||
      warningTexts.some((w) => w === undefined)
    )
      return malformed;
    verdicts.set(id, {
      names,
      keyId: key[0],
      spki: key[1],
      serial,
      issuer: issuerName,
      notBefore: before,
      notAfter: after,
      chainExpiries: chainExpiries as { subject: string; notAfter: string }[],
      stapled,
      warnings: warningTexts as string[],
      ...(chainPem === undefined ? {} : { chainPem }),
    });
  }
  return verdicts;
}
