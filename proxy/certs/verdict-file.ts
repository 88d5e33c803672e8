/**
 * The body of the verdict file (verdicts.ts) as compact JSON: the strings
 * thousands of verdicts share (issuer names, chain subjects, warnings, key
 * ids and SPKIs) are written once in tables and referred to by index, times
 * are epoch milliseconds, and each verdict is a tuple. At 100,000 entries
 * this is about a third of the size of one object per verdict, and reading
 * it is dominated by JSON.parse; zod then checks every tuple and every
 * index is checked against its table, so a file that parses is either whole
 * or refused, never used in part.
 *
 * Pure: text in, verdicts out (or a reason), and back.
 */
import { z } from 'zod';
import type { Verdict } from './verdicts.js';

const ms = z.number().int().min(0);
const index = z.number().int().min(0);
const verdictTuple = z.union([
  z.tuple([z.array(z.string()).min(1), index, z.string(), index, ms, ms, z.array(z.tuple([index, ms])), z.boolean(), z.array(index)]),
  z.tuple([z.array(z.string()).min(1), index, z.string(), index, ms, ms, z.array(z.tuple([index, ms])), z.boolean(), z.array(index), z.string()]),
]);
type VerdictTuple = z.infer<typeof verdictTuple>;
const bodySchema = z.strictObject({
  strings: z.array(z.string()),
  keys: z.array(z.tuple([z.string().regex(/^[0-9a-f]{64}$/), z.base64()])),
  verdicts: z.record(z.string().regex(/^[a-z]+:[0-9a-f]+$/), z.unknown()),
});

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
  let body: z.infer<typeof bodySchema>;
  try {
    body = bodySchema.parse(JSON.parse(text));
  } catch {
    // The parser's message may quote the file: it is not kept.
    return 'is not a verdict file';
  }
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
  for (const [id, raw] of Object.entries(body.verdicts)) {
    const parsed = verdictTuple.safeParse(raw);
    const malformed = `holds a malformed verdict (${id.slice(0, 20)}…)`;
    if (!parsed.success) return malformed;
    const [names, k, serial, issuer, notBefore, notAfter, expiries, stapled, warnings, chainPem] = parsed.data;
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
