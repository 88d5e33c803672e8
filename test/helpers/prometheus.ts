/**
 * A real Prometheus server for end-to-end metric tests (Debian package
 * `prometheus`, which `config/setup.sh test` installs): its own config and
 * TSDB in a temp dir, a free loopback port, scraping the given targets every
 * second. Queries go through its HTTP API (/api/v1/query), as Grafana's would.
 *
 *   const prom = await startPrometheus([{ job: 'proxy', port: adminPort }]);
 *   await prom.waitForScrapes(Date.now());
 *   expect(await prom.scalar('sum(keyedge_proxy_http_requests_total)')).toBe(3);
 *   await prom.stop();
 *
 * Scrapes are asynchronous: a test waits for one that started after its load
 * (waitForScrapes), then reads values; it never asserts how soon that happens.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, removeDir, sleep, tempDir } from './basics.js';
import { freePort } from './proxy-lab.js';

export const PROMETHEUS = 'prometheus';
/** Prometheus's own scrape interval here; also the resolution of every wait below. */
const SCRAPE_INTERVAL_S = 1;
/** Generous: a loaded 2-core machine may delay a scrape by seconds, never by this much. */
const WAIT_MS = 60_000;

export type PrometheusAvailability = { readonly binary: string } | { readonly skip: string };

function installed(): boolean {
  return spawnSync(PROMETHEUS, ['--version'], { stdio: 'ignore' }).status === 0;
}

/**
 * Whether a prometheus binary can be run here, installing the Debian package
 * the way `npm test` does (config/setup.sh test-packages) when it is missing.
 * The skip reason is setup's own message (not root, no apt-get, apt failed).
 */
export function ensurePrometheus(): PrometheusAvailability {
  if (installed()) return { binary: PROMETHEUS };
  const setup = spawnSync('bash', [join(REPO, 'config', 'setup.sh'), 'test-packages'], { cwd: REPO, encoding: 'utf8', timeout: 300_000 });
  if (setup.status === 0 && installed()) return { binary: PROMETHEUS };
  const why =
    setup.status === 0
      ? `the Debian package is installed, but \`${PROMETHEUS} --version\` does not run`
      : `${setup.stderr ?? ''}${setup.error?.message ?? ''}`.trim() || `config/setup.sh test-packages exited with ${setup.status ?? setup.signal}`;
  return { skip: `prometheus is not installed and could not be installed here: ${why}` };
}

export interface ScrapeTarget {
  /** The job label of the target's series. */
  readonly job: string;
  readonly port: number;
  readonly host?: string;
}

/** One series of an instant vector: its labels and its value at query time. */
export interface Sample {
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface RunningPrometheus {
  readonly port: number;
  readonly targets: readonly ScrapeTarget[];
  /** Evaluates `expr` (PromQL) now; rejects on a query error, with Prometheus's message. */
  query(expr: string): Promise<Sample[]>;
  /** The value of an expression that yields exactly one series; rejects naming the expression otherwise. */
  scalar(expr: string): Promise<number>;
  /**
   * Resolves once every target (or those named) has been scraped by a scrape
   * that started at or after `sinceMs` (epoch ms); rejects after a generous
   * deadline with each target's state from /api/v1/targets.
   */
  waitForScrapes(sinceMs: number, jobs?: readonly string[]): Promise<void>;
  /** Polls `expr` until `accept` holds for its samples; rejects after a generous deadline with the last answer. */
  waitFor(expr: string, accept: (samples: Sample[]) => boolean, what: string): Promise<Sample[]>;
  /** Prometheus's own log so far (stderr). */
  output(): string;
  /** Stops the server (SIGTERM, then SIGKILL) and removes its config and TSDB. */
  stop(): Promise<void>;
}

interface ApiAnswer {
  readonly status: 'success' | 'error';
  readonly error?: string;
  readonly data?: {
    readonly resultType: string;
    readonly result: readonly { readonly metric: Record<string, string>; readonly value: readonly [number, string] }[];
  };
}

/** Prometheus's config as JSON, which its YAML parser reads as flow style. */
function configFor(targets: readonly ScrapeTarget[]): string {
  return JSON.stringify(
    {
      global: { scrape_interval: `${SCRAPE_INTERVAL_S}s`, scrape_timeout: `${SCRAPE_INTERVAL_S}s`, evaluation_interval: `${SCRAPE_INTERVAL_S}s` },
      scrape_configs: targets.map((t) => ({ job_name: t.job, static_configs: [{ targets: [`${t.host ?? '127.0.0.1'}:${t.port}`] }] })),
    },
    null,
    2,
  );
}

export async function startPrometheus(targets: readonly ScrapeTarget[], binary = PROMETHEUS): Promise<RunningPrometheus> {
  const dir = tempDir('keyedge-prometheus-');
  const configFile = join(dir, 'prometheus.yml');
  writeFileSync(configFile, configFor(targets));
  const port = await freePort();
  const child: ChildProcess = spawn(
    binary,
    [`--config.file=${configFile}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => void (stderr += chunk.toString('utf8')));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;
  const base = `http://127.0.0.1:${port}`;

  const stop = async (): Promise<void> => {
    if (alive()) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    }
    removeDir(dir);
  };

  const query = async (expr: string): Promise<Sample[]> => {
    const res = await fetch(`${base}/api/v1/query?${new URLSearchParams({ query: expr })}`);
    const answer = (await res.json()) as ApiAnswer;
    if (answer.status !== 'success' || answer.data === undefined) throw new Error(`PromQL ${expr}: ${answer.error ?? `HTTP ${res.status}`}`);
    if (answer.data.resultType !== 'vector') throw new Error(`PromQL ${expr}: expected an instant vector, got ${answer.data.resultType}`);
    return answer.data.result.map((r) => ({ labels: r.metric, value: Number(r.value[1]) }));
  };

  const targetStates = async (): Promise<string> => {
    try {
      return JSON.stringify(await (await fetch(`${base}/api/v1/targets`)).json());
    } catch (err) {
      return `(targets unavailable: ${(err as Error).message})`;
    }
  };

  const waitFor = async (expr: string, accept: (samples: Sample[]) => boolean, what: string): Promise<Sample[]> => {
    const deadline = Date.now() + WAIT_MS;
    let last: Sample[] | Error = [];
    for (;;) {
      try {
        last = await query(expr);
        if (accept(last)) return last;
      } catch (err) {
        last = err as Error;
      }
      if (!alive()) throw new Error(`prometheus exited (${child.exitCode ?? child.signalCode}) while waiting for ${what}:\n${stderr}`);
      if (Date.now() > deadline) {
        throw new Error(
          `prometheus: no ${what} within ${WAIT_MS / 1000} s; ${expr} gave ${last instanceof Error ? last.message : JSON.stringify(last)}; targets: ${await targetStates()}`,
        );
      }
      await sleep(200);
    }
  };

  try {
    // Ready once the TSDB is open and the config loaded (a bad config exits instead).
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      if (!alive()) throw new Error(`prometheus exited during start-up (${child.exitCode ?? child.signalCode}):\n${stderr}`);
      const ready = await fetch(`${base}/-/ready`).then(
        (res) => res.status === 200,
        () => false,
      );
      if (ready) break;
      if (Date.now() > deadline) throw new Error(`prometheus not ready on ${base} within ${WAIT_MS / 1000} s:\n${stderr}`);
      await sleep(100);
    }
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    port,
    targets,
    query,
    async scalar(expr) {
      const samples = await query(expr);
      if (samples.length !== 1) throw new Error(`PromQL ${expr}: expected one series, got ${samples.length}: ${JSON.stringify(samples)}`);
      return samples[0]!.value;
    },
    async waitForScrapes(sinceMs, jobs = targets.map((t) => t.job)) {
      // timestamp(up) is the start time of each target's latest scrape.
      await waitFor(
        'timestamp(up)',
        (samples) => jobs.every((job) => samples.some((s) => s.labels.job === job && s.value * 1000 >= sinceMs)),
        `scrape of ${jobs.join(', ')} started after ${new Date(sinceMs).toISOString()}`,
      );
    },
    waitFor,
    output: () => stderr,
    stop,
  };
}
