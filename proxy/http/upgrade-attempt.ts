/**
 * One attempt of an Upgrade on one origin (upgrade.ts hands it a place at
 * the origin's gate, origin-gate.ts, held until this origin connection
 * closes, the tunnel's whole life included): the connection, the request
 * sent with node:http's client, so Node's parser reads the origin's answer,
 * and the deadlines of the handshake. Its answer goes one of two ways: a 101
 * switches (upgrade-switch.ts), anything else is relayed (upgrade-relay.ts).
 *
 * A failed connect is retried once on the next origin (nothing of the
 * request has left the proxy before the connection is up); otherwise the
 * client gets our 502/504. Mid-answer, a failure can only cut the client.
 */
import http, { type IncomingMessage } from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { type OriginFailure, originFailure } from './forward.js';
import { originRefusal } from './handler.js';
import type { OriginGate } from './origin-gate.js';
import type { OriginTarget } from './origins.js';
import type { UpgradeExchange } from './upgrade-exchange.js';
import { connectOrigin, upgradeHeaders } from './upgrade-origin.js';
import { relayAnswer } from './upgrade-relay.js';
import { switchProtocols } from './upgrade-switch.js';

/** A tunnel's place at the gate is a long-held one (origin-gate.ts: at most half the places, with streamed uploads). */
export const LONG_HELD = true;

/** The attempt under way, as its answer's handlers (upgrade-switch.ts, upgrade-relay.ts) share it. */
export interface OriginAttempt {
  readonly target: OriginTarget;
  readonly upstream: net.Socket;
  /** The origin answered and its answer is with the client (the 101, or a relayed head): a failure now cuts the client. */
  answered: boolean;
  /** The attempt is over: its origin connection is closed or closing. */
  done: boolean;
  /** Why an ordinary answer being relayed was cut, for its access line. */
  cut: 'KEYEDGE_HTTP_SEND_TIMEOUT' | 'KEYEDGE_HTTP_ORIGIN_ABORTED' | undefined;
  /** Ends the attempt on a failure: the client refused (or cut, mid-answer), or the next origin tried. */
  readonly fail: (failure: OriginFailure, err: Error) => void;
  /** The origin connection's error listener until the switch. */
  readonly onError: (err: Error) => void;
  /** The handshake's timeouts (connect, then the answer's deadline). */
  readonly onTimeout: () => void;
}

/**
 * The attempt on `target`, holding a place at its `gate` until its origin connection closes. `retry`: the attempt on
 * the next origin, when there is one to go to.
 */
export function sendUpgrade(exchange: UpgradeExchange, target: OriginTarget, gate: OriginGate, retry: (() => void) | undefined): void {
  const { options, req, client } = exchange;
  const { pools, log } = options;
  let upstream: net.Socket;
  try {
    upstream = connectOrigin(target, pools.timeouts.connectMs);
  } catch (err) {
    // Options node refuses before any connection exists (none expected: CA files are checked when read).
    gate.leave(LONG_HELD, exchange.countedAs);
    log.warn({ code: 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE', domain: exchange.domain, origin: exchange.access.origin, err }, 'origin upgrade failed');
    return exchange.refuse(originRefusal('broken'));
  }
  // Exactly once, on every path: a socket closes once, whether it failed, was cut, ended or its tunnel closed.
  upstream.once('close', () => gate.leave(LONG_HELD, exchange.countedAs));
  let connected = false;
  const fail = (failure: OriginFailure, err: Error): void => {
    if (attempt.done) return;
    attempt.done = true;
    upstream.destroy();
    // Mid-answer, the client can only be told by a cut connection.
    if (attempt.answered) {
      attempt.cut ??= 'KEYEDGE_HTTP_ORIGIN_ABORTED';
      return void client.destroy();
    }
    if (failure !== 'not-origin') pools.failed(target);
    // Nothing reached the origin before its connection was up, so any upgrade may go to the next one.
    if (retry !== undefined && (failure === 'connect' || failure === 'certificate')) return retry();
    const refusal = originRefusal(failure);
    log.warn({ code: refusal.code, domain: exchange.domain, origin: exchange.access.origin, err }, 'origin upgrade failed');
    exchange.refuse(refusal);
  };
  // The client is still there (its leaving ends the attempt first): any failure is the origin's. But an answer node's
  // parser refuses (HPE_*) is one the origin gave: 502, not cooled down, as for requests (origin-failure.ts). Cooled
  // down, a client kept an origin out of rotation with Upgrades to a path it answers so.
  const onError = (err: Error): void => {
    // Node's parse error carries the origin's bytes as `rawPacket` (its answer's content, cookies), which the failure's
    // log line would print; its message says what broke (as origin-exchange.ts does for undici's).
    delete (err as { rawPacket?: unknown }).rawPacket;
    const parserRefused = String((err as { code?: unknown }).code ?? '').startsWith('HPE_');
    const failure = originFailure(err);
    fail(failure === 'not-origin' && !parserRefused ? 'broken' : failure, err);
  };
  const onTimeout = (): void => fail(connected ? 'timeout' : 'connect', new Error(connected ? 'origin answer timed out' : 'origin connect timed out'));
  const attempt: OriginAttempt = { target, upstream, answered: false, done: false, cut: undefined, fail, onError, onTimeout };
  exchange.dropOrigin = () => {
    attempt.done = true;
    upstream.destroy();
  };
  // node:http's client drops its error listener at the switch: this one stays.
  upstream.on('error', onError);
  upstream.once('timeout', onTimeout);
  /**
   * From the connection on, the wait is for the answer, due responseMs after the request whatever comes before it,
   * as for requests (README, "Interim answers"; origin-interim.ts): not the socket's idle timer, which each interim
   * 1xx, or each byte of a head trickled, restarted, so that an origin sending one now and then held the client and
   * the upgrade's place at the origin for as long as it liked.
   */
  let answerDue: NodeJS.Timeout | undefined;
  upstream.once(target.tls === undefined ? 'connect' : 'secureConnect', () => {
    connected = true;
    upstream.setTimeout(0);
    answerDue = setTimeout(onTimeout, pools.timeouts.responseMs);
  });
  upstream.once('close', () => clearTimeout(answerDue));
  let request: http.ClientRequest;
  try {
    request = http.request({
      method: req.method,
      path: req.url ?? '/',
      headers: upgradeHeaders(req, exchange.websocket, target, client.remoteAddress, options.trustedPeers),
      // Host is the one of the forwarding rule; without one, none (node would invent its own).
      setHost: false,
      createConnection: () => upstream,
    });
  } catch (err) {
    // A request node's client refuses to send as given (it validates path and headers).
    return fail('not-origin', err as Error);
  }
  request.on('error', onError);
  request.on('upgrade', (res: IncomingMessage, _socket: Duplex, originHead: Buffer) => {
    clearTimeout(answerDue);
    switchProtocols(exchange, attempt, res, originHead);
  });
  request.on('response', (res: IncomingMessage) => {
    clearTimeout(answerDue);
    relayAnswer(exchange, attempt, res);
  });
  request.end();
}
