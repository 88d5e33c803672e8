/**
 * The handshake bench's figures from its runs: each scenario's medians and spread over the clean rounds, its checks
 * (one key-server sign per full keyless handshake; every offered ticket resumed), the issues' targets as ratios per
 * Node major, the keyless hop, and the `summary` rows `npm run bench`, its chart and comparison read.
 */
import { OWN_MAJOR } from '../harness/install.js';
import { fmt } from '../harness/report.js';
import { overRounds } from '../harness/runner.js';
import { round } from '../harness/stats.js';
import { benchRow, skippedBenchRow } from '../harness/summary.js';
import { sumValues } from '../lab/counters.js';
import {
  HANDSHAKE_KEYS,
  type HandshakeKey,
  isKeyless,
  isNginx,
  NODE_SETUPS,
  type NodeSetup,
  onNode,
  type SetupId,
  setupGroups,
  setupProcesses,
  setupTitle,
} from './lab.js';
import type { BenchScenario, RunResult } from './measure.js';
import { type Kind, kindLabel, type ScenarioSpec } from './scenarios.js';

/** TLS 1.3 RSA signs RSA-PSS; TLS 1.2 ECDHE-ECDSA signs ECDSA: the key server sees the same algorithms. */
const ALGORITHM: Record<HandshakeKey['id'], string> = { ec: 'ECDSA_SHA256', rsa: 'RSA_PSS_SHA256' };

type Sum = (f: (r: RunResult) => number) => number;

/**
 * Full keyless kinds, over every run idle to idle: key server signs ÷ handshakes that reached the sign, full + failed
 * (ab abandons up to -c connections at SIGINT after their CertificateVerify was signed). Should be 1, every sign the
 * proxy's, of the key's algorithm, nothing resumed.
 */
function signCheckOf(spec: ScenarioSpec, sum: Sum) {
  if (!isKeyless(spec.setup) || (spec.kind !== 'full-tls13' && spec.kind !== 'full-tls12')) return undefined;
  const signs = sum((r) => sumValues(r.run.keyserverSigns ?? {}));
  const matching = sum((r) => r.run.keyserverSigns?.[ALGORITHM[spec.key.id]] ?? 0);
  const [full, failed] = [sum((r) => r.run.counters.full), sum((r) => r.run.counters.failed)];
  const [proxySigns, resumed] = [sum((r) => r.run.counters.keylessSigns), sum((r) => r.run.counters.resumed)];
  const ok = signs === matching && matching === proxySigns && resumed === 0 && matching >= full && matching <= full + failed;
  return { signs: matching, proxySigns, fullHandshakes: full, failedHandshakes: failed, resumed, ratio: matching / (full + failed), ok };
}

/** Resumed kind, over the windows: every completed connection resumed (the client keeps its newest ticket), no sign. */
function resumeCheckOf(spec: ScenarioSpec, sum: Sum) {
  if (spec.kind !== 'resumed-tls13') return undefined;
  const [offered, resumed, completed] = [sum((r) => r.window.resume?.offered ?? 0), sum((r) => r.window.resume?.resumed ?? 0), sum((r) => r.window.handshakes)];
  const keyserverSigns = isKeyless(spec.setup) ? sum((r) => r.window.keyserverSigns ?? 0) : undefined;
  const serverFullHandshakes = isNginx(spec.setup) ? undefined : sum((r) => r.window.server.full);
  const offeredNotResumed = sum((r) => r.window.resume?.offeredNotResumed ?? 0);
  const ok = offered > 0 && resumed === completed && (keyserverSigns ?? 0) === 0 && (serverFullHandshakes ?? 0) === 0;
  return { offered, resumed, offeredNotResumed, completed, resumedPct: (100 * resumed) / Math.max(1, completed), keyserverSigns, serverFullHandshakes, ok };
}

export type ScenarioSummary = ReturnType<typeof summarize>;

/** A scenario's medians and spread over its clean rounds (harness/runner.ts), its checks and its errors over every run. */
export function summarize(scenario: BenchScenario, all: readonly RunResult[], serverCpuCount: number, workers: number, failedRounds = 0) {
  const { spec } = scenario;
  const { med, spreadOf, common } = overRounds(all, (r) => r.window, serverCpuCount, failedRounds);
  const sum: Sum = (f) => all.reduce((n, r) => n + f(r), 0);
  const errors = {
    abFailed: sum((r) => r.run.ab?.failedRequests ?? 0),
    non2xx: sum((r) => r.run.ab?.non2xx ?? 0),
    windowFailedHandshakes: sum((r) => r.window.server.failed),
    clientErrors: sum((r) => r.run.clientErrors),
    firstClientError: all.find((r) => r.run.clientFirstError !== undefined)?.run.clientFirstError,
  };
  const latency = (p: 'p50Us' | 'p99Us') => med((r) => r.run.ab?.[p] ?? r.window.resume?.[p] ?? r.window.alpn?.[p] ?? Number.NaN);
  return {
    id: spec.id,
    kind: spec.kind,
    setup: spec.setup,
    key: spec.key,
    processes: setupProcesses(spec.setup, workers),
    handshakesPerSecond: spreadOf((r) => r.window.handshakesPerSecond),
    serverUs: spreadOf((r) => r.window.serverUs),
    frontUs: med((r) => r.window.frontUs),
    keyUs: setupGroups(spec.setup).key === undefined ? undefined : med((r) => r.window.keyUs ?? Number.NaN),
    originUs: med((r) => r.window.originUs),
    clientUs: med((r) => r.window.clientUs),
    p50Us: latency('p50Us'),
    p99Us: latency('p99Us'),
    ...common,
    errors,
    totalErrors: errors.abFailed + errors.non2xx + errors.windowFailedHandshakes + errors.clientErrors,
    signCheck: signCheckOf(spec, sum),
    resumeCheck: resumeCheckOf(spec, sum),
  };
}

const find = (summaries: readonly ScenarioSummary[], kind: Kind, setup: SetupId, key: HandshakeKey['id']) =>
  summaries.find((s) => s.kind === kind && s.setup === setup && s.key.id === key);

/**
 * The targets (issue 12; issue 13 for h2): name, the server µs divided (one figure, or the difference of two), the
 * limit (undefined: reported, no target), and whether under this process's Node major only (the ALPN kinds run there only).
 */
type Figure = readonly [Kind, SetupId];
const full = (setup: SetupId): Figure => ['full-tls13', setup];
const [KEYLESS, IN_MEMORY, FILE, P11KIT] = [full('keyless-unix'), full('inmemory'), full('nginx-file'), full('nginx-p11kit')];
type TargetSpec = readonly [name: string, a: readonly Figure[], b: readonly Figure[], limit: number | undefined, ownOnly?: true];
const TARGET_ROWS: readonly TargetSpec[] = [
  ['full handshake: keyless (unix) ÷ nginx + p11-kit', [KEYLESS], [P11KIT], 1.25],
  ['full handshake: in memory ÷ nginx key file', [IN_MEMORY], [FILE], 1.3],
  ['keyless hop ÷ p11-kit hop: (keyless − in memory) ÷ (nginx + p11-kit − nginx key file)', [KEYLESS, IN_MEMORY], [P11KIT, FILE], 1.0],
  ['full handshake: bare node:https (floor) ÷ nginx key file', [full('node-floor')], [FILE], undefined],
  ['resumed handshake: keyless ÷ nginx', [['resumed-tls13', 'keyless-unix']], [['resumed-tls13', 'nginx-file']], 1.3],
  ['resumed handshake: floor ÷ nginx', [['resumed-tls13', 'node-floor']], [['resumed-tls13', 'nginx-file']], undefined],
  ['full handshake with h2 ÷ with http/1.1: keyless', [['alpn-h2', 'keyless-unix']], [['alpn-h1', 'keyless-unix']], 1.1, true],
  ['full handshake with h2 ÷ with http/1.1: nginx', [['alpn-h2', 'nginx-file']], [['alpn-h1', 'nginx-file']], undefined, true],
];

export type TargetRow = ReturnType<typeof targets>[number];

/** The targets from this run's medians, per Node major of the Node side (nginx is the same in every block); rows whose scenarios did not run left out. */
export function targets(summaries: readonly ScenarioSummary[], majors: readonly number[]) {
  return majors.flatMap((major) =>
    HANDSHAKE_KEYS.flatMap((key) =>
      TARGET_ROWS.flatMap(([name, a, b, limit, ownOnly]) => {
        if (ownOnly && major !== OWN_MAJOR) return [];
        const node = (setup: SetupId) => (NODE_SETUPS.includes(setup as NodeSetup) ? onNode(setup as NodeSetup, major) : setup);
        const value = (figures: readonly Figure[]) => {
          const [x, y] = figures.map(([kind, setup]) => find(summaries, kind, node(setup), key.id)?.serverUs.median);
          return figures.length === 1 ? x : x === undefined || y === undefined ? undefined : x - y;
        };
        const [x, y] = [value(a), value(b)];
        if (x === undefined || y === undefined) return [];
        const met = limit === undefined || !(y > 0) ? undefined : x / y <= limit;
        return [{ name, key: key.title, node: String(major), value: x / y, limit, met, detail: `${fmt(x)} ÷ ${fmt(y)} µs` }];
      }),
    ),
  );
}

export type HopRow = ReturnType<typeof hops>[number];

/** Keyless − in memory (full TLS 1.3), per transport, and per round (neighbours in time). */
export function hops(summaries: readonly ScenarioSummary[]) {
  return HANDSHAKE_KEYS.flatMap((key) => {
    const m = find(summaries, 'full-tls13', 'inmemory', key.id);
    return (['keyless-unix', 'keyless-tcp'] as const).flatMap((setup) => {
      const k = find(summaries, 'full-tls13', setup, key.id);
      if (k === undefined || m === undefined) return [];
      const rounds = Math.min(k.perRound.length, m.perRound.length);
      const perRoundUs = Array.from({ length: rounds }, (_, i) => k.perRound[i]!.window.serverUs - m.perRound[i]!.window.serverUs);
      return [{ key, setup, hopUs: k.serverUs.median - m.serverUs.median, frontHopUs: k.frontUs - m.frontUs, keyUs: k.keyUs ?? Number.NaN, perRoundUs }];
    });
  });
}

/** The result JSON's `summary` (harness/summary.ts): one row per scenario that ran, and per requested one skipped. */
export function summaryEntries(
  summaries: readonly ScenarioSummary[],
  skipReason: (spec: ScenarioSpec) => string | undefined,
  requested: readonly ScenarioSpec[],
) {
  const label = (s: Pick<ScenarioSpec, 'kind' | 'setup' | 'key'>) => `${kindLabel(s.kind)}, ${setupTitle(s.setup)}, ${s.key.title}`;
  const ran = summaries.map((s) =>
    benchRow('handshake', {
      scenario: s.id,
      label: label(s),
      rate: round(s.handshakesPerSecond.median, 1),
      serverCpuUs: round(s.serverUs.median, 1),
      p50Ms: round(s.p50Us / 1000, 2),
      p99Ms: round(s.p99Us / 1000, 2),
      clientSaturated: s.clientSaturated,
      errors: s.totalErrors,
      spreadPct: round(s.handshakesPerSecond.spreadPct, 1),
      otherCores: round(s.otherCores, 2),
    }),
  );
  const notRun = requested.flatMap((spec) => {
    const reason = skipReason(spec);
    return reason === undefined ? [] : [skippedBenchRow('handshake', spec.id, label(spec), reason)];
  });
  return [...ran, ...notRun];
}
