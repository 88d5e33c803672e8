/**
 * The origin's 101 to an Upgrade (upgrade-attempt.ts): the switch the proxy
 * asked for, and only that one, becomes a tunnel. The 101 the client gets
 * says the switch itself (RFC 9110 §7.8, to the protocol checked), then the
 * origin's end-to-end fields with our HSTS (raw-answer.ts); then the bytes
 * the client sent after its request, held until now, go to the origin in
 * order, and the two sockets are piped both ways (tunnel.ts). A 101 naming
 * anything but WebSocket, or to a request that asked for no switch, is the
 * origin's failure (502), never a tunnel: "h2c smuggling" would take every
 * later request on the connection straight from the client, past routing and
 * the forwarding headers.
 */
import type { IncomingMessage } from 'node:http';
import { relayedFields, responseHead } from './raw-answer.js';
import { openTunnel } from './tunnel.js';
import type { OriginAttempt } from './upgrade-attempt.js';
import type { UpgradeExchange } from './upgrade-exchange.js';
import { namesWebSocket } from './upgrade-origin.js';

/** Switches `exchange` to the tunnel on the origin's 101 `res`, whose `originHead` is the new protocol's first bytes. */
export function switchProtocols(exchange: UpgradeExchange, attempt: OriginAttempt, res: IncomingMessage, originHead: Buffer): void {
  const { client, head, options } = exchange;
  const { upstream, target } = attempt;
  // Only the switch the proxy asked for is relayed (above); RFC 6455 §4.1: the client would fail it too.
  if (!exchange.websocket || !namesWebSocket(res.headers.upgrade)) {
    return attempt.fail('broken', new Error('origin switched to a protocol the proxy did not ask for'));
  }
  attempt.answered = true;
  // The handshake's timeouts end here; the tunnel's idle bound is its own (tunnel.ts).
  upstream.off('timeout', attempt.onTimeout);
  options.pools.succeeded(target);
  exchange.access.settle(res.statusCode ?? 101, undefined);
  // The switch is ours to say to the client (§7.8), to the protocol checked above; then the origin's fields.
  const headers: [string, string][] = [['upgrade', 'websocket'], ['connection', 'Upgrade'], ...relayedFields(res, exchange.hsts)];
  client.write(responseHead(101, res.statusMessage, headers), 'latin1');
  if (originHead.length > 0) client.write(originHead);
  // Switched: what the client sent after its request belongs to the new protocol now.
  if (head.length > 0) upstream.write(head);
  // Either side's end or close closes the other, the tunnel's way (tunnel.ts): a side the relay ended after the
  // other's last byte lingers, so that what is still on its way to it is not thrown away by a reset. An origin
  // failure now closes its connection alone, and the tunnel the client's.
  exchange.dropOrigin = undefined;
  upstream.off('error', attempt.onError);
  upstream.on('error', () => upstream.destroy());
  openTunnel({
    client,
    upstream,
    idleMs: options.tunnelIdleTimeoutMs,
    sendTimeoutMs: options.pools.sendTimeoutMs,
    log: options.log,
    domain: exchange.domain,
    origin: exchange.access.origin,
  });
}
