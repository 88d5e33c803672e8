/**
 * Seeded random HTTP/1.1 requests for the client → proxy → origin fuzz
 * (test/abuse-fuzz-h1.test.ts): a small grammar of requests (method, target
 * form, version, headers, framing, body) and mutations of the shapes request
 * smuggling and desynchronisation are made of (RFC 9112 §6.1, §6.3, §7.1,
 * §5.2 obs-fold, §2.2 bare CR/LF; conflicting Content-Length and
 * Transfer-Encoding; chunk sizes and extensions, some past Node's 16 KiB
 * bound on them; control bytes; absolute-, authority- and asterisk-form
 * targets; Upgrade: h2c with HTTP2-Settings; HTTP/1.0 keep-alive), several
 * pipelined on one connection, with the points at which the bytes are split
 * into writes (TLS records) and, sometimes, at which the client aborts.
 *
 * Every choice comes from one PRNG seeded per case, so a case number and a
 * seed give the same bytes again: that is how a break is reduced and replayed.
 */
import { prng } from './prng.js';

type Rng = () => number;
/** How often this connection's requests are mutated (0..1), chosen per connection: mostly valid traffic pipelines deeper. */
let heat = 1;
const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const chance = (r: Rng, p: number): boolean => r() < p;
/** A mutation, `p` scaled by the connection's heat. */
const odd = (r: Rng, p: number): boolean => r() < p * heat;
/** The first of `xs` (the valid form), or, for a mutation, any of them. */
const usual = <T>(r: Rng, p: number, xs: readonly T[]): T => (odd(r, p) ? pick(r, xs) : xs[0]!);
const int = (r: Rng, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

/** One connection's worth of bytes: the requests as written, where to split them, and where (if anywhere) to abort. */
export interface FuzzConnection {
  readonly tags: readonly string[];
  /** latin1 */
  readonly bytes: string;
  /** Ascending offsets at which a write ends (each write its own TLS record). */
  readonly splits: readonly number[];
  /** The client destroys its connection after writing this many bytes. */
  readonly abortAt: number | undefined;
}

const METHODS = ['GET', 'GET', 'GET', 'POST', 'POST', 'POST', 'PUT', 'HEAD', 'HEAD', 'OPTIONS', 'DELETE', 'PATCH', 'TRACE'];
const ODD_METHODS = ['CONNECT', 'get', 'FOO', 'G ET', 'PRI'];
const VERSIONS = ['HTTP/1.1', 'HTTP/1.0', 'HTTP/1.0', 'HTTP/1.2', 'HTTP/2.0', 'HTTP/0.9', 'http/1.1', 'HTTP/1.1 ', 'HTTP/11'];
const CL_FORMS = (n: number): string[] => [
  `${n}`,
  `0${n}`,
  `+${n}`,
  ` ${n}`,
  `${n} `,
  `${n}, ${n}`,
  `${n},${n + 1}`,
  `${n + 1}`,
  `${Math.max(0, n - 1)}`,
  '-1',
  `0x${n.toString(16)}`,
  '99999999999999999999',
  '18446744073709551616',
  `${n}e0`,
  '',
];
const TE_FORMS = [
  'chunked',
  'Chunked',
  'CHUNKED',
  ' chunked',
  'chunked ',
  '\tchunked',
  'gzip, chunked',
  'chunked, gzip',
  'chunked, chunked',
  'identity',
  'identity, chunked',
  'xchunked',
  'chunked;q=1',
  'chunk',
  '"chunked"',
  'chunked\x0b',
];
const CONNECTIONS = [
  'keep-alive',
  'close',
  'Close',
  'Upgrade',
  'upgrade, keep-alive',
  'keep-alive, x-fuzz',
  'close, close',
  'te',
  'content-length',
  'transfer-encoding',
  'host',
];

/** A chunked body of `data`, its framing mutated now and then. */
function chunked(r: Rng, data: string): string {
  const parts: string[] = [];
  let at = 0;
  while (at < data.length) {
    const n = Math.min(data.length - at, int(r, 1, 40));
    let size = n.toString(16);
    if (odd(r, 0.08))
      size = pick(r, [
        `000${size}`,
        `0x${size}`,
        size.toUpperCase(),
        `${size} `,
        ` ${size}`,
        `-${size}`,
        'ffffffffffffffffff',
        '1'.padEnd(20, '0'),
        `${(n + 1).toString(16)}`,
        `${size}\t`,
      ]);
    if (odd(r, 0.08))
      size += pick(r, [';a=b', ';a="x y"', ';', ' ;a', ';a=b;c', `;${'e'.repeat(300)}`, ';a=\x01', `;${'e'.repeat(17_000)}`, ';a=b'.repeat(4100), ';a="\r\n"']);
    const eol = odd(r, 0.04) ? pick(r, ['\n', '\r', '']) : '\r\n';
    parts.push(`${size}\r\n${data.slice(at, at + n)}${eol}`);
    at += n;
  }
  let last = odd(r, 0.06) ? pick(r, ['00', '0x0', '0;a=b', '0 ']) : '0';
  last += '\r\n';
  if (odd(r, 0.15)) last += pick(r, ['X-Trailer: 1\r\n', 'Content-Length: 5\r\n', 'Transfer-Encoding: chunked\r\n', 'Bad Trailer\r\n', 'X-T:\x00\r\n']);
  last += odd(r, 0.05) ? '' : '\r\n';
  return parts.join('') + last;
}

/** A body: filler, or a whole request meant to be read as one (a smuggling attempt), tagged `smuggled`. */
function bodyText(r: Rng, host: string, smuggled: string): string {
  if (chance(r, 0.35)) return `GET /${smuggled} HTTP/1.1\r\nHost: ${host}\r\nX-Fuzz: ${smuggled}\r\n\r\n`;
  return 'b'.repeat(int(r, 0, 60));
}

/** Absolute-form targets (RFC 9112 §3.2.2) other than the plain one: case, ports, userinfo, another host, no path. */
const ABSOLUTE = (host: string, path: string): string[] => [
  `HTTP://${host.toUpperCase()}${path}`,
  `https://${host}:443${path}`,
  `http://${host}:99999${path}`,
  `http://user@${host}${path}`,
  `http://${host}`,
  `http://${host}?${path}`,
  `http://other.lab.test${path}`,
  `http://[::1]${path}`,
  `ftp://${host}${path}`,
  `//${host}${path}`,
];

function target(r: Rng, host: string, tag: string, method: string): string {
  const path = `/${tag}`;
  if (!odd(r, 0.4)) return path;
  switch (int(r, 0, 11)) {
    case 0:
      return `http://${host}${path}`;
    case 1:
      return `https://other.lab.test${path}`;
    case 2:
      return method === 'OPTIONS' || chance(r, 0.3) ? '*' : path;
    case 3:
      return `${host}:443`;
    case 4:
      return `${path}#frag`;
    case 5:
      return `${path}?q=%41%zz%00&x=${'%'}`;
    case 6:
      return `${path}/../..//%2e%2e/x`;
    case 7:
      return `${path}\xff\x7f`;
    case 8:
      return `${path}/${'a'.repeat(int(r, 100, 3000))}`;
    case 9:
      return `${path}?a b`;
    case 10:
      return pick(r, ABSOLUTE(host, path));
    default:
      return path;
  }
}

/** A header line, mutated now and then (RFC 9112 §5: whitespace before the colon, obs-fold, bare CR/LF, control bytes). */
function headerLine(r: Rng, name: string, value: string): string {
  if (!odd(r, 0.07)) return `${name}: ${value}\r\n`;
  switch (int(r, 0, 11)) {
    case 0:
      return `${name} : ${value}\r\n`;
    case 1:
      return `${name}\t: ${value}\r\n`;
    case 2:
      return `${name}: ${value}\r\n folded\r\n`;
    case 3:
      return `${name}: ${value}\n`;
    case 4:
      return `${name}: ${value}\r`;
    case 5:
      return `${name}: ${value}\x00\r\n`;
    case 6:
      return `${name}: ${pick(r, ['\x01', '\x7f', '\x0b', '\x0c', '\x1b'])}${value}\r\n`;
    case 7:
      return `${name.toUpperCase()}:${value}\r\n`;
    case 8:
      return `${name}:\t${value}\t\r\n`;
    case 9:
      return `: ${value}\r\n`;
    case 10:
      return `${name}${value}\r\n`;
    default:
      return `${name.slice(0, 1)}\x00${name.slice(1)}: ${value}\r\n`;
  }
}

/** One request of case `c`, index `i`, for `host`. */
function request(r: Rng, c: number, i: number, host: string, last: boolean): { tag: string; text: string } {
  const tag = `c${c}r${i}`;
  const method = odd(r, 0.1) ? pick(r, ODD_METHODS) : pick(r, METHODS);
  const version = usual(r, 0.25, VERSIONS);
  const headers: [string, string][] = [];
  if (!odd(r, 0.07))
    headers.push(['Host', !odd(r, 0.1) ? host : pick(r, [`${host}:443`, `${host}.`, host.toUpperCase(), 'other.lab.test', '', `${host} x`, `${host}@evil`])]);
  if (odd(r, 0.04)) headers.push(['Host', pick(r, [host, 'other.lab.test'])]);
  headers.push(['X-Fuzz', tag]);
  if (chance(r, 0.2)) headers.push(['Connection', pick(r, CONNECTIONS)]);
  if (chance(r, 0.08)) headers.push(['Upgrade', pick(r, ['websocket', 'h2c', 'websocket, h2c', 'HTTP/2.0'])]);
  // RFC 7540 §3.2's upgrade to cleartext HTTP/2 (obsoleted by RFC 9113, and never over TLS).
  if (chance(r, 0.03)) headers.push(['Upgrade', 'h2c'], ['HTTP2-Settings', 'AAMAAABkAAQCAAAAAAIAAAAA'], ['Connection', 'Upgrade, HTTP2-Settings']);
  // HTTP/1.0 keeps its connection only when asked (RFC 9112 §9.3).
  if (version === 'HTTP/1.0' && chance(r, 0.5)) headers.push(['Connection', 'keep-alive']);
  if (chance(r, 0.06)) headers.push(['Expect', pick(r, ['100-continue', '100-Continue', 'foo'])]);
  if (chance(r, 0.04)) headers.push(['TE', pick(r, ['trailers', 'gzip', 'chunked'])]);
  if (chance(r, 0.05)) headers.push(['Keep-Alive', 'timeout=5']);
  if (last && chance(r, 0.3)) headers.push(['Connection', 'close']);
  const data = bodyText(r, host, `c${c}s${i}`);
  let body = '';
  const framing = int(r, 0, 9);
  if (framing <= 2) {
    // No body framing: a body written anyway is the next "request".
    if (odd(r, 0.2)) body = data;
  } else if (framing <= 5) {
    headers.push(['Content-Length', usual(r, 0.3, CL_FORMS(data.length))]);
    if (odd(r, 0.1)) headers.push(['Content-Length', pick(r, CL_FORMS(data.length))]);
    if (odd(r, 0.12)) headers.push(['Transfer-Encoding', pick(r, TE_FORMS)]);
    body = !odd(r, 0.3) ? data : chunked(r, data);
  } else {
    headers.push(['Transfer-Encoding', usual(r, 0.3, TE_FORMS)]);
    if (odd(r, 0.1)) headers.push(['Transfer-Encoding', pick(r, TE_FORMS)]);
    if (odd(r, 0.15)) headers.push(['Content-Length', pick(r, CL_FORMS(data.length))]);
    body = !odd(r, 0.1) ? chunked(r, data) : data;
  }
  // Shuffle the headers a little: order is no part of framing.
  if (chance(r, 0.3)) headers.reverse();
  let head = `${method} ${target(r, host, tag, method)} ${version}\r\n`;
  if (odd(r, 0.03)) head = `\r\n${head}`;
  for (const [name, value] of headers) head += headerLine(r, name, value);
  let text = `${head}${odd(r, 0.03) ? '' : '\r\n'}${body}`;
  // Now and then a byte goes missing, doubles, or an odd one is inserted (missing or extra CRLFs, stray NUL).
  if (odd(r, 0.08)) {
    const at = int(r, 0, text.length);
    const what = int(r, 0, 3);
    if (what === 0) text = text.slice(0, at) + text.slice(at + 1);
    else if (what === 1) text = text.slice(0, at) + text.charAt(at) + text.slice(at);
    else text = text.slice(0, at) + pick(r, ['\r', '\n', '\r\n', '\x00', ' ']) + text.slice(at);
  }
  return { tag, text };
}

/** Connection `c` of a run seeded `seed`, for `host`. */
export function fuzzConnection(seed: number, c: number, host: string): FuzzConnection {
  const r = prng((seed * 1_000_003 + c) >>> 0);
  heat = pick(r, [0.1, 0.3, 0.6, 1]);
  const count = int(r, 1, 4);
  const tags: string[] = [];
  let bytes = '';
  for (let i = 0; i < count; i++) {
    const one = request(r, c, i, host, i === count - 1);
    tags.push(one.tag);
    bytes += one.text;
  }
  const splits = Array.from({ length: int(r, 0, 5) }, () => int(r, 1, Math.max(1, bytes.length - 1)))
    .filter((n) => n < bytes.length)
    .sort((a, b) => a - b);
  const abortAt = chance(r, 0.1) ? int(r, 0, bytes.length) : undefined;
  return { tags, bytes, splits: [...new Set(splits)], abortAt };
}
