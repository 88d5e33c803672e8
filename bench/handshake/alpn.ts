/**
 * The handshake bench's in-process clients, `loops` closed loops of a new TLS 1.3 connection per GET read to its end
 * (bench/README.md, "Scenarios and clients"): `AlpnLoad` offers only `h2` or only `http/1.1` and no ticket (issue 13);
 * `ResumeLoad` offers each loop's newest ticket once (RFC 8446 §C.4). Counted at completion: resumed ≤ offered ≤ completed.
 */
import http2 from 'node:http2';
import tls from 'node:tls';
import { ClosedLoop, nowNs } from '../harness/stats.js';

/**
 * `protocol`: the only ALPN protocol offered (none when undefined); `resume`: offer each loop's newest ticket; `rate`:
 * at most this many connections a second over all loops (each loop starts its next at most every loops ÷ rate s), so
 * that servers are compared at the same rate rather than each at what this client can drive.
 */
type AlpnLoadOptions = { readonly port: number; readonly serverName: string; readonly ca: string; readonly loops: number } & {
  readonly protocol?: 'h2' | 'http/1.1';
  readonly resume?: boolean;
  readonly rate?: number;
};

/** The protocol the server picks when offered only `protocol` (false: none). */
export function negotiates(options: Omit<AlpnLoadOptions, 'loops'> & { readonly protocol: string }): Promise<string | false> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: options.port, servername: options.serverName, ca: options.ca, ALPNProtocols: [options.protocol] });
    socket.once('secureConnect', () => {
      resolve(socket.alpnProtocol ?? false);
      socket.destroy();
    });
    socket.once('error', () => resolve(false));
  });
}

type Done = (failed: string | undefined, newest?: Buffer) => void;

export class AlpnLoad extends ClosedLoop {
  offered = 0;
  resumed = 0;
  /** Connections that offered a ticket and got a full handshake anyway. */
  offeredNotResumed = 0;

  constructor(readonly options: AlpnLoadOptions) {
    super();
  }

  protected begin(): void {
    this.outstanding = this.options.loops;
    for (let i = 0; i < this.options.loops; i++) this.#next(undefined);
  }

  #next(session: Buffer | undefined): void {
    if (this.stopped) return this.retire();
    const started = nowNs();
    // A failure starts over without a ticket.
    const done: Done = (failed, newest) => {
      this.done(started, failed);
      const next = () => this.#next(failed === undefined ? newest : undefined);
      const { rate, loops } = this.options;
      const waitMs = rate === undefined ? 0 : (loops / rate) * 1000 - Number(nowNs() - started) / 1e6;
      if (waitMs > 0) setTimeout(next, waitMs);
      else setImmediate(next);
    };
    if (this.options.protocol === 'h2') this.#h2(done);
    else this.#h1(session, done);
  }

  #tlsOptions(): tls.ConnectionOptions {
    const o = this.options;
    return { host: '127.0.0.1', port: o.port, servername: o.serverName, ca: o.ca, minVersion: 'TLSv1.3', ...(o.protocol && { ALPNProtocols: [o.protocol] }) };
  }

  #h1(session: Buffer | undefined, done: Done): void {
    let [head, bytes, reused] = ['', 0, false];
    let [failed, newest] = [undefined as string | undefined, undefined as Buffer | undefined];
    const socket = tls.connect({ ...this.#tlsOptions(), ...(session && { session }) });
    socket.on('session', (s: Buffer) => (newest = s));
    socket.once('secureConnect', () => {
      reused = socket.isSessionReused();
      socket.write(`GET / HTTP/1.1\r\nHost: ${this.options.serverName}\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', (chunk: Buffer) => {
      if (head.length < 16) head += chunk.toString('latin1', 0, 16);
      bytes += chunk.length;
    });
    socket.once('error', (err) => (failed ??= err.message));
    socket.once('close', () => {
      if (failed === undefined && !head.startsWith('HTTP/1.1 200')) failed = `answer ${JSON.stringify(head.slice(0, 12))} (${bytes} bytes)`;
      if (failed === undefined && session !== undefined) {
        this.offered++;
        if (reused) this.resumed++;
        else this.offeredNotResumed++;
      }
      done(failed, this.options.resume ? newest : undefined);
    });
  }

  #h2(done: Done): void {
    let failed: string | undefined;
    const session = http2.connect(`https://127.0.0.1:${this.options.port}`, this.#tlsOptions());
    session.once('error', (err) => (failed ??= err.message));
    session.once('close', () => done(failed));
    session.once('connect', () => {
      const { alpnProtocol } = session.socket as tls.TLSSocket;
      if (alpnProtocol !== 'h2') {
        failed ??= `the server did not negotiate h2 (ALPN: ${alpnProtocol || 'none'})`;
        return session.destroy();
      }
      const req = session.request({ ':path': '/', ':authority': this.options.serverName });
      req.once('response', (headers) => {
        if (headers[':status'] !== 200) failed ??= `answer ${headers[':status']}`;
      });
      req.on('data', () => undefined);
      req.once('error', (err) => (failed ??= err.message));
      req.once('close', () => session.close());
      req.end();
    });
  }
}

/** The resuming client: http/1.1 without ALPN, each loop offering its newest ticket. */
export class ResumeLoad extends AlpnLoad {
  constructor(options: Omit<AlpnLoadOptions, 'protocol' | 'resume'>) {
    super({ ...options, resume: true });
  }
}
