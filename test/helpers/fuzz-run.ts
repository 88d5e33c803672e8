/**
 * The loop of a seeded fuzz test (abuse-fuzz-h1, abuse-fuzz-origin): its
 * cases one at a time, so a long run takes one core at most and each case's
 * breaks are printed as they are found (a long run shows them before it ends).
 * Given the proxy, a case that broke is printed with what the proxy logged at
 * warn level or above while it ran and its counts of what fails a connection
 * before HTTP (`proxySaid`): a break of timing (a handshake failed on a
 * loaded machine) is seldom seen again on its replay.
 */
import { metricSum } from './abuse.js';
import type { ClusterProxy } from './proxy-cluster.js';

export async function runFuzzCases(first: number, count: number, runCase: (c: number) => Promise<string[]>, proxy?: ClusterProxy): Promise<string[]> {
  const breaks: string[] = [];
  for (let c = first; c < first + count; c++) {
    const logged = proxy?.lines.length ?? 0;
    const found = await runCase(c);
    for (const b of found) console.error(b);
    if (found.length > 0 && proxy !== undefined) console.error(await proxySaid(proxy, logged));
    breaks.push(...found);
  }
  return breaks;
}

/**
 * What the proxy said since its line `from` at warn level or above (pino's 40),
 * access lines aside, and its failed TLS handshakes, key-server failures (each
 * fails a handshake) and connections refused at accept so far, which it logs
 * at debug level or not at all.
 */
export async function proxySaid(proxy: ClusterProxy, from: number): Promise<string> {
  const said = proxy.lines
    .slice(from)
    .filter((l) => l.access !== true && (Number(l.level) >= 40 || l.level === 'warn' || l.level === 'error' || l.level === 'fatal'));
  const counts = await Promise.all([
    metricSum(proxy, 'keyedge_proxy_tls_handshakes_total', { result: 'failed' }),
    metricSum(proxy, 'keyedge_proxy_keyless_failures_total'),
    metricSum(proxy, 'keyedge_proxy_connections_rejected_total'),
  ]).then(
    (sums) => sums.map((n) => n ?? 0),
    (err: Error) => [err.message],
  );
  const lines = said.slice(0, 8).map((l) => `\n    ${JSON.stringify(l).slice(0, 600)}`);
  return `  the proxy: ${counts[0]} failed handshakes, ${counts[1]} key-server failures, ${counts[2]} connections refused at accept so far; ${said.length} warnings or errors during the case${lines.join('')}`;
}
