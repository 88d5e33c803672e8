/**
 * Forwarding a request to its origin with undici (one keep-alive Pool per
 * origin), streaming both bodies.
 *
 * Headers: hop-by-hop headers are removed both ways (RFC 9110 §7.6.1: the
 * fixed list plus whatever Connection names); Host is preserved; the client's
 * address and scheme go in X-Forwarded-For/-Proto/-Host and Forwarded
 * (RFC 7239), replacing whatever the client sent, since no peer is trusted
 * to set them.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'undici';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
]);
const CLIENT_SET = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded']);

export function endToEndHeaders(headers: IncomingHttpHeaders, dropAlso: ReadonlySet<string> = new Set()): Record<string, string | string[]> {
  const named = new Set(
    String(headers.connection ?? '')
      .split(',')
      .map((t) => t.trim().toLowerCase())
      .filter((t) => t !== ''),
  );
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name) || dropAlso.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/** RFC 7239 §6: an IPv6 address is quoted and bracketed. */
function forwardedFor(address: string): string {
  return address.includes(':') ? `"[${address}]"` : address;
}

/**
 * The request body as it streams to the origin, failing with
 * KEYEDGE_HTTP_BODY_TOO_LARGE past `max` bytes: a chunked body has no
 * Content-Length to check up front.
 */
function limitBody(req: IncomingMessage, max: number): Readable {
  if (max === Infinity) return req;
  let seen = 0;
  const counted = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > max) done(Object.assign(new Error(`request body over ${max} bytes`), { code: 'KEYEDGE_HTTP_BODY_TOO_LARGE' }));
      else done(null, chunk);
    },
  });
  req.pipe(counted);
  return counted;
}

export interface OriginTimeouts {
  /** TCP (and TLS) connect to an origin: past it, 502. */
  readonly connectMs: number;
  /** From the request sent to the answer's headers: past it, 504. */
  readonly responseMs: number;
}

/** Keep-alive pools, one per origin URL; bounded by the configured origins. */
export class OriginPools {
  readonly #pools = new Map<string, Pool>();
  readonly #timeouts: OriginTimeouts;

  constructor(timeouts: OriginTimeouts = { connectMs: 10_000, responseMs: 60_000 }) {
    this.#timeouts = timeouts;
  }

  pool(origin: string): Pool {
    let pool = this.#pools.get(origin);
    if (pool === undefined) {
      pool = new Pool(origin, {
        connections: 64,
        keepAliveTimeout: 30_000,
        pipelining: 1,
        connectTimeout: this.#timeouts.connectMs,
        headersTimeout: this.#timeouts.responseMs,
        // A streaming answer may pause for long; only the wait for its start is bounded.
        bodyTimeout: 0,
      });
      this.#pools.set(origin, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#pools.values()].map((pool) => pool.close()));
    this.#pools.clear();
  }
}

/**
 * Sends `req` to `origin` and streams the answer into `res`. Resolves when the
 * answer is fully sent; rejects when the origin could not be reached or
 * failed before answering (the caller answers 502/504 then).
 */
export async function forward(
  pools: OriginPools,
  origin: string,
  req: IncomingMessage,
  res: ServerResponse,
  extraHeaders: Record<string, string>,
  proto: 'https' | 'http' = 'https',
  maxBodyBytes = Infinity,
): Promise<void> {
  const headers = endToEndHeaders(req.headers, CLIENT_SET);
  const address = req.socket.remoteAddress ?? 'unknown';
  headers['x-forwarded-for'] = address;
  headers['x-forwarded-proto'] = proto;
  if (req.headers.host !== undefined) headers['x-forwarded-host'] = req.headers.host;
  headers.forwarded = `for=${forwardedFor(address)};proto=${proto}${req.headers.host !== undefined ? `;host="${req.headers.host}"` : ''}`;
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD' && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined);
  const answer = await pools.pool(origin).request({
    path: req.url ?? '/',
    method: (req.method ?? 'GET') as 'GET',
    headers,
    body: hasBody ? limitBody(req, maxBodyBytes) : null,
  });
  const responseHeaders = endToEndHeaders(answer.headers as IncomingHttpHeaders);
  res.writeHead(answer.statusCode, { ...responseHeaders, ...extraHeaders });
  await pipeline(answer.body, res);
}
