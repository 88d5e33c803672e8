/**
 * Strict HTTP/1.1 framing for the fuzz's checks (test/abuse-fuzz-h1.test.ts):
 * the requests an origin received and the answers a client received, split
 * by RFC 9112 §6.3 and nothing more lenient. A byte stream that does not
 * split into whole messages this way is a desynchronised one: that is what
 * these parsers exist to notice, so they accept no obs-fold, bare CR or LF,
 * control byte, or conflicting framing, all of which the proxy must never send.
 */

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// RFC 9110 §5.5: field values are VCHAR, obs-text, SP and HTAB.
const VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

export interface Message {
  readonly start: string;
  /** Lower-case names. */
  readonly headers: ReadonlyMap<string, readonly string[]>;
  readonly body: string;
}

type Step = { readonly message: Message; readonly length: number } | { readonly error: string } | undefined;

/** The head at the start of `buf` (its start line and fields), or undefined while incomplete. */
function head(buf: string): { start: string; headers: Map<string, string[]>; length: number } | { error: string } | undefined {
  const end = buf.indexOf('\r\n\r\n');
  if (end === -1) return /\n(?<!\r\n)|\r(?!\n|$)/.test(buf) ? { error: `a bare CR or LF in a head: ${JSON.stringify(buf.slice(0, 200))}` } : undefined;
  const lines = buf.slice(0, end).split('\r\n');
  const headers = new Map<string, string[]>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (colon <= 0 || !TOKEN.test(name) || !VALUE.test(value)) return { error: `a bad field line ${JSON.stringify(line.slice(0, 200))}` };
    headers.set(name, [...(headers.get(name) ?? []), value]);
  }
  if (/[\r\n]/.test(lines.join(''))) return { error: 'a bare CR or LF in a head' };
  return { start: lines[0]!, headers, length: end + 4 };
}

/** The body framing of a head (RFC 9112 §6.3): chunked, a length, or (for answers) to the close. */
function framing(headers: Map<string, string[]>): { chunked: true } | { length: number } | { error: string } | undefined {
  const te = headers.get('transfer-encoding');
  const cl = headers.get('content-length');
  if (te !== undefined && cl !== undefined) return { error: 'both Transfer-Encoding and Content-Length' };
  if (te !== undefined) return te.length === 1 && te[0]!.toLowerCase() === 'chunked' ? { chunked: true } : { error: `Transfer-Encoding ${JSON.stringify(te)}` };
  if (cl === undefined) return undefined;
  if (cl.length !== 1 || !/^\d{1,15}$/.test(cl[0]!)) return { error: `Content-Length ${JSON.stringify(cl)}` };
  return { length: Number(cl[0]) };
}

/** A chunked body at `at` (no extensions, no trailers: the proxy sends neither), or undefined while incomplete. */
function chunkedBody(buf: string, at: number): { body: string; end: number } | { error: string } | undefined {
  let body = '';
  for (;;) {
    const eol = buf.indexOf('\r\n', at);
    if (eol === -1) return buf.length - at > 20 ? { error: 'a chunk size line over 20 bytes' } : undefined;
    const line = buf.slice(at, eol);
    if (!/^[0-9a-fA-F]{1,15}$/.test(line)) return { error: `a chunk size ${JSON.stringify(line)}` };
    const size = Number.parseInt(line, 16);
    if (size === 0) {
      if (buf.length < eol + 4) return undefined;
      return buf.startsWith('\r\n', eol + 2) ? { body, end: eol + 4 } : { error: 'trailers or no CRLF after the last chunk' };
    }
    if (buf.length < eol + 2 + size + 2) return undefined;
    if (!buf.startsWith('\r\n', eol + 2 + size)) return { error: 'no CRLF after chunk data' };
    body += buf.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

/** The first request in `buf`, strictly as an origin must be able to read it. */
export function nextRequest(buf: string): Step {
  const h = head(buf);
  if (h === undefined || 'error' in h) return h;
  if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e]+ HTTP\/1\.1$/.test(h.start)) return { error: `a request line ${JSON.stringify(h.start.slice(0, 200))}` };
  if (h.headers.get('host')?.length !== 1) return { error: 'not one Host' };
  const f = framing(h.headers);
  if (f !== undefined && 'error' in f) return f;
  if (f === undefined || 'length' in f) {
    const length = f?.length ?? 0;
    if (buf.length < h.length + length) return undefined;
    return { message: { start: h.start, headers: h.headers, body: buf.slice(h.length, h.length + length) }, length: h.length + length };
  }
  const b = chunkedBody(buf, h.length);
  if (b === undefined || 'error' in b) return b;
  return { message: { start: h.start, headers: h.headers, body: b.body }, length: b.end };
}

/**
 * The first answer in `buf`; `bodiless(head, after)`: it answers a HEAD (`after`: the bytes behind its head); `closed`:
 * nothing more will come (a body read to the close ends there).
 */
export function nextAnswer(buf: string, bodiless: (head: Message, after: string) => boolean, closed: boolean): Step {
  const h = head(buf);
  if (h === undefined || 'error' in h) return h;
  const status = /^HTTP\/1\.1 (\d{3}) [\t\x20-\x7e]*$/.exec(h.start);
  if (status === null) return { error: `a status line ${JSON.stringify(h.start.slice(0, 200))}` };
  const code = Number(status[1]);
  const bare = { start: h.start, headers: h.headers, body: '' };
  if (code < 200 || code === 204 || code === 304 || bodiless(bare, buf.slice(h.length))) return { message: bare, length: h.length };
  const f = framing(h.headers);
  if (f !== undefined && 'error' in f) return f;
  if (f === undefined) return closed ? { message: { ...bare, body: buf.slice(h.length) }, length: buf.length } : undefined;
  if ('length' in f)
    return buf.length < h.length + f.length ? undefined : { message: { ...bare, body: buf.slice(h.length, h.length + f.length) }, length: h.length + f.length };
  const b = chunkedBody(buf, h.length);
  if (b === undefined || 'error' in b) return b;
  return { message: { ...bare, body: b.body }, length: b.end };
}

/** All whole messages in `buf` by `next`, what is left, and the first error. */
export function splitAll(buf: string, next: (rest: string) => Step): { messages: Message[]; rest: string; error?: string } {
  const messages: Message[] = [];
  let rest = buf;
  for (;;) {
    if (rest === '') return { messages, rest };
    const step = next(rest);
    if (step === undefined) return { messages, rest };
    if ('error' in step) return { messages, rest, error: step.error };
    messages.push(step.message);
    rest = rest.slice(step.length);
  }
}
