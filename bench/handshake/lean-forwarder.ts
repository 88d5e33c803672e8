/**
 * The leanest keep-alive forwarder Node can do (`bare-llhttp` in layers.ts),
 * and the servers layers.ts runs beside it that are not Node floors (nginx).
 *
 * bare-llhttp: a node:https server (as floor.ts) whose requests go to one
 * origin over kept-alive net sockets, one llhttp parser per origin socket
 * (Node's own native HTTPParser from `_http_common`, the parser node:http
 * uses, present with the same calls on Node 20, 22 and 24), the request head
 * written as one string, the answer's raw head straight to `writeHead` and its
 * body chunks to `write`. No ClientRequest, IncomingMessage, stream, promise
 * or closure per request: what is left is the socket write, the read, the
 * parse and the answer, the least any origin client on Node has to do. It is
 * a bench floor, not a product client: GET/HEAD without a request body, no
 * timeouts, no retries, no limits on the origin's answer (what the product's
 * client must add is listed in bench/results/2026-12-04-floor.md).
 *
 * nginx: the keep-alive bench's nginx configuration (bench/keepalive/lab.ts),
 * as one process (`master_process off`, so the pid layers.ts measures is the
 * one that serves), plus a stub_status listener on the admin port for
 * layers.ts's readiness probe.
 *
 * Usage: node dist/bench/handshake/lean-forwarder.js --config FILE   (FILE: LeanConfig as JSON)
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type http from 'node:http';
import https from 'node:https';
import { createRequire } from 'node:module';
import net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { nginxConfig } from '../keepalive/lab.js';
import { serveFloorCounts } from './floor-counts.js';

interface LeanConfig {
  readonly port: number;
  readonly admin: number;
  readonly certificates: readonly { readonly serverName: string; readonly chain: string; readonly key: string }[];
  /** http://host:port */
  readonly origin: string;
  /** The parser reads the origin socket in C++ (`consume`, as node:http's server does): no 'data' event or Buffer per read in JavaScript. */
  readonly consume?: boolean;
}

/** The paths layers.ts gives a server: its temp dir, ports, origin, the certificate's chain and key. */
export interface ExtraServerInput {
  readonly name: string;
  readonly dir: string;
  readonly port: number;
  readonly admin: number;
  readonly origin: string;
  readonly chain: string;
  readonly key: string;
  readonly serverName: string;
  readonly accessLog: boolean;
}

/**
 * The command of a server layers.ts does not know itself, given its profiler
 * prefix (`[…, node]`: the node binary last, replaced for nginx), or
 * undefined for the servers layers.ts runs on its own.
 */
export function extraServer(x: ExtraServerInput, prefix: readonly string[]): string[] | undefined {
  if (x.name === 'bare-llhttp' || x.name === 'bare-llhttp-consume') {
    const file = join(x.dir, `${x.name}.json`);
    const certificates = [{ serverName: x.serverName, chain: x.chain, key: x.key }];
    const config: LeanConfig = { port: x.port, admin: x.admin, origin: x.origin, certificates, consume: x.name === 'bare-llhttp-consume' };
    writeFileSync(file, JSON.stringify(config));
    return [...prefix, fileURLToPath(import.meta.url), '--config', file];
  }
  if (x.name !== 'nginx') return undefined;
  const dir = join(x.dir, 'nginx');
  mkdirSync(join(dir, 'nginx-tmp'), { recursive: true, mode: 0o700 });
  copyFileSync(x.chain, join(dir, 'file-chain.pem'));
  copyFileSync(x.key, join(dir, 'file.key'));
  const originPort = Number(new URL(x.origin).port);
  const status = `  server { listen 127.0.0.1:${x.admin}; access_log off; location = /status { stub_status; } }\n}\n`;
  const conf = `master_process off;\n${nginxConfig(dir, x.port, originPort, x.accessLog).replace(/}\n$/, status)}`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  return [...prefix.slice(0, -1), 'nginx', '-e', join(dir, 'nginx-error.log'), '-p', dir, '-c', join(dir, 'nginx.conf')];
}

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

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'te', 'upgrade', 'trailer']);

/** One kept-alive origin socket, its parser, and the answer it is feeding (null when idle). */
class OriginConnection {
  readonly socket: net.Socket;
  readonly parser: NativeParser;
  res: http.ServerResponse | null = null;
  head = false;
  reusable = false;
  #headers: string[] = [];

  constructor(
    P: HttpCommon['HTTPParser'],
    host: string,
    port: number,
    private readonly release: (c: OriginConnection) => void,
    consume: boolean,
  ) {
    this.socket = net.connect({ host, port, noDelay: true });
    this.parser = new P();
    this.parser.initialize(P.RESPONSE, {}, 0, P.kLenientNone);
    // Head in more than one call when it has more than 32 fields (llhttp's flush): collected here.
    this.parser[P.kOnHeaders] = (headers: string[]) => {
      for (const h of headers) this.#headers.push(h);
    };
    this.parser[P.kOnHeadersComplete] = (
      _major: number,
      _minor: number,
      headers: string[] | undefined,
      _method: unknown,
      _url: unknown,
      status: number,
      _message: string,
      _upgrade: boolean,
      keepAlive: boolean,
    ) => {
      const raw = headers === undefined ? this.#headers : this.#headers.length === 0 ? headers : this.#headers.concat(headers);
      this.#headers = [];
      this.reusable = keepAlive;
      const out: string[] = [];
      for (let i = 0; i < raw.length; i += 2) if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
      this.res?.writeHead(status, out);
      // 1: no body follows (the answer to HEAD), as node:http's client tells llhttp.
      return this.head ? 1 : 0;
    };
    // Node's binding hands each body chunk as its own Buffer (copied out of the read buffer).
    this.parser[P.kOnBody] = (chunk: Buffer) => this.res?.write(chunk);
    this.parser[P.kOnMessageComplete] = () => {
      const res = this.res;
      this.res = null;
      res?.end();
      if (this.reusable) this.release(this);
      else this.socket.destroy();
    };
    if (consume) {
      // As node:http's server: the native parser reads the handle; the 'data' listener only keeps the socket reading.
      this.parser[P.kOnExecute] = (r: number | Error) => {
        if (r instanceof Error) this.fail();
      };
      this.socket.on('data', () => undefined);
      this.socket.once('connect', () => this.parser.consume((this.socket as unknown as { _handle: unknown })._handle));
    } else
      this.socket.on('data', (data: Buffer) => {
        const r = this.parser.execute(data);
        if (r instanceof Error) this.fail();
      });
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

function main(): void {
  const { values } = parseArgs({ options: { config: { type: 'string' } }, strict: true });
  if (values.config === undefined) throw new Error('usage: lean-forwarder.js --config FILE');
  const c = JSON.parse(readFileSync(values.config, 'utf8')) as LeanConfig;
  const { HTTPParser } = createRequire(import.meta.url)('_http_common') as HttpCommon;
  const url = new URL(c.origin);
  const host = url.hostname;
  const port = Number(url.port);
  const hostHeader = url.host;
  const idle: OriginConnection[] = [];
  const release = (conn: OriginConnection) => void idle.push(conn);
  const contexts = new Map(
    c.certificates.map((x) => [x.serverName, tls.createSecureContext({ cert: readFileSync(x.chain), key: readFileSync(x.key), minVersion: 'TLSv1.2' })]),
  );
  const counts = { full: 0, resumed: 0, failed: 0, requests: 0, originConnections: 0 };

  const server = https.createServer(
    {
      SNICallback: (name: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => cb(null, contexts.get(name)),
      minVersion: 'TLSv1.2',
      ALPNProtocols: ['http/1.1'],
    },
    (req, res) => {
      counts.requests++;
      let conn = idle.pop();
      while (conn?.socket.destroyed) conn = idle.pop();
      if (conn === undefined) {
        counts.originConnections++;
        conn = new OriginConnection(HTTPParser, host, port, release, c.consume === true);
      }
      conn.res = res;
      conn.head = req.method === 'HEAD';
      // The request head as one string: end-to-end fields as received, the origin's Host, one write.
      let head = `${req.method} ${req.url} HTTP/1.1\r\nhost: ${hostHeader}\r\n`;
      const raw = req.rawHeaders;
      for (let i = 0; i < raw.length; i += 2) {
        const name = raw[i]!.toLowerCase();
        if (name !== 'host' && !HOP_BY_HOP.has(name)) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
      }
      conn.socket.write(`${head}\r\n`, 'latin1');
      res.on('close', () => {
        // The client left before the answer ended: the origin socket's framing is mid-answer, so it cannot be reused.
        if (conn!.res === res) conn!.fail();
      });
    },
  );
  server.listen(c.port, '127.0.0.1');
  serveFloorCounts(server, counts, c.admin, 'lean forwarder ready');
  process.on('SIGTERM', () => process.exit(0));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
