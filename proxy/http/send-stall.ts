/**
 * The write-stall timeout of an answer being relayed (nginx's send_timeout):
 * when the client has taken nothing of it for `timeoutMs` while the proxy had
 * more to send, the client has stopped reading. Its connection is destroyed,
 * which ends the relay, and the relay's end aborts the origin request: a
 * client that never reads an 8 MB answer must not hold an origin connection
 * (and the answer's buffers) for ever.
 *
 * "Had more to send" is the origin body being paused by the pipe's
 * backpressure ('pause' when the client's socket buffer is full); progress is
 * the answer's 'drain' (the body's own 'resume' comes a tick later, possibly
 * after the next pause, so it cannot tell). No timer runs on an answer that
 * flows: a GET whose answer fits in the socket buffers costs one listener.
 */
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';

/** Answers closed by the stall timeout, so the caller can tell it from a client that left. */
const stalled = new WeakSet<ServerResponse>();
const ignore = (): void => undefined;

export function watchSendStall(body: Readable, res: ServerResponse, timeoutMs: number): void {
  // Only 'pause' is watched up front: the rest is set up on the first backpressure, which most answers never meet.
  const first = (): void => {
    body.off('pause', first);
    stallTimer(body, res, timeoutMs);
  };
  body.on('pause', first);
}

function stallTimer(body: Readable, res: ServerResponse, timeoutMs: number): void {
  if (res.destroyed) return;
  let timer: NodeJS.Timeout | undefined;
  const onStall = (): void => {
    timer = undefined;
    stalled.add(res);
    // Destroying the answer makes the relay destroy the origin body, which then
    // reports the abort as an error: it is expected here, not a failure to raise.
    body.on('error', ignore);
    res.destroy();
  };
  const onPause = (): void => {
    // A pipelined answer queued behind another has no socket yet: it waits on
    // the answer before it, not on its client, so no stall is counted.
    if (res.socket === null) return;
    timer ??= setTimeout(onStall, timeoutMs);
  };
  const onDrain = (): void => {
    if (timer === undefined) return;
    clearTimeout(timer);
    timer = undefined;
  };
  body.on('pause', onPause);
  res.on('drain', onDrain);
  // Once a queued answer gets its socket, a body still held back starts the clock.
  if (res.socket === null) {
    res.once('socket', () => {
      if (body.isPaused()) onPause();
    });
  }
  res.once('close', () => {
    onDrain();
    body.off('pause', onPause);
    res.off('drain', onDrain);
  });
  onPause();
}

/** Whether `res` was closed because its client stopped reading. */
export function stalledSend(res: ServerResponse): boolean {
  return stalled.has(res);
}
