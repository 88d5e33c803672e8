import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { KeyserverMetrics } from '../keyserver/server/metrics.js';
import { ProxyMetrics, registerAcmeMetrics } from '../proxy/metrics.js';
import { registerServingMetrics } from '../proxy/serving/expiry.js';

// The dashboard may only chart metrics the daemons export: every name in its
// queries must have a `# TYPE` line in what the admin ports serve.
interface Panel {
  readonly type: string;
  readonly title: string;
  readonly targets?: readonly { readonly expr: string }[];
}

const dashboard = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'config', 'grafana-dashboard.json'), 'utf8')) as {
  readonly title: string;
  readonly uid: string;
  readonly panels: readonly Panel[];
};

async function exportedNames(): Promise<Set<string>> {
  const proxy = new ProxyMetrics(() => ({ signs: 0, failures: { connect: 0, timeout: 0, remote: 0, protocol: 0, breaker: 0 }, lastError: '' }), new Registry());
  const keyserver = new KeyserverMetrics();
  // The cluster primary's own: reloads and certificate expiry.
  const primary = new Registry();
  registerServingMetrics(primary, { records: () => new Map(), refusals: () => new Map() });
  registerAcmeMetrics(primary, () => 0);
  try {
    const text = `${await proxy.registry.metrics()}\n${await keyserver.registry.metrics()}\n${await primary.metrics()}`;
    return new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
  } finally {
    proxy.stop();
  }
}

describe('config/grafana-dashboard.json', () => {
  it('has the shape Grafana imports: title, uid, panels with Prometheus queries', () => {
    expect(dashboard.title).toBe('keyedge');
    expect(dashboard.uid).toMatch(/^[\w-]{1,40}$/);
    const charts = dashboard.panels.filter((p) => p.type !== 'row');
    expect(charts.length).toBeGreaterThanOrEqual(8);
    for (const panel of charts) expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
  });

  it('charts only metrics the proxy and key server export', async () => {
    const exported = await exportedNames();
    const used = new Set(
      dashboard.panels
        .flatMap((p) => p.targets ?? [])
        .flatMap((t) => [...t.expr.matchAll(/\bkeyedge_[a-z0-9_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, ''))),
    );
    expect(used.size).toBeGreaterThanOrEqual(10);
    for (const name of used) expect(exported.has(name), `${name} is not exported`).toBe(true);
  });

  it('covers the handshake, keyless, origin and reload panels', () => {
    const exprs = dashboard.panels
      .flatMap((p) => p.targets ?? [])
      .map((t) => t.expr)
      .join('\n');
    for (const name of [
      'keyedge_proxy_tls_handshakes_total',
      'keyedge_proxy_keyless_failures_total',
      'keyedge_proxy_origin_request_duration_seconds_bucket',
      'keyedge_proxy_reloads_total',
    ]) {
      expect(exprs).toContain(name);
    }
  });
});
