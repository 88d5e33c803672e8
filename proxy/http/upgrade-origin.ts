/**
 * The origin side of an Upgrade (upgrade-attempt.ts): its connection, opened
 * here rather than by a pool (it never returns to one), and the request's
 * headers, which ask for WebSocket and nothing else (RFC 9110 §7.8: Upgrade
 * and Connection are hop-by-hop, the client's are dropped; any other
 * protocol, h2c above all, is not asked for). Host and the forwarding
 * headers follow forward.ts's rule.
 */
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { originRequestHeaders } from './forward.js';
import type { OriginTarget } from './origins.js';
import type { TrustedPeers } from './trusted-peers.js';

/** The connection to `target`, with the connect timeout until it is up (then switched off by the caller: answerDue). */
export function connectOrigin(target: OriginTarget, timeoutMs: number): net.Socket {
  const hostname = target.url.hostname.startsWith('[') ? target.url.hostname.slice(1, -1) : target.url.hostname;
  const port = Number(target.url.port || (target.tls === undefined ? 80 : 443));
  const socket =
    target.tls === undefined
      ? net.connect({ host: hostname, port })
      : tls.connect({ host: hostname, port, ca: target.tls.ca, servername: target.tls.servername, rejectUnauthorized: true, ALPNProtocols: ['http/1.1'] });
  // Until connected, the connect timeout; then it is switched off, and the answer has its own deadline (answerDue).
  socket.setTimeout(timeoutMs);
  socket.setNoDelay(true);
  return socket;
}

/** Whether an Upgrade field lists WebSocket (RFC 9110 §7.8: a list of protocol[/version], names case-insensitive). */
export function namesWebSocket(upgrade: string | undefined): boolean {
  if (upgrade === undefined) return false;
  for (const protocol of upgrade.split(',')) if (protocol.trim().toLowerCase() === 'websocket') return true;
  return false;
}

/** The origin request's headers: asking for WebSocket alone, or, when the client asked for anything else, for no switch. */
export function upgradeHeaders(
  req: IncomingMessage,
  websocket: boolean,
  target: OriginTarget,
  peer: string | undefined,
  trusted: TrustedPeers | undefined,
): Record<string, string | string[]> {
  const headers = originRequestHeaders(req.headers, peer, 'https', target, trusted);
  if (websocket) {
    headers.connection = 'upgrade';
    headers.upgrade = 'websocket';
  } else headers.connection = 'close';
  return headers;
}
