/**
 * The floor servers' counters (floor.ts, lean-forwarder.ts): counted on the
 * TLS server's own events and served on a plain admin port in the Prometheus
 * names the proxy uses, so lab/counters.ts reads every server alike.
 */
import http from 'node:http';
import type tls from 'node:tls';

export interface FloorCounts {
  full: number;
  resumed: number;
  failed: number;
  requests: number;
  originConnections?: number;
}

/** Counts `server`'s handshakes into `counts`, serves them on `admin`, and writes `"<ready>"` once it listens. */
export function serveFloorCounts(server: tls.Server, counts: FloorCounts, admin: number, ready: string): void {
  server.on('secureConnection', (socket: tls.TLSSocket) => (socket.isSessionReused() ? counts.resumed++ : counts.full++));
  server.on('tlsClientError', () => counts.failed++);
  const m = 'keyedge_proxy_tls_handshakes_total';
  http
    .createServer((_req, res) => {
      let text = `${m}{result="ok",resumed="false"} ${counts.full}\n${m}{result="ok",resumed="true"} ${counts.resumed}\n`;
      text += `${m}{result="failed",resumed="false"} ${counts.failed}\nkeyedge_proxy_http_requests_total{status_class="2xx"} ${counts.requests}\n`;
      if (counts.originConnections !== undefined) text += `origin_connections_opened ${counts.originConnections}\n`;
      res.end(text);
    })
    .listen(admin, '127.0.0.1', () => process.stdout.write(`"${ready}"\n`));
}
