/**
 * `keyedge demo-origin`: a small HTTP origin for the embedded default and the
 * benchmarks. It answers every GET with a fixed page (1 KiB by default) and
 * echoes request bodies, so a set-up can be checked end to end with curl.
 */
import http from 'node:http';
import { type Command, parseCommandArgs } from '../keyserver/shared/command.js';
import { UsageError } from '../keyserver/shared/errors.js';
import { listen } from '../keyserver/shared/listen.js';

const USAGE = `Usage: keyedge demo-origin [--host HOST] [--port PORT] [--size BYTES]

A demo HTTP origin: GET answers a fixed page of BYTES (default 1024),
POST/PUT echo the request body. For trying keyedge out and for benchmarks.

Options:
  --host HOST    default 127.0.0.1
  --port PORT    default 8080
  --size BYTES   page size, default 1024
  --help         this text
`;

export function demoPage(size: number): Buffer {
  const head = '<!doctype html><title>keyedge demo origin</title><p>Hello from the demo origin behind keyedge.</p>\n';
  return Buffer.from(head.padEnd(Math.max(size, head.length), '.').slice(0, Math.max(size, head.length)));
}

export function startDemoOrigin(host: string, port: number, size: number): Promise<http.Server> {
  const page = demoPage(size);
  const server = http.createServer((req, res) => {
    if (req.method === 'POST' || req.method === 'PUT') {
      res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/octet-stream' });
      req.pipe(res);
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': page.length });
    res.end(req.method === 'HEAD' ? undefined : page);
  });
  server.keepAliveTimeout = 65_000;
  return listen(server, { host, port });
}

export const demoOriginCommand: Command = {
  name: 'demo-origin',
  async run(argv) {
    const { values } = parseCommandArgs(argv, { host: { type: 'string' }, port: { type: 'string' }, size: { type: 'string' } }, USAGE);
    if (values.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    const port = Number(values.port ?? 8080);
    const size = Number(values.size ?? 1024);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError('--port must be 0..65535');
    if (!Number.isInteger(size) || size < 0 || size > 16 * 1024 * 1024) throw new UsageError('--size must be 0..16777216');
    const server = await startDemoOrigin(values.host ?? '127.0.0.1', port, size);
    process.stdout.write(`demo origin on http://${values.host ?? '127.0.0.1'}:${port}/\n`);
    await new Promise<void>((resolve) => {
      const stop = (): void => void server.close(() => resolve());
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    return 0;
  },
};
