/**
 * A minimal WebSocket (RFC 6455) for tests, on node:http's upgrade: the
 * opening handshake (§4.1 client, §4.2.2 server), and frames (§5.2) with a
 * FIN bit, one of the text/close opcodes and payloads under 64 KiB, masked
 * from the client (§5.3). Enough to see bytes cross the proxy both ways and
 * closes propagate; not a general implementation.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
export const TEXT = 0x1;
export const CLOSE = 0x8;

/** §4.2.2: the server's proof that it read the key. */
export function acceptFor(key: string): string {
  return createHash('sha1')
    .update(key + GUID)
    .digest('base64');
}

export function encodeFrame(opcode: number, payload: Buffer | string, masked: boolean): Buffer {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  if (data.length >= 65_536) throw new RangeError('test frames stay under 64 KiB');
  const header = data.length < 126 ? Buffer.from([0x80 | opcode, data.length]) : Buffer.from([0x80 | opcode, 126, data.length >> 8, data.length & 0xff]);
  if (!masked) return Buffer.concat([header, data]);
  header[1]! |= 0x80;
  const mask = randomBytes(4);
  return Buffer.concat([header, mask, Buffer.from(data.map((b, i) => b ^ mask[i % 4]!))]);
}

export interface Frame {
  readonly opcode: number;
  readonly payload: Buffer;
}

/** Calls `onFrame` for each complete frame read from `socket` (bytes after the handshake, starting with `head`). */
export function readFrames(socket: Duplex, head: Buffer, onFrame: (frame: Frame) => void): void {
  let buffer = head;
  const drain = (): void => {
    for (;;) {
      if (buffer.length < 2) return;
      const masked = (buffer[1]! & 0x80) !== 0;
      let length = buffer[1]! & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffer.length < 4) return;
        length = buffer.readUInt16BE(2);
        offset = 4;
      }
      const maskAt = offset;
      if (masked) offset += 4;
      if (buffer.length < offset + length) return;
      let payload = buffer.subarray(offset, offset + length);
      if (masked) payload = Buffer.from(payload.map((b, i) => b ^ buffer[maskAt + (i % 4)]!));
      const opcode = buffer[0]! & 0x0f;
      buffer = buffer.subarray(offset + length);
      onFrame({ opcode, payload });
    }
  };
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    drain();
  });
  drain();
}

export interface ClientSocket {
  readonly socket: Duplex;
  /** The headers of the 101 answer. */
  readonly headers: IncomingMessage['headers'];
  /** Text messages received, in order. */
  readonly messages: string[];
  send(text: string): void;
  /** Resolves with the next text message (or the ones already waiting). */
  next(): Promise<string>;
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;
  /** Resolves with the status code of the first Close frame received (§5.5.1, §7.4), or undefined when the socket closed without one. */
  readonly closeCode: Promise<number | undefined>;
}

/** RFC 6455 §4.1's sample nonce: a valid Sec-WebSocket-Key for a request whose 101 is not checked. */
export const SAMPLE_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

/**
 * The options of a WebSocket opening handshake (RFC 6455 §4.1) to `host` through the proxy at `port` (TLS, trusting
 * `ca`), for https.request: GET with Upgrade, Connection, Sec-WebSocket-Key (`key`, the sample one unless given) and
 * Sec-WebSocket-Version 13, on a connection of its own.
 */
export function upgradeRequest(
  port: number,
  ca: string,
  host: string,
  path = '/',
  options: { readonly key?: string; readonly servername?: string } = {},
): https.RequestOptions {
  return {
    host: '127.0.0.1',
    port,
    servername: options.servername ?? host,
    ca,
    path,
    agent: false,
    headers: { host, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-key': options.key ?? SAMPLE_KEY, 'sec-websocket-version': '13' },
  };
}

/**
 * Opens a WebSocket to `host` through the proxy at `port`. Resolves with the
 * socket after a valid 101, or with the status and body of any other answer.
 */
export function openWebSocket(
  port: number,
  ca: string,
  host: string,
  path = '/',
  servername = host,
): Promise<ClientSocket | { status: number; headers: IncomingMessage['headers']; body: string }> {
  const key = randomBytes(16).toString('base64');
  return new Promise((resolve, reject) => {
    const req = https.request(upgradeRequest(port, ca, host, path, { key, servername }));
    req.on('error', reject);
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('upgrade', (res, socket, head) => {
      if (res.headers['sec-websocket-accept'] !== acceptFor(key)) return reject(new Error('bad Sec-WebSocket-Accept'));
      const messages: string[] = [];
      const waiting: ((m: string) => void)[] = [];
      let onClose: (code: number | undefined) => void = () => undefined;
      const closeCode = new Promise<number | undefined>((done) => (onClose = done));
      readFrames(socket, head, (frame) => {
        if (frame.opcode === CLOSE) onClose(frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : undefined);
        if (frame.opcode !== TEXT) return;
        const text = frame.payload.toString();
        const waiter = waiting.shift();
        if (waiter !== undefined) waiter(text);
        else messages.push(text);
      });
      const closed = new Promise<void>((done) =>
        socket.once('close', () => {
          onClose(undefined);
          done();
        }),
      );
      socket.on('error', () => undefined);
      resolve({
        socket,
        headers: res.headers,
        messages,
        send: (text) => void socket.write(encodeFrame(TEXT, text, true)),
        next: () => new Promise((done) => (messages.length > 0 ? done(messages.shift()!) : waiting.push(done))),
        closed,
        closeCode,
      });
    });
    req.end();
  });
}
