/**
 * Seeded, mutational HTTP/1.1 answers of a hostile origin, for the origin
 * fuzz (test/abuse-fuzz-origin.test.ts). Each answer starts valid (status,
 * a Content-Type, the request's unique marker in `x-marker` and in its body,
 * framed by Content-Length, chunked or the connection's close; RFC 9112
 * §6.3) and takes none to three mutations: interim floods (100, 102, 103,
 * RFC 9110 §15.2), odd versions and codes, 204/304 and HEAD answers with
 * content, an unasked 101, duplicate or conflicting Content-Length,
 * Transfer-Encoding with it or odd, bad chunk sizes, extensions and
 * trailers, obs-fold, CTL/NUL/bare CR or LF in fields, huge or many fields,
 * Connection close/keep-alive/upgrade, a second (smuggled) answer glued to
 * its end, a cut (FIN or RST) at a random byte. It is written in random
 * pieces with small delays.
 *
 * With each answer come what the test checks it against: the answer a client
 * must get when the origin's was valid and whole (`expect`), whether it must
 * get the proxy's own 502 instead (`refused`: a status outside 100–599, RFC
 * 9110 §15), and why the origin connection may carry no further request
 * (`poison`: framing that left bytes unaccounted for, or a close the answer
 * announced, in its head or its trailers).
 */
import { prng } from './prng.js';

export interface OriginAnswer {
  /** Everything the origin writes for the request: the answer, then any bytes after it. */
  readonly bytes: string;
  /** Write boundaries, ascending, inside `bytes` (never between the answer's end and bytes glued after it). */
  readonly splits: readonly number[];
  /** Pause between two pieces, ms. */
  readonly delayMs: number;
  /** The origin writes `bytes` up to `at`, then ends (FIN) or resets its connection. */
  readonly cut: { readonly at: number; readonly how: 'fin' | 'rst' } | undefined;
  /** The origin closes its connection once it has written `bytes` (a body read to the close, Connection: close, HTTP/1.0). */
  readonly closes: boolean;
  /** The final answer's body runs to the close (no Content-Length, no Transfer-Encoding): a FIN in it ends it whole. */
  readonly toClose: boolean;
  /** Why no request may follow this answer on its origin connection; undefined when one may. */
  readonly poison: string | undefined;
  /** The status line's code is three digits outside 100–599: the client must get the proxy's 502, never that status. */
  readonly refused: boolean;
  /** What the client must get (status; body, '' for HEAD) when the answer is valid and whole; undefined when it is not. */
  readonly expect: { readonly status: number; readonly body: string } | undefined;
  /** The mutations applied, for the reports. */
  readonly notes: readonly string[];
}

/** The second answer glued behind a first one: its marker must never reach a client. */
export const SMUGGLED = 'HTTP/1.1 200 OK\r\nx-marker: SMUGGLED\r\ncontent-length: 8\r\n\r\nSMUGGLED';

const REASONS: Record<number, string> = {
  200: 'OK',
  201: 'Created',
  204: 'No Content',
  206: 'Partial Content',
  304: 'Not Modified',
  404: 'Not Found',
  500: 'Oops',
};

/** A 32-bit seed from the parts that name an answer. */
function mix(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) h = Math.imul(h ^ (p >>> 0), 0x01000193) ^ (h >>> 13);
  return h >>> 0;
}

export function originAnswer(seed: number, c: number, request: number, h2: boolean, method: string, marker: string): OriginAnswer {
  const r = prng(mix(seed, c, request, h2 ? 2 : 1));
  const int = (n: number): number => Math.floor(r() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const notes: string[] = [];
  let status = pick([200, 200, 200, 201, 206, 404, 500]);
  /** The status line, given the final status. */
  let statusLine: ((code: number) => string) | undefined;
  let oddStatus = false;
  let oddCode = '';
  let framing = pick(['length', 'length', 'chunked', 'close'] as const);
  let body = `body-${marker}-${'x'.repeat(int(40))}${r() < 0.1 ? 'y'.repeat(20_000 + int(50_000)) : ''}`;
  const fields: string[] = ['Content-Type: text/plain', `X-Marker: ${marker}`];
  let framingFields: string[] | undefined;
  let interim = '';
  let chunks: string | undefined;
  let after = '';
  let eol = '\r\n';
  let valid = true;
  let closes = false;
  let poison: string | undefined;
  /** Why the framing fields, or the chunks, leave the connection unusable: counted only when the answer ends up with them. */
  let framingPoison: string | undefined;
  let chunksPoison: string | undefined;
  let bodyless = method === 'HEAD';
  const bad = (why: string): void => {
    valid = false;
    notes.push(why);
  };
  const benign = (why: string): void => void notes.push(why);
  const poisoned = (why: string): void => {
    poison ??= why;
    if (!notes.includes(why)) notes.push(why);
  };

  const mutations: (() => void)[] = [
    () => {
      const n = 1 + int(r() < 0.3 ? 200 : 5);
      const code = pick([100, 102, 103]);
      interim += `HTTP/1.1 ${code} Interim\r\n${code === 103 ? 'Link: </a.css>; rel=preload\r\n' : ''}\r\n`.repeat(n);
      benign(`${n} x ${code} first`);
    },
    () => {
      const reasonless = r() < 0.5;
      statusLine = (code) => `HTTP/1.1 ${code}${reasonless ? ' ' : ''}`;
      oddStatus = false;
      (reasonless ? benign : bad)(`status line ${JSON.stringify(statusLine(status))}`);
    },
    () => {
      const v = pick(['HTTP/1.0', 'HTTP/1.2', 'HTTP/2.0', 'HTTP/0.9', 'http/1.1', 'HTTP/1.1 ', 'HTTP/11', 'ICY']);
      statusLine = (code) => `${v} ${code} ${REASONS[code] ?? 'X'}`;
      oddStatus = false;
      if (v === 'HTTP/1.0') {
        closes = true;
        benign('HTTP/1.0');
      }
      // A higher minor version is read as the highest one implemented (RFC 9112 §2.3): HTTP/1.1.
      else if (v === 'HTTP/1.2') benign('HTTP/1.2');
      else bad(`version ${v}`);
    },
    () => {
      // Not on a 204 or 304 (below): what follows its head would be read as content again.
      if (status === 204 || status === 304) return;
      const code = pick(['999', '600', '099', '1000', '20', '2x0', '-200']);
      statusLine = () => `HTTP/1.1 ${code} Odd`;
      oddStatus = true;
      oddCode = code;
      bad(`status ${code}`);
    },
    () => {
      if (oddStatus) return;
      status = pick([204, 304]);
      // A 304 may carry its 200's length (RFC 9110 §8.6), one field like any other answer's.
      if (r() < 0.5) framingFields ??= [`Content-Length: ${body.length}`];
      after = body;
      bodyless = true;
      if (method !== 'HEAD') poisoned(`a ${status} with content`);
    },
    () => {
      interim += `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello`;
      bad('an unasked 101');
      poisoned('an unasked 101');
    },
    () => {
      interim += `HTTP/1.1 103 Early\r\nContent-Length: 5\r\n\r\nhello`;
      bad('a 103 with content');
      poisoned('a 103 with content');
    },
    () => {
      const n = body.length;
      const cl = pick([
        [`Content-Length: ${n}`, `Content-Length: ${n}`],
        [`Content-Length: ${n}`, `Content-Length: ${n + 1}`],
        [`Content-Length: ${n}, ${n}`],
        [`Content-Length: ${n}, ${n + 3}`],
        [`Content-Length: +${n}`],
        [`Content-Length: 0x${n.toString(16)}`],
        ['Content-Length: -1'],
        ['Content-Length: 99999999999999999999'],
        [`Content-Length: ${n} `],
        [`Content-Length: ${n}x`],
        [`Content-Length: ${Math.max(0, n - 5)}`],
      ]);
      framingFields = cl;
      framing = 'length';
      framingPoison = undefined;
      if (cl[0] === `Content-Length: ${Math.max(0, n - 5)}`) {
        after = body.slice(n - 5);
        body = body.slice(0, n - 5);
        poisoned('a Content-Length short of the body');
      } else if (cl.length === 2 && cl[0] === cl[1]) bad('two equal Content-Length');
      else if (cl[0] === `Content-Length: ${n} `) benign('Content-Length with a trailing space');
      else {
        bad(`Content-Length ${JSON.stringify(cl)}`);
        framingPoison = 'a bad Content-Length';
      }
    },
    () => {
      framingFields = pick([
        ['Transfer-Encoding: chunked', `Content-Length: ${body.length}`],
        [`Content-Length: 3`, 'Transfer-Encoding: chunked'],
        ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked'],
        ['Transfer-Encoding: chunked, identity'],
        ['Transfer-Encoding: identity'],
        ['Transfer-Encoding: chunked\x0b'],
        ['Transfer-Encoding : chunked'],
        ['Transfer-Encoding: xchunked'],
        ['Transfer-Encoding: CHUNKED'],
      ]);
      framing = 'chunked';
      framingPoison = undefined;
      if (framingFields[0] === 'Transfer-Encoding: CHUNKED') benign('TE CHUNKED');
      else {
        bad(`framing ${JSON.stringify(framingFields)}`);
        framingPoison = 'odd Transfer-Encoding';
      }
    },
    () => {
      framing = 'chunked';
      const size = body.length.toString(16);
      const [text, ok] = pick([
        [`zz\r\n${body}\r\n0\r\n\r\n`, false],
        [`-1\r\n${body}\r\n0\r\n\r\n`, false],
        [`0x${size}\r\n${body}\r\n0\r\n\r\n`, false],
        [` ${size}\r\n${body}\r\n0\r\n\r\n`, false],
        [`${size} \r\n${body}\r\n0\r\n\r\n`, false],
        [`ffffffffffffffffff\r\n${body}\r\n0\r\n\r\n`, false],
        [`${(body.length + 7).toString(16)}\r\n${body}\r\n0\r\n\r\n`, false],
        [`${size}\r\n${body}0\r\n\r\n`, false],
        [`${size}\n${body}\n0\n\n`, false],
        [`${size};a=b;c="d e"\r\n${body}\r\n0;z\r\n\r\n`, true],
        [`${size};a=\x01\r\n${body}\r\n0\r\n\r\n`, false],
        [`${size};a=b\nc\r\n${body}\r\n0\r\n\r\n`, false],
        [`${size}\r\n${body}\r\n0\r\nX-Trailer: fine\r\n\r\n`, true],
        [`${size}\r\n${body}\r\n0\r\nX-Trailer: bad\x00\r\n\r\n`, false],
        [`${size}\r\n${body}\r\n0\r\nno colon\r\n\r\n`, false],
        [`${size}\r\n${body}\r\n0\r\n`, false],
        [`${size}\r\n${body}\r\n`, false],
      ] as const);
      chunks = text;
      chunksPoison = undefined;
      if (ok) benign(`chunks ${JSON.stringify(text.slice(0, 40))}`);
      else {
        bad(`chunks ${JSON.stringify(text.slice(0, 60))}`);
        chunksPoison = 'bad chunks';
      }
    },
    () => {
      const line = pick([
        'X-Folded: a\r\n folded',
        'X-Folded: a\r\n\tfolded',
        'X-Sp : v',
        'X A: v',
        'X-\x01: v',
        'X-Nul: a\x00b',
        'X-Cr: a\rb',
        'X-Lf: a\nX-Injected: yes',
        'X-Del: a\x7fb',
        ': empty-name',
        'no colon at all',
        ' X-Leading: space',
        'X-Obs: caf\xe9',
      ]);
      fields.splice(int(fields.length + 1), 0, line);
      (line === 'X-Obs: caf\xe9' ? benign : bad)(`field ${JSON.stringify(line)}`);
    },
    () => {
      eol = '\n';
      bad('LF-only head');
    },
    () => {
      const n = pick([20, 300, 3000]);
      for (let k = 0; k < n; k++) fields.push(`X-F${k}: v${k}`);
      (n < 1000 ? benign : bad)(`${n} fields`);
    },
    () => {
      const n = pick([8_000, 15_000, 70_000]);
      fields.push(`X-Big: ${'b'.repeat(n)}`);
      bad(`a ${n}-byte field`);
    },
    () => {
      const c = pick(['close', 'keep-alive', 'Close', 'close, keep-alive', 'keep-alive, close', 'upgrade']);
      fields.push(`Connection: ${c}`);
      if (c === 'upgrade') fields.push('Upgrade: h2c');
      if (/close/i.test(c)) closes = true;
      benign(`Connection: ${c}`);
    },
    () => {
      // Trailers (RFC 9110 §6.5), declared, some of them what no trailer section may hold or HTTP/2 cannot carry.
      framing = 'chunked';
      const fieldsOf = pick([
        ['X-T: fine'],
        ['X-T: a', 'X-T: b', 'X-U: c'],
        ['Connection: close', 'X-T: v'],
        ['Transfer-Encoding: chunked'],
        ['Content-Length: 5'],
        ['TE: trailers', 'Keep-Alive: timeout=5'],
        ['X-T: a\x01b'],
        [`X-Big: ${'t'.repeat(20_000)}`],
        Array.from({ length: 300 }, (_, k) => `X-T${k}: ${k}`),
      ]);
      fields.push(`Trailer: ${fieldsOf.map((f) => f.slice(0, f.indexOf(':'))).join(', ')}`);
      chunksPoison = undefined;
      chunks = `${body.length.toString(16)}\r\n${body}\r\n0\r\n${fieldsOf.map((f) => `${f}\r\n`).join('')}\r\n`;
      // Framing and connection fields have no place in trailers (RFC 9110 §6.5.1): they are not passed on, and the
      // answer is whole; a Connection: close there closes that origin connection after it. A CTL, or a trailer section
      // past the parser's head bound, is refused.
      const odd = fieldsOf.some((f) => f.includes('\x01') || f.startsWith('X-Big'));
      (odd ? bad : benign)(`trailers ${JSON.stringify(fieldsOf.slice(0, 3))}`);
      if (fieldsOf[0] === 'Connection: close') chunksPoison = 'Connection: close in the trailers';
    },
    () => {
      if (framing === 'close') return;
      after += SMUGGLED;
      poisoned('a second answer glued on');
    },
  ];
  const count = r() < 0.35 ? 0 : r() < 0.7 ? 1 : 2 + int(2);
  for (let k = 0; k < count; k++) pick(mutations)();

  if (method === 'HEAD' && !bodyless) bodyless = true;
  if (framing === 'close' && framingFields === undefined) closes = true;
  const framingLines =
    framingFields ??
    (bodyless && status !== 204 && status !== 304
      ? [`Content-Length: ${body.length}`]
      : framing === 'length' && !(status === 204 || status === 304)
        ? [`Content-Length: ${body.length}`]
        : framing === 'chunked' && !(status === 204 || status === 304)
          ? ['Transfer-Encoding: chunked']
          : []);
  const encoded = framingLines.some((l) => /chunked/i.test(l)) ? (chunks ?? `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`) : body;
  if (framingFields !== undefined && framingPoison !== undefined) poisoned(framingPoison);
  if (chunks !== undefined && encoded === chunks && chunksPoison !== undefined && !bodyless) poisoned(chunksPoison);
  const head = [statusLine?.(status) ?? `HTTP/1.1 ${status} ${REASONS[status] ?? 'X'}`, ...fields, ...framingLines].join(eol) + eol + eol;
  // A HEAD's answer (and a 204's, a 304's) ends with its head: content sent anyway is bytes after it.
  let answer = `${interim}${head}`;
  if (bodyless) {
    if (method === 'HEAD' && r() < 0.4 && status !== 204 && status !== 304) {
      after = encoded + after;
      poisoned('content after a HEAD answer');
    }
  } else answer += encoded;
  if (after !== '') poisoned('bytes after the answer');
  const bytes = answer + after;
  const end = answer.length;
  const splits: number[] = [];
  const pieces = r() < 0.5 ? 0 : 1 + int(6);
  for (let k = 0; k < pieces; k++) splits.push(1 + int(end - 1));
  splits.sort((a, b) => a - b);
  let cut: OriginAnswer['cut'];
  if (r() < 0.15) {
    cut = { at: int(end), how: r() < 0.5 ? 'fin' : 'rst' };
    bad(`cut (${cut.how}) at ${cut.at} of ${end}`);
  }
  return {
    bytes,
    splits: [...new Set(splits)],
    delayMs: int(15),
    cut,
    closes,
    toClose: !bodyless && framingLines.length === 0 && status !== 204 && status !== 304,
    poison,
    refused: oddStatus && /^\d{3}$/.test(oddCode) && (Number(oddCode) < 100 || Number(oddCode) > 599),
    expect: valid ? { status, body: bodyless ? '' : body } : undefined,
    notes,
  };
}
