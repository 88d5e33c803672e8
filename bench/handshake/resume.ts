/**
 * A TLS 1.3 client that resumes: the load of bench/handshake/main.ts's
 * resumed-handshake scenarios (ab never offers a session; h2load does, but it
 * cannot force a new connection per request without also pipelining).
 *
 * `loops` connections are kept in flight, each in a closed loop: connect
 * (node:tls, TLS 1.3 only) offering the newest session ticket this loop has
 * received, send one `GET /` with `Connection: close`, read the answer to the
 * end, and start again. A loop's first connection has nothing to offer and is
 * a full handshake (during the ramp-up, outside the window). The client keeps
 * only its newest ticket and offers each once (RFC 8446 §C.4: clients SHOULD
 * NOT reuse a ticket; BoringSSL and OpenSSL's cache do the same): a server
 * that sends no new ticket on a resumed connection gets a full handshake on
 * the next one, and the resumption % (resumed ÷ completed) shows it.
 *
 * Counted when a connection completes (answer 200 received in full): those
 * that offered a ticket, those the server resumed (`isSessionReused()`, read
 * at 'secureConnect' while the socket is open), failures, and the latency of
 * each connection (connect → end of answer).
 *
 * Concurrency: single-threaded, in this process; `start()` once, `stop()`
 * once (resolves when no connection is left).
 */
import tls from 'node:tls';
import { ClosedLoop, nowNs } from '../harness/loop.js';

export interface ResumeLoadOptions {
  readonly port: number;
  readonly serverName: string;
  readonly ca: string;
  readonly loops: number;
}

export class ResumeLoad extends ClosedLoop {
  offered = 0;
  resumed = 0;
  /** Connections that offered a ticket and got a full handshake anyway. */
  offeredNotResumed = 0;
  readonly #request: Buffer;

  constructor(readonly options: ResumeLoadOptions) {
    super();
    this.#request = Buffer.from(`GET / HTTP/1.1\r\nHost: ${options.serverName}\r\nConnection: close\r\n\r\n`);
  }

  protected begin(): void {
    this.outstanding = this.options.loops;
    for (let i = 0; i < this.options.loops; i++) this.#connect(undefined);
  }

  #connect(session: Buffer | undefined): void {
    if (this.stopped) return this.retire();
    const started = nowNs();
    let newest: Buffer | undefined;
    let head = '';
    let bytes = 0;
    let failed: string | undefined;
    const socket = tls.connect({
      host: '127.0.0.1',
      port: this.options.port,
      servername: this.options.serverName,
      ca: this.options.ca,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      ...(session === undefined ? {} : { session }),
    });
    socket.on('session', (s: Buffer) => (newest = s));
    let reused = false;
    socket.once('secureConnect', () => {
      reused = socket.isSessionReused();
      socket.write(this.#request);
    });
    socket.on('data', (chunk: Buffer) => {
      if (head.length < 16) head += chunk.toString('latin1', 0, Math.min(chunk.length, 16));
      bytes += chunk.length;
    });
    socket.once('error', (err) => (failed ??= err.message));
    socket.once('close', () => {
      if (failed === undefined && !head.startsWith('HTTP/1.1 200')) failed = `answer ${JSON.stringify(head.slice(0, 12))} (${bytes} bytes)`;
      // Counted with the connection's completion, so in any window resumed ≤ offered ≤ completed.
      if (failed === undefined && session !== undefined) {
        this.offered++;
        if (reused) this.resumed++;
        else this.offeredNotResumed++;
      }
      this.done(started, failed);
      // Each ticket is offered once: the next connection offers the one this connection received, or none (a server
      // that sends no ticket on a resumed connection costs the next visit a full handshake). A failure starts over.
      setImmediate(() => this.#connect(failed === undefined ? newest : undefined));
    });
  }
}
