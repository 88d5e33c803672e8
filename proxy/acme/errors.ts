/**
 * The issuer's one error class: an ACME exchange failed (the CA unreachable,
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
