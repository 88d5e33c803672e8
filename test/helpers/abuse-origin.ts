/**
 * A real HTTP origin for the slow-client tests, counting what the proxy does
 * to it:
 *   GET /big        an 8 MiB answer with Content-Length, written with backpressure
 *   GET /hold?ms=N  answers after N ms
 *   POST (any path) reads the whole body, answers with its length
 *   anything else   a short 200
 * `aborted` counts requests or answers the proxy cut (closed before the
 * request body's end or the answer's last byte); `maxInFlight` is the most
 * requests it had at once; `connections` its open TCP connections, `closed`
 * how many have closed (an aborted request closes its connection, even when the
 * origin had already handed its whole answer to the kernel).
 */
import http from 'node:http';
import type net from 'node:net';

export const BIG_BYTES = 8 * 1024 * 1024;

export interface AbuseOrigin {
  readonly port: number;
  readonly stats: {
    aborted: number;
    bodiesAborted: number;
    answersAborted: number;
    inFlight: number;
    maxInFlight: number;
    connections: number;
    closed: number;
    posts: number;
    gets: number;
  };
  close(): Promise<void>;
}

export async function startAbuseOrigin(): Promise<AbuseOrigin> {
  const stats = { aborted: 0, bodiesAborted: 0, answersAborted: 0, inFlight: 0, maxInFlight: 0, connections: 0, closed: 0, posts: 0, gets: 0 };
  const server = http.createServer((req, res) => {
    stats.inFlight++;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    res.once('close', () => {
      stats.inFlight--;
      if (!res.writableFinished) {
        stats.aborted++;
        if (req.complete) stats.answersAborted++;
        else stats.bodiesAborted++;
      }
    });
    const url = new URL(req.url ?? '/', 'http://origin');
    if (req.method === 'POST') {
      stats.posts++;
      let length = 0;
      req.on('data', (chunk: Buffer) => (length += chunk.length));
      req.on('end', () => res.writeHead(200, { 'content-type': 'text/plain' }).end(`${length}\n`));
      return;
    }
    stats.gets++;
    if (url.pathname === '/big') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': BIG_BYTES });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let sent = 0;
      const write = (): void => {
        while (sent < BIG_BYTES) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', write);
        }
        res.end();
      };
      write();
      return;
    }
    if (url.pathname === '/hold') {
      const timer = setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('held\n'), Number(url.searchParams.get('ms') ?? 1000));
      res.once('close', () => clearTimeout(timer));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
  });
  server.on('connection', (socket: net.Socket) => {
    stats.connections++;
    socket.once('close', () => {
      stats.connections--;
      stats.closed++;
    });
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    stats,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
