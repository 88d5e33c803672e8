/**
 * The admin API's reads (GET, HEAD): /metrics, /healthz, /readyz (with the
 * degraded mode of a fleet node whose store is away), /config and /certs.
 * None needs the token; none answers with a secret. The config holds one:
 * the on-demand `ask` URL may carry a user and password (sent as Basic
 * authorization, on-demand-ask.ts) or a token in its query
 * (`?token=…`), and /config answered it to anyone who reached the port; the
 * user, password, query values and fragment of every URL in it are masked
 * (masked-url.ts).
 */
import type http from 'node:http';
import { json, text } from './admin-http.js';
import type { AdminSources } from './admin-sources.js';
import { withoutCredentials } from './masked-url.js';

/** Answers the read at `path`; 404 for anything else. */
export function answerRead(res: http.ServerResponse, path: string | undefined, sources: AdminSources): void {
  const control = sources.control;
  switch (path) {
    case '/metrics':
      sources.metrics().then(
        ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
        (err: Error) => text(res, 500, `metrics unavailable: ${err.message}\n`),
      );
      return;
    case '/healthz':
      return text(res, 200, 'ok\n');
    case '/readyz':
      sources.notReadyReason().then(
        (reason) => {
          if (reason !== undefined) return text(res, 503, `not ready: ${reason}\n`);
          const degraded = sources.degradedReason?.();
          if (degraded === undefined) return text(res, 200, 'ready\n');
          res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'x-keyedge-degraded': degraded.part }).end(`degraded: ${degraded.reason}\n`);
        },
        (err: Error) => text(res, 503, `not ready: ${err.message}\n`),
      );
      return;
    case '/config':
      return json(res, 200, withoutCredentials(sources.config()));
    case '/certs':
      return control === undefined ? text(res, 404, 'not found\n') : json(res, 200, control.certificates());
    default:
      return text(res, 404, 'not found\n');
  }
}
