/**
 * The one logger factory of the product (pino): JSON lines on stdout, level
 * from config. Redaction is a second line of defence only: code never passes a
 * PIN, key bytes or a ticket key to a log call in the first place.
 *
 * Lines are written in batches: they are joined here until LOG_BATCH_BYTES
 * are held, or our timer fires (every LOG_FLUSH_MS, while lines are held),
 * and each batch goes to the destination (sonic-boom) with one write(2).
 * When stdout is a regular file, that write is made at once on the event
 * loop, as nginx writes its logs: a file never answers EAGAIN, and the
 * thread-pool hop cost about 4 µs per proxied HTTP/2 request in all threads
 * (wake-ups, the completion callback; bench/results/2026-12-04-h2-own-code.md).
 * Otherwise (a pipe or socket to a collector, which may be slow or full) it is
 * made on libuv's thread pool, so a full pipe never blocks serving. One write per line cost
 * a thread-pool round trip per request (a wake-up of a pool thread and a
 * completion callback back on the event loop): about as much CPU as the rest
 * of the access line (bench/results/2026-12-03-layers.md). The batch is ours,
 * not sonic-boom's `minLength`: sonic-boom measures each line's UTF-8 length
 * and the held batch's again, flattening the growing batch string on every
 * line (bench/results/2026-12-04-keepalive-layers.md); here a line costs an
 * append. Nothing is lost on a normal end: pino flushes the destination
 * synchronously on 'exit' (and on 'beforeExit'), which every stop of ours goes
 * through, a process.exit() after an uncaught error included, and the held
 * batch goes first. A process killed by SIGKILL loses at most the last
 * LOG_FLUSH_MS of lines.
 *
 * While the event loop is inside a call into the token, the held lines are
 * also offered to the watch over the loop (`heldLinesOf`, held-lines.ts),
 * which writes them itself if the call holds the loop: a process ended there
 * by SIGKILL (loop-watch.ts) keeps the lines that led up to it (but for a
 * batch queued behind a pipe write still in flight, held-lines.ts).
 *
 * The time of a line is made once per millisecond: at request rates, most
 * lines share their millisecond with the line before.
 */
import { fstatSync, writeSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { HeldLines } from './held-lines.js';

export type { Logger };

const REDACT = ['pin', '*.pin', 'soPin', '*.soPin', 'key', '*.key', 'privateKey', '*.privateKey'];

/** A batch is written once it holds this much (about 15 access lines; counted in UTF-16 units, which is bytes for the ASCII of nearly every line)… */
export const LOG_BATCH_BYTES = 4096;
/** …or at the latest this often (an unref'd timer, armed only while lines are held or unwritten). */
export const LOG_FLUSH_MS = 100;

/** What a watch over the event loop uses to have the held lines written when the loop cannot (held-lines.ts). */
export interface HeldLinesHooks {
  /** The copy the watch's thread reads. */
  readonly shared: HeldLines;
  /** Before a call that may hold the loop: the held lines are offered. */
  offer(): void;
  /** Back from it: what the watch took and wrote is dropped from the batch. */
  reclaim(): void;
}

const HELD_LINES = Symbol('keyedge.heldLines');

/** The hooks of this logger's destination, when it is batchedStdout (other destinations hold nothing). */
export function heldLinesOf(log: Logger): HeldLinesHooks | undefined {
  const stream = (log as unknown as Record<symbol, { [HELD_LINES]?: () => HeldLinesHooks } | undefined>)[pino.symbols.streamSym];
  return stream?.[HELD_LINES]?.();
}

/**
 * stdout, batched (see above). The timer only hands over what is held: an
 * empty write(2) every period would cost every process, idle or not; and it
 * only runs while there is something to hand over or to flush.
 */
export function batchedStdout(): pino.DestinationStream {
  const toFile = isRegularFile(1);
  // Asynchronous: sonic-boom holds what it is given until it has LOG_BATCH_BYTES: a batch handed over whole is written at once, a
  // short one (the timer's) waits for a flush. To a file: each batch is written when handed over.
  const stream = toFile ? pino.destination({ sync: true }) : pino.destination({ sync: false, minLength: LOG_BATCH_BYTES });
  const write = stream.write.bind(stream);
  const flush = stream.flush.bind(stream);
  const flushSync = stream.flushSync.bind(stream);
  // Lines not yet handed over, and bytes handed over and not yet written (sonic-boom reports each write(2) as a 'write' event).
  let held = '';
  let unwritten = 0;
  // Made once a watch asks for it (the key server's); the proxy never does.
  let shared: HeldLines | undefined;
  const handOver = (): void => {
    if (held === '') return;
    const batch = held;
    held = '';
    shared?.reset();
    // Written by the time write returns, to a file: nothing to count.
    if (!toFile) unwritten += Buffer.byteLength(batch);
    write(batch);
  };
  // Armed while anything is held or unwritten, so a process that logs nothing (a key server between its
  // start-up lines and a scrape) has no timer waking it 10 times a second.
  let timer: NodeJS.Timeout | undefined;
  const tick = (): void => {
    timer = undefined;
    handOver();
    // A flush while a write is in flight does nothing: the next period tries again.
    if (unwritten > 0) {
      flush();
      arm();
    }
  };
  const arm = (): void => {
    if (timer === undefined) timer = setTimeout(tick, LOG_FLUSH_MS).unref();
  };
  stream.write = (line: string): boolean => {
    held += line;
    if (held.length >= LOG_BATCH_BYTES) handOver();
    arm();
    return true;
  };
  if (!toFile)
    stream.on('write', (written: number) => {
      unwritten -= written;
    });
  stream.flush = (cb?: (err?: Error) => unknown): void => {
    handOver();
    flush(cb);
  };
  // On exit (pino's handler): what sonic-boom holds, then what is held here, both written synchronously.
  stream.flushSync = (): void => {
    flushSync();
    if (held === '') return;
    writeSync((stream as unknown as { fd: number }).fd, held);
    held = '';
    shared?.reset();
  };
  (stream as unknown as Record<symbol, () => HeldLinesHooks>)[HELD_LINES] = (): HeldLinesHooks => {
    shared ??= new HeldLines();
    const lines = shared;
    return {
      shared: lines,
      offer: () => lines.offer(held),
      reclaim: () => {
        const taken = lines.reclaim();
        if (taken > 0) held = held.slice(taken);
      },
    };
  };
  return stream;
}

function isRegularFile(fd: number): boolean {
  try {
    return fstatSync(fd).isFile();
  } catch {
    return false;
  }
}

let timeMs = -1;
let timeField = '';

/** pino's isoTime, made once per millisecond. */
function isoTimeOncePerMs(): string {
  const now = Date.now();
  if (now !== timeMs) {
    timeMs = now;
    timeField = `,"time":"${new Date(now).toISOString()}"`;
  }
  return timeField;
}

export function createLogger(name: string, level = 'info', destination: pino.DestinationStream = batchedStdout()): Logger {
  return pino(
    {
      name,
      level,
      redact: { paths: REDACT, censor: '[redacted]' },
      base: { pid: process.pid },
      timestamp: isoTimeOncePerMs,
    },
    destination,
  );
}
