/**
 * What the primary (cluster.ts) and its workers (cluster-worker.ts) say to
 * each other over node:cluster's IPC channel: each message's type, how it is
 * built and how it is recognised. Pure; both sides take them from here, so
 * neither imports the other. The ticket-key ring (tls/tickets.ts), the ACME
 * challenge board (acme/challenges.ts) and the metrics polls
 * (cluster-metrics.ts) have their own messages beside these.
 */
import type { KeyedgeErrorCode } from '../keyserver/shared/errors.js';
import type { WireDelta } from './serving/pack.js';

export const SHUTDOWN = { type: 'keyedge:shutdown' } as const;
export const READY = { type: 'keyedge:ready' } as const;
/** A worker that could not start (a port in use, the bridge not built) says why before it exits. */
export const START_FAILED = 'keyedge:start-failed';
/** A worker asks for the ticket key once it listens for messages: one sent on 'online' could arrive before that and be lost. */
export const WANT_TICKET_KEY = { type: 'keyedge:want-ticket-key' } as const;
/** A worker acknowledges each ring it applied, by generation: a rotation asked for by the admin answers once every worker uses it. */
export const TICKET_KEYS_APPLIED = 'keyedge:ticket-keys-applied';
/** The serving state a worker starts from (a snapshot), then each reload's delta. */
export const SERVE = 'keyedge:serve';
export const APPLY = 'keyedge:apply';
/** A worker's word that it applied a delta, or why it could not. */
export const APPLIED = 'keyedge:applied';
/** A worker says it opened a pack (serving/pack.ts): the primary may unlink it. */
export const PACK_OPENED = 'keyedge:pack-opened';

export function isMessage(message: unknown, type: string): boolean {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === type;
}

export function isShutdownMessage(message: unknown): boolean {
  return isMessage(message, SHUTDOWN.type);
}

/** A worker's word that it serves (an embedder of runPrimary can count them on cluster 'message'). */
export function isReadyMessage(message: unknown): boolean {
  return isMessage(message, READY.type);
}

export interface AppliedMessage {
  readonly type: typeof APPLIED;
  readonly generation: number;
  readonly error?: string;
}

export function serveMessage(wire: WireDelta): { type: typeof SERVE } & WireDelta {
  return { type: SERVE, ...wire };
}

export function applyMessage(wire: WireDelta): { type: typeof APPLY } & WireDelta {
  return { type: APPLY, ...wire };
}

export function isAppliedMessage(message: unknown): message is AppliedMessage {
  return isMessage(message, APPLIED);
}

export interface StartFailedMessage {
  readonly type: typeof START_FAILED;
  readonly code: KeyedgeErrorCode;
  readonly message: string;
}

export function isStartFailedMessage(message: unknown): message is StartFailedMessage {
  return (
    isMessage(message, START_FAILED) &&
    typeof (message as { message?: unknown }).message === 'string' &&
    String((message as { code?: unknown }).code).startsWith('KEYEDGE_ERR_')
  );
}
