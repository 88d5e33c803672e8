/**
 * Protocol upgrades (WebSocket, RFC 6455 §4) through the proxy: the HTTPS
 * server's 'upgrade' event hands us the client's request and raw socket; we
 * route it like any request (421/404 as handler.ts), connect to the chosen
 * origin (net or tls), send the request with the same forwarding headers and
 * Host rule as forward.ts, and relay the origin's answer. On 101 Switching
 * Protocols the two sockets are piped both ways, bytes untouched, until
 * either side ends or fails, which ends the other.
 *
 * Upgrade and Connection are hop-by-hop (RFC 9110 §7.6.1, §7.8): the client's
 * are dropped with the other hop-by-hop headers and the proxy asks the origin
 * for the same protocol itself. An answer other than 101 is relayed to the
 * client as is, then the connection closes (it is no longer parsed as HTTP).
 * A failed connect is retried once on the next origin (nothing of the
 * request has left the proxy before the connection is up); otherwise the
 * client gets our 502/504. The 101 carries HSTS like every HTTPS answer.
 */
import http, { type IncomingMessage } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Logger } from '../../keyserver/log.js';
import { type ProxyMetrics, statusClass } from '../metrics.js';
import type { NameIndex } from '../tls/names.js';
import { type OriginFailure, originFailure, originRequestHeaders } from './forward.js';
import { type Domain, hostName, hstsValue, originRefusal, type Refusal, routeRequest } from './handler.js';
import type { OriginPools, OriginTarget } from './origins.js';
import { normaliseTarget } from './target.js';
import type { TrustedPeers } from './trusted-peers.js';

/** An origin's answer head larger than this is refused: node's own default header limit. */
const MAX_ANSWER_HEAD_BYTES = 16_384;
const HEAD_END = Buffer.from('\r\n\r\n');

export interface UpgradeOptions {
  readonly domains: () => NameIndex<Domain>;
  readonly certificateNames: (servername: string | undefined) => readonly string[];
  readonly pools: OriginPools;
  readonly hstsMaxAgeSeconds: number;
  readonly trustedPeers?: TrustedPeers;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
}

export function createUpgradeHandler(options: UpgradeOptions): (req: IncomingMessage, socket: Duplex, head: Buffer) => void {
  const { pools, log, metrics } = options;
  return (req, socket, head) => {
    const client = socket as tls.TLSSocket;
    const started = process.hrtime.bigint();
    // Before routing, as for requests: an absolute-form target's authority is the Host routed on.
    const own = normaliseTarget(req);
    const host = hostName(req.headers.host);
    const servername = typeof client.servername === 'string' ? client.servername : undefined;
    const route = routeRequest(options, host, servername);
    const domain = route.domain;
    const hsts = hstsValue(options.hstsMaxAgeSeconds, domain);
    const tlsVersion = client.getProtocol?.() ?? undefined;
    let origin: string | undefined;
    let settled = false;
    const settle = (status: number, code: Refusal['code'] | undefined): void => {
      if (settled) return;
      settled = true;
      metrics.requests.inc({ status_class: statusClass(status), code: code ?? 'none' });
      log.info(
        {
          access: true,
          upgrade: String(req.headers.upgrade ?? '').slice(0, 32),
          domain: domain?.name,
          method: req.method,
          path: (req.url ?? '/').split('?')[0],
          status,
          durationMs: Math.round(Number(process.hrtime.bigint() - started) / 1e5) / 10,
          origin,
          code,
          tls: tlsVersion,
        },
        'request',
      );
    };
    const refuse = (refusal: Refusal): void => {
      settle(refusal.status, refusal.code);
      if (client.writable) client.end(refusalText(refusal, hsts));
      else client.destroy();
    };
    // A client gone before the answer: nothing to tell it; the origin side is closed below.
    client.on('error', () => client.destroy());
    if (own !== undefined) return refuse(own);
    if ('refusal' in route) return refuse(route.refusal);

    let targets: readonly OriginTarget[];
    try {
      targets = pools.targets(route.domain);
    } catch (err) {
      // A domain whose origin CA cannot be read (only when it was never retained).
      log.warn({ code: 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE', domain: route.domain.name, err }, 'origin upgrade failed');
      return refuse(originRefusal('broken'));
    }
    const attempt = (index: number): void => {
      const target = targets[index];
      if (target === undefined) return refuse(originRefusal('connect'));
      origin = target.url.origin;
      const upstream = connect(target, pools.timeouts.connectMs);
      let received: Buffer = Buffer.alloc(0);
      let connected = false;
      let answered = false;
      let failed = false;
      const fail = (failure: OriginFailure, err: Error | undefined): void => {
        if (failed) return;
        failed = true;
        upstream.destroy();
        if (answered || settled) {
          client.destroy();
          return;
        }
        if (failure !== 'not-origin') pools.failed(target);
        // Nothing reached the origin before its connection was up, so any upgrade may go to the next one.
        if (index === 0 && targets.length > 1 && (failure === 'connect' || failure === 'certificate') && !client.destroyed) return attempt(1);
        const refusal = originRefusal(failure);
        log.warn({ code: refusal.code, domain: route.domain.name, origin, err }, 'origin upgrade failed');
        refuse(refusal);
      };
      const onClientClose = (): void => {
        // The client left first: not the origin's failure, and no one to answer.
        if (!answered) failed = true;
        upstream.destroy();
      };
      client.once('close', onClientClose);
      upstream.on('error', (err) => fail(originFailure(err), err));
      upstream.once('timeout', () => fail(connected ? 'timeout' : 'connect', new Error(connected ? 'origin answer timed out' : 'origin connect timed out')));
      upstream.once('close', () => {
        if (!answered) fail('broken', new Error('origin closed the connection before answering'));
      });
      upstream.once(target.tls === undefined ? 'connect' : 'secureConnect', () => {
        connected = true;
        // From here on the wait is for the answer: the response timeout applies.
        upstream.setTimeout(pools.timeouts.responseMs);
        upstream.write(requestHead(req, target, client.remoteAddress, options.trustedPeers));
        if (head.length > 0) upstream.write(head);
      });
      const onData = (chunk: Buffer): void => {
        received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
        const end = received.indexOf(HEAD_END);
        if (end < 0) {
          if (received.length > MAX_ANSWER_HEAD_BYTES) fail('broken', new Error('origin answer head too large'));
          return;
        }
        const headText = received.subarray(0, end).toString('latin1');
        const status = Number(/^HTTP\/1\.[01] (\d{3}) /.exec(headText)?.[1] ?? 0);
        if (status === 0) return fail('broken', new Error('origin answer is not HTTP/1.1'));
        answered = true;
        upstream.off('data', onData);
        upstream.setTimeout(0);
        pools.succeeded(target);
        settle(status, undefined);
        // HSTS on every answer over HTTPS, as handler.ts does, unless the origin set its own.
        const lineEnd = received.indexOf('\r\n');
        client.write(
          /\r\nstrict-transport-security:/i.test(headText)
            ? received
            : Buffer.concat([received.subarray(0, lineEnd + 2), Buffer.from(`strict-transport-security: ${hsts}\r\n`, 'latin1'), received.subarray(lineEnd + 2)]),
        );
        upstream.pipe(client);
        if (status === 101) client.pipe(upstream);
        // Not switched: the connection is no longer parsed, so it ends with the origin's answer.
        else upstream.once('end', () => client.end());
        const closeOther = (): void => {
          upstream.destroy();
          client.destroy();
        };
        upstream.once('close', closeOther);
        client.once('close', closeOther);
      };
      upstream.on('data', onData);
    };
    attempt(0);
  };
}

function connect(target: OriginTarget, timeoutMs: number): net.Socket {
  const hostname = target.url.hostname.startsWith('[') ? target.url.hostname.slice(1, -1) : target.url.hostname;
  const port = Number(target.url.port || (target.tls === undefined ? 80 : 443));
  const socket =
    target.tls === undefined
      ? net.connect({ host: hostname, port })
      : tls.connect({ host: hostname, port, ca: target.tls.ca, servername: target.tls.servername, rejectUnauthorized: true, ALPNProtocols: ['http/1.1'] });
  // Until connected, the connect timeout; afterwards the response timeout (set on connect).
  socket.setTimeout(timeoutMs);
  socket.setNoDelay(true);
  return socket;
}

function requestHead(req: IncomingMessage, target: OriginTarget, peer: string | undefined, trusted: TrustedPeers | undefined): string {
  const headers = originRequestHeaders(req.headers, peer, 'https', target, trusted);
  headers.connection = 'upgrade';
  if (req.headers.upgrade !== undefined) headers.upgrade = req.headers.upgrade;
  // Relayed raw after the head, so its framing must reach the origin unchanged.
  if (req.headers['transfer-encoding'] !== undefined) headers['transfer-encoding'] = req.headers['transfer-encoding'];
  let text = `${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    for (const v of Array.isArray(value) ? value : [value]) text += `${name}: ${v}\r\n`;
  }
  return `${text}\r\n`;
}

function refusalText({ status, code, body }: Refusal, hsts: string): string {
  return (
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\n` +
    `strict-transport-security: ${hsts}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\nx-keyedge-error: ${code}\r\nconnection: close\r\n\r\n${body}`
  );
}
