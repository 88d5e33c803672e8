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
 * Usage: node dist/bench/handshake/floor.js --config FILE   (FILE: FloorConfig as JSON)
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import tls from 'node:tls';
import { parseArgs } from 'node:util';

export interface FloorConfig {
  readonly port: number;
  readonly admin: number;
  readonly certificates: readonly { readonly serverName: string; readonly chain: string; readonly key: string }[];
  /** A node:http2 server (ALPN h2 only) instead of node:https. */
  readonly h2?: boolean;
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
const server = c.h2
  ? http2.createSecureServer({ ...tlsOptions }).on('stream', (stream) => {
      counts.requests++;
      stream.on('error', () => undefined);
      stream.respond({ ':status': 200, 'content-type': 'text/html', 'content-length': page.length });
      stream.end(page);
    })
  : https.createServer({ ...tlsOptions, ALPNProtocols: ['http/1.1'] }, (_req, res) => {
      counts.requests++;
      res.writeHead(200, { 'content-type': 'text/html', 'content-length': page.length });
      res.end(page);
    });
server.on('secureConnection', (socket: tls.TLSSocket) => (socket.isSessionReused() ? counts.resumed++ : counts.full++));
server.on('tlsClientError', () => counts.failed++);
server.listen(c.port, '127.0.0.1');
http
  .createServer((_req, res) => {
    const m = 'keyedge_proxy_tls_handshakes_total';
    res.end(
      `${m}{result="ok",resumed="false"} ${counts.full}\n${m}{result="ok",resumed="true"} ${counts.resumed}\n${m}{result="failed",resumed="false"} ${counts.failed}\n` +
        `keyedge_proxy_http_requests_total{status_class="2xx"} ${counts.requests}\n`,
    );
  })
  .listen(c.admin, '127.0.0.1', () => process.stdout.write('"floor ready"\n'));
process.on('SIGTERM', () => process.exit(0));
