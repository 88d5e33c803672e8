import https from 'node:https';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EDGE_HOST, JOBS, type ObservedEdge, startObservedEdge } from './helpers/observed-edge.js';
import { ensurePrometheus } from './helpers/prometheus.js';

// The metrics as an operator sees them: a real Prometheus scrapes the proxy
// cluster's admin port (the primary sums its 2 workers) and the key server's
// admin port; a known load goes through the proxy, and PromQL over the
// scraped series must count it exactly.
//
// Load: ONE_SHOT connections with one request each (Connection: close, no
// session to resume: a full handshake each), and one kept-alive connection
// carrying KEEP_ALIVE requests. Readiness probes and scrapes go to the admin
// ports, which count nothing.
const ONE_SHOT = 10;
/** Store entries and the days until each expires: their expiry must reach Prometheus as it is. */
const EXPIRING = { soon: 2, month: 10, later: 60 } as const;
const DAY_S = 86_400;
const KEEP_ALIVE = 25;
const FULL_HANDSHAKES = ONE_SHOT + 1;
const REQUESTS = ONE_SHOT + KEEP_ALIVE;

/** What the load made, and the values read before it (for counters other processes also move). */
interface Observed {
  readonly before: { readonly keyserverSigns: number; readonly proxyKeylessSigns: number };
}

/**
 * Each check is one PromQL expression and its exact expected value after the
 * load; `expected` may read the running edge (its lab's certificates, say).
 * Add a metric here, or an `it` in the describe below that calls
 * edge.queryPrometheus / edge.scalar for anything that is not one exact number.
 * `or vector(0)`: a labelled counter has no series until first incremented.
 */
const CHECKS: readonly { readonly what: string; readonly expr: string; readonly expected: (o: Observed, edge: ObservedEdge) => number }[] = [
  { what: 'the proxy target is up', expr: `up{job="${JOBS.proxy}"}`, expected: () => 1 },
  { what: 'the key server target is up', expr: `up{job="${JOBS.keyserver}"}`, expected: () => 1 },
  { what: 'successful handshakes (both workers)', expr: 'sum(keyedge_proxy_tls_handshakes_total{result="ok"}) or vector(0)', expected: () => FULL_HANDSHAKES },
  { what: 'resumed handshakes', expr: 'sum(keyedge_proxy_tls_handshakes_total{result="ok",resumed="true"}) or vector(0)', expected: () => 0 },
  { what: 'failed handshakes', expr: 'sum(keyedge_proxy_tls_handshakes_total{result!="ok"}) or vector(0)', expected: () => 0 },
  { what: 'HTTP requests', expr: 'sum(keyedge_proxy_http_requests_total) or vector(0)', expected: () => REQUESTS },
  {
    what: 'HTTP requests answered 2xx by the origin',
    expr: 'sum(keyedge_proxy_http_requests_total{status_class="2xx",code="none"}) or vector(0)',
    expected: () => REQUESTS,
  },
  {
    what: 'handshakes in the handshake-duration histogram',
    expr: 'sum(keyedge_proxy_tls_handshake_duration_seconds_count{resumed="false"}) or vector(0)',
    expected: () => FULL_HANDSHAKES,
  },
  {
    what: 'keyless signatures the proxy workers got',
    expr: 'sum(keyedge_proxy_keyless_signs_total)',
    expected: (o) => o.before.proxyKeylessSigns + FULL_HANDSHAKES,
  },
  {
    what: 'signatures the key server made',
    expr: 'sum(keyedge_keyserver_requests_total{op="sign",result="ok"}) or vector(0)',
    expected: (o) => o.before.keyserverSigns + FULL_HANDSHAKES,
  },
];

const availability = ensurePrometheus();
const skipReason = 'skip' in availability ? availability.skip : undefined;

let edge: ObservedEdge;
let observed: Observed;
let values: Map<string, number>;

/** One GET; resolves with the status and the socket it went over. */
function get(agent: https.Agent | false): Promise<{ status: number; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port: edge.port, servername: EDGE_HOST, ca: edge.ca, headers: { host: EDGE_HOST }, agent }, (res) => {
      res.resume();
      res.once('end', () => resolve({ status: res.statusCode ?? 0, socket: req.socket! }));
      res.once('error', reject);
    });
    req.setTimeout(15_000, () => req.destroy(new Error('client timeout')));
    req.once('error', reject);
  });
}

describe.skipIf(skipReason !== undefined)(`metrics scraped by a real Prometheus${skipReason === undefined ? '' : ` (skipped: ${skipReason})`}`, () => {
  beforeAll(async () => {
    edge = await startObservedEdge({
      storeEntries: async (lab) => {
        const entries = new Map<string, string>();
        for (const [name, days] of Object.entries(EXPIRING)) {
          const issued = await lab.certificate(name, lab.keys.ec, [`${name}.lab.test`], { notAfter: new Date(Date.now() + days * DAY_S * 1000) });
          entries.set(name, `${issued.leaf.certPem}\n${lab.ca.certPem}`);
        }
        return entries;
      },
    });
    // Baselines: read from Prometheus too, once it has scraped the ready cluster.
    await edge.waitForScrapes(Date.now());
    observed = {
      before: {
        keyserverSigns: await edge.scalar('sum(keyedge_keyserver_requests_total{op="sign",result="ok"}) or vector(0)'),
        proxyKeylessSigns: await edge.scalar('sum(keyedge_proxy_keyless_signs_total)'),
      },
    };

    const statuses: number[] = [];
    for (let i = 0; i < ONE_SHOT; i++) statuses.push((await get(false)).status);
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const sockets = new Set<Socket>();
    try {
      for (let i = 0; i < KEEP_ALIVE; i++) {
        const answer = await get(agent);
        statuses.push(answer.status);
        sockets.add(answer.socket);
      }
    } finally {
      agent.destroy();
    }
    expect(statuses).toEqual(Array(REQUESTS).fill(200));
    expect(sockets.size, 'the kept-alive requests shared one connection').toBe(1);

    // Every counter was moved before the client had its answer; a scrape that
    // starts after this sees them all.
    await edge.waitForScrapes(Date.now());
    values = new Map();
    for (const check of CHECKS) values.set(check.what, await edge.scalar(check.expr));
  }, 180_000);
  afterAll(async () => {
    await edge?.close();
  });

  for (const check of CHECKS) {
    it(`${check.what}: ${check.expr}`, () => {
      expect(values.get(check.what), `${check.expr} (before the load: ${JSON.stringify(observed.before)})`).toBe(check.expected(observed, edge));
    });
  }

  it('scrapes the certificate expiry of every store entry, and the 7/30-day aggregates', async () => {
    for (const [name, days] of Object.entries(EXPIRING)) {
      const seconds = await edge.scalar(`keyedge_proxy_certificate_expiry_seconds{certificate="${name}"}`);
      // Issued for exactly `days` days shortly before the scrape.
      expect(Math.abs(seconds - days * DAY_S), name).toBeLessThan(600);
    }
    // The config's own certificate (the lab issues for a day) is within both, beside soon and month.
    expect(await edge.scalar('keyedge_proxy_certificates_expiring{within="7d"}')).toBe(2);
    expect(await edge.scalar('keyedge_proxy_certificates_expiring{within="30d"}')).toBe(3);
    expect(await edge.scalar('keyedge_proxy_certificates{state="serving"}')).toBe(4);
  });
});
