/**
 * One call to etcd as the fleet's store makes it: with the store's deadline,
 * and its failure said in the store's own errors, never etcd3's or gRPC's
 * raw ones, so that a caller (the admin API, the reload path) can tell
 * "etcd is away, retry" (StoreUnavailableError) from "this value can never
 * be written" (StoreValueTooLargeError).
 *
 * Size: etcd refuses a request larger than its --max-request-bytes (1.5 MiB
 * by default) with INVALID_ARGUMENT, and gRPC one past its own receive cap
 * (that, plus 512 KiB) with RESOURCE_EXHAUSTED; both once came out as "etcd
 * unreachable" (admin 503: retry later) though no retry could ever succeed.
 * A value is measured before it is sent (`assertFits`, against the config's
 * `etcd.maxRequestBytes`, which says what the cluster runs with), and an
 * answer of either kind is still recognised for what it is.
 *
 * Messages name the operation and the key, never a value: a value may be
 * the ticket-key ring.
 */
import { StoreUnavailableError, StoreValueTooLargeError } from './storage.js';

/** What a put request carries besides its key and value (measured on etcd 3.4: ~40 bytes), with room to spare. */
const REQUEST_OVERHEAD_BYTES = 512;

/** Throws StoreValueTooLargeError, naming `key` and the size, when a put of `value` at `key` is past `maxRequestBytes` (etcd's request limit). */
export function assertFits(key: string, value: string, maxRequestBytes: number): void {
  const bytes = Buffer.byteLength(key) + Buffer.byteLength(value);
  if (bytes + REQUEST_OVERHEAD_BYTES > maxRequestBytes) throw tooLarge(key, bytes, maxRequestBytes);
}

/**
 * Failures after which a write sent may have been taken all the same: its answer was lost (no answer in time, the
 * connection dropped or the call cancelled midway), not a refusal. A stalled member given a write takes it once it
 * runs again, well after the caller gave up on it. etcd3's classes by name: this module does not load etcd3.
 */
const ANSWER_LOST = new Set(['GRPCDeadlineExceededError', 'GRPCUnavailableError', 'GRPCCancelledError', 'GRPCUnknownError', 'GRPCInternalError']);

class NoAnswerError extends Error {}

/** Runs `call` within `timeoutMs`; any failure becomes the store's own error about `what` (`write certs/a`, say). */
export async function etcdCall<T>(what: string, timeoutMs: number, call: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      call(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new NoAnswerError(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (err) {
    throw storeError(what, err);
  } finally {
    clearTimeout(timer);
  }
}

/** `err` from etcd while trying to `what`, as the store's error (already one: unchanged). */
export function storeError(what: string, err: unknown): Error {
  if (err instanceof StoreUnavailableError || err instanceof StoreValueTooLargeError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (/request is too large|received message larger than max/.test(message)) {
    return new StoreValueTooLargeError(`the fleet's store (etcd) refused to ${what}: the request is larger than etcd accepts (${message})`);
  }
  // A change whose answer was lost may stand: the caller must not be told that nothing was written.
  const lost = /^(write|delete) /.test(what) && (err instanceof NoAnswerError || ANSWER_LOST.has((err as Error | undefined)?.constructor?.name ?? ''));
  const fate = lost
    ? '; its answer was lost, so etcd may have taken it all the same (what it holds reaches every node once it answers); sending the same change again is safe'
    : '';
  // Only the message: the error object of a failed write may carry the request, and a value may be secret.
  return new StoreUnavailableError(`the fleet's store (etcd) could not ${what}: ${message}${fate}`);
}

function tooLarge(key: string, bytes: number, maxRequestBytes: number): StoreValueTooLargeError {
  const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(2)} MiB`;
  return new StoreValueTooLargeError(
    `the value for ${key} is ${bytes} bytes (${mib(bytes)}), more than one etcd request may carry (${mib(maxRequestBytes)}, etcd.maxRequestBytes: etcd's --max-request-bytes); nothing was written`,
  );
}
