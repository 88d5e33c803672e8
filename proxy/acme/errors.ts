/**
 * The issuer's error classes. AcmeError: an ACME exchange failed (the CA unreachable,
 * slow, or answering a problem document, RFC 8555 §6.7), or an order could not
 * complete. `problem` is the short problem type (`badNonce`, `rateLimited`,
 * `unauthorized`, …), `retryAfterMs` the CA's Retry-After: the renewal loop
 * waits at least that long (RFC 8555 §6.6).
 */
import { KeyedgeError } from '../../keyserver/shared/errors.js';

export class AcmeError extends KeyedgeError {
  readonly status: number | undefined;
  readonly problem: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(message: string, options: { status?: number; problem?: string; retryAfterMs?: number | undefined; cause?: unknown }) {
    super('KEYEDGE_ERR_ACME', message, options.cause === undefined ? undefined : { cause: options.cause });
    this.status = options.status;
    this.problem = options.problem;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/**
 * The store step's word that the issued chain is written to the store on `keyId` but not loaded by every worker (a reload
 * refused, or not applied in time): the store's entry is this order's certificate, whatever the workers serve now. Said
 * by the step that wrote it, not inferred from what the workers load: that changes for other reasons too (an operator's
 * replacement, a fleet peer's renewal loaded late).
 */
export class ChainStoredNotLoadedError extends KeyedgeError {
  readonly keyId: string;

  constructor(keyId: string, reason: string) {
    super('KEYEDGE_ERR_CERTIFICATE', `the issued certificate was stored but not loaded: ${reason}`);
    this.keyId = keyId;
  }
}
