/**
 * The one logger factory of the product (pino): JSON lines on stdout, level
 * from config. Redaction is a second line of defence only: code never passes a
 * PIN, key bytes or a ticket key to a log call in the first place.
 *
 * Lines are written in batches: the destination (sonic-boom, asynchronous)
 * holds lines until it has LOG_BATCH_BYTES, or its timer fires (every
 * LOG_FLUSH_MS), then writes them with one write(2) on libuv's thread pool. One write per line
 * cost a thread-pool round trip per request (a wake-up of a pool thread and a
 * completion callback back on the event loop): about as much CPU as the rest
 * of the access line (bench/results/2026-12-03-layers.md). Nothing is lost on
 * a normal end: pino flushes the destination synchronously on 'exit' (and on
 * 'beforeExit'), which every stop of ours goes through, a process.exit() after
 * an uncaught error included. A process killed by SIGKILL loses at most the
 * last LOG_FLUSH_MS of lines.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

const REDACT = ['pin', '*.pin', 'soPin', '*.soPin', 'key', '*.key', 'privateKey', '*.privateKey'];

/** A batch is written once it holds this much (about 15 access lines)… */
export const LOG_BATCH_BYTES = 4096;
/** …or at the latest this often (sonic-boom's periodic flush, an unref'd timer). */
export const LOG_FLUSH_MS = 100;

/** stdout, batched (see above). */
export function batchedStdout(): pino.DestinationStream {
  return pino.destination({ sync: false, minLength: LOG_BATCH_BYTES, periodicFlush: LOG_FLUSH_MS });
}

export function createLogger(name: string, level = 'info', destination: pino.DestinationStream = batchedStdout()): Logger {
  return pino(
    {
      name,
      level,
      redact: { paths: REDACT, censor: '[redacted]' },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}
