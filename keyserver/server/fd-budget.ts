/**
 * The connection caps, fitted to the file descriptors the process may open.
 *
 * Why: admission (admission.ts) makes room for a newcomer by closing a
 * stalled connection, but only a newcomer Node has accepted. Past the
 * process's file limit (RLIMIT_NOFILE) the kernel's accept fails and libuv
 * accepts and closes the pending connections at once (its EMFILE trick), so
 * the newcomer is gone before admission sees it: with a limit of 150 files,
 * 122 local connections that sent nothing made every later connection fail
 * (the proxy's bridge too), while `limits.maxConnections` (1024) was never
 * reached. The caps are lowered to what the limit leaves, keeping a reserve
 * for the token (SoftHSM2 opens its object files while it signs), the admin
 * listener (at most 16 connections, admin.ts) and logs, and the key server
 * says so at start.
 *
 * Sockets held at most: `maxConnections` established, and as many mutual-TLS
 * handshakes (handshakes.ts) when the TCP listener is on.
 *
 * Linux only (/proc/self/limits); elsewhere the caps are kept as configured.
 * Node raises the soft limit to the hard one at start, so the soft limit read
 * here is the one that holds.
 */
import { readdirSync, readFileSync } from 'node:fs';
import type { KeyserverConfig } from '../../config/schema.js';
import type { Logger } from '../shared/log.js';

/** Descriptors left for everything but client sockets. */
const RESERVE = 64;

type Limits = KeyserverConfig['limits'];

/** Files this process may still open, or undefined where the system does not say. */
export function fdHeadroom(): number | undefined {
  try {
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (match === null || match[1] === 'unlimited') return undefined;
    return Number(match[1]) - readdirSync('/proc/self/fd').length;
  } catch {
    return undefined;
  }
}

/** `limits`, with maxConnections (and maxConnectionsPerClient under it) lowered to fit `headroom`; logs a warning when it lowers them. */
export function fitLimits(limits: Limits, tlsListener: boolean, log: Logger, headroom = fdHeadroom()): Limits {
  if (headroom === undefined) return limits;
  const socketsPerConnection = tlsListener ? 2 : 1;
  const fits = Math.max(1, Math.floor((headroom - RESERVE) / socketsPerConnection));
  if (limits.maxConnections <= fits) return limits;
  log.warn(
    { configured: limits.maxConnections, lowered: fits, headroom, reserve: RESERVE },
    `limits.maxConnections lowered to ${fits}: the process may open only ${headroom} more files (RLIMIT_NOFILE); raise it (ulimit -n, LimitNOFILE=) to keep ${limits.maxConnections}`,
  );
  return { ...limits, maxConnections: fits, maxConnectionsPerClient: Math.min(limits.maxConnectionsPerClient, fits) };
}
