/**
 * The whole edge under a real Prometheus: the keyless lab (key server child
 * process with its SoftHSM2 token and admin port, test CA, HTTP origin), the
 * proxy as the real cluster (`keyedge proxy`, 2 workers, admin port on the
 * primary) and a Prometheus scraping both admin ports every second.
 *
 *   const edge = await startObservedEdge();
 *   ... load on edge.port ...
 *   await edge.waitForScrapes(loadEnded);
 *   expect(await edge.scalar('sum(keyedge_proxy_tls_handshakes_total{result="ok"})')).toBe(n);
 *   await edge.close();
 *
 * One per test file: it owns a key server, a cluster and a Prometheus.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type ClusterProxy, startClusterProxy } from './proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './proxy-lab.js';
import { type RunningPrometheus, type Sample, startPrometheus } from './prometheus.js';

/** The `job` label of each scrape target. */
export const JOBS = { proxy: 'keyedge-proxy', keyserver: 'keyedge-keyserver' } as const;

/** Served names: edge.lab.test (and any other *.lab.test) go to the lab's origin. */
export const EDGE_HOST = 'edge.lab.test';

export interface ObservedEdgeOptions {
  /** Proxy workers (2: the admin port must sum over workers). */
  readonly workers?: number;
  /** Merged over the proxy config (certificates, domains, tls...); sees the lab for its files and the proxy's store directory. */
  readonly proxyConfig?: (lab: KeylessLab, base: Record<string, unknown>, storeDir: string) => Record<string, unknown>;
  /** Certificate store entries (name → PEM chain) written before the proxy starts. */
  readonly storeEntries?: (lab: KeylessLab) => Promise<ReadonlyMap<string, string>>;
}

export interface ObservedEdge {
  readonly lab: KeylessLab;
  /** The test CA's certificate (PEM), to verify the proxy. */
  readonly ca: string;
  /** The proxy's HTTPS port. */
  readonly port: number;
  readonly proxy: ClusterProxy;
  readonly prometheus: RunningPrometheus;
  /** Evaluates a PromQL expression now, through Prometheus's HTTP API. */
  queryPrometheus(expr: string): Promise<Sample[]>;
  /** The value of an expression yielding exactly one series. */
  scalar(expr: string): Promise<number>;
  /** Resolves once both targets have been scraped by a scrape that started at or after `sinceMs`. */
  waitForScrapes(sinceMs: number): Promise<void>;
  /** Stops Prometheus, the proxy and the lab; removes their temp dirs. Safe after a partial start. */
  close(): Promise<void>;
}

export async function startObservedEdge(options: ObservedEdgeOptions = {}): Promise<ObservedEdge> {
  const lab = await startKeylessLab();
  let proxy: ClusterProxy | undefined;
  let prometheus: RunningPrometheus | undefined;
  const close = async (): Promise<void> => {
    await prometheus?.stop();
    await proxy?.stop();
    await lab.close();
  };
  try {
    const ca = readFileSync(lab.caFile, 'utf8');
    const ec = await lab.certificate('ec', lab.keys.ec, [EDGE_HOST, '*.lab.test']);
    const entries = (await options.storeEntries?.(lab)) ?? new Map<string, string>();
    proxy = await startClusterProxy(lab, 'observed', (p) => {
      for (const [name, pem] of entries) writeFileSync(join(p.storeDir, `${name}.pem`), pem);
      const base: Record<string, unknown> = {
        stateDir: join(lab.dir, 'state'),
        workers: options.workers ?? 2,
        keyserver: { socket: lab.socket },
        listen: [{ host: '127.0.0.1', port: p.port }],
        certificates: [{ name: 'ec', chain: ec.file }],
        sni: { default: 'ec' },
        domains: [{ name: '*.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` }],
        admin: { host: '127.0.0.1', port: p.adminPort, tokenFile: p.tokenFile },
        certStore: { dir: p.storeDir },
        log: { level: 'info' },
        shutdownGraceMs: 2000,
      };
      return { ...base, ...options.proxyConfig?.(lab, base, p.storeDir) };
    });
    prometheus = await startPrometheus([
      { job: JOBS.proxy, port: proxy.adminPort },
      { job: JOBS.keyserver, port: lab.adminPort },
    ]);
    const running = prometheus;
    return {
      lab,
      ca,
      port: proxy.port,
      proxy,
      prometheus: running,
      queryPrometheus: (expr) => running.query(expr),
      scalar: (expr) => running.scalar(expr),
      waitForScrapes: (sinceMs) => running.waitForScrapes(sinceMs),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
