/**
 * A client of full TLS 1.3 handshakes with a chosen ALPN protocol: the load of
 * the handshake bench's `alpn-h2` and `alpn-h1` kinds (issue 13: a full
 * handshake with h2 negotiated should cost at most 10% more than with
 * http/1.1). `loops` closed loops in this process, each: connect offering only
 * `h2` (node:http2 client: connection preface, SETTINGS, one GET, close) or
 * only `http/1.1` (node:tls, one GET with Connection: close), no session
 * ticket, read the answer to its end, start again. The same client code for
 * both protocols' TLS part, so the server-side difference is the protocol's.
 * A server that does not negotiate `h2` fails every h2 connection with a
 * message saying so (`negotiates()` checks first, so the bench can skip it).
 */
import http2 from 'node:http2';
import tls from 'node:tls';
import { ClosedLoop, nowNs } from '../harness/loop.js';

export type AlpnProtocol = 'h2' | 'http/1.1';

export interface AlpnLoadOptions {
  readonly port: number;
  readonly serverName: string;
  readonly ca: string;
  readonly loops: number;
  readonly protocol: AlpnProtocol;
}

/** The protocol the server picks when offered only `protocol` (false: none, or another). */
export function negotiates(options: Omit<AlpnLoadOptions, 'loops'>): Promise<string | false> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: options.port, servername: options.serverName, ca: options.ca, ALPNProtocols: [options.protocol] });
    socket.once('secureConnect', () => {
      resolve(socket.alpnProtocol ?? false);
      socket.destroy();
    });
    socket.once('error', () => resolve(false));
  });
}

export class AlpnLoad extends ClosedLoop {
  constructor(readonly options: AlpnLoadOptions) {
    super();
  }

  protected begin(): void {
    this.outstanding = this.options.loops;
    for (let i = 0; i < this.options.loops; i++) this.#next();
  }

  #next(): void {
    if (this.stopped) return this.retire();
    const started = nowNs();
    const done = (failed: string | undefined) => {
      this.done(started, failed);
      setImmediate(() => this.#next());
    };
    if (this.options.protocol === 'h2') this.#h2(done);
    else this.#h1(done);
  }

  #tlsOptions(): tls.ConnectionOptions {
    const o = this.options;
    return { host: '127.0.0.1', port: o.port, servername: o.serverName, ca: o.ca, minVersion: 'TLSv1.3', ALPNProtocols: [o.protocol] };
  }

  #h1(done: (failed: string | undefined) => void): void {
    let head = '';
    let failed: string | undefined;
    const socket = tls.connect(this.#tlsOptions(), () => socket.write(`GET / HTTP/1.1\r\nHost: ${this.options.serverName}\r\nConnection: close\r\n\r\n`));
    socket.on('data', (chunk: Buffer) => {
      if (head.length < 16) head += chunk.toString('latin1', 0, 16);
    });
    socket.once('error', (err) => (failed ??= err.message));
    socket.once('close', () => done(failed ?? (head.startsWith('HTTP/1.1 200') ? undefined : `answer ${JSON.stringify(head.slice(0, 12))}`)));
  }

  #h2(done: (failed: string | undefined) => void): void {
    let failed: string | undefined;
    const session = http2.connect(`https://127.0.0.1:${this.options.port}`, this.#tlsOptions());
    session.once('error', (err) => (failed ??= err.message));
    session.once('close', () => done(failed));
    session.once('connect', () => {
      const socket = session.socket as tls.TLSSocket;
      if (socket.alpnProtocol !== 'h2') {
        failed ??= `the server did not negotiate h2 (ALPN: ${socket.alpnProtocol || 'none'})`;
        session.destroy();
        return;
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
