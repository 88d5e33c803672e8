/**
 * Seeded random HTTP/2 connections for the proxy's fuzz test
 * (test/abuse-fuzz-h2.test.ts): one case is the bytes a hostile client writes
 * on one TLS connection after ALPN h2 — the preface, then frames of every type
 * (RFC 9113 §6) with random and edge values, random flags, wrong, reused and
 * even stream ids, oversized lengths and unknown types — and the plan of each
 * stream it opened, so that the test can tell what may reach the origin: a
 * request is forwarded only from a stream whose header block was whole and
 * well-formed (§8.1-§8.3) and that the client ended, with exactly its DATA as
 * the body. Header blocks come from a small HPACK encoder (RFC 7541: static
 * and dynamic indexes, literals with and without indexing, table size
 * updates) and are mutated: pseudo-headers reordered, repeated or missing,
 * connection-specific fields, bad names and values, huge values, many fields,
 * CONNECT and extended CONNECT (RFC 8441, not offered), trailers with
 * pseudo-headers or without END_STREAM; a header block sometimes comes a byte
 * per CONTINUATION among empty ones, its end sometimes never (the
 * CONTINUATION floods of CVE-2024-27316); PRIORITY_UPDATE (RFC 9218) and
 * windows pushed past 2^31-1 by SETTINGS_INITIAL_WINDOW_SIZE (§6.9.2).
 * A mutation that RFC 9113 makes malformed marks its stream `malformed`
 * (never forwarded); one whose field is dropped or refused puts DROPPED in
 * it, which must never reach the origin. Same seed, same bytes.
 */
import { frame, hpackInt } from './h2.js';
import { prng } from './prng.js';

/** The marker in every field that must be dropped or refused, never forwarded. */
export const DROPPED = 'zz-dropped';

export interface StreamPlan {
  readonly id: number;
  /** In its :path (`/fz/<tag>`): how the origin's request names its stream. */
  readonly tag: string;
  /**
   * What makes it malformed (RFC 9113 §8.1.1), its trailers included, or a CONNECT (keyedge tunnels nothing), if
   * anything: such a stream is never forwarded.
   */
  malformed: string | undefined;
  /**
   * Its HEADERS named no new stream (§5.1.1: zero, even, or not above the last one), once the reserved bit is
   * ignored (§4.1). RFC 9113 asks for a connection error; nghttp2 (every version) ignores such a header block
   * unless it names a stream it knows closed: neither an answer nor a reset need come for it.
   */
  readonly badId: boolean;
  /** The content-length fields it sent: more than one, or one its DATA disagrees with, is malformed too (§8.1.1). */
  readonly contentLengths: readonly string[];
  /**
   * Random flags set END_HEADERS on a frame before the block's last piece: the server decodes a prefix of the block,
   * perhaps ending in a cut field (which nghttp2 drops when its name is not a valid one), so which fields it read, and
   * whether `malformed` and `contentLengths` still apply, is not known here; the rest goes in frames it refuses.
   */
  truncated: boolean;
  /** Byte offset in the case's bytes where its header block ends (END_HEADERS). */
  headersEnd: number | undefined;
  /** Byte offset where the client's END_STREAM for it ends, and the body sent before it. */
  endedAt: number | undefined;
  body: string;
  /** Reset by the client (RST_STREAM), ended or not. */
  resetByClient: boolean;
}

export interface FuzzCase {
  readonly bytes: Buffer;
  /** Where the writes are split (TLS records of random size). */
  readonly cuts: readonly number[];
  /** Where the client cuts its connection, and how; undefined: it does not. */
  readonly abort: { readonly at: number; readonly how: 'destroy' | 'reset' } | undefined;
  readonly streams: ReadonlyMap<number, StreamPlan>;
  /** Every request sent, by its tag (a reused id's too). */
  readonly plans: ReadonlyMap<string, StreamPlan>;
  /** What was sent, one line per frame or step, for a break's report. */
  readonly log: readonly string[];
}

type Field = [string, string];
const EDGE = [0, 1, 2, 100, 4095, 4096, 16_383, 16_384, 65_535, 65_536, 16_777_215, 16_777_216, 0x7fffffff, 0x80000000, 0xffffffff];
const STATIC: Readonly<Record<string, number>> = { ':authority': 1, ':method': 2, ':path': 4, ':scheme': 6, 'accept-encoding': 16, 'user-agent': 58 };

/** One connection's HPACK encoder (RFC 7541): it keeps the dynamic table the server's decoder keeps, while the encoding stays valid. */
class Hpack {
  table: Field[] = [];
  max = 4096;
  size(): number {
    return this.table.reduce((n, [a, b]) => n + 32 + a.length + b.length, 0);
  }
  evict(): void {
    while (this.size() > this.max) this.table.pop();
  }
  static str(s: string): Buffer {
    const b = Buffer.from(s, 'latin1');
    return Buffer.concat([hpackInt(7, 0, b.length), b]);
  }
  /** A field: indexed from the dynamic table when there, else a literal (new name or static name), sometimes added to the table (§6.2.1). */
  field([name, value]: Field, r: Rng): Buffer {
    const at = this.table.findIndex(([n, v]) => n === name && v === value);
    if (at !== -1 && r.chance(0.7)) return hpackInt(7, 0x80, 62 + at);
    const nameIndex = STATIC[name];
    const nameBytes = nameIndex !== undefined && r.chance(0.6) ? undefined : Hpack.str(name);
    if (r.chance(0.3)) {
      this.table.unshift([name, value]);
      this.evict();
      return Buffer.concat([hpackInt(6, 0x40, nameBytes === undefined ? nameIndex! : 0), nameBytes ?? Buffer.alloc(0), Hpack.str(value)]);
    }
    const never = r.chance(0.2) ? 0x10 : 0;
    return Buffer.concat([hpackInt(4, never, nameBytes === undefined ? nameIndex! : 0), nameBytes ?? Buffer.alloc(0), Hpack.str(value)]);
  }
  resize(max: number): Buffer {
    this.max = max;
    this.evict();
    return hpackInt(5, 0x20, max);
  }
}

class Rng {
  constructor(readonly next: () => number) {}
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  bytes(n: number): Buffer {
    return Buffer.from(Array.from({ length: n }, () => this.int(256)));
  }
}

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};

/** Bad names and values: each either resets its stream or is dropped (nghttp2 decides which, by version); none may be forwarded. */
const BAD_NAMES = [`${DROPPED} x`, `${DROPPED}:x`, `${DROPPED}\r\nx-smuggled: 1`, `${DROPPED}\0`, `${DROPPED}"`, `${DROPPED}\x7f`];
const BAD_VALUES = [`${DROPPED}\r\nx-smuggled: 1`, `${DROPPED}\n`, `${DROPPED}\r`, `${DROPPED}\0`, ` ${DROPPED}`, `${DROPPED}\t`];
/** Connection-specific fields (§8.2.2) and others that make a request malformed. */
const MALFORMING: readonly Field[] = [
  ['connection', 'close'],
  ['transfer-encoding', 'chunked'],
  ['keep-alive', '5'],
  ['upgrade', 'websocket'],
  ['proxy-connection', 'x'],
  ['te', 'gzip'],
  [':status', '200'],
  [':protocol', 'websocket'],
  [':foo', 'bar'],
  ['X-Upper', 'a'],
];
const BAD_PATHS = ['', 'x', '*', '/a b', '/a\tb', '/a\x7f', 'https://h/x', '/a#frag', '/a\r\nx: y'];
/** Trailer fields that make a request malformed (§8.1: no pseudo-headers in trailers; §8.2.2). */
const BAD_TRAILERS: readonly Field[] = [
  [':path', '/x'],
  [':status', '200'],
  [':method', 'GET'],
  ['connection', 'close'],
  ['transfer-encoding', 'chunked'],
];

/** One request's header block and its plan: well-formed, then mutated at random. */
function requestBlock(
  r: Rng,
  hpack: Hpack,
  host: string,
  tag: string,
  body: number,
): { block: Buffer; malformed: string | undefined; contentLengths: string[] } {
  const method = r.pick(['GET', 'GET', 'POST', 'PUT', 'HEAD', 'DELETE', 'OPTIONS', 'PATCH', 'FOO', 'get']);
  const pseudo: Field[] = [
    [':method', method],
    [':scheme', r.chance(0.9) ? 'https' : 'http'],
    [':path', `/fz/${tag}${r.chance(0.2) ? `?q=${r.int(1000)}` : ''}`],
    [':authority', host],
  ];
  // Pseudo-headers in any order among themselves (§8.3).
  if (r.chance(0.3)) pseudo.sort(() => r.next() - 0.5);
  const regular: Field[] = [];
  for (let i = r.int(5); i > 0; i--) regular.push([r.pick(['accept', 'user-agent', 'accept-encoding', 'x-a', 'cookie']), `v${r.int(100)}`]);
  if (body > 0 && r.chance(0.3)) regular.push(['content-length', String(body)]);
  let malformed: string | undefined;
  const mark = (why: string): void => void (malformed ??= why);
  let prefix = Buffer.alloc(0);
  for (let m = r.chance(0.5) ? 1 + r.int(3) : 0; m > 0; m--) {
    const kind = r.int(13);
    if (kind === 0) regular.push(r.pick(pseudo));
    else if (kind === 1) pseudo.push(r.pick(pseudo));
    else if (kind === 2) {
      const dropped = pseudo.splice(r.int(pseudo.length), 1)[0]!;
      // Without :authority, a host field stands for it (§8.3.1).
      if (dropped[0] === ':authority' && r.chance(0.5)) regular.push(['host', host]);
    } else if (kind === 3) {
      const f = r.pick(MALFORMING);
      mark(f[0]);
      regular.splice(r.int(regular.length + 1), 0, f);
    } else if (kind === 4) regular.push([r.pick(BAD_NAMES), 'v']);
    else if (kind === 5) regular.push(['x-bad', r.pick(BAD_VALUES)]);
    else if (kind === 6) regular.push(['x-huge', 'h'.repeat(r.pick([4096, 16_000, 17_000, 70_000]))]);
    else if (kind === 7) for (let i = r.pick([50, 127, 129, 300]); i > 0; i--) regular.push([`x-f${i}`, 'v']);
    else if (kind === 8) {
      const p = pseudo.findIndex(([n]) => n === ':path');
      if (p !== -1) {
        mark('a bad :path');
        pseudo[p] = [':path', r.pick(BAD_PATHS)];
      }
    } else if (kind === 9) {
      // Whether it disagrees with the DATA (§8.1.1) is known once the DATA is sent: the test compares.
      regular.push(['content-length', String(body + 1 + r.int(3))]);
    } else if (kind === 10) {
      // A dynamic table size update: at the block's start within SETTINGS_HEADER_TABLE_SIZE (4096) is valid; over it is not (RFC 7541 §6.3).
      const size = r.pick([0, 100, 4096, 4097, 65_536]);
      if (size > 4096) mark('a table size over the limit');
      prefix = Buffer.concat([prefix, size > 4096 ? hpackInt(5, 0x20, size) : hpack.resize(size)]);
    } else if (kind === 12) {
      // CONNECT (§8.5): :method and :authority only; extended CONNECT (RFC 8441) adds :protocol, :scheme and :path, which
      // a server takes only once it has sent SETTINGS_ENABLE_CONNECT_PROTOCOL (keyedge does not).
      mark('CONNECT');
      const p = pseudo.findIndex(([n]) => n === ':method');
      if (p !== -1) pseudo[p] = [':method', 'CONNECT'];
      if (r.chance(0.5)) pseudo.push([':protocol', 'websocket']);
      else
        for (const name of [':scheme', ':path']) {
          const at = pseudo.findIndex(([n]) => n === name);
          if (at !== -1) pseudo.splice(at, 1);
        }
    } else {
      mark('a broken HPACK representation');
      prefix = Buffer.concat([
        prefix,
        r.pick([
          hpackInt(7, 0x80, 62 + 200),
          Buffer.from([0x80]),
          Buffer.from([0x00, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff]),
          Buffer.from([0x3f, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        ]),
      ]);
    }
  }
  const fields = [...pseudo, ...regular];
  // Pseudo-headers repeated or missing (§8.3), judged on the final block: a later mutation may undo an earlier one.
  const all = [...pseudo, ...regular];
  const firstRegular = all.findIndex(([n]) => !n.startsWith(':'));
  if (firstRegular !== -1 && all.slice(firstRegular).some(([n]) => n.startsWith(':'))) mark('a pseudo-header after a regular field');
  const names = all.filter(([n]) => n.startsWith(':')).map(([n]) => n);
  if (new Set(names).size < names.length) mark('a pseudo-header twice');
  for (const name of [':method', ':scheme', ':path']) if (!names.includes(name)) mark(`no ${name}`);
  if (!names.includes(':authority') && !regular.some(([n]) => n === 'host')) mark('no :authority');
  const contentLengths = regular.filter(([n]) => n === 'content-length').map(([, v]) => v);
  return { block: Buffer.concat([prefix, ...fields.map((f) => hpack.field(f, r))]), malformed, contentLengths };
}

/** A frame header's stream id as a receiver reads it: its reserved bit ignored (RFC 9113 §4.1). */
const streamId = (id: number): number => id & 0x7fffffff;

/** How many bytes the last frame of `bytes` (frames from `start`: after the 24-byte preface, if one was sent) still lacks. */
function unfinished(bytes: Buffer, start: number): number {
  let at = start;
  while (at + 9 <= bytes.length) at += 9 + bytes.readUIntBE(at, 3);
  return at < bytes.length ? at + 9 - bytes.length + (at + 3 <= bytes.length ? bytes.readUIntBE(at, 3) : 0) : at - bytes.length;
}

/** A random HTTP/2 connection's bytes and plan, from `seed`. */
export function fuzzCase(seed: number, host: string): FuzzCase {
  const r = new Rng(prng(seed));
  const hpack = new Hpack();
  const parts: Buffer[] = [];
  const log: string[] = [];
  const streams = new Map<number, StreamPlan>();
  const plans = new Map<string, StreamPlan>();
  let offset = 0;
  let lastId = 0;
  let tagCount = 0;
  const emit = (b: Buffer, what: string): void => {
    parts.push(b);
    offset += b.length;
    log.push(what);
  };
  /** A frame, its flags sometimes random (§4.1: unknown flags are ignored; known ones change its meaning). */
  const send = (type: number, flags: number, id: number, payload: Buffer, what: string): number => {
    const f = r.chance(0.05) ? r.int(256) : flags;
    emit(frame(type, f, id, payload), `${what} type=${type} flags=${f} id=${id} len=${payload.length}`);
    return f;
  };
  const anyId = (): number =>
    r.pick([0, 1, 2, lastId, lastId + 2, lastId + 1, Math.max(1, lastId - 2), 0x7fffffff, 1 + 2 * r.int(50), r.int(2 ** 31)].filter((n) => n >= 0));
  const settings = (): void => {
    // Ids 1-9: RFC 9113 §6.5.2, RFC 8441 (8), RFC 9218 (9); others are unknown, and ignored.
    const entries = Array.from({ length: r.int(5) }, () => Buffer.concat([Buffer.from([0, r.chance(0.8) ? 1 + r.int(9) : r.int(256)]), u32(r.pick(EDGE))]));
    let payload = Buffer.concat(entries);
    if (r.chance(0.05)) payload = payload.subarray(0, Math.max(0, payload.length - 1 - r.int(3)));
    send(0x4, r.chance(0.05) ? 0x1 : 0, r.chance(0.05) ? 1 : 0, payload, 'SETTINGS');
  };
  const dataFrames = (id: number, plan: StreamPlan | undefined, end: boolean): void => {
    const text = 'b'.repeat(r.pick([0, 1, 10, 1000, 16_384, 20_000]));
    const padded = r.chance(0.3);
    const pad = padded ? r.int(300) : 0;
    const padLength = padded && r.chance(0.05) ? 255 : pad;
    const payload = padded
      ? Buffer.concat([Buffer.from([Math.min(padLength, 255)]), Buffer.from(text, 'latin1'), Buffer.alloc(Math.min(pad, 255))])
      : Buffer.from(text, 'latin1');
    const flags = send(0x0, (end ? 0x1 : 0) | (padded ? 0x8 : 0), id, payload, 'DATA');
    // The body as the server reads it (§6.1: with PADDED, the first byte says how much of the end is padding).
    const seen =
      (flags & 0x8) === 0 ? payload : payload.length >= 1 && payload[0]! <= payload.length - 1 ? payload.subarray(1, payload.length - payload[0]!) : undefined;
    if (plan !== undefined && plan.headersEnd !== undefined && plan.endedAt === undefined && !plan.resetByClient && seen !== undefined) {
      plan.body += seen.toString('latin1');
      if ((flags & 0x1) !== 0) plan.endedAt = offset;
    }
  };
  /** A request; `flood`: its header block a byte per CONTINUATION, empty ones among them, its end sometimes never sent. */
  const request = (flood = false): void => {
    // Mostly the next odd id (§5.1.1); sometimes even, reused, lower, zero.
    const fresh = lastId % 2 === 0 ? lastId + 1 : lastId + 2;
    const raw = r.chance(0.85) ? fresh : anyId();
    // The id as the server reads it: the reserved bit of an id written past 2^31-1 is ignored (§4.1).
    const id = streamId(raw);
    const tag = `${seed}-${++tagCount}`;
    const bodyBytes = r.pick([0, 0, 3, 1000]);
    const { block, malformed, contentLengths } = requestBlock(r, hpack, host, tag, bodyBytes);
    const wrongId = id === 0 || id % 2 === 0 || id <= lastId || streams.has(id) ? `stream id ${raw} after ${lastId}` : undefined;
    if (id > lastId) lastId = id;
    const plan: StreamPlan = {
      id,
      tag,
      malformed: malformed ?? wrongId,
      badId: wrongId !== undefined,
      contentLengths,
      truncated: false,
      headersEnd: undefined,
      endedAt: undefined,
      body: '',
      resetByClient: false,
    };
    if (!streams.has(id)) streams.set(id, plan);
    plans.set(tag, plan);
    const endOnHeaders = bodyBytes === 0 && r.chance(0.8);
    // HEADERS then CONTINUATION, split at random points (§6.10); PADDED and PRIORITY at random (§6.2).
    const splits = [...new Set(Array.from({ length: r.int(4) }, () => r.int(block.length + 1)))].sort((a, b) => a - b);
    const pieces = [0, ...splits, block.length].flatMap((at, i, all) => (i === 0 ? [] : [block.subarray(all[i - 1]!, at)]));
    const endless = flood && r.chance(0.4);
    if (flood) {
      // A byte per frame, or as many as keep a large block to 500 frames.
      const step = Math.max(1, Math.ceil(block.length / 500));
      pieces.splice(0, pieces.length, block.subarray(0, step));
      for (let at = step; at < block.length; at += step) pieces.push(...(r.chance(0.3) ? [Buffer.alloc(0)] : []), block.subarray(at, at + step));
      for (let i = r.pick([0, 100, 1000]); i > 0; i--) pieces.push(Buffer.alloc(0));
    }
    const first = pieces[0]!;
    const padded = r.chance(0.1) ? r.int(50) : -1;
    const priority = r.chance(0.1) ? Buffer.concat([u32(r.chance(0.2) ? id : r.int(2 ** 32)), Buffer.from([r.int(256)])]) : undefined;
    const headPayload = Buffer.concat([
      padded >= 0 ? Buffer.from([padded]) : Buffer.alloc(0),
      priority ?? Buffer.alloc(0),
      first,
      Buffer.alloc(Math.max(0, padded)),
    ]);
    const flags0 = (endOnHeaders ? 0x1 : 0) | (pieces.length === 1 ? 0x4 : 0) | (padded >= 0 ? 0x8 : 0) | (priority ? 0x20 : 0);
    const f = send(0x1, flags0, raw, headPayload, `HEADERS ${tag}${plan.malformed ? ` (${plan.malformed})` : ''}`);
    // The block ends at the first END_HEADERS (random flags may set it early, or never: §6.10).
    if ((f & 0x4) !== 0) {
      plan.headersEnd = offset;
      plan.truncated = pieces.length > 1;
    }
    for (const [i, piece] of pieces.slice(1).entries()) {
      if (!flood && r.chance(0.03)) send(0x6, 0, 0, Buffer.alloc(8), 'PING inside a header block');
      const last = i === pieces.length - 2 && !endless;
      const cf = send(0x9, last ? 0x4 : 0, !flood && r.chance(0.03) ? raw + 2 : raw, piece, 'CONTINUATION');
      if (plan.headersEnd === undefined && (cf & 0x4) !== 0) {
        plan.headersEnd = offset;
        plan.truncated = i < pieces.length - 2;
      }
    }
    if ((f & 0x1) !== 0) plan.endedAt = plan.headersEnd;
    if (plan.endedAt === undefined && r.chance(0.85)) {
      const frames = bodyBytes === 0 ? r.int(2) : 1 + r.int(2);
      for (let i = 0; i < frames; i++) dataFrames(raw, plan, i === frames - 1 && r.chance(0.9));
      if (plan.endedAt === undefined && r.chance(0.3)) {
        // Trailers (§8.1) end it; a pseudo-header or a connection-specific field in them, or no END_STREAM, makes it malformed.
        const bad = r.chance(0.2) ? r.pick(BAD_TRAILERS) : undefined;
        const unended = r.chance(0.05);
        const why = bad !== undefined ? `trailers with ${bad[0]}` : unended ? 'trailers without END_STREAM' : undefined;
        const tf = send(0x1, unended ? 0x4 : 0x5, raw, hpack.field(bad ?? ['x-trailer', 't'], r), `HEADERS trailers${why ? ` (${why})` : ''}`);
        if (plan.headersEnd !== undefined && !plan.resetByClient) {
          if (why !== undefined) plan.malformed ??= why;
          if ((tf & 0x5) === 0x5) plan.endedAt = offset;
        }
      }
    }
  };

  const preface = r.chance(0.97);
  if (preface) emit(Buffer.from(r.chance(0.98) ? 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' : 'PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n', 'latin1'), 'preface');
  if (r.chance(0.95)) settings();
  // The acknowledgement of the server's SETTINGS (§6.5.3), which it sends first: usually, sometimes late, sometimes never.
  if (r.chance(0.8)) send(0x4, 0x1, 0, Buffer.alloc(0), 'SETTINGS ACK');
  for (let n = 1 + r.int(12); n > 0; n--) {
    const op = r.int(23);
    if (op < 7) request();
    else if (op === 7) settings();
    else if (op === 8) {
      const id = r.chance(0.9) ? anyId() : 0;
      send(
        0x2,
        0,
        id,
        Buffer.concat([u32(r.chance(0.2) ? id : r.int(2 ** 32)), Buffer.from([r.int(256)])]).subarray(0, r.chance(0.9) ? 5 : r.int(5)),
        'PRIORITY',
      );
    } else if (op === 9) {
      const id = anyId();
      dataFrames(id, streams.get(streamId(id)), r.chance(0.5));
    } else if (op === 10) send(0x8, 0, r.chance(0.5) ? 0 : anyId(), u32(r.pick([0, 1, 65_535, 0x7fffffff, 0x80000000, 0xffffffff])), 'WINDOW_UPDATE');
    else if (op === 11) {
      const id = anyId();
      const plan = streams.get(streamId(id));
      // Ended or not, a stream its client reset is closed (§6.4): no answer need come.
      if (plan !== undefined) plan.resetByClient = true;
      send(0x3, 0, id, u32(r.pick([0, 1, 2, 5, 8, 0xffffffff])).subarray(0, r.chance(0.95) ? 4 : 3), 'RST_STREAM');
    } else if (op === 12) send(0x6, r.chance(0.1) ? 0x1 : 0, r.chance(0.95) ? 0 : 1, r.bytes(r.chance(0.95) ? 8 : r.int(12)), 'PING');
    else if (op === 13) send(0x7, 0, r.chance(0.95) ? 0 : 1, Buffer.concat([u32(r.int(2 ** 31)), u32(r.int(14)), r.bytes(r.int(20))]), 'GOAWAY');
    else if (op === 14) send(0x5, 0x4, anyId(), Buffer.concat([u32(2 + 2 * r.int(10)), hpack.field([':method', 'GET'], r)]), 'PUSH_PROMISE');
    else if (op === 15) send(0xa + r.int(246), r.int(256), anyId(), r.bytes(r.int(64)), 'unknown type');
    else if (op === 16) send(r.pick([0x0, 0x1, 0x4, 0x6, 0x8, 0xa0]), 0, anyId(), Buffer.alloc(r.pick([16_385, 20_000, 70_000])), 'oversized');
    else if (op === 17) send(0x9, 0x4, anyId(), hpack.field(['x-a', 'b'], r), 'CONTINUATION without HEADERS');
    else if (op === 18) {
      // A frame header claiming more than follows (the rest never comes, or comes as the next frame).
      const head = frame(r.int(10), 0, anyId(), Buffer.alloc(0));
      head.writeUIntBE(1 + r.int(16_384), 0, 3);
      emit(head, 'a frame header whose payload is missing');
      // What follows would be its payload, not frames: the case ends here (its end completes the frame).
      break;
    } else if (op === 19) for (let i = r.pick([5, 20, 50]); i > 0; i--) request();
    else if (op === 20) request(true);
    else if (op === 21) {
      // PRIORITY_UPDATE (RFC 9218 §7.1): on stream 0 only, naming a request stream, a Priority field value (§5).
      const about = r.pick([lastId, lastId + 2, 0, 2, r.int(2 ** 31)]);
      const value = r.pick(['u=0', 'u=7, i', 'u=9', 'i=?0', '', '\x00\r\n', 'u=1,'.repeat(5000)]);
      send(0x10, 0, r.chance(0.9) ? 0 : anyId(), Buffer.concat([u32(about), Buffer.from(value, 'latin1')]), 'PRIORITY_UPDATE');
    } else if (op === 22) {
      // A stream's send window past 2^31-1: by WINDOW_UPDATE, then by a larger SETTINGS_INITIAL_WINDOW_SIZE (§6.9.2:
      // a connection error of type FLOW_CONTROL_ERROR).
      send(0x8, 0, lastId, u32(0x7fff0000), 'WINDOW_UPDATE');
      send(0x4, 0, 0, Buffer.concat([Buffer.from([0, 4]), u32(0x7fffffff)]), 'SETTINGS INITIAL_WINDOW_SIZE');
    }
  }
  // A frame header whose payload never comes leaves the server waiting for it (until its idle deadline): the case's end
  // completes that frame with zeros, so that what the server does with the rest is seen within the case.
  // Without the preface, frames start at the first byte (a 16 MB frame's zeros were written, read as a length).
  const missing = unfinished(Buffer.concat(parts), preface ? 24 : 0);
  if (missing > 0) emit(Buffer.alloc(missing), `${missing} zero bytes completing the last frame`);
  const bytes = Buffer.concat(parts);
  const cuts = [...new Set(Array.from({ length: r.int(6) }, () => r.int(bytes.length)))].sort((a, b) => a - b);
  const abort = r.chance(0.15) ? { at: r.int(bytes.length + 1), how: r.pick(['destroy', 'reset'] as const) } : undefined;
  return { bytes, cuts, abort, streams, plans, log };
}
