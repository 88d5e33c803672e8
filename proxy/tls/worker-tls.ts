/**
 * The TLS parts every listener of one worker shares: the session-ticket key
 * ring (tickets.ts), the secure-context cache over the worker's KeySource
 * (contexts.ts), and the OCSP stapler when stapling is on (ocsp.ts).
 *
 * Why shared: every context holds the one ring, so a rotation from the
 * primary (`tickets.replace`) reaches all of them at once and a ticket from
 * one listener resumes on another; a certificate has one context per profile
 * whichever listener serves it. The listeners (listener.ts) choose among the
 * contexts per connection; the reload transaction (serving/live.ts) builds
 * and drops them.
 *
 * Cost: at most `tls.contextCacheSize` contexts; the stapler's background
 * fetches when stapling is on. `stop()` ends those fetches.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { ProxyMetrics } from '../metrics.js';
import { SecureContextCache } from './contexts.js';
import type { KeySource } from './key-source.js';
import { OcspStapler } from './ocsp.js';
import { TicketKeyRing } from './tickets.js';

export interface WorkerTlsOptions {
  /** Newest first, from the primary; a worker started alone makes its own. */
  readonly ticketKeys: readonly Buffer[] | undefined;
  readonly metrics: ProxyMetrics;
  readonly log: Logger;
}

export class WorkerTls {
  readonly tickets: TicketKeyRing;
  readonly contexts: SecureContextCache;
  /** Present when OCSP stapling is on. */
  readonly stapler: OcspStapler | undefined;

  constructor(settings: ProxyConfig['tls'], keySource: KeySource, { ticketKeys, metrics, log }: WorkerTlsOptions) {
    this.tickets = new TicketKeyRing(ticketKeys);
    this.contexts = new SecureContextCache(
      settings.contextCacheSize,
      (c) => keySource.keyFor(c),
      {},
      {
        ring: this.tickets,
        onLookup: (lookup) => metrics.ticketLookups.inc({ key: lookup }),
      },
    );
    this.stapler = settings.ocspStapling ? new OcspStapler(log) : undefined;
  }

  stop(): void {
    this.stapler?.stop();
  }
}
