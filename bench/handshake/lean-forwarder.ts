/**
 * The leanest keep-alive forwarder Node can do (`bare-llhttp` in layers.ts, floor.ts's `forward.client: 'llhttp'`):
 * requests go to one origin over kept-alive net sockets, one llhttp parser per origin socket (Node's own native
 * HTTPParser from `_http_common`, the parser node:http uses, present with the same calls on Node 20, 22 and 24), the
 * request head written as one string, the answer's raw head straight to `writeHead` and its body chunks to `write`.
 * No ClientRequest, IncomingMessage, stream, promise or closure per request: what is left is the socket write, the
 * read, the parse and the answer, the least any origin client on Node has to do. It is a bench floor, not a product
 * client: GET/HEAD without a request body, no timeouts, no retries, no limits on the origin's answer (what the
 * product's client must add is listed in bench/results/2026-12-04-floor.md).
 */
import type http from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';

/** Node's native llhttp binding, as node:http's client and server use it (not a public API: layers.ts runs it on every Node it measures). */
interface NativeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | Error;
  consume(handle: unknown): void;
  [key: number]: unknown;
}
interface HttpCommon {
  HTTPParser: {
    new (): NativeParser;
    RESPONSE: number;
    kOnHeaders: number;
    kOnHeadersComplete: number;
    kOnBody: number;
    kOnMessageComplete: number;
    kOnExecute: number;
    kLenientNone: number;
  };
}

export const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'te', 'upgrade', 'trailer']);

/** One kept-alive origin socket, its parser, and the answer it is feeding (null when idle). */
class OriginConnection {
  readonly socket: net.Socket;
  readonly parser: NativeParser;
  res: http.ServerResponse | null = null;
  head = false;
  reusable = false;
  #headers: string[] = [];

  constructor(P: HttpCommon['HTTPParser'], host: string, port: number, release: (c: OriginConnection) => void, consume: boolean) {
    this.socket = net.connect({ host, port, noDelay: true });
    this.parser = new P();
    this.parser.initialize(P.RESPONSE, {}, 0, P.kLenientNone);
    // Head in more than one call when it has more than 32 fields (llhttp's flush): collected here.
    this.parser[P.kOnHeaders] = (headers: string[]) => this.#headers.push(...headers);
    // (versionMajor, versionMinor, headers, method, url, statusCode, statusMessage, upgrade, shouldKeepAlive)
    this.parser[P.kOnHeadersComplete] = (...a: [number, number, string[] | undefined, unknown, unknown, number, string, boolean, boolean]) => {
      const raw = a[2] === undefined ? this.#headers : this.#headers.length === 0 ? a[2] : this.#headers.concat(a[2]);
      this.#headers = [];
      this.reusable = a[8];
      const out: string[] = [];
      for (let i = 0; i < raw.length; i += 2) if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
      this.res?.writeHead(a[5], out);
      // 1: no body follows (the answer to HEAD), as node:http's client tells llhttp.
      return this.head ? 1 : 0;
    };
    // Node's binding hands each body chunk as its own Buffer (copied out of the read buffer).
    this.parser[P.kOnBody] = (chunk: Buffer) => this.res?.write(chunk);
    this.parser[P.kOnMessageComplete] = () => {
      const res = this.res;
      this.res = null;
      res?.end();
      if (this.reusable) release(this);
      else this.socket.destroy();
    };
    if (consume) {
      // As node:http's server: the native parser reads the handle; the 'data' listener only keeps the socket reading.
      this.parser[P.kOnExecute] = (r: number | Error) => r instanceof Error && this.fail();
      this.socket.on('data', () => undefined);
      this.socket.once('connect', () => this.parser.consume((this.socket as unknown as { _handle: unknown })._handle));
    } else this.socket.on('data', (data: Buffer) => this.parser.execute(data) instanceof Error && this.fail());
    this.socket.on('error', () => this.fail());
    this.socket.on('close', () => this.fail());
  }

  fail(): void {
    const res = this.res;
    this.res = null;
    this.reusable = false;
    this.socket.destroy();
    res?.destroy();
  }
}

/** The answer function of floor.ts's node:https server; `counts.originConnections` counts the origin sockets opened. */
export function llhttpForwarder(
  origin: string,
  consume: boolean,
  counts: { originConnections?: number },
): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  const { HTTPParser } = createRequire(import.meta.url)('_http_common') as HttpCommon;
  const url = new URL(origin);
  const idle: OriginConnection[] = [];
  const release = (conn: OriginConnection) => void idle.push(conn);
  counts.originConnections = 0;
  return (req, res) => {
    let conn = idle.pop();
    while (conn?.socket.destroyed) conn = idle.pop();
    if (conn === undefined) {
      counts.originConnections!++;
      conn = new OriginConnection(HTTPParser, url.hostname, Number(url.port), release, consume);
    }
    conn.res = res;
    conn.head = req.method === 'HEAD';
    // The request head as one string: end-to-end fields as received, the origin's Host, one write.
    let head = `${req.method} ${req.url} HTTP/1.1\r\nhost: ${url.host}\r\n`;
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase();
      if (name !== 'host' && !HOP_BY_HOP.has(name)) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
    }
    conn.socket.write(`${head}\r\n`, 'latin1');
    // The client left before the answer ended: the origin socket's framing is mid-answer, so it cannot be reused.
    res.on('close', () => conn.res === res && conn.fail());
  };
}
