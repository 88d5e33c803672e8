/**
 * The floor servers of the handshake bench and its investigation tools: a bare node:https server, no proxy, no
 * cluster, one process, answering every request with a fixed 1 KiB page, certificates by SNI from PEM key files. Its
 * CPU per handshake is what Node and its OpenSSL cost on their own (the part of keyedge's figure that is not
 * keyedge's), per Node version (--node). Counts full and resumed handshakes on /metrics of its admin port, in the
 * proxy's metric names, so the bench reads it like the proxy (lab/counters.ts).
 *
 * With `h2: true` it is a bare node:http2 secure server instead (ALPN `h2` only, the stream API, the same page): the
 * floor of an HTTP/2 connection.
 *
 * With `forward` set it is a bare forwarder: each request goes to `forward.origin` with nothing of keyedge's (no
 * routing, header rules, gates, log or metrics), through undici's `dispatch()` (the client keyedge uses), node:http's
 * client (Node's own native llhttp) or the leanest llhttp forwarder (lean-forwarder.ts). Their difference from the
 * floor is the origin hop's own cost; keyedge's difference from them is ours. With `h2` too (undici only): issue 13's
 * floor for keyedge's h2 path, the node:http2 stream API to an HTTP/1.1 origin, `:authority` as Host (RFC 9113
 * §8.3.1), the origin's hop-by-hop fields dropped (§8.2.2).
 *
 * Usage: node dist/bench/handshake/floor.js --config FILE   (FILE: FloorConfig as JSON)
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2, { type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import https from 'node:https';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { HOP_BY_HOP, llhttpForwarder } from './lean-forwarder.js';

export interface FloorConfig {
  readonly port: number;
  readonly admin: number;
  readonly certificates: readonly { readonly serverName: string; readonly chain: string; readonly key: string }[];
  /** A node:http2 server (ALPN h2 only) instead of node:https. */
  readonly h2?: boolean;
  /** Forward to `origin` (http://host:port) with `client` instead of answering. */
  readonly forward?: { readonly origin: string; readonly client: 'undici' | 'node-http' | 'llhttp' | 'llhttp-consume' };
}

type Answer = (req: http.IncomingMessage, res: http.ServerResponse) => void;
const PAGE = Buffer.alloc(1024, 'x');

/** A raw [name, value, …] list without the hop-by-hop headers that would change the connection's handling (undici refuses most Connection values; ab without -k waits for the close). */
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
  return (
    request: { path: string; method: string; headers: string[] },
    to: { head(status: number, raw: string[]): void; write(chunk: Buffer): boolean; end(): void; destroy(): void },
  ) =>
    pool.dispatch(request as { path: string; method: 'GET'; headers: string[] }, {
      onConnect: () => undefined,
      onHeaders: (status: number, raw: Buffer[] | string[] | null) => {
        to.head(status, endToEnd(raw ?? []));
        return true;
      },
      onData: (chunk: Buffer) => to.write(chunk),
      onComplete: () => to.end(),
      onError: () => to.destroy(),
    });
}

function answerOf(forward: FloorConfig['forward'], counts: { originConnections?: number }): Answer {
  if (forward === undefined) return (_req, res) => res.writeHead(200, { 'content-type': 'text/html', 'content-length': PAGE.length }).end(PAGE);
  if (forward.client === 'undici') {
    const dispatch = dispatcher(forward.origin);
    return (req, res) =>
      dispatch(
        { path: req.url ?? '/', method: req.method ?? 'GET', headers: endToEnd(req.rawHeaders) },
        { head: (status, raw) => res.writeHead(status, raw), write: (c) => res.write(c), end: () => res.end(), destroy: () => res.destroy() },
      );
  }
  if (forward.client === 'node-http') {
    const url = new URL(forward.origin);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
    return (req, res) => {
      const options = { host: url.hostname, port: url.port, path: req.url, method: req.method, headers: endToEnd(req.rawHeaders), agent };
      const out = http.request(options, (answer) => {
        res.writeHead(answer.statusCode ?? 502, endToEnd(answer.rawHeaders));
        answer.on('data', (chunk: Buffer) => res.write(chunk));
        answer.on('end', () => res.end());
      });
      out.on('error', () => res.destroy());
      out.end();
    };
  }
  return llhttpForwarder(forward.origin, forward.client === 'llhttp-consume', counts);
}

/** An h2 stream answered with the page, or sent to the origin through undici's dispatch(): Host from :authority, no pseudo-fields. */
function h2Answer(forward: FloorConfig['forward']): (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => void {
  if (forward === undefined) {
    return (stream) => {
      stream.respond({ ':status': 200, 'content-type': 'text/html', 'content-length': PAGE.length });
      stream.end(PAGE);
    };
  }
  const dispatch = dispatcher(forward.origin);
  return (stream, headers) => {
    const head: string[] = ['host', String(headers[':authority'] ?? '')];
    for (const [name, value] of Object.entries(headers)) {
      if (name.startsWith(':') || value === undefined) continue;
      for (const v of Array.isArray(value) ? value : [value]) head.push(name, String(v));
    }
    dispatch(
      { path: String(headers[':path'] ?? '/'), method: String(headers[':method'] ?? 'GET'), headers: head },
      {
        head: (status, raw) => {
          const answer: Record<string, string> = { ':status': String(status) };
          for (let i = 0; i < raw.length; i += 2) answer[raw[i]!.toLowerCase()] = raw[i + 1]!;
          if (!stream.destroyed) stream.respond(answer);
        },
        write: (chunk) => (stream.destroyed ? true : stream.write(chunk)),
        end: () => void (stream.destroyed || stream.end()),
        destroy: () => void stream.destroy(),
      },
    );
  };
}

const { values } = parseArgs({ options: { config: { type: 'string' } }, strict: true });
if (values.config === undefined) throw new Error('usage: floor.js --config FILE');
const c = JSON.parse(readFileSync(values.config, 'utf8')) as FloorConfig;
const contexts = new Map(
  c.certificates.map((x) => [x.serverName, tls.createSecureContext({ cert: readFileSync(x.chain), key: readFileSync(x.key), minVersion: 'TLSv1.2' })]),
);
const counts: { full: number; resumed: number; failed: number; requests: number; originConnections?: number } = { full: 0, resumed: 0, failed: 0, requests: 0 };
const tlsOptions = {
  SNICallback: (name: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => cb(null, contexts.get(name)),
  minVersion: 'TLSv1.2' as const,
};
let server: tls.Server;
if (c.h2) {
  const answer = h2Answer(c.forward);
  server = http2.createSecureServer(tlsOptions).on('stream', (stream, headers) => {
    counts.requests++;
    stream.on('error', () => undefined);
    answer(stream, headers);
  });
} else {
  const answer = answerOf(c.forward, counts);
  server = https.createServer({ ...tlsOptions, ALPNProtocols: ['http/1.1'] }, (req, res) => {
    counts.requests++;
    answer(req, res);
  });
}
server.listen(c.port, '127.0.0.1');
// The counters on a plain admin port, in the Prometheus names the proxy uses.
server.on('secureConnection', (socket: tls.TLSSocket) => (socket.isSessionReused() ? counts.resumed++ : counts.full++));
server.on('tlsClientError', () => counts.failed++);
const m = 'keyedge_proxy_tls_handshakes_total';
http
  .createServer((_req, res) => {
    let text = `${m}{result="ok",resumed="false"} ${counts.full}\n${m}{result="ok",resumed="true"} ${counts.resumed}\n`;
    text += `${m}{result="failed",resumed="false"} ${counts.failed}\nkeyedge_proxy_http_requests_total{status_class="2xx"} ${counts.requests}\n`;
    res.end(counts.originConnections === undefined ? text : `${text}origin_connections_opened ${counts.originConnections}\n`);
  })
  .listen(c.admin, '127.0.0.1', () => process.stdout.write('"floor ready"\n'));
process.on('SIGTERM', () => process.exit(0));
