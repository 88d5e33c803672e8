/**
 * An Upgrade request's one access line and count (upgrade.ts), as a
 * request's (access.ts): the same fields, `protocol` among them (dashboards
 * split by it), and its Upgrade field. A 101's line is written at the switch;
 * a relayed answer's at its end, with its bytes, and a cut one with
 * `aborted: true` and why. A client gone before any answer is 499 (nginx's
 * "client closed request") with KEYEDGE_HTTP_CLIENT_CLOSED. The origin's
 * answer (its 101, or a refusal relayed whole) is observed in the origin
 * duration histogram by status class, as a request's.
 */
import type { IncomingMessage } from 'node:http';
import type tls from 'node:tls';
import type { Logger } from '../../keyserver/shared/log.js';
import { type ProxyMetrics, statusClass } from '../metrics.js';
import type { Refusal } from './handler.js';

/** nginx's "client closed request": the client left before the origin answered. */
export const CLIENT_GONE = 499;
/** Its code, as for every request whose client left before any answer (access.ts, README's metrics). */
export const CLIENT_CLOSED = 'KEYEDGE_HTTP_CLIENT_CLOSED';

export interface UpgradeAccess {
  /** The origin the attempt under way is with, for the line. */
  origin: string | undefined;
  /** Writes the line and counts the request, once; `end` says how a relayed answer ended (its bytes, whether it was cut). */
  settle(status: number, code: Refusal['code'] | undefined, end?: { bytes: number; aborted: boolean }): void;
}

/**
 * The access of `req` on `client`, begun at `started` (hrtime) for `domain` (undefined when not routed). The TLS
 * fields are read now, as a request's line reads them (access.ts): after the connection closes, node's TLS accessors
 * may touch freed state.
 */
export function upgradeAccess(
  req: IncomingMessage,
  client: tls.TLSSocket,
  domain: string | undefined,
  started: bigint,
  log: Logger,
  metrics: ProxyMetrics,
): UpgradeAccess {
  const tlsVersion = client.getProtocol?.() ?? undefined;
  const resumed = client.isSessionReused?.() ?? undefined;
  let settled = false;
  const access: UpgradeAccess = {
    origin: undefined,
    settle: (status, code, end) => {
      if (settled) return;
      settled = true;
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics.requests.inc({ status_class: statusClass(status), code: code ?? 'none', protocol: 'http/1.1' });
      // The origin's time to answer, as a request's (access.ts): only when the origin answered whole (no code of ours),
      // to its 101 (the tunnel's life is not the origin's answer) or to the end of a relayed refusal. By status class
      // only: a bounded label set whatever the origin sends.
      if (code === undefined) metrics.originDuration.labels(statusClass(status)).observe(seconds);
      log.info(
        {
          access: true,
          // The fields of a request's line (access.ts), protocol among them: dashboards split by it.
          protocol: 'http/1.1',
          upgrade: String(req.headers.upgrade ?? '').slice(0, 32),
          domain,
          method: req.method,
          path: (req.url ?? '/').split('?')[0],
          status,
          bytes: end?.bytes,
          durationMs: Math.round(seconds * 1e4) / 10,
          origin: access.origin,
          code,
          tls: tlsVersion,
          resumed,
          ...(status === CLIENT_GONE || end?.aborted === true ? { aborted: true } : {}),
        },
        'request',
      );
    },
  };
  return access;
}
