/**
 * The admin API's changes, the token already checked (admin-auth.ts), each
 * as admin-routes.ts routes to it: the reload, a certificate upload (PUT
 * /certs/:name: the name judged before the body is read), a route (fleet
 * only) and the ticket key rotation (ACME's are admin-acme.ts); and the
 * status of each refusal, so the running state is kept and the client
 * learns why.
 */
import type http from 'node:http';
import { KeyedgeError } from '../keyserver/shared/errors.js';
import { MAX_UPLOAD_BYTES, readBody, tooLarge } from './admin-body.js';
import { entryName, json } from './admin-http.js';
import type { AdminControl } from './admin-sources.js';
import { CertificateError, CertificateStoreError } from './certs/errors.js';
import type { ReloadReport } from './serving/coordinator.js';
import { STORE_ENTRY_NAME } from './certs/store.js';
import { StoreConflictError, StoreUnavailableError, StoreValueTooLargeError } from './store/storage.js';

/** The answer to a change's failure: its status by error (putFailureStatus), its code, reason and message. */
function failed(res: http.ServerResponse): (err: Error) => void {
  return (err) =>
    json(res, putFailureStatus(err), {
      error: { code: err instanceof KeyedgeError ? err.code : 'KEYEDGE_ERR_CERTIFICATE', reason: (err as { reason?: string }).reason, message: err.message },
    });
}

/** A reload's report: 200, or 409 when it was refused (what served before serves on). */
function reported(res: http.ServerResponse): (report: ReloadReport) => void {
  return (report) => json(res, report.error === undefined ? 200 : 409, report);
}

/**
 * The report of the reload that follows a change already written to the store (an upload, a route stored or removed): 200 when
 * it serves; 202 when it is stored but what served before serves on (the reload refused whole, as for a config file
 * that no longer loads, applied in part, or the uploaded entry itself refused), and it serves from the next reload
 * that takes it (RFC 9110 §15.3.3). Never 409, which says nothing was written: a client retrying on it would upload
 * again what is already there. `entry`: the uploaded certificate, whose own refusal is not a success either.
 */
function stored(res: http.ServerResponse, entry?: string): (report: ReloadReport) => void {
  return (report) => {
    const serves = report.error === undefined && !report.refused.some((refusal) => refusal.name === entry);
    json(res, serves ? 200 : 202, report);
  };
}

/** PUT /routes/:name (fleet only): the body is the route, a `domains[]` entry; `name` as in the path. */
export function answerPutRoute(req: http.IncomingMessage, res: http.ServerResponse, putRoute: NonNullable<AdminControl['putRoute']>, name: string): void {
  readBody(req, MAX_UPLOAD_BYTES).then((body) => {
    if (typeof body !== 'string') return tooLarge(res, body.close);
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch {
      return json(res, 422, { error: { code: 'KEYEDGE_ERR_CONFIG', message: 'the route is not valid JSON' } });
    }
    putRoute(entryName(name) ?? '', parsed).then(stored(res), failed(res));
  });
}

/** DELETE /routes/:name (fleet only): 404 when the store holds no such route. */
export function answerDeleteRoute(res: http.ServerResponse, deleteRoute: NonNullable<AdminControl['deleteRoute']>, name: string): void {
  deleteRoute(entryName(name) ?? '').then(
    (report) => (report === undefined ? json(res, 404, { error: { message: 'no such route in the store' } }) : stored(res)(report)),
    failed(res),
  );
}

/** POST /reload (and /certs/reload). */
export function answerReload(res: http.ServerResponse, control: AdminControl): void {
  control.reload().then(reported(res), (err: Error) => json(res, 500, { error: { message: err.message } }));
}

/** POST /tickets/rotate: counts, never key material. */
export function answerRotate(res: http.ServerResponse, rotateTicketKeys: NonNullable<AdminControl['rotateTicketKeys']>): void {
  rotateTicketKeys().then((report) => json(res, 200, report), failed(res));
}

/**
 * The refusal of an upload to `raw` (the path's name, still URL-encoded) that needs no body: not an entry name (400),
 * or a name of the config file's (409); undefined when the name may take a chain. Also what decides whether
 * `Expect: 100-continue` gets its 100 (admin-routes.ts readsBody): a body this refuses is never invited.
 */
export function uploadNameRefusal(control: AdminControl, raw: string): { readonly status: number; readonly body: unknown } | undefined {
  const name = entryName(raw);
  if (name === undefined || !STORE_ENTRY_NAME.test(name)) {
    const message = `'${(name ?? raw).slice(0, 80)}' is not a certificate name: expected 1-64 letters, digits, _ . - (not starting with ".")`;
    return { status: 400, body: { error: { code: 'KEYEDGE_ERR_CERT_STORE', message } } };
  }
  if (control.ownedByConfig(name)) {
    const message = `certificate '${name}' is configured in the proxy config file; change it there, or choose another name`;
    return { status: 409, body: { error: { code: 'KEYEDGE_ERR_CERT_EXISTS', message } } };
  }
  return undefined;
}

/** PUT /certs/:name: the name (as in the path) judged before the body is read, then the chain validated and stored. */
export function answerUpload(req: http.IncomingMessage, res: http.ServerResponse, control: AdminControl, raw: string): void {
  // Judged before the body is read: a refused name costs no upload.
  const refused = uploadNameRefusal(control, raw);
  if (refused !== undefined) return json(res, refused.status, refused.body);
  const name = entryName(raw)!;
  readBody(req, MAX_UPLOAD_BYTES).then((body) => {
    if (typeof body !== 'string') return tooLarge(res, body.close);
    control.putCertificate(name, body).then(stored(res, name), failed(res));
  });
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
