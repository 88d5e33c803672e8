/**
 * The handshake bench's figures from its runs: each scenario's medians and
 * spread over the clean rounds, its checks (one key-server sign per full
 * keyless handshake; tickets resumed, with the resumption %), the issue's
 * targets as ratios per Node major, the keyless hop, and the `summary` rows
 * the suite, its chart and comparison read.
 */
import { cleanRounds, SATURATED_CORES, skippedRow } from '../harness/bench.js';
import { fmt } from '../harness/report.js';
import { median, round, spread, type Spread } from '../harness/stats.js';
import { OWN_MAJOR } from '../harness/node-versions.js';
import { sumValues } from '../lab/counters.js';
import { HANDSHAKE_KEYS, type HandshakeKey, isKeyless, isNginx, onNode, type SetupId } from './lab.js';
import { type BenchScenario, type RunResult, setupGroups, setupProcesses, type WindowFigures } from './measure.js';
import type { OpensslSpeed, RawTokenRate } from './limits.js';
import { setupTitle } from './report.js';
import type { Kind, ScenarioSpec } from './scenarios.js';

/** The targets (issue 12; issue 13 for h2). */
const TARGETS = {
  /** CPU per full keyless handshake ÷ nginx + p11-kit's. */
  keylessVsP11kit: 1.25,
  /** In memory ÷ nginx with a key file. */
  inMemoryVsFile: 1.3,
  /** Keyless hop (keyless − in memory) ÷ (nginx + p11-kit − nginx key file). */
  hopVsP11kitHop: 1.0,
  /** CPU per resumed keyless handshake ÷ nginx's. */
  resumedVsNginx: 1.3,
  /** A full handshake with h2 negotiated ÷ with http/1.1. */
  h2VsH1Handshake: 1.1,
} as const;

const KIND_LABEL: Record<Kind, string> = {
  'full-tls13': 'full TLS 1.3',
  'full-tls12': 'full TLS 1.2',
  'resumed-tls13': 'resumed TLS 1.3',
  'alpn-h2': 'full TLS 1.3 + h2',
  'alpn-h1': 'full TLS 1.3 + http/1.1 (ALPN)',
};

export interface ScenarioSummary {
  readonly id: string;
  readonly kind: Kind;
  readonly setup: SetupId;
  readonly key: HandshakeKey;
  readonly processes: string;
  readonly handshakesPerSecond: Spread;
  readonly serverUs: Spread;
  readonly frontUs: number;
  readonly keyUs: number | undefined;
  readonly originUs: number;
  readonly clientUs: number;
  readonly clientCores: number;
  readonly serverSideCores: number;
  /** The client used ≥ SATURATED_CORES in the median round: the rate is what one client core could drive, a lower bound of the server's. */
  readonly clientSaturated: boolean;
  readonly serverSaturated: boolean;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly machineBusyCores: number;
  readonly otherCores: number;
  readonly cleanRounds: number;
  readonly usedRounds: readonly number[];
  /** Measured rounds that gave no figures (a crashed or hung client, harness/rounds.ts failSoft). */
  readonly failedRounds: number;
  /** ab failed requests / non-2xx, TLS handshakes the server saw fail inside the windows, the resuming client's failures. */
  readonly errors: {
    readonly abFailed: number;
    readonly non2xx: number;
    readonly windowFailedHandshakes: number;
    readonly clientErrors: number;
    readonly firstClientError: string | undefined;
  };
  readonly totalErrors: number;
  /**
   * Full keyless kinds, over all measured runs: key server signs (matching algorithm) ÷ handshakes that reached the
   * sign, full + failed (ab abandons the connections it has in flight at SIGINT, up to -c, after the server's
   * CertificateVerify was signed: a short or slow run has as many of those as completed ones); should be 1.
   */
  readonly signCheck:
    | {
        readonly signs: number;
        readonly proxySigns: number;
        readonly fullHandshakes: number;
        readonly failedHandshakes: number;
        readonly resumed: number;
        readonly ratio: number;
        readonly ok: boolean;
      }
    | undefined;
  /** Resumed kind, over the windows: tickets offered and resumed; key server signs and server-side full handshakes (keyless). */
  readonly resumeCheck:
    | {
        readonly offered: number;
        readonly resumed: number;
        readonly offeredNotResumed: number;
        /** Connections completed in the windows, and the share of them that resumed (the client keeps only its newest ticket). */
        readonly completed: number;
        readonly resumedPct: number;
        readonly keyserverSigns: number | undefined;
        readonly serverFullHandshakes: number | undefined;
        readonly ok: boolean;
      }
    | undefined;
  readonly perRound: readonly RunResult[];
}

const ALGORITHM: Record<HandshakeKey['id'], string> = { ec: 'ECDSA_SHA256', rsa: 'RSA_PSS_SHA256' };

export function summarize(scenario: BenchScenario, all: readonly RunResult[], serverCpuCount: number, workers: number, failedRounds = 0): ScenarioSummary {
  const { spec } = scenario;
  const { used: rs, usedRounds, cleanRounds: clean } = cleanRounds(all, (r) => r.window.otherCores);
  const w = (f: (r: WindowFigures) => number) => median(rs.map((r) => f(r.window)));
  let signCheck: ScenarioSummary['signCheck'];
  if (isKeyless(spec.setup) && (spec.kind === 'full-tls13' || spec.kind === 'full-tls12')) {
    // TLS 1.3 RSA signs RSA-PSS; TLS 1.2 ECDHE-ECDSA signs with ECDSA: the same algorithms on the wire to the key server.
    const signs = all.reduce((n, r) => n + sumValues(r.run.keyserverSigns ?? {}), 0);
    const matching = all.reduce((n, r) => n + (r.run.keyserverSigns?.[ALGORITHM[spec.key.id]] ?? 0), 0);
    const full = all.reduce((n, r) => n + r.run.counters.full, 0);
    const failed = all.reduce((n, r) => n + r.run.counters.failed, 0);
    const proxySigns = all.reduce((n, r) => n + r.run.counters.keylessSigns, 0);
    const resumed = all.reduce((n, r) => n + r.run.counters.resumed, 0);
    // Every full handshake signs once, nothing resumes, and the key server signed exactly what the proxy asked for;
    // a handshake ab abandoned at SIGINT after the server's CertificateVerify was signed but failed.
    signCheck = {
      signs: matching,
      proxySigns,
      fullHandshakes: full,
      failedHandshakes: failed,
      resumed,
      ratio: matching / (full + failed),
      ok: signs === matching && matching === proxySigns && resumed === 0 && matching >= full && matching <= full + failed,
    };
  }
  let resumeCheck: ScenarioSummary['resumeCheck'];
  if (spec.kind === 'resumed-tls13') {
    const sum = (f: (r: RunResult) => number) => all.reduce((n, r) => n + f(r), 0);
    const offered = sum((r) => r.window.resume?.offered ?? 0);
    const resumed = sum((r) => r.window.resume?.resumed ?? 0);
    const keyserverSigns = isKeyless(spec.setup) ? sum((r) => r.window.keyserverSigns ?? 0) : undefined;
    const serverFullHandshakes = isNginx(spec.setup) ? undefined : sum((r) => r.window.server.full);
    resumeCheck = {
      offered,
      resumed,
      offeredNotResumed: sum((r) => r.window.resume?.offeredNotResumed ?? 0),
      completed: sum((r) => r.window.handshakes),
      resumedPct:
        (100 * resumed) /
        Math.max(
          1,
          sum((r) => r.window.handshakes),
        ),
      keyserverSigns,
      serverFullHandshakes,
      ok: offered > 0 && resumed === sum((r) => r.window.handshakes) && (keyserverSigns ?? 0) === 0 && (serverFullHandshakes ?? 0) === 0,
    };
  }
  const errors = {
    abFailed: all.reduce((n, r) => n + (r.run.ab?.failedRequests ?? 0), 0),
    non2xx: all.reduce((n, r) => n + (r.run.ab?.non2xx ?? 0), 0),
    windowFailedHandshakes: all.reduce((n, r) => n + r.window.server.failed, 0),
    clientErrors: all.reduce((n, r) => n + r.run.clientErrors, 0),
    firstClientError: all.find((r) => r.run.clientFirstError !== undefined)?.run.clientFirstError,
  };
  const { key } = setupGroups(spec.setup);
  return {
    id: spec.id,
    kind: spec.kind,
    setup: spec.setup,
    key: spec.key,
    processes: setupProcesses(spec.setup, workers),
    handshakesPerSecond: spread(rs.map((r) => r.window.handshakesPerSecond)),
    serverUs: spread(rs.map((r) => r.window.serverUs)),
    frontUs: w((x) => x.frontUs),
    keyUs: key === undefined ? undefined : w((x) => x.keyUs ?? Number.NaN),
    originUs: w((x) => x.originUs),
    clientUs: w((x) => x.clientUs),
    clientCores: w((x) => x.clientCores),
    serverSideCores: w((x) => x.serverSideCores),
    clientSaturated: w((x) => x.clientCores) >= SATURATED_CORES,
    serverSaturated: w((x) => x.serverSideCores) >= SATURATED_CORES * serverCpuCount,
    p50Us: median(rs.map((r) => r.run.ab?.p50Us ?? r.window.resume?.p50Us ?? r.window.alpn?.p50Us ?? Number.NaN)),
    p99Us: median(rs.map((r) => r.run.ab?.p99Us ?? r.window.resume?.p99Us ?? r.window.alpn?.p99Us ?? Number.NaN)),
    machineBusyCores: w((x) => x.machineBusyCores),
    otherCores: w((x) => x.otherCores),
    cleanRounds: clean,
    usedRounds,
    failedRounds,
    errors,
    totalErrors: errors.abFailed + errors.non2xx + errors.windowFailedHandshakes + errors.clientErrors,
    signCheck,
    resumeCheck,
    perRound: all,
  };
}

export interface TargetRow {
  readonly name: string;
  readonly key: string;
  /** The Node major of the keyedge side ('' when not a Node set-up). */
  readonly node: string;
  readonly value: number;
  readonly limit: number | undefined;
  readonly met: boolean | undefined;
  readonly detail: string;
}

function find(summaries: readonly ScenarioSummary[], kind: Kind, setup: SetupId, key: HandshakeKey['id']): ScenarioSummary | undefined {
  return summaries.find((s) => s.kind === kind && s.setup === setup && s.key.id === key);
}

/**
 * The targets (issue 12) from the medians of this run, per Node major of the Node side (nginx is the same process in
 * every row). A row is left out when a scenario it needs did not run; `limit` undefined: reported, no target.
 */
export function targets(summaries: readonly ScenarioSummary[], majors: readonly number[]): TargetRow[] {
  const out: TargetRow[] = [];
  const ratio = (name: string, key: HandshakeKey, major: number, a: number | undefined, b: number | undefined, limit: number | undefined, detail = '') => {
    if (a === undefined || b === undefined) return;
    const value = a / b;
    const met = limit === undefined || !(b > 0) ? undefined : value <= limit;
    out.push({ name, key: key.title, node: String(major), value, limit, met, detail: detail || `${fmt(a)} ÷ ${fmt(b)} µs` });
  };
  for (const major of majors) {
    for (const key of HANDSHAKE_KEYS) {
      const cpu = (kind: Kind, setup: SetupId) => find(summaries, kind, setup, key.id)?.serverUs.median;
      const keyless = cpu('full-tls13', onNode('keyless-unix', major));
      const inMemory = cpu('full-tls13', onNode('inmemory', major));
      const floor = cpu('full-tls13', onNode('node-floor', major));
      const [file, p11kit] = [cpu('full-tls13', 'nginx-file'), cpu('full-tls13', 'nginx-p11kit')];
      ratio('full handshake: keyless (unix) ÷ nginx + p11-kit', key, major, keyless, p11kit, TARGETS.keylessVsP11kit);
      ratio('full handshake: in memory ÷ nginx key file', key, major, inMemory, file, TARGETS.inMemoryVsFile);
      if (keyless !== undefined && inMemory !== undefined && p11kit !== undefined && file !== undefined) {
        const detail = `${fmt(keyless - inMemory)} ÷ ${fmt(p11kit - file)} µs`;
        ratio(
          'keyless hop ÷ p11-kit hop: (keyless − in memory) ÷ (nginx + p11-kit − nginx key file)',
          key,
          major,
          keyless - inMemory,
          p11kit - file,
          TARGETS.hopVsP11kitHop,
          detail,
        );
      }
      ratio('full handshake: bare node:https (floor) ÷ nginx key file', key, major, floor, file, undefined);
      ratio(
        'resumed handshake: keyless ÷ nginx',
        key,
        major,
        cpu('resumed-tls13', onNode('keyless-unix', major)),
        cpu('resumed-tls13', 'nginx-file'),
        TARGETS.resumedVsNginx,
      );
      ratio('resumed handshake: floor ÷ nginx', key, major, cpu('resumed-tls13', onNode('node-floor', major)), cpu('resumed-tls13', 'nginx-file'), undefined);
      if (major === OWN_MAJOR) {
        ratio(
          'full handshake with h2 ÷ with http/1.1: keyless',
          key,
          major,
          cpu('alpn-h2', 'keyless-unix'),
          cpu('alpn-h1', 'keyless-unix'),
          TARGETS.h2VsH1Handshake,
        );
        ratio('full handshake with h2 ÷ with http/1.1: nginx', key, major, cpu('alpn-h2', 'nginx-file'), cpu('alpn-h1', 'nginx-file'), undefined);
      }
    }
  }
  return out;
}

export interface HopRow {
  readonly key: HandshakeKey;
  readonly setup: SetupId;
  readonly hopUs: number;
  readonly frontHopUs: number;
  readonly keyUs: number;
  readonly perRoundUs: readonly number[];
}

/** Keyless − in memory (full TLS 1.3), per transport, and per round (neighbours in time). */
export function hops(summaries: readonly ScenarioSummary[]): HopRow[] {
  const out: HopRow[] = [];
  for (const key of HANDSHAKE_KEYS) {
    const m = find(summaries, 'full-tls13', 'inmemory', key.id);
    if (m === undefined) continue;
    for (const setup of ['keyless-unix', 'keyless-tcp'] as const) {
      const k = find(summaries, 'full-tls13', setup, key.id);
      if (k === undefined) continue;
      const rounds = Math.min(k.perRound.length, m.perRound.length);
      out.push({
        key,
        setup,
        hopUs: k.serverUs.median - m.serverUs.median,
        frontHopUs: k.frontUs - m.frontUs,
        keyUs: k.keyUs ?? Number.NaN,
        perRoundUs: Array.from({ length: rounds }, (_, i) => k.perRound[i]!.window.serverUs - m.perRound[i]!.window.serverUs),
      });
    }
  }
  return out;
}

export interface Limits {
  readonly openssl: OpensslSpeed | { readonly error: string } | undefined;
  readonly rawToken: readonly RawTokenRate[] | { readonly error: string } | undefined;
  readonly cpus: string | undefined;
}

/** The `summary` array of the result JSON, the shape `npm run bench`, its chart and result comparison read. */
export function summaryEntries(
  summaries: readonly ScenarioSummary[],
  skipReason: (spec: ScenarioSpec) => string | undefined,
  requested: readonly ScenarioSpec[],
) {
  const ran = summaries.map((s) => ({
    scenario: s.id,
    label: `${KIND_LABEL[s.kind]}, ${setupTitle(s.setup)}, ${s.key.title}`,
    handshakesPerSecond: round(s.handshakesPerSecond.median, 1),
    serverCpuUsPerHandshake: round(s.serverUs.median, 1),
    p50Ms: round(s.p50Us / 1000, 2),
    p99Ms: round(s.p99Us / 1000, 2),
    clientSaturated: s.clientSaturated,
    errors: s.totalErrors,
    spreadPct: round(s.handshakesPerSecond.spreadPct, 1),
  }));
  const notRun = requested
    .filter((spec) => skipReason(spec) !== undefined)
    .map((spec) =>
      skippedRow(
        spec.id,
        `${KIND_LABEL[spec.kind]}, ${setupTitle(spec.setup)}, ${spec.key.title}`,
        skipReason(spec)!,
        'handshakesPerSecond',
        'serverCpuUsPerHandshake',
      ),
    );
  return [...ran, ...notRun];
}
