/**
 * The admin API's reads (GET, HEAD), each as admin-routes.ts routes to it:
 * /metrics, /healthz, /readyz (with the degraded mode of a fleet node whose
 * store is away), /config and /certs.
 * None needs the token; none answers with a secret. The config holds one:
 * the on-demand `ask` URL may carry a user and password (sent as Basic
 * authorization, on-demand-ask.ts) or a token in its query
 * (`?token=…`), and /config answered it to anyone who reached the port; the
 * user, password, query values and fragment of every URL in it are masked
 * (masked-url.ts).
 */
import type http from 'node:http';
import { jsonOnce, text } from './admin-http.js';
import type { AdminControl, AdminSources } from './admin-sources.js';
import { withoutCredentials } from './masked-url.js';

/** GET /metrics: the primary's metrics and its workers' summed (cluster-metrics.ts). */
export function answerMetrics(res: http.ServerResponse, sources: AdminSources): void {
  sources.metrics().then(
    ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
    (err: Error) => text(res, 500, `metrics unavailable: ${err.message}\n`),
  );
}

/** GET /healthz: the process answers. */
export function answerHealth(res: http.ServerResponse): void {
  text(res, 200, 'ok\n');
}

/** GET /readyz: ready, not ready (503) and why, or ready in degraded mode (`x-keyedge-degraded`). */
export function answerReady(res: http.ServerResponse, sources: AdminSources): void {
  sources.notReadyReason().then(
    (reason) => {
      if (reason !== undefined) return text(res, 503, `not ready: ${reason}\n`);
      const degraded = sources.degradedReason?.();
      if (degraded === undefined) return text(res, 200, 'ready\n');
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'x-keyedge-degraded': degraded.part }).end(`degraded: ${degraded.reason}\n`);
    },
    (err: Error) => text(res, 503, `not ready: ${err.message}\n`),
  );
}

/** GET /config: the running config, every URL's credentials masked (above); rendered once per config (admin-http.ts jsonOnce). */
export function answerConfig(res: http.ServerResponse, sources: AdminSources): void {
  const config = sources.config();
  jsonOnce(res, config, () => withoutCredentials(config));
}

/** GET /certs: what serves and what is refused (with a control API only); rendered once per listing (jsonOnce). */
export function answerCertificates(res: http.ServerResponse, control: AdminControl): void {
  const listing = control.certificates();
  jsonOnce(res, listing, () => listing);
}
