/**
 * An origin's answer to an Upgrade other than its 101 (upgrade-attempt.ts):
 * relayed as an ordinary response with `connection: close` (our HSTS in
 * place of the origin's, its hop-by-hop fields removed: raw-answer.ts), the
 * held bytes dropped (the connection cannot go on: its framing is lost), the
 * origin's connection closed as soon as its answer is read (it never returns
 * to a pool) and the client's once it is sent (upgrade-close.ts). An answer
 * with transfer codings besides chunked, or a status over 599, is refused
 * (502) as for requests. The client that takes nothing of the answer for
 * `sendTimeoutMs` is cut (as send-stall.ts does for requests); an origin that
 * sends nothing of its body for `originReadTimeoutMs` while the client reads
 * has the answer cut. Its access line is written at its end, with its bytes.
 */
import type { IncomingMessage } from 'node:http';
import { refuseTransferCodings } from './forward-headers.js';
import { refuseInvalidStatus } from './origin-status.js';
import { relayedFields, responseHead } from './raw-answer.js';
import { CLIENT_CLOSED } from './upgrade-access.js';
import type { OriginAttempt } from './upgrade-attempt.js';
import { closeAfter } from './upgrade-close.js';
import type { UpgradeExchange } from './upgrade-exchange.js';

/** Relays the origin's answer `res` (not a switch) to the client of `exchange`. */
export function relayAnswer(exchange: UpgradeExchange, attempt: OriginAttempt, res: IncomingMessage): void {
  const { client } = exchange;
  const { pools } = exchange.options;
  const { upstream, target } = attempt;
  // A 101 without Upgrade and Connection (RFC 9110 §15.2.2) switches to nothing we could relay.
  if ((res.statusCode ?? 0) < 200) return attempt.fail('broken', new Error('origin answered 101 without switching protocols'));
  // Codings besides chunked would reach the client as if they were the content (forward-headers.ts), and a status
  // over 599 is invalid (origin-status.ts); the origin answered, so it is not cooled down, as for requests.
  try {
    refuseInvalidStatus(res.statusCode ?? 0);
    refuseTransferCodings(res.rawHeaders);
  } catch (err) {
    return attempt.fail('not-origin', err as Error);
  }
  attempt.answered = true;
  // Between two reads of its body, the origin has originReadTimeoutMs, as an answer to a request has (its body
  // may end with the connection only): a stalled one held the client and the origin connection for ever.
  upstream.setTimeout(pools.readMs);
  pools.succeeded(target);
  const status = res.statusCode ?? 502;
  // Logged at the relay's end, as an answer to a request is (access.ts): with its bytes, and, when it was cut, why
  // (the client stopped reading, the origin cut it, or the client left), not as a whole answer at its head.
  let bytes = 0;
  res.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  client.once('finish', () => exchange.access.settle(status, undefined, { bytes, aborted: false }));
  exchange.gone = () => exchange.access.settle(status, attempt.cut ?? CLIENT_CLOSED, { bytes, aborted: true });
  // Not switched: the held bytes are dropped, so the connection cannot go on (its framing is lost).
  const headers = [...relayedFields(res, exchange.hsts), ['connection', 'close'] as [string, string]];
  client.write(responseHead(status, res.statusMessage, headers), 'latin1');
  res.on('error', () => undefined);
  // A client that takes nothing of the answer for sendTimeoutMs is cut, its origin connection with it (the
  // client's close drops it), as an answer to a request is (send-stall.ts): nothing else times out here.
  let stall: NodeJS.Timeout | undefined;
  const flowing = (): void => {
    clearTimeout(stall);
    stall = undefined;
    if (!attempt.done) upstream.setTimeout(pools.readMs);
  };
  res.on('pause', () => {
    // The client's close unpipes the answer, which pauses it, after the close's own clearing (`flowing`): armed
    // then, the clock held the answer and both connections for sendTimeoutMs after the connection was gone.
    if (client.destroyed) return;
    stall ??= setTimeout(() => {
      attempt.cut = 'KEYEDGE_HTTP_SEND_TIMEOUT';
      client.destroy();
    }, pools.sendTimeoutMs);
    // Not the origin's stall while the client is the one not reading (sendTimeoutMs is), as for requests.
    upstream.setTimeout(0);
  });
  client.on('drain', flowing);
  client.once('close', flowing);
  res.pipe(client, { end: false });
  res.once('close', () => {
    // Never back to a pool: the origin connection closes with its answer.
    attempt.done = true;
    upstream.destroy();
    // An answer cut short is passed on cut, never completed as if whole.
    if (res.complete) {
      // From here on `closeAfter` watches the client's progress. The relay's clock, armed by the 'pause' that comes
      // with the answer's end, would never be stopped (no 'drain' comes once the socket is ended): it cut a
      // client still taking the answer's last bytes sendTimeoutMs after the end.
      clearTimeout(stall);
      return closeAfter(client, pools.sendTimeoutMs, '', () => {
        attempt.cut = 'KEYEDGE_HTTP_SEND_TIMEOUT';
      });
    }
    attempt.cut ??= 'KEYEDGE_HTTP_ORIGIN_ABORTED';
    client.destroy();
  });
}
