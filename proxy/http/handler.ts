/**
 * The HTTPS request handler: find the domain by Host, add HSTS, forward to its
 * origin; answer ourselves, with a short plain body, when that cannot be done.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../../keyserver/log.js';
import { type NameIndex, selectByName } from '../tls/names.js';
import { forward, type OriginPools } from './forward.js';

export interface Domain {
  readonly name: string;
  readonly origin: string;
  readonly hsts: { readonly includeSubDomains: boolean; readonly preload: boolean };
}

export interface HandlerOptions {
  readonly domains: () => NameIndex<Domain>;
  readonly pools: OriginPools;
  readonly hstsMaxAgeSeconds: number;
  readonly log: Logger;
}

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
  const { pools, log } = options;
  return (req, res) => {
    const domain = selectByName(options.domains(), hostName(req.headers.host), undefined)?.value;
    const hsts = { 'strict-transport-security': hstsValue(options.hstsMaxAgeSeconds, domain) };
    if (domain === undefined) {
      answer(res, 404, 'KEYEDGE_HTTP_UNKNOWN_HOST', 'unknown host\n', hsts);
      log.info({ code: 'KEYEDGE_HTTP_UNKNOWN_HOST', status: 404, method: req.method }, 'no domain for this Host');
      return;
    }
    forward(pools, domain.origin, req, res, hsts).catch((err: unknown) => {
      const timeout = (err as { code?: string }).code === 'UND_ERR_HEADERS_TIMEOUT';
      const code = timeout ? 'KEYEDGE_HTTP_ORIGIN_TIMEOUT' : 'KEYEDGE_HTTP_ORIGIN_UNREACHABLE';
      log.warn({ code, domain: domain.name, origin: domain.origin, err }, 'origin request failed');
      if (!res.headersSent) answer(res, timeout ? 504 : 502, code, timeout ? 'origin timed out\n' : 'origin unreachable\n', hsts);
      else res.destroy();
    });
  };
}

function answer(res: ServerResponse, status: number, code: string, body: string, headers: Record<string, string>): void {
  res.writeHead(status, { ...headers, 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), 'x-keyedge-error': code });
  res.end(body);
}
