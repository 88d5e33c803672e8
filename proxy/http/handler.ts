/**
 * The HTTPS request handler: find the domain by Host, add HSTS, forward to its
 * origin; answer ourselves, with a short plain body and a stable code, when
 * that cannot be done. One access-log line per request, with listed fields only.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../../keyserver/log.js';
import { type ProxyMetrics, statusClass } from '../metrics.js';
import { type NameIndex, nameCovers, selectByName } from '../tls/names.js';
import { forward, type OriginPools } from './forward.js';

export interface Domain {
  readonly name: string;
  readonly origin: string;
  readonly hsts: { readonly includeSubDomains: boolean; readonly preload: boolean };
}

export interface HandlerOptions {
  readonly domains: () => NameIndex<Domain>;
  /** The names the connection's certificate covers, from its SNI (or none for the default). */
  readonly certificateNames: (servername: string | undefined) => readonly string[];
  readonly pools: OriginPools;
  readonly maxBodyBytes: number;
  readonly hstsMaxAgeSeconds: number;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
}

/** Codes of the answers the proxy gives itself (README, "HTTP answers of our own"). */
export type HttpErrorCode = 'KEYEDGE_HTTP_BODY_TOO_LARGE' | 'KEYEDGE_HTTP_MISDIRECTED' | 'KEYEDGE_HTTP_UNKNOWN_HOST' | 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE' | 'KEYEDGE_HTTP_ORIGIN_TIMEOUT';

/** RFC 6797 §6.1. */
export function hstsValue(maxAge: number, domain: Domain | undefined): string {
  let value = `max-age=${maxAge}`;
  if (domain?.hsts.includeSubDomains) value += '; includeSubDomains';
  if (domain?.hsts.preload) value += '; preload';
  return value;
}

/** Host without its port (RFC 9110 §7.2); bracketed IPv6 literals keep their brackets. */
export function hostName(host: string | undefined): string | undefined {
  if (host === undefined) return undefined;
  const end = host.startsWith('[') ? host.indexOf(']') + 1 : host.indexOf(':');
  return end > 0 ? host.slice(0, end) : host;
}

export function createRequestHandler(options: HandlerOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const { pools, log, metrics } = options;
  return (req, res) => {
    const started = process.hrtime.bigint();
    const host = hostName(req.headers.host);
    const domain = selectByName(options.domains(), host, undefined)?.value;
    const hsts = { 'strict-transport-security': hstsValue(options.hstsMaxAgeSeconds, domain) };
    let code: HttpErrorCode | undefined;
    // Read now: after the connection closes, node's TLS accessors may touch freed state.
    const tls = req.socket as TLSSocket;
    const tlsVersion = tls.getProtocol?.() ?? undefined;
    const resumed = tls.isSessionReused?.() ?? undefined;
    res.once('finish', () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics.requests.inc({ status_class: statusClass(res.statusCode), code: code ?? 'none' });
      if (code === undefined && domain !== undefined) metrics.originDuration.observe({ status_class: statusClass(res.statusCode) }, seconds);
      log.info(
        {
          access: true,
          domain: domain?.name,
          method: req.method,
          // The query string is left out: it often carries tokens.
          path: (req.url ?? '/').split('?')[0],
          status: res.statusCode,
          bytes: Number(res.getHeader('content-length') ?? 0) || undefined,
          durationMs: Math.round(seconds * 1e4) / 10,
          origin: code === undefined ? domain?.origin : undefined,
          code,
          tls: tlsVersion,
          resumed,
        },
        'request',
      );
    });
    // A request for a host the connection's certificate does not cover is
    // refused (RFC 9110 §15.5.20): one tenant's TLS connection must not reach
    // another tenant's origin (domain fronting).
    const servername = (req.socket as TLSSocket).servername;
    if (host !== undefined && !options.certificateNames(typeof servername === 'string' ? servername : undefined).some((name) => nameCovers(name, host))) {
      code = 'KEYEDGE_HTTP_MISDIRECTED';
      answer(res, 421, code, 'misdirected request: this connection\'s certificate does not cover the host\n', hsts);
      return;
    }
    if (domain === undefined) {
      code = 'KEYEDGE_HTTP_UNKNOWN_HOST';
      answer(res, 404, code, 'unknown host\n', hsts);
      return;
    }
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > options.maxBodyBytes) {
      code = 'KEYEDGE_HTTP_BODY_TOO_LARGE';
      // The body is not read: the connection closes after the answer.
      res.setHeader('connection', 'close');
      answer(res, 413, code, `request body over ${options.maxBodyBytes} bytes\n`, hsts);
      return;
    }
    forward(pools, domain.origin, req, res, hsts, 'https', options.maxBodyBytes).catch((err: unknown) => {
      if ((err as { code?: string }).code === 'KEYEDGE_HTTP_BODY_TOO_LARGE') {
        code = 'KEYEDGE_HTTP_BODY_TOO_LARGE';
        if (!res.headersSent) {
          res.setHeader('connection', 'close');
          answer(res, 413, code, `request body over ${options.maxBodyBytes} bytes\n`, hsts);
        } else res.destroy();
        return;
      }
      const timeout = (err as { code?: string }).code === 'UND_ERR_HEADERS_TIMEOUT';
      code = timeout ? 'KEYEDGE_HTTP_ORIGIN_TIMEOUT' : 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE';
      log.warn({ code, domain: domain.name, origin: domain.origin, err }, 'origin request failed');
      if (!res.headersSent) answer(res, timeout ? 504 : 502, code, timeout ? 'origin timed out\n' : 'origin unreachable\n', hsts);
      else res.destroy();
    });
  };
}

function answer(res: ServerResponse, status: number, code: HttpErrorCode, body: string, headers: Record<string, string>): void {
  res.writeHead(status, { ...headers, 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), 'x-keyedge-error': code });
  res.end(body);
}
