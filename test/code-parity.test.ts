/**
 * The code registry (config/codes.ts) against what documents and re-states it:
 * - README's tables ("Error codes", "HTTP answers of our own", the refusal
 *   reasons of "Certificate store") list exactly the registry's codes, README
 *   mentions no KEYEDGE_* code the registry lacks, and the product's source
 *   uses none either;
 * - every wire number of keyserver/protocol/constants.ts (opcodes, tags,
 *   algorithms, error codes) is in SPEC.md's tables with the same value, and
 *   SPEC.md's tables hold nothing else;
 * - the keyless bridge's C client (proxy/native/src/rpc.c, rpc.h, keyless.h)
 *   re-states protocol numbers by hand: each #define is read from the C source
 *   and held to constants.ts. The C code is not changed or rebuilt here.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CERTIFICATE_REFUSALS, ERROR_CODES, HTTP_CODES, WIRE_ERROR_CODES } from '../config/codes.js';
import * as wire from '../keyserver/protocol/constants.js';
import { REPO } from './helpers/basics.js';

const read = (file: string): string => readFileSync(path.join(REPO, file), 'utf8');
const sorted = (values: Iterable<string>): string[] => [...new Set(values)].sort();
const CODE = /KEYEDGE_(?:ERR|HTTP)_[A-Z0-9_]+/g;

/** The body of a markdown section, from its heading to the next heading of the same or a higher level. */
function section(markdown: string, heading: string): string {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => l.replace(/^#+\s*/, '') === heading && l.startsWith('#'));
  expect(start, `section "${heading}"`).toBeGreaterThanOrEqual(0);
  const level = /^#+/.exec(lines[start]!)![0].length;
  const end = lines.findIndex((l, i) => i > start && /^#+\s/.test(l) && /^#+/.exec(l)![0].length <= level);
  return lines.slice(start + 1, end < 0 ? undefined : end).join('\n');
}

/** The table rows of a markdown text, as cells (header and separator rows included). */
function rows(markdown: string): string[][] {
  return markdown
    .split('\n')
    .filter((l) => l.startsWith('|'))
    .map((l) =>
      l
        .slice(1, l.lastIndexOf('|'))
        .split('|')
        .map((c) => c.trim()),
    );
}

/** The `code`-quoted words of a table column. */
function quoted(table: string[][], column: number): string[] {
  return table.flatMap((cells) => [...(cells[column] ?? '').matchAll(/`([^`]+)`/g)].map((m) => m[1]!));
}

describe('the code registry and README', () => {
  const readme = read('README.md');

  it('"Error codes" lists exactly the registry\'s KEYEDGE_ERR_* codes', () => {
    expect(sorted(quoted(rows(section(readme, 'Error codes')), 0))).toEqual(sorted(Object.keys(ERROR_CODES)));
  });

  it('"HTTP answers of our own" lists exactly the registry\'s KEYEDGE_HTTP_* codes', () => {
    const codes = quoted(rows(section(readme, 'HTTP answers of our own')), 1);
    expect(sorted(codes)).toEqual(sorted(Object.keys(HTTP_CODES)));
  });

  it('"Certificate store" lists exactly the registry\'s refusal reasons', () => {
    const table = rows(section(readme, 'Certificate store'));
    const start = table.findIndex((cells) => cells[0] === 'reason');
    expect(start).toBeGreaterThanOrEqual(0);
    const end = table.findIndex((cells, i) => i > start + 1 && !/^`/.test(cells[0] ?? ''));
    expect(sorted(quoted(table.slice(start + 2, end < 0 ? undefined : end), 0))).toEqual(sorted(Object.keys(CERTIFICATE_REFUSALS)));
  });

  it('README mentions no KEYEDGE_* code the registry does not hold, and no registered code is undocumented', () => {
    const registered = new Set([...Object.keys(ERROR_CODES), ...Object.keys(HTTP_CODES)]);
    const mentioned = sorted(readme.match(CODE) ?? []);
    expect(mentioned.filter((code) => !registered.has(code))).toEqual([]);
    expect(sorted(registered).filter((code) => !mentioned.includes(code))).toEqual([]);
  });

  it('the product uses no KEYEDGE_* code the registry does not hold, and each has a meaning', () => {
    const registered = new Set([...Object.keys(ERROR_CODES), ...Object.keys(HTTP_CODES)]);
    const used = new Map<string, string>();
    const walk = (dir: string): void => {
      for (const entry of readdirSync(path.join(REPO, dir), { withFileTypes: true })) {
        const rel = `${dir}/${entry.name}`;
        if (entry.isDirectory() && entry.name !== 'node_modules' && entry.name !== 'build') walk(rel);
        else if (entry.isFile() && /\.(c|m)?ts$/.test(entry.name)) for (const code of read(rel).match(CODE) ?? []) used.set(code, rel);
      }
    };
    for (const dir of ['config', 'keyserver', 'proxy']) walk(dir);
    expect(used.size).toBeGreaterThan(30);
    expect([...used].filter(([code]) => !registered.has(code)).map(([code, file]) => `${code} (${file})`)).toEqual([]);
    const meanings = [ERROR_CODES, HTTP_CODES, CERTIFICATE_REFUSALS, WIRE_ERROR_CODES].flatMap((registry) => Object.values<string>(registry));
    for (const meaning of meanings) {
      expect(meaning.length).toBeGreaterThan(10);
      expect(meaning).not.toContain('\n');
    }
  });
});

describe('the wire numbers and SPEC.md', () => {
  const spec = read('keyserver/protocol/SPEC.md');

  /** name -> number from the SPEC table whose first column is the number and second the `NAME`. */
  function specTable(heading: string): Record<string, number> {
    const out: Record<string, number> = {};
    for (const cells of rows(section(spec, heading))) {
      const value = /^`?(0x[0-9A-Fa-f]+|\d+)`?$/.exec(cells[0] ?? '');
      const name = /^`([A-Z0-9_]+)`$/.exec(cells[1] ?? '');
      if (value !== null && name !== null) out[name[1]!] = Number(value[1]);
    }
    return out;
  }

  it('the registry names every wire error code of constants.ts, and no other', () => {
    expect(sorted(Object.keys(WIRE_ERROR_CODES))).toEqual(sorted(Object.keys(wire.ErrorCode)));
  });

  it.each([
    ['Operations', wire.Opcode],
    ['Items', wire.Tag],
    ['Algorithms', wire.Algorithm],
    ['Error codes', wire.ErrorCode],
  ] as const)('SPEC.md "%s" holds exactly the constants, with the same numbers', (heading, constants) => {
    expect(specTable(heading)).toEqual({ ...constants });
  });

  it('SPEC.md states the header size, version and default body limit of constants.ts', () => {
    const framing = section(spec, 'Framing');
    expect(framing).toContain(`\`0x0${wire.PROTOCOL_VERSION}\``);
    expect(framing).toContain(`(default ${wire.DEFAULT_MAX_BODY_BYTES})`);
    expect(framing).toMatch(new RegExp(`\\|\\s*${wire.HEADER_BYTES}\\s*\\|\\s*n\\s*\\|\\s*Body`));
  });
});

describe("the C client's protocol numbers and constants.ts", () => {
  const sources = ['rpc.h', 'rpc.c', 'pool.c', 'keyless.h'].map((f) => read(`proxy/native/src/${f}`)).join('\n');
  const defines = new Map([...sources.matchAll(/^#define\s+([A-Z0-9_]+)\s+(0x[0-9A-Fa-f]+|\d+)\b/gm)].map((m) => [m[1]!, Number(m[2])]));

  /** What each hand-written C name must equal; a new OP_/TAG_/ERR_/ALG_ define without a counterpart fails. */
  function expected(name: string): number | undefined {
    const table = (prefix: string, constants: Record<string, number>): number | undefined =>
      name.startsWith(prefix) ? constants[name.slice(prefix.length)] : undefined;
    const single: Record<string, number> = {
      VERSION: wire.PROTOCOL_VERSION,
      HEADER_LEN: wire.HEADER_BYTES,
      MAX_BODY: wire.DEFAULT_MAX_BODY_BYTES,
      KEYLESS_KEY_ID_LEN: wire.KEY_ID_BYTES,
    };
    return single[name] ?? table('OP_', wire.Opcode) ?? table('TAG_', wire.Tag) ?? table('ERR_', wire.ErrorCode) ?? table('ALG_', wire.Algorithm);
  }

  it('every protocol #define equals its constants.ts value', () => {
    const checked = [...defines].filter(([name]) => /^(VERSION|HEADER_LEN|MAX_BODY|KEYLESS_KEY_ID_LEN|OP_|TAG_|ERR_|ALG_)/.test(name));
    expect(checked.length).toBeGreaterThanOrEqual(15);
    expect(checked.map(([name, value]) => [name, value])).toEqual(checked.map(([name]) => [name, expected(name)]));
  });

  it('the numbers rpc.c writes as literals: the critical tag range and the error detail limit', () => {
    const critical = Object.values(wire.Tag).filter((t) => (t & wire.OPTIONAL_TAG_BIT) === 0);
    const range = /tag >= (0x[0-9a-f]+) && tag <= (0x[0-9a-f]+)\) \|\| tag == TAG_ERROR_DETAIL/.exec(sources);
    expect(range, 'rpc.c: the critical tag range check').not.toBeNull();
    expect([Number(range![1]), Number(range![2])]).toEqual([Math.min(...critical), Math.max(...critical)]);
    const detail = /detaill > (\d+)/.exec(sources);
    expect(detail, 'rpc.c: the ERROR_DETAIL length check').not.toBeNull();
    expect(Number(detail![1])).toBe(wire.MAX_ERROR_DETAIL_BYTES);
  });
});
