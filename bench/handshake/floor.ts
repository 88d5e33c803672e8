/**
 * The floor of the handshake bench: a bare node:https server, no proxy, no
 * cluster, one process, answering every request with a fixed 1 KiB page,
 * certificates by SNI from PEM key files. Its CPU per handshake is what Node
 * and its OpenSSL cost on their own (the part of keyedge's figure that is not
 * keyedge's), per Node version (--node). Counts full and resumed handshakes on
 * /metrics of its admin port, in the proxy's metric names, so the bench reads
 * it like the proxy.
 *
 * With `h2: true` the server is a bare node:http2 secure server instead
 * (ALPN `h2` only, the stream API, the same page): the floor of an HTTP/2
 * connection, next to node:https's for HTTP/1.1 (bench/handshake/layers.ts
 * compares the two).
 *
 * With `forward` set (HTTP/1.1 only) it is a bare forwarder (layers.ts): each request
 * goes to `forward.origin` with nothing of keyedge's (no routing, header
 * rules, gates, log or metrics), through undici's `dispatch()` (the client
 * keyedge uses) or through node:http's client (Node's own llhttp, native, the
 * parser an own origin client would use). Their difference from the floor is
 * the origin hop's own cost; keyedge's difference from them is ours.
 *
 * Usage: node dist/bench/handshake/floor.js --config FILE   (FILE: FloorConfig as JSON)
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { serveFloorCounts } from './floor-counts.js';

export interface FloorConfig {
  readonly port: number;
  readonly admin: number;
  readonly certificates: readonly { readonly serverName: string; readonly chain: string; readonly key: string }[];
  /** A node:http2 server (ALPN h2 only) instead of node:https. */
  readonly h2?: boolean;
  /** Forward to `origin` (http://host:port) with `client` instead of answering. */
  readonly forward?: { readonly origin: string; readonly client: 'undici' | 'node-http' };
}

type Answer = (req: http.IncomingMessage, res: http.ServerResponse) => void;

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding']);

/** A raw [name, value, …] list without the hop-by-hop headers that would change the connection's handling (undici refuses most Connection values; ab without -k waits for the close). */
function endToEnd(raw: readonly (Buffer | string)[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1');
    if (!HOP_BY_HOP.has(name.toLowerCase())) out.push(name, raw[i + 1]!.toString('latin1'));
  }
  return out;
}

/** undici's dispatch() with its legacy handler callbacks, the origin's raw head straight to writeHead. */
function undiciForwarder(origin: string): Answer {
  const pool = new Pool(origin, { connections: 64, pipelining: 1, keepAliveTimeout: 30_000 });
  return (req, res) => {
    pool.dispatch(
      { path: req.url ?? '/', method: req.method as 'GET', headers: endToEnd(req.rawHeaders) },
      {
        onConnect: () => undefined,
        onHeaders: (status: number, raw: Buffer[] | string[] | null) => {
          res.writeHead(status, endToEnd(raw ?? []));
          return true;
        },
        onData: (chunk: Buffer) => res.write(chunk),
        onComplete: () => void res.end(),
        onError: () => void res.destroy(),
      },
    );
  };
}

/** node:http's client (native llhttp), a keep-alive agent. */
function nodeHttpForwarder(origin: string): Answer {
  const url = new URL(origin);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  return (req, res) => {
    const out = http.request({ host: url.hostname, port: url.port, path: req.url, method: req.method, headers: endToEnd(req.rawHeaders), agent }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, endToEnd(answer.rawHeaders));
      answer.on('data', (chunk: Buffer) => res.write(chunk));
      answer.on('end', () => res.end());
    });
    out.on('error', () => res.destroy());
    out.end();
  };
}

const { values } = parseArgs({ options: { config: { type: 'string' } }, strict: true });
if (values.config === undefined) throw new Error('usage: floor.js --config FILE');
const c = JSON.parse(readFileSync(values.config, 'utf8')) as FloorConfig;
const contexts = new Map(
  c.certificates.map((x) => [x.serverName, tls.createSecureContext({ cert: readFileSync(x.chain), key: readFileSync(x.key), minVersion: 'TLSv1.2' })]),
);
const page = Buffer.alloc(1024, 'x');
const counts = { full: 0, resumed: 0, failed: 0, requests: 0 };
const tlsOptions = {
  SNICallback: (name: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => cb(null, contexts.get(name)),
  minVersion: 'TLSv1.2' as const,
};
const fixed: Answer = (_req, res) => {
  res.writeHead(200, { 'content-type': 'text/html', 'content-length': page.length });
  res.end(page);
};
const forwarder = c.forward === undefined ? fixed : c.forward.client === 'undici' ? undiciForwarder(c.forward.origin) : nodeHttpForwarder(c.forward.origin);
const server = c.h2
  ? http2.createSecureServer({ ...tlsOptions }).on('stream', (stream) => {
      counts.requests++;
      stream.on('error', () => undefined);
      stream.respond({ ':status': 200, 'content-type': 'text/html', 'content-length': page.length });
      stream.end(page);
    })
  : https.createServer({ ...tlsOptions, ALPNProtocols: ['http/1.1'] }, (req, res) => {
      counts.requests++;
      forwarder(req, res);
    });
server.listen(c.port, '127.0.0.1');
serveFloorCounts(server, counts, c.admin, 'floor ready');
process.on('SIGTERM', () => process.exit(0));
