/**
 * The line of a config file's JSON syntax error, as its error shows it: its
 * shape around the fault, with every value masked. V8's message quotes one
 * character; the line around the column is what finds a missing comma or a
 * stray brace. But a config file can hold a secret its author put there: a
 * PIN typed as a literal (refused by the schema, never quoted: README, "Key
 * server configuration"), the user and password of an on-demand `ask` URL.
 * So strings become `"…"`, and words and numbers (a bare PIN, a comment's
 * text) `…`; what is left is JSON's punctuation, `true`, `false`, `null`, and
 * spaces: the structure a syntax error is about. Never more than about 60
 * characters, whatever the line's length (a minified file is one line).
 */

/** The excerpt's length around the fault, before the marker and after it. */
const BEFORE = 40;
const AFTER = 20;
/** Where the error is, in the excerpt. */
export const MARK = '>>>';
const KEPT_WORDS = new Set(['true', 'false', 'null']);
/** A word or number outside a string: JSON's literals and numbers, or what an author mistyped (a bare word). */
const WORD = /[^\s"{}[\]:,/*]/;

/**
 * The line of `text` holding `offset`, masked, `MARK` before the token the
 * offset falls in, cut to about 60 characters around it.
 */
export function maskedExcerpt(text: string, offset: number): string {
  const start = text.lastIndexOf('\n', offset - 1) + 1;
  const lineEnd = text.indexOf('\n', offset);
  const line = text.slice(start, lineEnd === -1 ? text.length : lineEnd).replace(/\r$/, '');
  const at = Math.min(offset - start, line.length);
  let out = '';
  let marked = -1;
  let i = 0;
  while (i < line.length || marked < 0) {
    let end = i + 1;
    let token: string;
    if (i >= line.length) token = '';
    else if (line[i] === '"') {
      // To its closing quote (an escaped one does not close it), or the line's end.
      for (; end < line.length && line[end] !== '"'; end++) if (line[end] === '\\') end++;
      token = end < line.length ? '"…"' : '"…';
      end = Math.min(end + 1, line.length);
    } else if (WORD.test(line[i]!)) {
      while (end < line.length && WORD.test(line[end]!)) end++;
      const word = line.slice(i, end);
      token = KEPT_WORDS.has(word) ? word : '…';
    } else token = line[i]!;
    if (marked < 0 && at < end) {
      marked = out.length;
      out += MARK;
    }
    out += token;
    i = end;
  }
  return window(out, marked).replace(/\s/g, ' ').trimEnd();
}

/** `out` cut to BEFORE characters before `marked` and AFTER past the marker, `…` where it was cut. */
function window(out: string, marked: number): string {
  const from = Math.max(0, marked - BEFORE);
  const to = Math.min(out.length, marked + MARK.length + AFTER);
  return `${from > 0 ? '…' : ''}${out.slice(from, to)}${to < out.length ? '…' : ''}`;
}
