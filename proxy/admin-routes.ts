/**
 * The admin API's route table: the methods each resource takes, as the
 * reads (admin-reads.ts) and the changes (admin-changes.ts, admin-acme.ts)
 * answer them, given what the primary supplies (no control API: the reads
 * alone; no fleet: no routes; no ticket rotation: no /tickets/rotate).
 * A request whose method its resource does not take is answered 405 with
 * `Allow` naming these (RFC 9110 §15.5.6: a 405 MUST carry it, §10.2.1);
 * a path that is no resource, 404 whatever the method.
 */
import type http from 'node:http';
import { text } from './admin-http.js';
import type { AdminSources } from './admin-sources.js';

const READ: readonly string[] = ['GET', 'HEAD'];

/** The methods the resource at `path` takes, in Allow's order (reads, then changes); empty when there is no such resource. */
export function allowedMethods(path: string, sources: AdminSources): readonly string[] {
  if (path === '/metrics' || path === '/healthz' || path === '/readyz' || path === '/config') return READ;
  const control = sources.control;
  if (control === undefined) return [];
  if (path === '/certs') return READ;
  if (path === '/reload' || path === '/acme/issue' || path.startsWith('/acme/renew/')) return ['POST'];
  // PUT /certs/:name, any name (a refused one gets its 400); /certs/reload is also the reload.
  if (/^\/certs\/./.test(path)) return path === '/certs/reload' ? ['POST', 'PUT'] : ['PUT'];
  if (path === '/tickets/rotate') return control.rotateTicketKeys === undefined ? [] : ['POST'];
  if (/^\/routes\/[^/]+$/.test(path)) {
    return [...(control.putRoute === undefined ? [] : ['PUT']), ...(control.deleteRoute === undefined ? [] : ['DELETE'])];
  }
  return [];
}

/** The answer to a method `allowed` lacks: 405 with Allow, or 404 when there is no such resource (nothing allowed). */
export function notAllowed(res: http.ServerResponse, allowed: readonly string[]): void {
  if (allowed.length === 0) return text(res, 404, 'not found\n');
  res.writeHead(405, { 'content-type': 'text/plain; charset=utf-8', allow: allowed.join(', ') }).end('method not allowed\n');
}
