/**
 * A bare HTTP/2 forwarder (issue 13's floor for keyedge's h2 path): a
 * node:http2 secure server on the stream API (ALPN `h2` only) that sends each
 * stream to one HTTP/1.1 origin through undici's `dispatch()` on a keep-alive
 * Pool, the client keyedge uses, with nothing of keyedge's (no routing, header
 * rules, limits, log or metrics). `:authority` becomes Host (RFC 9113
 * §8.3.1), the origin's hop-by-hop fields are dropped (§8.2.2). Its CPU per
 * request is what any Node h2 forwarder on these parts costs at least;
 * keyedge's difference from it is keyedge's, its difference from the h2 floor
 * (floor.ts `h2: true`, a fixed answer) is the origin hop's.
 *
 * Usage: node dist/bench/handshake/h2-forwarder.js --config FILE
 * FILE: `{ port, admin, certificates: [{ serverName, chain, key }], origin }` as JSON
 * (FloorConfig's shape with `origin`); "floor ready" on stdout once its admin port listens.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2, { type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';

interface ForwarderConfig {
  readonly port: number;
  readonly admin: number;
  readonly certificates: readonly { readonly serverName: string; readonly chain: string; readonly key: string }[];
  readonly origin: string;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade']);

const { values } = parseArgs({ options: { config: { type: 'string' } }, strict: true });
if (values.config === undefined) throw new Error('usage: h2-forwarder.js --config FILE');
const c = JSON.parse(readFileSync(values.config, 'utf8')) as ForwarderConfig;
const contexts = new Map(c.certificates.map((x) => [x.serverName, tls.createSecureContext({ cert: readFileSync(x.chain), key: readFileSync(x.key) })]));
const pool = new Pool(c.origin, { connections: 64, pipelining: 1, keepAliveTimeout: 30_000 });
let requests = 0;

/** The request head for the origin: Host from :authority, no pseudo-fields. */
function originHeaders(headers: IncomingHttpHeaders): string[] {
  const out: string[] = ['host', String(headers[':authority'] ?? '')];
  for (const name in headers) {
    if (name.charCodeAt(0) === 58 /* ':' */) continue;
    const value = headers[name];
    if (Array.isArray(value)) for (const v of value) out.push(name, v);
    else if (value !== undefined) out.push(name, String(value));
  }
  return out;
}

function forward(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
  requests++;
  stream.on('error', () => undefined);
  pool.dispatch(
    { path: String(headers[':path'] ?? '/'), method: String(headers[':method'] ?? 'GET') as 'GET', headers: originHeaders(headers) },
    {
      onConnect: () => undefined,
      onHeaders: (status: number, raw: Buffer[] | string[] | null) => {
        const answer: Record<string, string | string[]> = { ':status': String(status) };
        const list = raw ?? [];
        for (let i = 0; i < list.length; i += 2) {
          const name = list[i]!.toString().toLowerCase();
          if (!HOP_BY_HOP.has(name)) answer[name] = list[i + 1]!.toString();
        }
        if (!stream.destroyed) stream.respond(answer);
        return true;
      },
      onData: (chunk: Buffer) => (stream.destroyed ? true : stream.write(chunk)),
      onComplete: () => void (stream.destroyed || stream.end()),
      onError: () => void stream.destroy(),
    },
  );
}

const server = http2.createSecureServer({
  SNICallback: (name: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => cb(null, contexts.get(name)),
  minVersion: 'TLSv1.2',
});
server.on('stream', forward);
server.listen(c.port, '127.0.0.1');
http
  .createServer((_req, res) => res.end(`keyedge_proxy_http_requests_total{status_class="2xx"} ${requests}\n`))
  .listen(c.admin, '127.0.0.1', () => process.stdout.write('"floor ready"\n'));
process.on('SIGTERM', () => process.exit(0));
