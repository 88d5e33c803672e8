/**
 * A config file's duplicate keys: JSON.parse keeps the last of two equal keys
 * in one object and drops the other without a word (RFC 8259 §4: names
 * SHOULD be unique, and what a parser does with duplicates is left open), so
 * a file merged by hand with two "domains" arrays ran on the second alone.
 * Found here, in text that has already parsed, with the line and column of
 * both and the key path; never a value, and a key only when it is shaped
 * like a setting's name (a key may be a secret typed in the wrong place: the
 * rule of problems.ts).
 *
 * Cost: one pass over the text, a set of keys per open object: 140 ms for a
 * 5.7 MB file of 100,000 domains (JSON.parse: 25 ms), once per load.
 */

/** A key quoted in an error: a setting's name is letters, `_` and `-` (problems.ts's NAME_LIKE). */
const NAME_LIKE = /^[A-Za-z_-]{1,64}$/;

type Frame = { readonly keys: Map<string, number>; key: string | undefined } | { index: number };

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
  const stack: Frame[] = [];
  // From one structural character to the next: what lies between (numbers, literals, spaces) says nothing of keys.
  const structural = /["{}[\],]/g;
  for (let m = structural.exec(text); m !== null; m = structural.exec(text)) {
    const i = m.index;
    const c = m[0];
    if (c === '"') {
      const end = closingQuote(text, i);
      const top = stack[stack.length - 1];
      if (top !== undefined && 'keys' in top && nextToken(text, end + 1) === ':') {
        // Unescaped, as JSON.parse compares them: "worker\u0073" is "workers".
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        const first = top.keys.get(key);
        if (first !== undefined) {
          const path = pathOf(stack.slice(0, -1), key);
          return { path, offset: i, firstOffset: first, ...(NAME_LIKE.test(key) ? {} : { maskedLength: key.length }) };
        }
        top.keys.set(key, i);
        top.key = key;
      }
      structural.lastIndex = end + 1;
    } else if (c === '{') stack.push({ keys: new Map(), key: undefined });
    else if (c === '[') stack.push({ index: 0 });
    else if (c === '}' || c === ']') stack.pop();
    else if (c === ',') {
      const top = stack[stack.length - 1];
      if (top !== undefined && 'index' in top) top.index++;
    }
  }
  return undefined;
}

/** The offset of the quote that ends the string opening at `open`: the first one not escaped by a backslash. */
function closingQuote(text: string, open: number): number {
  for (let end = text.indexOf('"', open + 1); ; end = text.indexOf('"', end + 1)) {
    let backslashes = 0;
    while (text[end - 1 - backslashes] === '\\') backslashes++;
    if (backslashes % 2 === 0) return end;
  }
}

/** The next character after `from` that is not JSON whitespace. */
function nextToken(text: string, from: number): string | undefined {
  let i = from;
  while (i < text.length && ' \t\r\n'.includes(text[i]!)) i++;
  return text[i];
}

/** The dotted path of `key` inside the objects and arrays of `outer`, each key not name-like shown as `[…]`. */
function pathOf(outer: readonly Frame[], key: string): string {
  let out = '';
  const add = (segment: string): void => {
    out += NAME_LIKE.test(segment) ? (out === '' ? segment : `.${segment}`) : '[…]';
  };
  for (const frame of outer) {
    if ('index' in frame) out += `[${frame.index}]`;
    else if (frame.key !== undefined) add(frame.key);
  }
  if (NAME_LIKE.test(key)) add(key);
  return out;
}
