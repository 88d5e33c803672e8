/**
 * The one logger factory of the product (pino): JSON lines on stdout, level
 * from config. Redaction is a second line of defence only: code never passes a
 * PIN, key bytes or a ticket key to a log call in the first place.
 *
 * Lines are written in batches: the destination (sonic-boom, asynchronous)
 * holds lines until it has LOG_BATCH_BYTES, or our timer fires (every
 * LOG_FLUSH_MS, while lines are held), then writes them with one write(2)
 * on libuv's thread pool. One write per line cost a thread-pool round trip per request (a wake-up of a pool thread and a
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
/** …or at the latest this often (an unref'd timer). */
export const LOG_FLUSH_MS = 100;

/**
 * stdout, batched (see above). The timer is ours rather than sonic-boom's
 * `periodicFlush`, which writes even when nothing is held: an empty write(2)
 * on the thread pool every period, in every process, idle or not (and the
 * proxy's workers did not start with it under a test's pipe). Ours flushes
 * only while lines are held.
 */
export function batchedStdout(): pino.DestinationStream {
  const stream = pino.destination({ sync: false, minLength: LOG_BATCH_BYTES });
  const write = stream.write.bind(stream);
  // Bytes handed to the stream and not yet written: sonic-boom reports each write(2) as a 'write' event.
  let held = 0;
  stream.write = (line: string): boolean => {
    held += Buffer.byteLength(line);
    return write(line);
  };
  stream.on('write', (written: number) => {
    held -= written;
  });
  // A flush while a write is in flight does nothing: the next turn tries again.
  setInterval(() => {
    if (held > 0) stream.flush();
  }, LOG_FLUSH_MS).unref();
  return stream;
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
