/**
 * Reading a config file: its text as JSON (a UTF-8 BOM dropped), with a read
 * or syntax error that names the file and, when V8 gives a position, the line
 * and column and the line's shape around it, so the operator can go straight
 * to it. The error never quotes the file's values: they could hold a secret
 * (json-excerpt.ts masks them).
 *
 * The file is read through setting-file.ts, only if it is a regular file of
 * at most MAX_CONFIG_BYTES: a config path replaced by a FIFO would block
 * open(2), and one linked to /dev/zero would be read for ever, in the process
 * that serves (a reload, SIGHUP, runs this in the cluster's primary).
 */
import { ConfigError } from './errors.js';
import { firstDuplicateKey } from './json-duplicates.js';
import { maskedExcerpt } from './json-excerpt.js';
import { readSettingFile } from './setting-file.js';

/** Far past any real config (a few KiB; a large on-demand or domain list, some MiB). */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

/** The file's text, or a ConfigError naming it: not a regular file, too large, or unreadable. */
function readConfigText(file: string): string {
  try {
    return readSettingFile(file, MAX_CONFIG_BYTES).toString('utf8');
  } catch (err) {
    throw new ConfigError(file, '', `cannot read the config file (${(err as Error).message})`, { cause: err });
  }
}

/**
 * Arrays and objects a config may nest: no setting is past a few. The duplicate-key check (json-duplicates.ts) recurses
 * once per level: valid JSON 10,000 arrays deep failed with "Maximum call stack size exceeded", naming no file.
 */
const MAX_DEPTH = 64;

/** The offset of the first `[` or `{` of `text` (valid JSON) past `max` levels deep, or undefined. One pass, no recursion. */
function deeperThan(text: string, max: number): number | undefined {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // a backslash: the character after it is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return i;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return undefined;
}

/** V8's context on either side of an unexpected token (JsonParser::ReportUnexpectedToken's kMaxContextCharacters). */
const CONTEXT = 10;
/** V8's "Unexpected token" message: the token, then the text around it, `...` where V8 cut it, or the whole text if short. */
const UNEXPECTED_TOKEN = /^Unexpected token '[\s\S]', (\.\.\.)?"([\s\S]*)"(\.\.\.)? is not valid JSON$/;

/**
 * The offset of V8's unexpected token, which it gives no position for, from the text it quotes around it: the 10
 * characters either side, cut at the text's start or end; none for a text under 21 characters, quoted whole.
 */
function unexpectedTokenOffset(reason: string, text: string): number | undefined {
  const m = UNEXPECTED_TOKEN.exec(reason);
  if (m === null) return undefined;
  const [, cutBefore, context, cutAfter] = m as unknown as [string, string | undefined, string, string | undefined];
  if (cutBefore === undefined && cutAfter === undefined) return undefined;
  if (cutBefore === undefined) return context.length - CONTEXT;
  if (cutAfter === undefined) return text.length - context.length + CONTEXT;
  const start = text.indexOf(context);
  return start < 0 ? undefined : start + CONTEXT;
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, Math.min(offset, text.length));
  const lastBreak = before.lastIndexOf('\n');
  return { line: before.split('\n').length, column: offset - lastBreak };
}

/** Reads and parses a JSON file; a syntax error names the file and, when V8 gives a position, the line, column and masked line. */
export function readJsonConfig(file: string): unknown {
  let text = readConfigText(file);
  // Editors on some platforms save UTF-8 with a BOM, which JSON.parse rejects.
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text) as unknown;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    const position = /at position (\d+)/.exec(reason)?.[1];
    const offset = position !== undefined ? Number(position) : /end of JSON input/.test(reason) ? text.length : unexpectedTokenOffset(reason, text);
    // V8 quotes the surrounding text of an unexpected token ('Unexpected token ..., "<text>" is not valid JSON', with
    // `...` before or after the quote where it cut a longer text); that text could hold a secret, so it is cut off,
    // and the SyntaxError is not kept as `cause`, which logs would print.
    const cleaned = reason
      .replace(/,\s*(?:\.\.\.)?".*"(?:\.\.\.)? is not valid JSON$/s, '')
      // A letter or digit as the token is the first of a bare word, perhaps a PIN: the excerpt shows where, masked.
      .replace(/^Unexpected token '[^\s"{}[\]:,/*]'/, 'Unexpected word')
      .replace(/ (?:in JSON )?at position \d+.*$/s, '')
      // biome-ignore lint/suspicious/noControlCharactersInRegex: escaping control characters is what this line is for
      .replace(/[\u0000-\u001f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
      .replace(/^./, (c) => c.toLowerCase());
    const at = offset === undefined ? undefined : lineColumn(text, offset);
    const where = at ? ` at line ${at.line}, column ${at.column} near '${maskedExcerpt(text, offset!)}'` : '';
    throw new ConfigError(file, '', `invalid JSON${where}: ${cleaned}; expected plain JSON (no comments, no trailing commas)`);
  }
  const tooDeep = deeperThan(text, MAX_DEPTH);
  if (tooDeep !== undefined) {
    const at = lineColumn(text, tooDeep);
    throw new ConfigError(file, '', `nested deeper than ${MAX_DEPTH} arrays and objects at line ${at.line}, column ${at.column}; no setting is`);
  }
  // JSON.parse kept the last of two equal keys and dropped the other: half a file merged by hand ran unsaid.
  const duplicate = firstDuplicateKey(text);
  if (duplicate !== undefined) {
    const at = lineColumn(text, duplicate.offset);
    const first = lineColumn(text, duplicate.firstOffset);
    const masked = duplicate.maskedLength === undefined ? '' : ` (a key of ${duplicate.maskedLength} characters, not quoted: it could be a secret)`;
    throw new ConfigError(
      file,
      duplicate.path,
      `duplicate key at line ${at.line}, column ${at.column} (first at line ${first.line}, column ${first.column})${masked}; JSON keeps only the last one: keep one`,
    );
  }
  return parsed;
}
