/**
 * A key-server client over one connection (unix socket or mutual TLS).
 *
 * Multiplexing: every request gets a fresh request id and an entry in the
 * pending map; answers are matched by id in whatever order they arrive
 * (SPEC.md). Each request has its own deadline: when it passes, the caller
 * gets KEYEDGE_ERR_TIMEOUT and the id moves to the abandoned set: it stays
 * reserved until its late answer arrives (which is then dropped), so an id is
 * never reused while the server may still answer it (SPEC.md, "Request ids").
 * An answer matching no id at all is a server fault and closes the connection. At most `maxInFlight` requests are outstanding; one more is refused
 * at once with KEYEDGE_ERR_OVERLOADED rather than queued without bound. The
 * abandoned set is bounded too: once more than `maxInFlight` ids wait there,
 * the server is not answering, and the connection is closed (every pending
 * request fails with KEYEDGE_ERR_CLOSED), which frees them all at once;
 * otherwise a server that reads and never answers would grow the set, a
 * request at a time, for as long as the connection stays open. When
 * the connection drops, every pending request fails with KEYEDGE_ERR_CLOSED;
 * there is no reconnect or retry here, a caller decides that.
 *
 * Used by the CLI, tests and benchmarks; the proxy's native bridge speaks the
 * same protocol from C.
 */
import net from 'node:net';
import tls from 'node:tls';
import { readSettingFile } from '../../config/setting-file.js';
import { assertClientKeyMatches } from './client-key.js';
import { KeyedgeError, type ProtocolError, RemoteError } from '../shared/errors.js';
import { decodeResponse, encodeRequest, type Request, type Response } from '../protocol/codec.js';
import { type AlgorithmByte, errorCodeName } from '../protocol/constants.js';
import { FrameReader } from '../protocol/framer.js';

export interface KeyserverClientOptions {
  readonly unixPath?: string;
  readonly tcp?: {
    readonly host: string;
    readonly port: number;
    /** PEM paths: the CA that issued the key server's certificate, our client certificate and key. */
    readonly ca: string;
    readonly cert: string;
    readonly key: string;
    /** Name checked in the server certificate; defaults to host. */
    readonly servername?: string;
  };
  /** What errors call the key server (the proxy's servers[].name); its address when absent. */
  readonly name?: string;
  readonly timeoutMs?: number;
  readonly maxInFlight?: number;
  /** Give up connecting (TLS handshake included) after this long; default: when the OS does. */
  readonly connectTimeoutMs?: number;
}

type RequestBody = Request extends infer R ? (R extends Request ? Omit<R, 'id'> : never) : never;

/** The answer each request is due (SPEC.md, connection rules); an ERROR answers any. */
const ANSWER_TO: Readonly<Record<Request['op'], Response['op']>> = { ping: 'pong', getPublicKey: 'publicKey', sign: 'signature' };

/** Far past a certificate, a key or a CA bundle. */
const MAX_TLS_FILE_BYTES = 1024 * 1024;

/**
 * A TLS file of a tcp key server, read at each connection (the proxy's workers probe a key server they lost, the
 * primary connects for each ACME order and store check), on the caller's event loop: so through
 * config/setting-file.ts, a FIFO or a device refused unread, naming the file and the setting (keyserver.tcp.ca,
 * .cert or .key, or a servers[] entry's), never its content.
 */
function readTlsFile(file: string, which: 'ca' | 'cert' | 'key'): Buffer {
  try {
    return readSettingFile(file, MAX_TLS_FILE_BYTES);
  } catch (err) {
    throw new KeyedgeError('KEYEDGE_ERR_SETUP', `cannot read the key server's ${file} (keyserver.tcp.${which}): ${(err as Error).message}`, { cause: err });
  }
}

interface Pending {
  readonly answer: Response['op'];
  resolve(response: Response): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export class KeyserverClient {
  readonly #socket: net.Socket;
  readonly #pending = new Map<number, Pending>();
  readonly #abandoned = new Set<number>();
  readonly #timeoutMs: number;
  readonly #maxInFlight: number;
  #nextId = 1;
  #closedError: Error | undefined;

  private constructor(socket: net.Socket, options: KeyserverClientOptions) {
    this.#socket = socket;
    this.#timeoutMs = options.timeoutMs ?? 2000;
    this.#maxInFlight = options.maxInFlight ?? 1024;
    const reader = new FrameReader({
      // Answers carry at most a public key; the server's request limit does not apply.
      maxBodyBytes: 16384,
      onFrame: (frame) => this.#onFrame(frame),
      onError: (err) => this.#fail(err),
    });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.on('error', (err) => this.#fail(new KeyedgeError('KEYEDGE_ERR_CLOSED', `key server connection failed: ${err.message}`, { cause: err })));
    socket.on('close', () => this.#fail(new KeyedgeError('KEYEDGE_ERR_CLOSED', 'key server closed the connection')));
  }

  static connect(options: KeyserverClientOptions): Promise<KeyserverClient> {
    return new Promise((resolve, reject) => {
      let socket: net.Socket;
      let ready: string;
      if (options.unixPath !== undefined) {
        socket = net.connect(options.unixPath);
        ready = 'connect';
      } else if (options.tcp !== undefined) {
        const t = options.tcp;
        let files: { ca: Buffer; cert: Buffer; key: Buffer };
        try {
          files = { ca: readTlsFile(t.ca, 'ca'), cert: readTlsFile(t.cert, 'cert'), key: readTlsFile(t.key, 'key') };
          // Before tls.connect, whose context refuses such a key in OpenSSL's words ("DECODER routines::unsupported").
          const name = options.name ?? `${t.host}:${t.port}`;
          assertClientKeyMatches({ name, certFile: t.cert, keyFile: t.key, certPem: files.cert, keyPem: files.key });
        } catch (err) {
          reject(err);
          return;
        }
        // The certificate is checked against servername, else host: an IP address against its IP SANs (Node's
        // checkServerIdentity; SNI carries no IP, RFC 6066 §3), as the native bridge checks it. Not skipped for an IP:
        // any certificate of the CA (another server's, a proxy's client certificate) then passed for the key server.
        socket = tls.connect({
          host: t.host,
          port: t.port,
          servername: t.servername ?? (net.isIP(t.host) ? undefined : t.host),
          ...files,
          minVersion: 'TLSv1.3',
        });
        ready = 'secureConnect';
      } else {
        reject(new KeyedgeError('KEYEDGE_ERR_USAGE', 'a key server client needs unixPath or tcp'));
        return;
      }
      socket.setNoDelay(true);
      const where = options.unixPath ?? `${options.tcp?.host}:${options.tcp?.port}`;
      const onError = (err: Error): void => {
        clearTimeout(timer);
        reject(new KeyedgeError('KEYEDGE_ERR_CLOSED', `cannot connect to the key server at ${where}: ${err.message}`, { cause: err }));
      };
      // An unreachable host can leave a connect pending for minutes: a caller with a deadline ends it.
      const timer =
        options.connectTimeoutMs === undefined
          ? undefined
          : setTimeout(() => socket.destroy(new Error(`no connection within ${options.connectTimeoutMs} ms`)), options.connectTimeoutMs);
      socket.once('error', onError);
      socket.once(ready, () => {
        clearTimeout(timer);
        socket.off('error', onError);
        resolve(new KeyserverClient(socket, options));
      });
    });
  }

  get inFlight(): number {
    return this.#pending.size;
  }

  async ping(payload: Buffer = Buffer.alloc(0)): Promise<Buffer> {
    const response = await this.request({ op: 'ping', payload });
    return expect(response, 'pong').payload;
  }

  async getPublicKey(keyId: string | Buffer): Promise<Buffer> {
    const response = await this.request({ op: 'getPublicKey', keyId: keyIdBytes(keyId) });
    return expect(response, 'publicKey').spki;
  }

  async sign(keyId: string | Buffer, algorithm: AlgorithmByte, digest: Buffer): Promise<Buffer> {
    const response = await this.request({ op: 'sign', keyId: keyIdBytes(keyId), algorithm, digest });
    return expect(response, 'signature').signature;
  }

  /** Sends one request and resolves with its answer, error answers included (tests inspect them). */
  request(body: RequestBody): Promise<Response> {
    if (this.#closedError !== undefined) return Promise.reject(this.#closedError);
    if (this.#pending.size >= this.#maxInFlight) {
      return Promise.reject(new KeyedgeError('KEYEDGE_ERR_OVERLOADED', `more than ${this.#maxInFlight} key-server requests in flight`));
    }
    const id = this.#allocateId();
    const frame = encodeRequest({ ...body, id } as Request);
    return new Promise<Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        this.#abandoned.add(id);
        reject(new KeyedgeError('KEYEDGE_ERR_TIMEOUT', `no answer from the key server within ${this.#timeoutMs} ms`));
        if (this.#abandoned.size > this.#maxInFlight) {
          const unanswered = `the key server left ${this.#abandoned.size} requests unanswered past their ${this.#timeoutMs} ms deadline`;
          this.#fail(new KeyedgeError('KEYEDGE_ERR_CLOSED', `${unanswered}: connection closed`));
        }
      }, this.#timeoutMs);
      this.#pending.set(id, { answer: ANSWER_TO[body.op], resolve, reject, timer });
      this.#socket.write(frame);
    });
  }

  /** Writes raw bytes, bypassing the encoder: for tests of the server's handling of bad input. */
  writeRaw(bytes: Buffer): void {
    this.#socket.write(bytes);
  }

  close(): void {
    this.#socket.destroy();
    this.#fail(new KeyedgeError('KEYEDGE_ERR_CLOSED', 'client closed'));
  }

  #allocateId(): number {
    // Ids wrap at 2^32; one still in flight is skipped, never reused (SPEC.md).
    do {
      this.#nextId = (this.#nextId + 1) >>> 0;
    } while (this.#pending.has(this.#nextId) || this.#abandoned.has(this.#nextId));
    return this.#nextId;
  }

  #onFrame(frame: Buffer): void {
    let response: Response;
    try {
      response = decodeResponse(frame);
    } catch (err) {
      this.#fail(err as ProtocolError);
      return;
    }
    const pending = this.#pending.get(response.id);
    if (pending === undefined) {
      if (this.#abandoned.delete(response.id)) return;
      this.#fail(new KeyedgeError('KEYEDGE_ERR_PROTOCOL', `the key server answered request id ${response.id}, which was never sent`));
      return;
    }
    if (response.op !== 'error' && response.op !== pending.answer) {
      // As the native bridge does: answers no longer pair with their requests, so none on this connection is trusted.
      this.#fail(new KeyedgeError('KEYEDGE_ERR_PROTOCOL', `the key server answered request id ${response.id} with a ${response.op}, not a ${pending.answer}`));
      return;
    }
    this.#pending.delete(response.id);
    clearTimeout(pending.timer);
    pending.resolve(response);
  }

  #fail(err: Error): void {
    this.#closedError ??= err;
    this.#socket.destroy();
    for (const pending of this.#pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(err);
    }
    this.#pending.clear();
    this.#abandoned.clear();
  }
}

function keyIdBytes(keyId: string | Buffer): Buffer {
  return typeof keyId === 'string' ? Buffer.from(keyId, 'hex') : keyId;
}

function expect<K extends Response['op']>(response: Response, op: K): Extract<Response, { op: K }> {
  if (response.op === op) return response as Extract<Response, { op: K }>;
  if (response.op === 'error') throw new RemoteError(response.code, errorCodeName(response.code), response.detail);
  throw new KeyedgeError('KEYEDGE_ERR_PROTOCOL', `expected a ${op} answer, got ${response.op}`);
}
