/**
 * A raw TLS client for abuse tests: writes what the test says, when it says,
 * keeps whatever comes back, and records when the proxy closed the connection.
 * `read: false` reads nothing from the socket (a client that stopped reading)
 * until `resume()`.
 */
import tls from 'node:tls';

export interface RawTls {
  readonly socket: tls.TLSSocket;
  /** What came back so far (latin1, so byte counts match). */
  text(): string;
  /** Starts reading (a `read: false` client): what the proxy sent, then its close. */
  resume(): void;
  /** Resolves with ms from connect to close, once the connection is closed (seen only while reading). */
  readonly closed: Promise<number>;
}

export function rawTls(port: number, host: string, ca: string, options: { localAddress?: string; read?: boolean } = {}): Promise<RawTls> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    let received = '';
    const socket = tls.connect(
      { host: '127.0.0.1', port, servername: host, ca, ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }) },
      () => {
        if (options.read === false) socket.pause();
        resolve({ socket, text: () => received, closed, resume: () => void socket.on('data', collect).resume() });
      },
    );
    const closed = new Promise<number>((done) => socket.once('close', () => done(Date.now() - started)));
    const collect = (chunk: Buffer): void => void (received += chunk.toString('latin1'));
    if (options.read !== false) socket.on('data', collect);
    socket.on('error', (err) => reject(err));
  });
}
