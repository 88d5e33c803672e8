/**
 * The proxy's admin HTTP listener (loopback by default), served by the
 * cluster primary:
 *   GET /metrics  every worker's metrics, summed (prom-client AggregatorRegistry)
 *   GET /healthz  200 while the primary runs
 *   GET /readyz   200 once every worker has loaded its certificates and the
 *                 key server answers a ping; 503 with the reason otherwise
 *   GET /config   the running configuration as JSON (it holds no secrets:
 *                 PINs and keys are never in a proxy config; paths are shown)
 * Nothing here changes state yet; reload endpoints come with the certificate
 * store and require a bearer token.
 */
import http from 'node:http';
import type { ProxyConfig } from '../config/proxy-schema.js';

export interface AdminSources {
  readonly metrics: () => Promise<{ readonly contentType: string; readonly body: string }>;
  /** Resolves with undefined when ready, or the reason it is not. */
  readonly notReadyReason: () => Promise<string | undefined>;
  readonly config: ProxyConfig;
}

export function startProxyAdmin(host: string, port: number, sources: AdminSources): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const text = (status: number, body: string): void => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(405, 'method not allowed\n');
    switch (path) {
      case '/metrics':
        sources.metrics().then(
          ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
          (err: Error) => text(500, `metrics unavailable: ${err.message}\n`),
        );
        return;
      case '/healthz':
        return text(200, 'ok\n');
      case '/readyz':
        sources.notReadyReason().then(
          (reason) => (reason === undefined ? text(200, 'ready\n') : text(503, `not ready: ${reason}\n`)),
          (err: Error) => text(503, `not ready: ${err.message}\n`),
        );
        return;
      case '/config':
        res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify(sources.config, null, 2)}\n`);
        return;
      default:
        return text(404, 'not found\n');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
