/**
 * The close of an Upgrade's client connection after our last answer on it
 * (upgrade.ts: a refusal; upgrade-relay.ts: the origin's answer relayed): it
 * never goes back to HTTP parsing (the bytes held behind the request head are
 * dropped, so its framing is lost). Closing with the client's bytes unread
 * would reset the connection, and the reset can destroy the answer before it
 * is read: so the connection lingers, reading and dropping, as nginx's
 * lingering close does.
 */
import type tls from 'node:tls';

/**
 * How long a client connection we close may still send before it is cut
 * (nginx's lingering_timeout): closing with its bytes unread would reset the
 * connection, and the reset can destroy our last answer before it is read.
 */
const LINGER_MS = 5_000;

/**
 * Ends the client connection after `last`, then reads and drops what the client still sends for LINGER_MS, from
 * the moment all the answer is handed to the kernel ('finish'), as nginx lingers once its answer is sent: begun
 * at `end()`, it destroyed what the kernel had no room for yet (its buffers to a slow client full) under a client
 * still reading, which got the answer cut, and without a length could not tell. Until then, a client that took
 * nothing of it (`writableLength` did not go down) for a whole `sendTimeoutMs` is cut, `stalled` told first, as
 * the relay's stall clock does: one that stopped reading holds the connection no longer than during the relay.
 */
export function closeAfter(client: tls.TLSSocket, sendTimeoutMs: number, last = '', stalled?: () => void): void {
  if (!client.writable) return void client.destroy();
  client.end(last, 'latin1');
  client.resume();
  let timer: NodeJS.Timeout | undefined;
  const linger = (): void => {
    clearTimeout(timer);
    timer = setTimeout(() => client.destroy(), LINGER_MS);
  };
  let left = client.writableLength;
  const check = (): void => {
    // All of the answer is in the kernel, only TLS's close_notify (and the FIN) may wait for room: it is sent.
    if (client.writableLength === 0) {
      client.off('finish', linger);
      return linger();
    }
    if (client.writableLength >= left) {
      stalled?.();
      return void client.destroy();
    }
    left = client.writableLength;
    timer = setTimeout(check, sendTimeoutMs);
  };
  timer = setTimeout(check, sendTimeoutMs);
  client.once('finish', linger);
  client.once('close', () => {
    clearTimeout(timer);
    client.off('finish', linger);
  });
}
