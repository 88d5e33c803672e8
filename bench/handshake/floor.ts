/**
 * The floor servers of the handshake bench and of layers.ts: a bare node:https server, one process, a fixed 1 KiB page,
 * certificates by SNI from PEM files: what Node and its OpenSSL cost on their own; its admin port's /metrics counts
 * handshakes and requests in the proxy's metric names. `h2`: a bare node:http2 server instead (ALPN `h2` only, the
 * stream API). `forward`: a bare forwarder to the origin with nothing of keyedge's, through undici's `dispatch()` or the
 * lean llhttp forwarder below: the origin hop's own cost (with `h2`: issue 13's floor, `:authority` as Host, RFC 9113
 * §8.3.1). `renewTickets`: a fresh ticket on every resumed connection, as the proxy sends (the resumed floor).
 * `keylessSocket`: its key files are the proxy's KEYEDGE KEYLESS KEY blocks and every sign goes through keyedge's bridge
 * (proxy/native) to the key server there: the keyless hop of a server with nothing else of keyedge's.
 * Usage: node dist/bench/handshake/floor.js --config FILE (FloorConfig JSON)
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2, { type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import https from 'node:https';
import { createRequire } from 'node:module';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { init as initKeylessBridge, stats as keylessStats } from '../../proxy/native/index.js';

export interface FloorConfig {
  readonly port: number;
  readonly admin: number;
  readonly certificates: readonly { readonly serverName: string; readonly chain: string; readonly key: string }[];
  /** A node:http2 server (ALPN h2 only) instead of node:https. */
  readonly h2?: boolean;
  /** Forward to `origin` (http://host:port) with `client` instead of answering. */
  readonly forward?: { readonly origin: string; readonly client: 'undici' | 'llhttp' };
  /**
   * Send a fresh ticket on every resumed connection, as the proxy does (proxy/tls/tickets.ts): plain node:tls sends
   * none, so a client that uses each ticket once resumes only every second connection, and half of the floor's
   * "resumed" handshakes were full ones. The same internal hook as the proxy's, one key.
   */
  readonly renewTickets?: boolean;
  /** The key server's unix socket: the bridge is registered against it before any key is read (the keyless floor). */
  readonly keylessSocket?: string;
}

type Answer = (req: http.IncomingMessage, res: http.ServerResponse) => void;
/** Where an origin's answer goes: node:http's ServerResponse, or an adapter to an h2 stream. */
type Sink = { writeHead(status: number, raw: string[]): unknown; write(chunk: Buffer): boolean; end(): unknown; destroy(): unknown };
const PAGE = Buffer.alloc(1024, 'x');
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'te', 'upgrade', 'trailer']);

/** A raw [name, value, …] list without hop-by-hop fields (undici refuses most Connection values; ab without -k waits for the close). */
function endToEnd(raw: readonly (Buffer | string)[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1');
    if (!HOP_BY_HOP.has(name.toLowerCase())) out.push(name, raw[i + 1]!.toString('latin1'));
  }
  return out;
}

/** undici's dispatch() to a kept-alive pool with its legacy handler callbacks: the origin's raw head, its chunks, its end. */
function dispatcher(origin: string) {
  const pool = new Pool(origin, { connections: 64, pipelining: 1, keepAliveTimeout: 30_000 });
  return (request: { path: string; method: string; headers: string[] }, to: Sink) =>
    pool.dispatch(request as { path: string; method: 'GET'; headers: string[] }, {
      onConnect: () => undefined,
      onHeaders: (status: number, raw: Buffer[] | string[] | null) => {
        to.writeHead(status, endToEnd(raw ?? []));
        return true;
      },
      onData: (chunk: Buffer) => to.write(chunk),
      onComplete: () => to.end(),
      onError: () => to.destroy(),
    });
}

/** Node's native llhttp binding, as node:http uses it (not a public API). */
interface NativeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | Error;
  [key: number]: unknown;
}
type ParserKey = 'RESPONSE' | 'kOnHeadersComplete' | 'kOnBody' | 'kOnMessageComplete' | 'kLenientNone';
type HttpParser = (new () => NativeParser) & Record<ParserKey, number>;

/** One kept-alive origin socket, its parser, and the answer it is feeding (null when idle). */
class OriginConnection {
  readonly socket: net.Socket;
  readonly parser: NativeParser;
  res: Sink | null = null;
  reusable = false;

  constructor(P: HttpParser, host: string, port: number, release: (c: OriginConnection) => void) {
    this.socket = net.connect({ host, port, noDelay: true });
    this.parser = new P();
    this.parser.initialize(P.RESPONSE, {}, 0, P.kLenientNone);
    // (versionMajor, versionMinor, headers, method, url, statusCode, statusMessage, upgrade, shouldKeepAlive); the demo
    // origin's head has < 32 fields, so it comes whole here (llhttp flushes longer ones to kOnHeaders).
    this.parser[P.kOnHeadersComplete] = (...a: [number, number, string[], unknown, unknown, number, string, boolean, boolean]) => {
      this.reusable = a[8];
      this.res?.writeHead(a[5], endToEnd(a[2]));
    };
    this.parser[P.kOnBody] = (chunk: Buffer) => this.res?.write(chunk);
    this.parser[P.kOnMessageComplete] = () => {
      const res = this.res;
      this.res = null;
      res?.end();
      if (this.reusable) release(this);
      else this.socket.destroy();
    };
    this.socket.on('data', (data: Buffer) => this.parser.execute(data) instanceof Error && this.fail());
    this.socket.on('error', () => this.fail());
    this.socket.on('close', () => this.fail());
  }

  fail(): void {
    const res = this.res;
    this.res = null;
    this.socket.destroy();
    res?.destroy();
  }
}

/**
 * The leanest keep-alive forwarder Node can do (`bare-llhttp`): kept-alive net sockets to the origin, one native llhttp
 * parser each (node:http's own `HTTPParser` from `_http_common`, the same calls on Node 20, 22 and 24), the request
 * head as one string, the answer's raw head straight to `writeHead`, its body chunks to `write`: no object, stream or
 * promise per request. A floor, not a client: GET without a body, no timeouts, retries or limits
 * (bench/results/2026-12-04-floor.md).
 */
function llhttpForwarder(origin: string): Answer {
  const send = llhttpSender(origin);
  return (req, res) => {
    const raw = req.rawHeaders;
    const fields: string[] = [];
    for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() !== 'host') fields.push(raw[i]!, raw[i + 1]!);
    const conn = send(req.method ?? 'GET', req.url ?? '/', fields, res);
    // The client left before the answer ended: the origin socket's framing is mid-answer, so it cannot be reused.
    res.on('close', () => conn.res === res && conn.fail());
  };
}

/** The lean forwarder's origin side: the request head as one string on an idle (or new) origin connection, the answer to `to`. */
function llhttpSender(origin: string): (method: string, path: string, fields: readonly string[], to: Sink) => OriginConnection {
  const { HTTPParser } = createRequire(import.meta.url)('_http_common') as { HTTPParser: HttpParser };
  const url = new URL(origin);
  const idle: OriginConnection[] = [];
  const release = (conn: OriginConnection) => void idle.push(conn);
  return (method, path, fields, to) => {
    let conn = idle.pop();
    while (conn?.socket.destroyed) conn = idle.pop();
    conn ??= new OriginConnection(HTTPParser, url.hostname, Number(url.port), release);
    conn.res = to;
    let head = `${method} ${path} HTTP/1.1\r\nhost: ${url.host}\r\n`;
    for (let i = 0; i < fields.length; i += 2) if (!HOP_BY_HOP.has(fields[i]!.toLowerCase())) head += `${fields[i]}: ${fields[i + 1]}\r\n`;
    conn.socket.write(`${head}\r\n`, 'latin1');
    return conn;
  };
}

function answerOf(forward: FloorConfig['forward']): Answer {
  if (forward === undefined) return (_req, res) => res.writeHead(200, { 'content-type': 'text/html', 'content-length': PAGE.length }).end(PAGE);
  if (forward.client === 'llhttp') return llhttpForwarder(forward.origin);
  const dispatch = dispatcher(forward.origin);
  return (req, res) => dispatch({ path: req.url ?? '/', method: req.method ?? 'GET', headers: endToEnd(req.rawHeaders) }, res);
}

/** An h2 stream answered with the page, or sent to the origin through undici's dispatch(): Host from :authority, no pseudo-fields. */
function h2Answer(forward: FloorConfig['forward']): (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => void {
  if (forward === undefined) {
    return (stream) => {
      stream.respond({ ':status': 200, 'content-type': 'text/html', 'content-length': PAGE.length });
      stream.end(PAGE);
    };
  }
  const dispatch = forward.client === 'llhttp' ? undefined : dispatcher(forward.origin);
  const send = forward.client === 'llhttp' ? llhttpSender(forward.origin) : undefined;
  return (stream, headers) => {
    const head = ['host', String(headers[':authority'])];
    for (const [name, value] of Object.entries(headers)) {
      if (!name.startsWith(':') && value !== undefined) for (const v of Array.isArray(value) ? value : [value]) head.push(name, String(v));
    }
    const to: Sink = {
      writeHead: (status, raw) => {
        const answer: Record<string, string> = { ':status': String(status) };
        for (let i = 0; i < raw.length; i += 2) answer[raw[i]!.toLowerCase()] = raw[i + 1]!;
        if (!stream.destroyed) stream.respond(answer);
      },
      write: (chunk) => stream.destroyed || stream.write(chunk),
      end: () => stream.destroyed || stream.end(),
      destroy: () => stream.destroy(),
    };
    const [path, method] = [String(headers[':path']), String(headers[':method'])];
    if (send === undefined) return dispatch!({ path, method, headers: head }, to);
    const conn = send(method, path, head.slice(2), to);
    stream.on('close', () => conn.res === to && conn.fail());
  };
}

/** The ticket-key callback of proxy/tls/tickets.ts reduced to one key: [1, hmac, aes, name, iv] encrypts, [2, …] renews. */
function renewTickets(context: tls.SecureContext): void {
  const [name, hmac, aes] = [randomBytes(16), randomBytes(16), randomBytes(16)];
  const unused = Buffer.alloc(16);
  const native = (context as unknown as { context: { enableTicketKeyCallback(): void; onticketkeycallback: unknown } }).context;
  native.enableTicketKeyCallback();
  native.onticketkeycallback = (presented: Buffer, _iv: Buffer, encrypt: boolean) =>
    encrypt ? [1, hmac, aes, name, randomBytes(16)] : presented.equals(name) ? [2, hmac, aes] : [0, unused, unused];
}

const { values } = parseArgs({ options: { config: { type: 'string' } }, strict: true });
if (values.config === undefined) throw new Error('usage: floor.js --config FILE');
const c = JSON.parse(readFileSync(values.config, 'utf8')) as FloorConfig;
if (c.keylessSocket !== undefined) initKeylessBridge({ socketPath: c.keylessSocket });
const contexts = new Map(
  c.certificates.map((x) => [x.serverName, tls.createSecureContext({ cert: readFileSync(x.chain), key: readFileSync(x.key), minVersion: 'TLSv1.2' })]),
);
const counts = { full: 0, resumed: 0, failed: 0, requests: 0 };
const sni: tls.TlsOptions['SNICallback'] = (name, cb) => cb(null, contexts.get(name));
const tlsOptions = { SNICallback: sni, minVersion: 'TLSv1.2' as const };
let server: tls.Server;
if (c.h2) {
  const answer = h2Answer(c.forward);
  server = http2.createSecureServer(tlsOptions).on('stream', (stream, headers) => {
    counts.requests++;
    stream.on('error', () => undefined);
    answer(stream, headers);
  });
} else {
  const answer = answerOf(c.forward);
  server = https.createServer({ ...tlsOptions, ALPNProtocols: ['http/1.1'] }, (req, res) => {
    counts.requests++;
    answer(req, res);
  });
}
// OpenSSL encrypts and decrypts tickets with the context the connection began on (its session_ctx), the server's own,
// not the one SNICallback picks.
if (c.renewTickets) renewTickets((server as unknown as { _sharedCreds: tls.SecureContext })._sharedCreds);
server.listen(c.port, '127.0.0.1');
server.on('secureConnection', (socket: tls.TLSSocket) => (socket.isSessionReused() ? counts.resumed++ : counts.full++));
server.on('tlsClientError', () => counts.failed++);
const m = 'keyedge_proxy_tls_handshakes_total';
http
  .createServer((_req, res) => {
    const handshakes = `${m}{result="ok",resumed="false"} ${counts.full}\n${m}{result="ok",resumed="true"} ${counts.resumed}\n`;
    // The bridge's own count of signatures, which the bench's sign check compares with the key server's.
    const signs = c.keylessSocket === undefined ? '' : `keyedge_proxy_keyless_signs_total ${keylessStats().signs}\n`;
    res.end(
      `${handshakes}${m}{result="failed",resumed="false"} ${counts.failed}\nkeyedge_proxy_http_requests_total{status_class="2xx"} ${counts.requests}\n${signs}`,
    );
  })
  .listen(c.admin, '127.0.0.1', () => process.stdout.write('"floor ready"\n'));
process.on('SIGTERM', () => process.exit(0));
