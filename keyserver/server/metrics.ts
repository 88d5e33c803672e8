/**
 * The key server's metrics: one Registry, prefix `keyedge_keyserver_`.
 *
 * Labels are bounded by construction: op and algorithm come from the protocol's
 * fixed tables, result from its error-code names, transport is unix|tls,
 * reason from DROP_REASONS. Key
 * ids, client names and peer addresses are never labels (per-key usage goes to
 * the periodic log line instead).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const PREFIX = 'keyedge_keyserver_';

/** Why the key server closed a connection on its own (README, "Metrics"). */
export const DROP_REASONS = [
  'frame_timeout',
  'evicted_client_cap',
  'evicted_connection_cap',
  'refused_client_cap',
  'refused_connection_cap',
  'tls_listener_full',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export class KeyserverMetrics {
  readonly registry = new Registry();

  readonly requests = new Counter({
    name: `${PREFIX}requests_total`,
    help: 'Requests answered, by operation, algorithm (sign only, else "none") and result ("ok" or the wire error name).',
    labelNames: ['op', 'algorithm', 'result'] as const,
    registers: [this.registry],
  });

  readonly signDuration = new Histogram({
    name: `${PREFIX}sign_duration_seconds`,
    help: 'Time from a sign request being decoded to its answer being queued, including the wait for a token session.',
    labelNames: ['algorithm'] as const,
    // 100 µs (a SoftHSM2 ECDSA sign on an idle core) to 2 s (an RSA-4096 sign on a
    // busy network HSM): the range a deadline of a few seconds can see.
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2],
    registers: [this.registry],
  });

  readonly inFlight = new Gauge({
    name: `${PREFIX}in_flight_requests`,
    help: 'Requests received and not yet answered, over all connections.',
    registers: [this.registry],
  });

  readonly connections = new Gauge({
    name: `${PREFIX}connections`,
    help: 'Open client connections, by transport.',
    labelNames: ['transport'] as const,
    registers: [this.registry],
  });

  readonly connectionsDropped = new Counter<'reason'>({
    name: `${PREFIX}connections_dropped_total`,
    help:
      'Connections the key server closed on its own, by reason: a frame incomplete past limits.frameTimeoutMs, ' +
      'evicted or refused at the per-client or overall connection cap, or dropped by a full TLS listener.',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly authzRefusals = new Counter({
    name: `${PREFIX}authorization_refusals_total`,
    help: 'Requests refused because the client may not use the key (each also has an audit log line), by transport.',
    labelNames: ['transport'] as const,
    registers: [this.registry],
  });

  readonly tlsHandshakeFailures = new Counter({
    name: `${PREFIX}tls_client_rejections_total`,
    help: 'Mutual-TLS connections refused before any request (no client certificate, wrong CA, bad handshake).',
    registers: [this.registry],
  });

  readonly keys = new Gauge({
    name: `${PREFIX}keys`,
    help: 'Signing keys found in the token at the last scan.',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
    // Every reason exported from the start at 0, so a rate() over it has a baseline.
    for (const reason of DROP_REASONS) this.connectionsDropped.inc({ reason }, 0);
  }

  connectionDropped(reason: DropReason): void {
    this.connectionsDropped.inc({ reason });
  }
}
