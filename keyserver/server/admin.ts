/**
 * The key server's admin HTTP listener: read-only, loopback by default.
 *   GET /metrics  Prometheus text format from the daemon's own registry
 *   GET /healthz  200 while the token is open, the listeners accept and a sign
 *                 can be made (503 while every signing thread is stuck in the token)
 * Nothing here changes state, so it needs no credentials; keep it off public
 * interfaces all the same (it reveals request rates).
 *
 * Loopback is still open to every user of the host, unlike the 0600 unix
 * socket, so what a client can hold here is bounded: at most
 * MAX_ADMIN_CONNECTIONS connections (a newcomer closes the one waiting longest
 * with no answer in progress, or whose answer its client has left unsent
 * longest, admin-connections.ts), within the descriptors
 * fd-budget.ts reserves, and a head must arrive within HEADERS_TIMEOUT_MS.
 * With Node's defaults (no cap, a head within 60 s checked every 30 s), a few
 * hundred idle connections here took the descriptors the key server needs to
 * accept the proxy's connections and to let the token open its files.
 */
import http from 'node:http';
import type { Registry } from 'prom-client';
import { capAdminConnections } from '../shared/admin-connections.js';
import { answerUpgradesAsRequests } from '../shared/admin-upgrade.js';
import { listen } from '../shared/listen.js';

/** A scraper or health check keeps one or two open; well inside fd-budget.ts's reserve of 64. */
export const MAX_ADMIN_CONNECTIONS = 16;
/** Requests here are a GET with no body: its head, and the whole of it, arrive at once from any real client. */
const HEADERS_TIMEOUT_MS = 10_000;
const TIMEOUT_CHECK_MS = 1_000;

export function startAdmin(host: string, port: number, registry: Registry, healthy: () => boolean): Promise<http.Server> {
  const options = { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: TIMEOUT_CHECK_MS };
  const server = http.createServer(options, (req, res) => {
    if (!connections.answering(req, res)) return;
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
  const connections = capAdminConnections(server, MAX_ADMIN_CONNECTIONS);
  answerUpgradesAsRequests(server, connections.busy);
  return listen(server, { host, port });
}
