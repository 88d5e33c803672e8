/**
 * HTTP/2 clients for proxy tests: node:http2 sessions (verified against the
 * lab CA, connected to 127.0.0.1 whatever the name), one request at a time
 * with its whole answer, and raw HTTP/2 frames for the attack tests (what a
 * well-behaved client library will not send).
 */
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';

export interface H2Answer {
  readonly status: number;
  readonly headers: http2.IncomingHttpHeaders;
  readonly body: Buffer;
  readonly trailers: http2.IncomingHttpHeaders | undefined;
}

/** A session to the proxy at `port` for `servername`, verified against `ca`. */
export function h2Connect(port: number, ca: string, servername: string, options: http2.SecureClientSessionOptions = {}): http2.ClientHttp2Session {
  const session = http2.connect(`https://${servername}:${port}`, {
    ca,
    servername,
    createConnection: () => tls.connect({ host: '127.0.0.1', port, ca, servername, ALPNProtocols: ['h2'] }),
    ...options,
  });
  session.on('error', () => undefined);
  return session;
}

/**
 * One request on `session`, resolving with its whole answer, or rejecting on
 * a reset or a closed session. `body` 'open': the request's side stays open,
 * its body never sent (an answer refusing it ends the stream).
 */
export function h2Request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: Buffer | string | 'open'): Promise<H2Answer> {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    const chunks: Buffer[] = [];
    let head: http2.IncomingHttpHeaders | undefined;
    let trailers: http2.IncomingHttpHeaders | undefined;
    stream.on('response', (h) => {
      if (Number(h[':status']) >= 200) head = h;
    });
    stream.on('trailers', (t) => (trailers = t));
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('error', reject);
    stream.on('close', () => {
      if (head === undefined || stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) reject(new Error(`stream closed with code ${stream.rstCode}`));
      else resolve({ status: Number(head[':status']), headers: head, body: Buffer.concat(chunks), trailers });
    });
    if (body !== undefined && body !== 'open') stream.end(body);
  });
}

export function closeSession(session: http2.ClientHttp2Session): Promise<void> {
  return new Promise((resolve) => {
    if (session.destroyed) return resolve();
    session.once('close', () => resolve());
    session.close();
    setTimeout(() => session.destroy(), 2000).unref();
  });
}

/** A TLS connection speaking raw HTTP/2 frames (RFC 9113 §4.1), for clients no library would be. */
export class RawH2 {
  /** The TCP connection under it, for a cut with RST (`tcp.resetAndDestroy()`). */
  readonly tcp: net.Socket;
  readonly tls: tls.TLSSocket;
  readonly secure: Promise<void>;
  readonly closed: Promise<void>;
  /** GOAWAY error codes received. */
  readonly goaways: number[] = [];
  /** When the first GOAWAY arrived (ms since the epoch). */
  goawayAt: number | undefined;
  /** The lowest last stream id of the GOAWAYs received: streams above it were not processed (RFC 9113 §6.8). */
  goawayLastStream: number | undefined;
  /** RST_STREAM frames received. */
  resets = 0;
  /** The error code of each stream reset, by stream id. */
  readonly streamResets = new Map<number, number>();
  /** HEADERS frames received (answers started). */
  answers = 0;
  /** The stream ids answers started on. */
  readonly answered = new Set<number>();
  /** PING acknowledgements received, by their first payload byte. */
  readonly pingAcks = new Set<number>();
  /** The connection's error, if it ended with one (ECONNRESET: the server closed it on bytes it had not read). */
  error: string | undefined;
  #buffer = Buffer.alloc(0);

  readonly #ackSettings: boolean;

  /** `ackSettings` false: the server's SETTINGS are never acknowledged (§6.5.3), as a hostile client may do. */
  constructor(port: number, ca: string, servername: string, { ackSettings = true }: { ackSettings?: boolean } = {}) {
    this.#ackSettings = ackSettings;
    const tcp = net.connect({ host: '127.0.0.1', port });
    this.tcp = tcp;
    const failed = (err: NodeJS.ErrnoException): void => void (this.error ??= err.code ?? err.message);
    tcp.on('error', failed);
    this.tls = tls.connect({ socket: tcp, ca, servername, ALPNProtocols: ['h2'] });
    this.tls.on('error', failed);
    this.secure = new Promise((resolve, reject) => {
      this.tls.once('secureConnect', () => (this.tls.alpnProtocol === 'h2' ? resolve() : reject(new Error(`ALPN chose ${this.tls.alpnProtocol}`))));
      this.tls.once('close', () => reject(new Error('closed before the handshake')));
    });
    this.secure.catch(() => undefined);
    this.closed = new Promise((resolve) => this.tls.once('close', () => resolve()));
    this.tls.on('data', (chunk: Buffer) => this.#read(chunk));
  }

  /** The client preface and an empty SETTINGS frame (RFC 9113 §3.4). */
  preface(): void {
    this.tls.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), frame(0x4, 0, 0, Buffer.alloc(0))]));
  }

  write(bytes: Buffer): boolean {
    return this.tls.destroyed ? false : this.tls.write(bytes);
  }

  #read(chunk: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    while (this.#buffer.length >= 9) {
      const length = this.#buffer.readUIntBE(0, 3);
      if (this.#buffer.length < 9 + length) return;
      const type = this.#buffer[3]!;
      const flags = this.#buffer[4]!;
      const payload = this.#buffer.subarray(9, 9 + length);
      if (type === 0x7) {
        this.goaways.push(payload.readUInt32BE(4));
        this.goawayAt ??= Date.now();
        const last = payload.readUInt32BE(0) & 0x7fffffff;
        this.goawayLastStream = Math.min(this.goawayLastStream ?? last, last);
      }
      if (type === 0x3) {
        this.resets++;
        this.streamResets.set(this.#buffer.readUInt32BE(5) & 0x7fffffff, payload.readUInt32BE(0));
      }
      if (type === 0x1) {
        this.answers++;
        this.answered.add(this.#buffer.readUInt32BE(5) & 0x7fffffff);
      }
      if (type === 0x6 && (flags & 0x1) !== 0 && length === 8) this.pingAcks.add(payload[0]!);
      // SETTINGS from the server: acknowledge (§6.5.3), as any client must.
      if (type === 0x4 && (flags & 0x1) === 0 && this.#ackSettings) this.write(frame(0x4, 0x1, 0, Buffer.alloc(0)));
      this.#buffer = this.#buffer.subarray(9 + length);
    }
  }
}

/** An HPACK integer (RFC 7541 §5.1): `prefixBits` bits of the first byte, whose other bits are `first`. */
export function hpackInt(prefixBits: number, first: number, n: number): Buffer {
  const max = (1 << prefixBits) - 1;
  if (n < max) return Buffer.from([first | n]);
  const out = [first | max];
  for (n -= max; n >= 128; n = Math.floor(n / 128)) out.push((n % 128) + 128);
  out.push(n);
  return Buffer.from(out);
}

/** A header field as an HPACK literal without indexing, new name (RFC 7541 §6.2.2), any length; name and value are latin1. */
export function hpackLiteral(name: string, value: string): Buffer {
  const n = Buffer.from(name, 'latin1');
  const v = Buffer.from(value, 'latin1');
  return Buffer.concat([Buffer.from([0]), hpackInt(7, 0, n.length), n, hpackInt(7, 0, v.length), v]);
}

/** A header block as HEADERS then CONTINUATION frames of at most `frameBytes` (END_HEADERS on the last; END_STREAM when `endStream`). */
export function headerFrames(streamId: number, block: Buffer, endStream: boolean, frameBytes = 16_384): Buffer {
  const frames: Buffer[] = [];
  for (let offset = 0; offset < block.length || offset === 0; offset += frameBytes) {
    const first = offset === 0;
    const last = offset + frameBytes >= block.length;
    frames.push(frame(first ? 0x1 : 0x9, (first && endStream ? 0x1 : 0) | (last ? 0x4 : 0), streamId, block.subarray(offset, offset + frameBytes)));
  }
  return Buffer.concat(frames);
}

/** One frame: 24-bit length, type, flags, 31-bit stream id, payload (RFC 9113 §4.1). */
export function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

/**
 * A HEADERS frame for `GET path` on `authority`, HPACK-coded without the
 * dynamic table (RFC 7541: static-table indexes for :method GET, :scheme
 * https, and a literal :path and :authority), END_HEADERS set; END_STREAM
 * when `endStream`.
 */
export function getHeaders(streamId: number, authority: string, path: string, endStream = true, fields: readonly (readonly [string, string])[] = []): Buffer {
  const literal = (index: number, value: string): Buffer => {
    const v = Buffer.from(value, 'latin1');
    if (v.length > 126) throw new RangeError('value too long for this encoder');
    // Literal without indexing, name from the static table (§6.2.2: 4-bit prefix; indexes here are < 15).
    return Buffer.concat([Buffer.from([index, v.length]), v]);
  };
  // Literal without indexing, new name (§6.2.2, first byte 0).
  const named = ([name, value]: readonly [string, string]): Buffer =>
    Buffer.concat([Buffer.from([0, name.length]), Buffer.from(name), literal(0, value).subarray(1)]);
  const block = Buffer.concat([Buffer.from([0x82, 0x87]), literal(4, path), literal(1, authority), ...fields.map(named)]);
  return frame(0x1, 0x4 | (endStream ? 0x1 : 0), streamId, block);
}

export function data(streamId: number, payload: Buffer, endStream: boolean): Buffer {
  return frame(0x0, endStream ? 0x1 : 0, streamId, payload);
}

export function rstStream(streamId: number, code: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(code);
  return frame(0x3, 0, streamId, payload);
}

export function windowUpdate(streamId: number, increment: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(increment);
  return frame(0x8, 0, streamId, payload);
}

/**
 * A node:http2 client on its own TCP socket, so a test can cut it at any
 * level: one stream (RST_STREAM CANCEL), the session (GOAWAY and close), or
 * the TCP connection (RST). TLS sessions are resumed, as browsers do, so
 * a thousand of these cost the key server no signature each.
 */
export class H2Client {
  readonly tcp: net.Socket;
  readonly session: http2.ClientHttp2Session;
  static readonly #tickets = new Map<string, Buffer>();

  constructor(port: number, ca: string, servername: string) {
    const key = `${port} ${servername}`;
    this.tcp = net.connect({ host: '127.0.0.1', port });
    this.tcp.on('error', () => undefined);
    const ticket = H2Client.#tickets.get(key);
    const secure = tls.connect({ socket: this.tcp, ca, servername, ALPNProtocols: ['h2'], ...(ticket === undefined ? {} : { session: ticket }) });
    secure.on('error', () => undefined);
    secure.on('session', (s: Buffer) => H2Client.#tickets.set(key, s));
    this.session = http2.connect(`https://${servername}:${port}`, { createConnection: () => secure });
    this.session.on('error', () => undefined);
    this.connected = new Promise((resolve) => {
      this.session.once('connect', () => resolve());
      this.session.once('close', () => resolve());
    });
  }

  /** Resolves once the session is up (or gone): a cut timed from here hits the phase it means to. */
  readonly connected: Promise<void>;

  /** A request whose answer is counted as it arrives (`received`), never rejecting. */
  request(headers: http2.OutgoingHttpHeaders, endStream = true): { stream: http2.ClientHttp2Stream; received: () => number } {
    const stream = this.session.request(headers, { endStream });
    let received = 0;
    stream.on('data', (chunk: Buffer) => (received += chunk.length));
    stream.on('error', () => undefined);
    return { stream, received: () => received };
  }

  cut(how: H2Cut, stream: http2.ClientHttp2Stream | undefined): void {
    if (how === 'stream' && stream !== undefined) stream.close(http2.constants.NGHTTP2_CANCEL);
    else if (how === 'reset') this.tcp.resetAndDestroy();
    else this.session.destroy();
  }

  /** Waits until the session is gone (at most `timeoutMs`), then makes sure it is. */
  async finish(timeoutMs = 2_000): Promise<void> {
    if (!this.session.destroyed) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.session.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
        this.session.close();
      });
    }
    this.session.destroy();
    this.tcp.destroy();
  }
}

/** How an HTTP/2 client goes away: one stream reset, the whole session closed, or the TCP connection reset. */
export type H2Cut = 'stream' | 'session' | 'reset';
export const H2_CUTS: readonly H2Cut[] = ['stream', 'session', 'reset'];

/** A normal HTTP/2 client on its own connection, one GET after another until stopped; every answer must be a whole 200. */
export class SteadyH2 {
  requests = 0;
  readonly failures: string[] = [];
  #running = true;
  readonly #loop: Promise<void>;

  constructor(port: number, ca: string, host: string, path: string, expectedBody: string) {
    this.#loop = (async () => {
      let session = h2Connect(port, ca, host);
      while (this.#running) {
        if (session.destroyed || session.closed) session = h2Connect(port, ca, host);
        try {
          const answer = await h2Request(session, { ':path': path });
          if (answer.status !== 200 || answer.body.toString() !== expectedBody) this.failures.push(`${answer.status} ${answer.body.toString().slice(0, 40)}`);
        } catch (err) {
          this.failures.push((err as Error).message);
        }
        this.requests++;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await closeSession(session);
    })();
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#loop;
  }
}
