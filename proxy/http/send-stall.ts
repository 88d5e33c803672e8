/**
 * The write-stall timeout of an answer being relayed (nginx's send_timeout):
 * when the client has taken nothing of it for `timeoutMs` while the proxy had
 * more to send, the client has stopped reading. Its connection is destroyed
 * (an HTTP/2 stream is reset with CANCEL), which ends the relay, and the
 * relay's end aborts the origin request: a client that never reads an 8 MB
 * answer must not hold an origin connection (and the answer's buffers) for
 * ever.
 *
 * "Had more to send" is the answer refusing a chunk (`res.write` returned
 * false, forward.ts and http2/exchange.ts then pause the origin; an HTTP/2
 * stream stands in for the answer there); progress is the answer's
 * 'drain'. The clock exists only once an answer meets backpressure, or
 * ends with bytes still unsent a period later (unsent-tails.ts), which most
 * never do: a GET whose answer fits in the socket buffers costs nothing
 * here.
 */
import type { ServerResponse } from 'node:http';
import { constants } from 'node:http2';
import { cutAnswer as cutConnection } from './queued.js';

/** Answers closed by the stall timeout, so the caller can tell it from a client that left. */
const stalled = new WeakSet<ServerResponse>();

export class SendStallClock {
  readonly #res: ServerResponse;
  readonly #timeoutMs: number;
  #timer: NodeJS.Timeout | undefined = undefined;
  /** Waiting for 'drain'. */
  #waiting = false;
  #stopped = false;
  #awaitsSocket = false;

  constructor(res: ServerResponse, timeoutMs: number) {
    this.#res = res;
    this.#timeoutMs = timeoutMs;
  }

  /** Whether this clock cut the answer. */
  get stalled(): boolean {
    return stalled.has(this.#res);
  }

  /** The answer refused a chunk: the clock runs until 'drain'. */
  waiting(): void {
    if (this.#stopped) return;
    this.#waiting = true;
    // A pipelined answer queued behind another has no socket yet: it waits on
    // the answer before it, not on its client, so no stall is counted until it gets one.
    if (this.#res.socket === null) {
      if (!this.#awaitsSocket) {
        this.#awaitsSocket = true;
        this.#res.once('socket', () => {
          if (this.#waiting) this.#start();
        });
      }
      return;
    }
    this.#start();
  }

  /** The client took what was waiting ('drain'). */
  flowing(): void {
    this.#waiting = false;
    this.#clear();
  }

  /** The answer is closed. */
  stop(): void {
    this.#stopped = true;
    this.flowing();
  }

  #start(): void {
    if (this.#stopped || this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      stalled.add(this.#res);
      cutAnswer(this.#res);
    }, this.#timeoutMs);
  }

  #clear(): void {
    if (this.#timer === undefined) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

/**
 * Ends a stalled answer. An HTTP/2 stream standing in for it (http2/
 * origin-handler.ts) is reset with CANCEL: its destroy() resets it with
 * NO_ERROR, which tells the client the answer was whole (RFC 9113 §8.1), and
 * a client that read on got a truncated answer as a complete one.
 */
function cutAnswer(res: ServerResponse): void {
  const stream = res as unknown as { readonly session?: unknown; close?: (code: number) => void };
  if ('session' in res && typeof stream.close === 'function') stream.close(constants.NGHTTP2_CANCEL);
  else cutConnection(res);
}

/** Whether `res` was closed because its client stopped reading. */
export function stalledSend(res: ServerResponse): boolean {
  return stalled.has(res);
}
