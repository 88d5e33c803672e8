/**
 * The plain-HTTP listener (port 80 in production): every request for a known
 * domain is sent to HTTPS with 308 Permanent Redirect (RFC 9110 §15.4.9:
 * unlike 301, the method and body are kept), except ACME HTTP-01 challenges
 * (RFC 8555 §8.3, `/.well-known/acme-challenge/`): a token of our own ACME
 * issuer (proxy/acme/challenges.ts) is answered here, for any Host it was made
 * for, known domain or not yet; every other one goes to the domain's origin,
 * so a customer's own ACME client keeps working, but only when its path is a
 * challenge's and nothing else (a base64url token, RFC 8555 §8.1 and §8.3):
 * `/.well-known/acme-challenge/../admin` or `%2e%2e/` would otherwise reach the
 * origin in clear text, past the redirect, on an origin that resolves dot
 * segments. Such a path is redirected as any other. No HSTS here: it is only honoured over HTTPS (RFC 6797 §7.2).
 * Request targets and expectations are dealt with as on HTTPS (handler.ts);
 * CONNECT gets 400 as on HTTPS (createConnectRefusal); an Upgrade is answered
 * as the request it is, and closes the connection (answerUpgradeAsRequest).
 * Our own answers read no request body: to a request whose body is still
 * coming they close the connection, after a bounded lingering, unless it is
 * small and declared: then it is read and dropped (linger.ts).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { closingAnswer, declaresBody } from '../../keyserver/shared/closing-answer.js';
import type { Logger } from '../../keyserver/shared/log.js';
import { type ProxyMetrics, statusClass } from '../metrics.js';
import { type NameIndex, selectByName } from '../tls/names.js';
import { type Expectation, type ExpectingHandler, upgradeExpectation } from './expect.js';
import { forward, type OriginPools } from './forward.js';
import { answer, CLIENT_CLOSED_STATUS, type Domain, type HttpErrorCode, hostName, onAnswerEnd, ownAnswer, refuseFailure } from './handler.js';
import { closeIfBodyUnread, lingerAfterEnd } from './linger.js';
import { cutAnswer, dropAfterAnswers, queueAnswer } from './queued.js';
import { refusalText } from './raw-answer.js';
import { BODY_REFUSED, CONNECT_REFUSED } from './upgrade-refusals.js';
import type { TrustedPeers } from './trusted-peers.js';
import type { ChallengeAnswers } from '../acme/challenges.js';

/** RFC 8555 §8.3: the path is the prefix and the token, whose characters are base64url's (§8.1); no query. */
const ACME_CHALLENGE_PATH = /^\/\.well-known\/acme-challenge\/[A-Za-z0-9_-]{1,255}$/;
/**
 * Only a plain DNS name goes into a Location: a wildcard's label could otherwise smuggle in '/' or '@'. Labels of at
 * most 63 characters, names of at most 253 (RFC 1035 §2.3.4): a wildcard matches any label, and an over-long one would
 * be echoed into the Location.
 */
const DNS_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

export interface RedirectOptions {
  readonly domains: () => NameIndex<Domain>;
  readonly pools: OriginPools;
  /** Peers whose forwarding headers are kept; none when absent. */
  readonly trustedPeers?: TrustedPeers;
  /** For domains without their own `maxBodyBytes` (limits.maxBodyBytes), as on HTTPS. */
  readonly maxBodyBytes: number;
  /** The HTTPS port clients should use; 443 is left out of the Location. */
  readonly httpsPort: number;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
  /** Our ACME issuer's HTTP-01 tokens; none when absent. */
  readonly challenges?: ChallengeAnswers;
}

export function createRedirectHandler(options: RedirectOptions): ExpectingHandler {
  const { log, metrics } = options;
  return (req: IncomingMessage, res: ServerResponse, expectation?: Expectation) => {
    const own = ownAnswer(req, expectation);
    const rawHost = hostName(req.headers.host);
    const host = rawHost !== undefined && DNS_NAME.test(rawHost) ? rawHost.toLowerCase() : undefined;
    const domain = selectByName(options.domains(), host, undefined)?.value;
    const path = req.url ?? '/';
    let code: HttpErrorCode | undefined;
    onAnswerEnd(
      req,
      res,
      () => code,
      ({ status, aborted, ...ending }) => {
        code = ending.code;
        metrics.requests.inc({ status_class: statusClass(status), code: code ?? 'none', protocol: 'http/1.1' });
        log.info(
          { access: true, scheme: 'http', domain: domain?.name, method: req.method, path: path.split('?')[0], status, code, ...(aborted ? { aborted } : {}) },
          'request',
        );
      },
    );
    // A pipelined answer still queued behind another: until it ends, the connection's last answer, the one the stop
    // closes the connection after (queued.ts, retire.ts); else the stop closed it after the one in progress, and the
    // answers queued behind were lost, an ACME request's among them, already at its origin.
    if (res.socket === null) {
      const cancel = queueAnswer(req.socket, res, () => cancel());
      res.once('finish', cancel);
      res.once('close', cancel);
    }
    if (own !== undefined) {
      code = own.code;
      answer(res, own, {});
      return;
    }
    const keyAuthorization = options.challenges?.answer(host, path);
    if (keyAuthorization !== undefined) {
      // RFC 8555 §8.3: the key authorization as the body; the CA ignores the content type.
      closeIfBodyUnread(req, res);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': Buffer.byteLength(keyAuthorization) });
      res.end(keyAuthorization);
      return;
    }
    if (domain === undefined || host === undefined) {
      const body = 'unknown host\n';
      code = 'KEYEDGE_HTTP_UNKNOWN_HOST';
      closeIfBodyUnread(req, res);
      res.writeHead(404, {
        'content-type': 'text/plain; charset=utf-8',
        'content-length': Buffer.byteLength(body),
        'x-keyedge-error': 'KEYEDGE_HTTP_UNKNOWN_HOST',
      });
      res.end(body);
      return;
    }
    if (ACME_CHALLENGE_PATH.test(path)) {
      // The body limit is HTTPS's: a challenge path on port 80 is no way around it.
      const maxBodyBytes = domain.maxBodyBytes ?? options.maxBodyBytes;
      forward(options.pools, domain, req, res, {
        extraHeaders: {},
        proto: 'http',
        maxBodyBytes,
        trusted: options.trustedPeers,
        awaitsContinue: expectation === 'continue',
        onOrigin() {},
        onFailure(err) {
          // The client left: no one to answer, and not the origin's failure.
          if (code === 'KEYEDGE_HTTP_CLIENT_CLOSED') return;
          const refused = refuseFailure(err, req, res, {}, maxBodyBytes);
          if (refused !== undefined) {
            code = refused;
            log.info({ code, domain: domain.name, reason: err.message }, 'ACME challenge request refused');
            return;
          }
          code = res.headersSent ? 'KEYEDGE_HTTP_ORIGIN_ABORTED' : 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE';
          log.warn({ code: 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE', domain: domain.name, err }, 'ACME challenge could not reach the origin');
          if (!res.headersSent)
            res
              .writeHead(502, { 'content-type': 'text/plain; charset=utf-8', 'x-keyedge-error': 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE' })
              .end('origin unreachable\n');
          else cutAnswer(res);
        },
      });
      return;
    }
    const port = options.httpsPort === 443 ? '' : `:${options.httpsPort}`;
    // The client sends its body again to HTTPS: this one is not read (linger.ts).
    closeIfBodyUnread(req, res);
    res.writeHead(308, { location: `https://${host}${port}${path}`, 'content-length': 0 });
    res.end();
  };
}

/**
 * CONNECT on the plain-HTTP port (RFC 9110 §9.3.6): no tunnel is offered,
 * 400 as on HTTPS (upgrade.ts), after the answers to the requests pipelined
 * before it, then the connection closes with a lingering close (linger.ts).
 * Node hands a CONNECT over as it does an upgrade; without this listener it
 * destroys the connection, with no answer and the earlier answers cut.
 */
export function createConnectRefusal(options: Pick<RedirectOptions, 'log' | 'metrics'>): (req: IncomingMessage, socket: Duplex) => void {
  return (req, socket) => refuseOnSocket(options, req, socket, CONNECT_REFUSED);
}

/** `refusal` written on the raw `socket` Node handed over, after the answers before it, and logged; the connection closes. */
function refuseOnSocket(options: Pick<RedirectOptions, 'log' | 'metrics'>, req: IncomingMessage, socket: Duplex, refusal: typeof CONNECT_REFUSED): void {
  const { log, metrics } = options;
  // Node removed its own error listener when it handed the socket over; a reset from here on is expected.
  if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
  dropAfterAnswers(socket, () => {
    // Gone while the answers before it went out: its line says so, as a request's does (499), not the refusal never sent.
    const gone = !socket.writable;
    const { status, code } = gone ? { status: CLIENT_CLOSED_STATUS, code: 'KEYEDGE_HTTP_CLIENT_CLOSED' as const } : refusal;
    metrics.requests.inc({ status_class: statusClass(status), code, protocol: 'http/1.1' });
    const path = (req.url ?? '').split('?')[0];
    log.info({ access: true, scheme: 'http', method: req.method, path, status, code, ...(gone ? { aborted: true } : {}) }, 'request');
    if (gone) return void socket.destroy();
    socket.end(refusalText(refusal, undefined), 'latin1');
    socket.resume();
    lingerAfterEnd(socket);
  });
}

/**
 * The plain-HTTP port's 'upgrade' listener: keyedge switches to nothing there (RFC 9110 §7.8 lets a server ignore
 * Upgrade), so an Upgrade is answered by `handler` as the request it is (a redirect, an ACME challenge), with
 * `Connection: close`, and what the client sent after its head is dropped, as on HTTPS when the origin does not
 * switch (upgrade.ts). Without this listener Node's server took it for a request as well, but dropped the rest of the
 * read it came in (its parser had stopped there for the switch) and parsed on from the next read, keeping the
 * connection: a request pipelined behind it was lost, unanswered; bytes sent next as that request's body were read
 * as a request of their own (request smuggling past a proxy in front). One with a body (which Node leaves unread
 * among those bytes) gets the 400 it gets on HTTPS; one with an Expect other than 100-continue, the 417 any request gets
 * (expect.ts: Node hands an Upgrade over before it looks at Expect).
 */
export function answerUpgradeAsRequest(
  options: Pick<RedirectOptions, 'log' | 'metrics'>,
  handler: ExpectingHandler,
): (req: IncomingMessage, socket: Duplex) => void {
  return (req, socket) => {
    if (declaresBody(req)) return refuseOnSocket(options, req, socket, BODY_REFUSED);
    if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
    dropAfterAnswers(socket, () => {
      // Gone while the answers before it went out: its line says so, as a request's does (499).
      if (!socket.writable) {
        const code = 'KEYEDGE_HTTP_CLIENT_CLOSED';
        options.metrics.requests.inc({ status_class: statusClass(CLIENT_CLOSED_STATUS), code, protocol: 'http/1.1' });
        const path = (req.url ?? '').split('?')[0];
        options.log.info({ access: true, scheme: 'http', method: req.method, path, status: CLIENT_CLOSED_STATUS, code, aborted: true }, 'request');
        return void socket.destroy();
      }
      // What follows the head is dropped, and read on meanwhile: a client that leaves (its FIN, which Node's server
      // takes as the end of a request's client) is seen, and its answer and origin request end with it, logged 499.
      socket.resume();
      socket.once('end', () => socket.destroy());
      closingAnswer(
        req,
        socket as Socket,
        // An Expect other than 100-continue gets its 417, as an ordinary request's does.
        (res) => handler(req, res, upgradeExpectation(req)),
        () => {
          socket.resume();
          lingerAfterEnd(socket);
        },
      );
    });
  };
}
