/**
 * Reading a config file: its text as JSON (a UTF-8 BOM dropped), with a read
 * or syntax error that names the file and, when V8 gives a position, the line
 * and column, so the operator can go straight to it. The error never quotes
 * the file's text: it could hold a secret.
 *
 * The file is read through setting-file.ts, only if it is a regular file of
 * at most MAX_CONFIG_BYTES: a config path replaced by a FIFO would block
 * open(2), and one linked to /dev/zero would be read for ever, in the process
 * that serves (a reload, SIGHUP, runs this in the cluster's primary).
 */
import { ConfigError } from './errors.js';
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

function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, Math.min(offset, text.length));
  const lastBreak = before.lastIndexOf('\n');
  return { line: before.split('\n').length, column: offset - lastBreak };
}

/** Reads and parses a JSON file; a syntax error names the file and, when V8 gives a position, the line and column. */
export function readJsonConfig(file: string): unknown {
  let text = readConfigText(file);
  // Editors on some platforms save UTF-8 with a BOM, which JSON.parse rejects.
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    const position = /at position (\d+)/.exec(reason)?.[1];
    const offset = position !== undefined ? Number(position) : /end of JSON input/.test(reason) ? text.length : undefined;
    // V8 sometimes quotes the surrounding text ('Unexpected token ..., "<text>"
    // is not valid JSON'); that text could hold a secret, so it is cut off,
    // and the SyntaxError is not kept as `cause`, which logs would print.
    const cleaned = reason
      .replace(/,\s*".*" is not valid JSON$/s, '')
      .replace(/ (?:in JSON )?at position \d+.*$/s, '')
      // biome-ignore lint/suspicious/noControlCharactersInRegex: escaping control characters is what this line is for
      .replace(/[\u0000-\u001f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
      .replace(/^./, (c) => c.toLowerCase());
    const at = offset === undefined ? undefined : lineColumn(text, offset);
    const where = at ? ` at line ${at.line}, column ${at.column}` : '';
    throw new ConfigError(file, '', `invalid JSON${where}: ${cleaned}; expected plain JSON (no comments, no trailing commas)`);
  }
}
