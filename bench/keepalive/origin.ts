/**
 * The keep-alive bench's origin: the product's demo page (1 KiB, proxy/demo-origin.ts) and a request counter. Every
 * proxied request reaches the origin exactly once, so the counter counts keyedge, nginx and caddy alike.
 * `GET /__bench/count` answers the count as JSON and is not counted (the bench asks it directly).
 *
 * Usage: node dist/bench/keepalive/origin.js --port P [--size BYTES]; prints "keepalive origin ready <port>".
 */
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { demoPage } from '../../proxy/demo-origin.js';

export const COUNT_PATH = '/__bench/count';
export const READY_LINE = 'keepalive origin ready';

function main(): void {
  const { values } = parseArgs({ options: { port: { type: 'string' }, size: { type: 'string', default: '1024' } }, strict: true });
  const [port, size] = [Number(values.port), Number(values.size)];
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`--port must be 1..65535, got '${values.port ?? ''}'`);
  if (!Number.isInteger(size) || size < 0) throw new Error(`--size must be a byte count, got '${values.size}'`);
  const page = demoPage(size);
  let served = 0;
  const server = http.createServer((req, res) => {
    if (req.url === COUNT_PATH) return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ served }));
    served++;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': page.length }).end(page);
  });
  // Longer than every proxy's upstream idle timeout, so the proxies, not the origin, decide when pooled connections close.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 130_000;
  server.listen(port, '127.0.0.1', () => process.stdout.write(`${READY_LINE} ${port}\n`));
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => server.close(() => process.exit(0)));
}

// Importable for its constants; runs only as a script.
if (process.argv[1] === fileURLToPath(import.meta.url)) main();
