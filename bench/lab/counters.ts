/**
 * Counters the handshake and cert-reload benches read from the servers' admin ports (Prometheus text): the proxy's and
 * the in-memory server's handshakes (summed over workers by the cluster primary) and the key server's signs.
 */
import { httpGet } from '../harness/spawn.js';

/**
 * Handshakes: `full` (result="ok", resumed="false"), `resumed`, `failed` (result="failed" and "unknown_name"); HTTP
 * `requests` by status class; `keylessSigns`: the proxy's own count of signatures received (0 for the in-memory server).
 */
export type HandshakeCounters = { full: number; resumed: number; failed: number; requests: Readonly<Record<string, number>>; keylessSigns: number };

/** The samples `name{labels} value` of each metric in `/metrics` at `adminPort`, labels parsed. */
async function metrics(adminPort: number, what: string) {
  const { status, body } = await httpGet(`http://127.0.0.1:${adminPort}/metrics`, 10_000);
  if (status !== 200) throw new Error(`${what}admin :${adminPort}/metrics answered ${status}`);
  return (name: string) =>
    [...body.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? +(\\S+)`, 'gm'))].map((m) => ({
      labels: Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]])) as Record<string, string>,
      value: Number(m[2]),
    }));
}

const addTo = (to: Record<string, number>, key: string, n: number) => (to[key] = (to[key] ?? 0) + n);

export async function readHandshakeCounters(adminPort: number): Promise<HandshakeCounters> {
  const samples = await metrics(adminPort, '');
  const handshakes: Record<string, number> = {};
  for (const { labels, value } of samples('keyedge_proxy_tls_handshakes_total'))
    addTo(handshakes, labels.result !== 'ok' ? 'failed' : labels.resumed === 'true' ? 'resumed' : 'full', value);
  const requests: Record<string, number> = {};
  for (const s of samples('keyedge_proxy_http_requests_total')) addTo(requests, s.labels.status_class ?? 'other', s.value);
  const keylessSigns = samples('keyedge_proxy_keyless_signs_total').reduce((n, s) => n + s.value, 0);
  return { full: handshakes.full ?? 0, resumed: handshakes.resumed ?? 0, failed: handshakes.failed ?? 0, requests, keylessSigns };
}

/** Successful signs at the key server, by algorithm. */
export async function readKeyserverSigns(adminPort: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const s of (await metrics(adminPort, 'key server '))('keyedge_keyserver_requests_total'))
    if (s.labels.op === 'sign' && s.labels.result === 'ok') addTo(out, s.labels.algorithm ?? 'unknown', s.value);
  return out;
}

export function diffCounters(a: HandshakeCounters, b: HandshakeCounters): HandshakeCounters {
  const requests: Record<string, number> = {};
  for (const k of new Set([...Object.keys(a.requests), ...Object.keys(b.requests)])) requests[k] = (b.requests[k] ?? 0) - (a.requests[k] ?? 0);
  return { full: b.full - a.full, resumed: b.resumed - a.resumed, failed: b.failed - a.failed, requests, keylessSigns: b.keylessSigns - a.keylessSigns };
}

export const sumValues = (r: Readonly<Record<string, number>>): number => Object.values(r).reduce((a, b) => a + b, 0);
