/**
 * Running a real key server in a test: a temporary state directory with its
 * own embedded SoftHSM2 token, keys put in before the server starts, a logger
 * whose lines the test can read, and raw-socket access for malformed input.
 *
 * One PKCS#11 module instance per process: provisionKeys() opens the token,
 * works and finalises it again, so call it before startKeyserver(), never
 * while a key server of this process is running. Keys added while one runs go
 * through the CLI child process (basics.ts runCli).
 */
import { constants, createHash, createPublicKey, type KeyObject, verify } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { loadKeyserverConfig, mergeOverrides } from '../../config/load.js';
import type { KeyserverConfig } from '../../config/schema.js';
import { KeyserverClient } from '../../keyserver/client/client.js';
import { createLogger, type Logger } from '../../keyserver/shared/log.js';
import { decodeResponse, encodeRequest, type Request, type Response } from '../../keyserver/protocol/codec.js';
import { algorithmInfo, type AlgorithmByte } from '../../keyserver/protocol/constants.js';
import { FrameReader } from '../../keyserver/protocol/framer.js';
import { type RunningKeyserver, startKeyserver } from '../../keyserver/server/daemon.js';
import { tokenOptions } from '../../keyserver/token/open-options.js';
import { generateKey, type KeyType } from '../../keyserver/token/key-generate.js';
import { importKey } from '../../keyserver/token/key-import.js';
import { Token } from '../../keyserver/token/token.js';

/**
 * The config file a test would write, as an object: the state directory, an
 * admin listener on an ephemeral port, debug logs, two signing sessions, the
 * unix socket in the state directory. `overrides` is merged over it.
 */
export function testConfigObject(stateDir: string, overrides: unknown = {}): Record<string, unknown> {
  const base = { stateDir, admin: { host: '127.0.0.1', port: 0 }, log: { level: 'debug' }, pkcs11: { sessions: 2 } };
  return mergeOverrides(base, overrides) as Record<string, unknown>;
}

export function testConfig(stateDir: string, overrides: unknown = {}): KeyserverConfig {
  return loadKeyserverConfig(undefined, testConfigObject(stateDir, overrides));
}

/** Writes the same config as a JSON file (for the CLI) and returns its path. */
export function writeConfigFile(stateDir: string, overrides: unknown = {}): string {
  const file = join(stateDir, 'keyserver.json');
  writeFileSync(file, JSON.stringify(testConfigObject(stateDir, overrides), null, 2));
  return file;
}

/** The embedded token's user PIN, to check that no log line ever carries it. */
export function readUserPin(stateDir: string): string {
  return readFileSync(join(stateDir, 'token', 'user.pin'), 'utf8').trim();
}

export interface KeySpec {
  readonly label: string;
  /** Generate a key of this type inside the token... */
  readonly type?: KeyType;
  /** ...or import this PEM private key. */
  readonly pem?: string;
}

/** What a test needs to know about a key after the token is closed again. */
export interface ProvisionedKey {
  readonly keyId: string;
  readonly label: string;
  readonly kind: 'ec' | 'rsa';
  readonly bits: number;
  readonly spki: Buffer;
  readonly publicKey: KeyObject;
}

/**
 * Opens the config's token (creating the embedded one on first use), makes the
 * keys, runs `extra` with the open token, and finalises the module again.
 */
export function provisionKeys(config: KeyserverConfig, specs: readonly KeySpec[], extra?: (token: Token) => void): Record<string, ProvisionedKey> {
  const token = Token.open(tokenOptions(config));
  try {
    const out: Record<string, ProvisionedKey> = {};
    for (const spec of specs) {
      const key = spec.pem !== undefined ? importKey(token, spec.pem, spec.label, `${spec.label}.pem`) : generateKey(token, spec.type ?? 'ec-p256', spec.label);
      out[spec.label] = {
        keyId: key.keyId,
        label: key.label,
        kind: key.kind,
        bits: key.bits,
        spki: key.spki,
        publicKey: createPublicKey({ key: key.spki, format: 'der', type: 'spki' }),
      };
    }
    extra?.(token);
    return out;
  } finally {
    token.close();
  }
}

// ---------------------------------------------------------------------------
// Logs

export interface LogCapture {
  readonly logger: Logger;
  /** Every line so far, parsed. */
  lines(): Record<string, unknown>[];
  /** Every line so far, raw, joined. */
  text(): string;
  /** Lines whose `msg` matches. */
  find(msg: RegExp): Record<string, unknown>[];
}

/** A pino logger writing synchronously into memory. */
export function captureLog(level = 'debug'): LogCapture {
  const raw: string[] = [];
  const logger = createLogger('keyserver-test', level, { write: (line: string) => void raw.push(line) });
  const lines = () => raw.map((line) => JSON.parse(line) as Record<string, unknown>);
  return {
    logger,
    lines,
    text: () => raw.join(''),
    find: (msg) => lines().filter((line) => typeof line.msg === 'string' && msg.test(line.msg)),
  };
}

/** startKeyserver with the captured logger. */
export function startTestKeyserver(config: KeyserverConfig, logs: LogCapture): Promise<RunningKeyserver> {
  return startKeyserver(config, { log: logs.logger });
}

export function connectUnix(server: RunningKeyserver, timeoutMs = 10_000): Promise<KeyserverClient> {
  return KeyserverClient.connect({ unixPath: server.unixPath!, timeoutMs });
}

// ---------------------------------------------------------------------------
// Signatures

export function digestOf(algorithm: AlgorithmByte, message: Buffer): Buffer {
  return createHash(algorithmInfo(algorithm)!.hash).update(message).digest();
}

/**
 * Whether `signature` is a valid signature by `publicKey` over `message` under
 * the protocol's algorithm: ECDSA as DER, PKCS#1 v1.5, or PSS with MGF1 of the
 * same hash and salt length = hash length.
 */
export function verifies(algorithm: AlgorithmByte, message: Buffer, publicKey: KeyObject, signature: Buffer): boolean {
  const info = algorithmInfo(algorithm)!;
  if (info.scheme === 'ecdsa') return verify(info.hash, message, { key: publicKey, dsaEncoding: 'der' }, signature);
  if (info.scheme === 'rsa-pkcs1') return verify(info.hash, message, publicKey, signature);
  return verify(info.hash, message, { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: info.digestBytes }, signature);
}

// ---------------------------------------------------------------------------
// Raw connections

/**
 * A unix-socket connection that writes whatever bytes it is given and records
 * every answer frame, including those to ids no KeyserverClient would expect.
 */
export class RawConnection {
  readonly socket: net.Socket;
  readonly responses: Response[] = [];
  readonly closed: Promise<void>;
  #waiters: { id: number; resolve(r: Response): void; reject(e: Error): void }[] = [];
  #isClosed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    const reader = new FrameReader({
      onFrame: (frame) => {
        const response = decodeResponse(Buffer.from(frame));
        this.responses.push(response);
        const waiter = this.#waiters.find((w) => w.id === response.id);
        if (waiter !== undefined) {
          this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
          waiter.resolve(response);
        }
      },
      onError: (err) => socket.destroy(err),
    });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.#isClosed = true;
        for (const waiter of this.#waiters.splice(0)) waiter.reject(new Error(`connection closed before an answer to id ${waiter.id}`));
        resolve();
      }),
    );
  }

  static connect(path: string): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(path);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawConnection(socket));
      });
    });
  }

  get isClosed(): boolean {
    return this.#isClosed;
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  send(request: Request): Promise<Response> {
    const answer = this.answer(request.id);
    this.write(encodeRequest(request));
    return answer;
  }

  /** The answer with this id: one already received, or the next to arrive (10 s at most). */
  answer(id: number, timeoutMs = 10_000): Promise<Response> {
    const seen = this.responses.find((r) => r.id === id);
    if (seen !== undefined) return Promise.resolve(seen);
    if (this.#isClosed) return Promise.reject(new Error(`connection closed before an answer to id ${id}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer to id ${id} within ${timeoutMs} ms`)), timeoutMs);
      this.#waiters.push({
        id,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A 12-byte header followed by `body`; every field settable, nothing checked. */
export function rawFrame(
  fields: { version?: number; opcode: number; reserved?: number; id: number; bodyLength?: number },
  body: Buffer = Buffer.alloc(0),
): Buffer {
  const header = Buffer.alloc(12);
  header[0] = fields.version ?? 1;
  header[1] = fields.opcode;
  header.writeUInt16BE(fields.reserved ?? 0, 2);
  header.writeUInt32BE(fields.id, 4);
  header.writeUInt32BE(fields.bodyLength ?? body.length, 8);
  return Buffer.concat([header, body]);
}

/** One item: tag, 2-byte length, value. */
export function item(tag: number, value: Buffer, declaredLength = value.length): Buffer {
  const head = Buffer.alloc(3);
  head[0] = tag;
  head.writeUInt16BE(declaredLength, 1);
  return Buffer.concat([head, value]);
}

// ---------------------------------------------------------------------------
// Child processes and HTTP

/** The value of one Prometheus sample from the admin port, 0 when the series does not exist yet. */
export async function metricValue(server: Pick<RunningKeyserver, 'adminPort'>, name: string, labels: Record<string, string> = {}): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${server.adminPort}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  const text = await res.text();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const present = (match[2] ?? '').split(',').filter((s) => s !== '');
    if (wanted.every((w) => present.includes(w))) return Number(match[3]);
  }
  return 0;
}
