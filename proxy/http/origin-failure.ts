/**
 * How a request to an origin failed, from undici's or node's error code: for
 * our answer (502/504, handler.ts), the balancer's health (balancer.ts) and
 * whether the request may go to another origin, or be sent again after its
 * connection closed under it. Pure.
 */

/** Failures of the connection to the origin before anything was sent: safe to try elsewhere. */
const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);
/** OpenSSL's verification results as node reports them: the origin's certificate was refused. */
const CERTIFICATE_FAILURES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_CHAIN_TOO_LONG',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'PATH_LENGTH_EXCEEDED',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
/** Failures after the request may have reached the origin. */
const LATER_FAILURES = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

const errorCode = (err: unknown): string => String((err as { code?: unknown }).code ?? '');

/** How a request to an origin failed, for our answer (502/504) and the balancer. */
export type OriginFailure = 'connect' | 'certificate' | 'timeout' | 'broken' | 'not-origin';

export function originFailure(err: unknown): OriginFailure {
  const code = errorCode(err);
  if (CERTIFICATE_FAILURES.has(code)) return 'certificate';
  if (CONNECT_FAILURES.has(code) || code.startsWith('ERR_SSL_')) return 'connect';
  // The head not in time (504), or the body stalled past limits.originReadTimeoutMs (the answer is cut).
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  if (LATER_FAILURES.has(code)) return 'broken';
  // Our body limit, a client that went away: the origin is not at fault. An answer not relayed (undici's parser
  // refused it, OriginAnswerRefused): the origin answered, so it is not cooled down either.
  return 'not-origin';
}

/** RFC 9110 §9.2.2. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** Whether a request that failed with `failure` on one origin may be sent to another. */
export function mayRetry(method: string | undefined, hasBody: boolean, failure: OriginFailure): boolean {
  return !hasBody && IDEMPOTENT.has(method ?? 'GET') && (failure === 'connect' || failure === 'certificate');
}

/**
 * The origin connection ended under the request: closed (undici's "other
 * side closed", UND_ERR_SOCKET), reset (ECONNRESET), or gone as the request
 * was written (EPIPE). Before any byte of the answer, on a connection kept
 * alive from an earlier answer, this is the keep-alive race: an origin that
 * closes idle connections without saying so (gunicorn's 2 s, uvicorn's 5 s, a
 * NAT or load balancer with a shorter idle timeout) closes one just as a
 * request is written on it. On a new connection it is the origin dropping
 * the request: not the race, and not resent (`keptAlive`).
 */
const CLOSED_UNDER_REQUEST = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);

/**
 * Whether a request whose origin connection closed or was reset under it
 * before any byte of its answer (the caller checks that) may be sent again,
 * once, on a new connection: an idempotent one without a body, which RFC 9112
 * §9.3.1 lets a client send again after such a close (as nginx does: a failed
 * kept-alive connection takes no try, and `proxy_next_upstream error` covers
 * idempotent requests). A request with a body is not, as for `mayRetry`.
 */
export function mayResend(method: string | undefined, hasBody: boolean, err: unknown): boolean {
  return !hasBody && IDEMPOTENT.has(method ?? 'GET') && CLOSED_UNDER_REQUEST.has(errorCode(err));
}

/**
 * Whether the connection that closed under a request had carried an answer
 * before (nginx resends only then: a cached connection's failure takes no
 * try). undici's close error says so: the bytes its socket had read
 * (`SocketError.socket`, documented), none on a new connection, which the
 * request's own answer never began on. A reset (ECONNRESET, EPIPE) comes as
 * Node's plain error: undefined, unknown.
 */
export function keptAlive(err: unknown): boolean | undefined {
  const bytesRead = (err as { socket?: { bytesRead?: unknown } } | undefined)?.socket?.bytesRead;
  return errorCode(err) === 'UND_ERR_SOCKET' && typeof bytesRead === 'number' ? bytesRead > 0 : undefined;
}
