/**
 * The admin API's changes, the token already checked (admin-auth.ts): the
 * reload, a certificate upload (PUT /certs/:name: the name judged before the
 * body is read), a route (fleet only), the ticket key rotation and ACME
 * (admin-acme.ts); which of them reads a body, for `Expect: 100-continue`;
 * and the status of each refusal, so the running state is kept and the
 * client learns why.
 */
import type http from 'node:http';
import { KeyedgeError } from '../keyserver/shared/errors.js';
import { answerAcme } from './admin-acme.js';
import { MAX_UPLOAD_BYTES, readBody, tooLarge } from './admin-body.js';
import { entryName, json, text } from './admin-http.js';
import type { AdminControl } from './admin-sources.js';
import { CertificateError, CertificateStoreError } from './certs/errors.js';
import { STORE_ENTRY_NAME } from './certs/store.js';
import { StoreConflictError, StoreUnavailableError, StoreValueTooLargeError } from './store/storage.js';

/** Answers the change at `path`; 404 for one `control` does not take. */
export function answerChange(req: http.IncomingMessage, res: http.ServerResponse, path: string | undefined, control: AdminControl): void {
  const failed = (err: Error): void =>
    json(res, putFailureStatus(err), {
      error: { code: err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_CERTIFICATE', reason: (err as { reason?: string }).reason, message: err.message },
    });
  const upload = /^\/certs\/(.+)$/.exec(path ?? '');
  const route = /^\/routes\/([^/]+)$/.exec(path ?? '');
  if (route !== null && req.method === 'PUT' && control.putRoute !== undefined) {
    const name = entryName(route[1]!) ?? '';
    const putRoute = control.putRoute;
    readBody(req, MAX_UPLOAD_BYTES).then((body) => {
      if (typeof body !== 'string') return tooLarge(res, body.close);
      let parsed: unknown;
      try {
        parsed = JSON.parse(body);
      } catch {
        return json(res, 422, { error: { code: 'KEYEDGE_ERR_CONFIG', message: 'the route is not valid JSON' } });
      }
      putRoute(name, parsed).then((report) => json(res, report.error === undefined ? 200 : 409, report), failed);
    });
    return;
  }
  if (route !== null && req.method === 'DELETE' && control.deleteRoute !== undefined) {
    control
      .deleteRoute(entryName(route[1]!) ?? '')
      .then(
        (report) =>
          report === undefined
            ? json(res, 404, { error: { message: 'no such route in the store' } })
            : json(res, report.error === undefined ? 200 : 409, report),
        failed,
      );
    return;
  }
  if (req.method === 'POST' && (path === '/reload' || path === '/certs/reload')) {
    control.reload().then(
      (report) => json(res, report.error === undefined ? 200 : 409, report),
      (err: Error) => json(res, 500, { error: { message: err.message } }),
    );
    return;
  }
  if (req.method === 'POST' && path === '/tickets/rotate' && control.rotateTicketKeys !== undefined) {
    control.rotateTicketKeys().then((report) => json(res, 200, report), failed);
    return;
  }
  if (req.method === 'POST' && (path === '/acme/issue' || path?.startsWith('/acme/renew/'))) {
    answerAcme(req, res, path, control);
    return;
  }
  if (req.method === 'PUT' && upload !== null) {
    const name = entryName(upload[1]!);
    // Judged before the body is read: a refused name costs no upload.
    if (name === undefined || !STORE_ENTRY_NAME.test(name)) {
      return json(res, 400, {
        error: {
          code: 'KEYEDGE_ERR_CERT_STORE',
          message: `'${(name ?? upload[1]!).slice(0, 80)}' is not a certificate name: expected 1-64 letters, digits, _ . - (not starting with ".")`,
        },
      });
    }
    if (control.ownedByConfig(name)) {
      return json(res, 409, {
        error: {
          code: 'KEYEDGE_ERR_CERT_EXISTS',
          message: `certificate '${name}' is configured in the proxy config file; change it there, or choose another name`,
        },
      });
    }
    readBody(req, MAX_UPLOAD_BYTES).then((body) => {
      if (typeof body !== 'string') return tooLarge(res, body.close);
      control.putCertificate(name, body).then((report) => json(res, report.error === undefined ? 200 : 409, report), failed);
    });
    return;
  }
  return text(res, 404, 'not found\n');
}

/**
 * A store directory that is away (gone, or an empty one in its place: certs/store-dir.ts) is 503, as the fleet's etcd
 * away is: nothing was written, and the same request succeeds once the directory is back (RFC 9110 §15.6.4).
 */
const STORE_ERROR_STATUS: Readonly<Record<string, number>> = {
  KEYEDGE_ERR_CERT_EXISTS: 409,
  // The entry is a link to another tool's file: a conflict with that tool's state (RFC 9110 §15.5.10), not a server fault.
  KEYEDGE_ERR_CERT_LINKED: 409,
  KEYEDGE_ERR_CERT_NOT_FOUND: 404,
  KEYEDGE_ERR_CERT_STORE_GONE: 503,
};

function putFailureStatus(err: Error): number {
  if (err instanceof StoreUnavailableError) return 503;
  if (err instanceof StoreValueTooLargeError) return 413;
  // Another node wrote the entry while this upload was validated: a conflict with the entry's current state, which a
  // retry validates against (RFC 9110 §15.5.10).
  if (err instanceof StoreConflictError) return 409;
  if (err instanceof CertificateError || (err instanceof KeyedgeError && err.code === 'KEYEDGE_ERR_CONFIG')) return 422;
  if (err instanceof CertificateStoreError) return STORE_ERROR_STATUS[err.code] ?? 500;
  // The key server could not be asked for the chain's key.
  if (err instanceof KeyedgeError && (err.code === 'KEYEDGE_ERR_CLOSED' || err.code === 'KEYEDGE_ERR_TIMEOUT')) return 503;
  return 500;
}

/** Whether `req` is a change `control` reads a body for: a certificate upload, a route (fleet), an ACME issue. */
export function readsBody(req: http.IncomingMessage, control: AdminControl): boolean {
  const path = (req.url ?? '/').split('?')[0] ?? '';
  if (req.method === 'PUT') return /^\/certs\/./.test(path) || (/^\/routes\/[^/]+$/.test(path) && control.putRoute !== undefined);
  return req.method === 'POST' && path === '/acme/issue' && control.acmeIssue !== undefined;
}
