/**
 * The cost of one request's accounting alone (proxy/http/access.ts: the access line through the product's logger and
 * the request metrics), in a loop, without a server: what the access line and metrics add to every proxied request.
 * Run it under callgrind for instruction counts that do not depend on the machine's load (the difference between N
 * and 0 requests, divided by N, is the cost of one):
 *
 *   N=0 valgrind --tool=callgrind --callgrind-out-file=a0 node dist/bench/handshake/access-cost.js > /dev/null
 *   N=40000 valgrind --tool=callgrind --callgrind-out-file=a1 node dist/bench/handshake/access-cost.js > /dev/null
 *
 * Without valgrind it prints the CPU time (user + system, the log's pool thread included) per request on stderr.
 * Lines go to stdout: send it to /dev/null, as above.
 */
import { Registry } from 'prom-client';
import { createLogger } from '../../keyserver/shared/log.js';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import { AccessAccounts, RequestRecord } from '../../proxy/http/access.js';
import { ProxyMetrics } from '../../proxy/metrics.js';
import type { KeylessStats } from '../../proxy/keyless/bridge.js';
import type { IncomingMessage, ServerResponse } from 'node:http';

const WARMUP = 50_000;
const n = Number(process.env.N ?? 300_000);
const stats = { signs: 0, failures: { connect: 0, timeout: 0, remote: 0, protocol: 0, breaker: 0 }, lastError: '' } as unknown as KeylessStats;
const accounts = new AccessAccounts(createLogger('proxy-worker-1', 'info'), new ProxyMetrics(() => stats, new Registry()));
const domain = { name: 'bench.test' } as ProxyDomain;
const req = { url: '/index.html?q=1', method: 'GET', socket: { getProtocol: () => 'TLSv1.3', isSessionReused: () => false } } as unknown as IncomingMessage;
const res = { statusCode: 200 } as ServerResponse;

function one(): void {
  const record = new RequestRecord(req, res, process.hrtime.bigint(), domain, {}, undefined, accounts, () => {});
  record.origin = 'http://127.0.0.1:8080';
  record.bodyBytes = 1024;
  accounts.count(record, { status: 200, code: undefined, aborted: false });
}

/** `count` requests, letting the event loop turn every 8 (as a loaded worker does), so the log's writes happen as they would. */
async function run(count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    one();
    if (i % 8 === 7) await new Promise((resolve) => setImmediate(resolve));
  }
}

await run(WARMUP);
const before = process.cpuUsage();
await run(n);
const used = process.cpuUsage(before);
if (n > 0) process.stderr.write(`${((used.user + used.system) / n).toFixed(2)} µs CPU per request's access line and metrics (${n} requests)\n`);
