/**
 * The key server's admin HTTP listener: read-only, loopback by default.
 *   GET /metrics  Prometheus text format from the daemon's own registry
 *   GET /healthz  200 while the token is open and the listeners accept
 * Nothing here changes state, so it needs no credentials; keep it off public
 * interfaces all the same (it reveals request rates).
 */
import http from 'node:http';
import type { Registry } from 'prom-client';
import { listen } from '../shared/listen.js';

export function startAdmin(host: string, port: number, registry: Registry, healthy: () => boolean): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        () => res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n'),
      );
    } else if (path === '/healthz') {
      const ok = healthy();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'unhealthy\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  return listen(server, { host, port });
}
