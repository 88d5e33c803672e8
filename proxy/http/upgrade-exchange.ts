/**
 * What one Upgrade request's handling shares between its parts: the handler
 * (upgrade.ts: checks, routing, the origin's gate), the attempt on an origin
 * (upgrade-attempt.ts) and the two ways its answer goes, the switch
 * (upgrade-switch.ts) and a relayed refusal (upgrade-relay.ts). Types only.
 */
import type { IncomingMessage } from 'node:http';
import type tls from 'node:tls';
import type { Logger } from '../../keyserver/shared/log.js';
import type { ProxyMetrics } from '../metrics.js';
import type { NameIndex } from '../tls/names.js';
import type { Domain, Refusal } from './handler.js';
import type { OriginPools } from './origins.js';
import type { TrustedPeers } from './trusted-peers.js';
import type { UpgradeAccess } from './upgrade-access.js';

export interface UpgradeOptions {
  readonly domains: () => NameIndex<Domain>;
  readonly pools: OriginPools;
  readonly hstsMaxAgeSeconds: number;
  readonly trustedPeers?: TrustedPeers;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
  /** `limits.tunnelIdleTimeoutMs` (tunnel.ts): null, no idle bound. Required: a caller that forgot it got none. */
  readonly tunnelIdleTimeoutMs: number | null;
}

/** One routed Upgrade request, from its checks to its end. */
export interface UpgradeExchange {
  readonly options: UpgradeOptions;
  readonly req: IncomingMessage;
  /** The client's connection: paused, what it sent after the request head held, until the origin switches. */
  readonly client: tls.TLSSocket;
  /** Who the client counts as at the origin's gate (its share of the places, origin-gate.ts); undefined: no share. */
  readonly countedAs: string | undefined;
  /** The bytes read past the request head: the new protocol's, passed on only after the switch. */
  readonly head: Buffer;
  /** The routed domain's name. */
  readonly domain: string;
  /** Our HSTS value for the domain (handler.ts hstsValue). */
  readonly hsts: string;
  /** Whether the client asked for WebSocket (and may have it: not HTTP/1.0); else no switch is asked for. */
  readonly websocket: boolean;
  readonly access: UpgradeAccess;
  /** Our refusal, settled and written, then the client's connection closed (upgrade-close.ts). */
  readonly refuse: (refusal: Refusal) => void;
  /** Ends the origin side of the attempt under way, if any: told at the client's close. */
  dropOrigin: (() => void) | undefined;
  /** What the client's close settles: its leaving before any answer, unless an answer being relayed says otherwise. */
  gone: () => void;
}
