/**
 * The cert-reload bench's figures and result files: when each new certificate was first served (from the load's
 * observations), the totals, the Markdown (figures, one row per replacement, the failures) and the JSON with the
 * suite's summary rows (time to serve by trigger, p99 = max).
 */
import { publish } from '../harness/runner.js';
import type { MachineInfo } from '../harness/report.js';
import { columnTable, dateStamp, fmt, machineLines, markdownTable } from '../harness/report.js';
import { median, round } from '../harness/stats.js';
import { durationRow } from '../harness/summary.js';
import type { HandshakeCounters } from '../lab/counters.js';
import type { ReloadLoad } from './load.js';

export type Trigger = 'rename' | 'put' | 'sighup';
export const TRIGGER_TITLE: Record<Trigger, string> = { rename: 'store file rename', put: 'admin PUT /certs/site', sighup: 'config chain + SIGHUP' };

/** One replacement as the run saw it: `writtenAt` / `startedAt` are performance.now() of the write and of its start (PUT: sent). */
export interface Replacement {
  readonly index: number;
  readonly trigger: Trigger;
  readonly certificate: string;
  readonly serverName: string;
  readonly fromKey: string;
  readonly toKey: string;
  readonly serial: string;
  readonly oldSerial: string;
  readonly writtenAt: number;
  readonly startedAt: number;
  readonly putRoundTripMs?: number;
  /** When the probe saw the new serial, ms from `writtenAt`. */
  readonly probeMs: number | undefined;
  readonly probes: number;
  /** The primary's "reload done" line. */
  readonly reload: { readonly trigger: unknown; readonly generation: unknown; readonly durationMs: unknown } | undefined;
}

const r1 = (v: number) => round(v, 1);
const r2 = (v: number | undefined) => (v === undefined ? undefined : round(v, 2));
const maxOf = (values: readonly number[]) => (values.length > 0 ? Math.max(...values) : Number.NaN);
const ms = (v: number | undefined, none = '–') => (v === undefined ? none : fmt(v, 1));
const firstOf = (values: readonly number[]) => (values.length === 0 ? undefined : Math.min(...values));

/** Writes the result files; the count of failures (handshakes, requests, certificates never served). */
export function reloadReport(
  run: { quick: boolean; machine: MachineInfo; settings: Record<string, number>; loadSeconds: number; replacements: readonly Replacement[] },
  load: ReloadLoad,
  server: HandshakeCounters,
  out: string,
  log: (line: string) => void,
): number {
  const { quick, machine, settings, loadSeconds } = run;
  const { counts, observations } = load;
  // Per replacement: the first new connection (load or probe) with the new serial, from the write and from its start;
  // the last one still handed the old certificate after the write.
  const done = run.replacements.map((r) => {
    const mine = observations.filter((o) => o.serverName === r.serverName);
    const after = (serial: string, from: number) => mine.filter((o) => o.serial === serial && o.at >= from).map((o) => o.at - from);
    const old = after(r.oldSerial, r.writtenAt);
    const oldLastSeenMs = old.length === 0 ? undefined : Math.max(...old);
    return { ...r, timeToServeMs: firstOf(after(r.serial, r.writtenAt)), timeToServeFromStartMs: firstOf(after(r.serial, r.startedAt)), oldLastSeenMs };
  });
  const served = (rs: typeof done) => rs.flatMap((r) => (r.timeToServeMs === undefined ? [] : [r.timeToServeMs]));
  const byTrigger = (['rename', 'put', 'sighup'] as const).map((trigger) => {
    const times = served(done.filter((r) => r.trigger === trigger));
    return { trigger, count: times.length, p50Ms: r1(median(times)), maxMs: r1(maxOf(times)) };
  });
  const notServed = done.filter((r) => r.timeToServeMs === undefined).length;
  const failed = counts.failedHandshakes + counts.failedRequests + notServed;
  const summary = {
    replacements: done.length,
    loadSeconds: r1(loadSeconds),
    handshakes: counts.handshakes + counts.probeHandshakes,
    loadHandshakes: counts.handshakes,
    probeHandshakes: counts.probeHandshakes,
    requests: counts.newConnectionRequests + counts.probeRequests + counts.keepAliveRequests,
    newConnectionRequests: counts.newConnectionRequests + counts.probeRequests,
    keepAliveRequests: counts.keepAliveRequests,
    keepAliveReused: counts.keepAliveReused,
    failedHandshakes: counts.failedHandshakes,
    failedRequests: counts.failedRequests,
    notServed,
    timeToServeP50Ms: r1(median(served(done))),
    handshakeP50Ms: r1(median(observations.map((o) => o.handshakeMs))),
    timeToServeMaxMs: r1(maxOf(served(done))),
    byTrigger,
    server: { fullHandshakes: server.full, resumedHandshakes: server.resumed, failedHandshakes: server.failed, requests: server.requests },
  };
  const figures: [string, string][] = [
    ['replacements (rename / PUT / SIGHUP)', `${done.length} (${byTrigger.map((t) => done.filter((r) => r.trigger === t.trigger).length).join(' / ')})`],
    ['handshakes (load + probes)', `${fmt(summary.handshakes)} (${fmt(counts.handshakes)} + ${fmt(counts.probeHandshakes)})`],
    [
      'requests (new connections + keep-alive)',
      `${fmt(summary.requests)} (${fmt(summary.newConnectionRequests)} + ${fmt(counts.keepAliveRequests)}, ${fmt(counts.keepAliveReused)} on a reused connection)`,
    ],
    ['failed handshakes', fmt(counts.failedHandshakes)],
    ['failed requests', fmt(counts.failedRequests)],
    ['replacements not served within 15 s', fmt(notServed)],
    ['time to serve p50 / max, ms', `${fmt(summary.timeToServeP50Ms, 1)} / ${fmt(summary.timeToServeMaxMs, 1)}`],
    ['new connection: connect → handshake done, p50 ms (part of every time to serve)', fmt(summary.handshakeP50Ms, 1)],
    ...byTrigger.map((t): [string, string] => [`… ${TRIGGER_TITLE[t.trigger]} (${t.count}) p50 / max, ms`, `${fmt(t.p50Ms, 1)} / ${fmt(t.maxMs, 1)}`]),
    ['proxy counters: full handshakes / failed (server side)', `${fmt(server.full)} / ${fmt(server.failed)}`],
  ];
  const markdown = [
    `# cert-reload${quick ? ' (quick)' : ''}: ${done.length} certificate replacements under load, ${dateStamp()}`,
    '',
    `\`keyedge proxy\`, 2 workers, key server with an ECDSA P-256 and an RSA-2048 key (SoftHSM2), demo origin. ` +
      `Load for ${fmt(loadSeconds, 1)} s: ${settings.newLoops} loops of new connections (node:tls connect + GET + close) and ${settings.keepAliveLoops} keep-alive loops (https.Agent, one connection each), over both certificates. ` +
      `Time to serve: from the write (rename returned / PUT answered / SIGHUP sent) until a new connection (probed every ${settings.probeMs} ms) first got the new serial.`,
    '',
    markdownTable(['Figure', 'Value'], figures, ['left', 'right']),
    '',
    columnTable(done, [
      ['#', 'right', (r) => String(r.index)],
      ['trigger', 'left', (r) => TRIGGER_TITLE[r.trigger]],
      ['entry', 'left', (r) => r.certificate],
      ['key change', 'left', (r) => `${r.fromKey} → ${r.toKey}`],
      ['time to serve ms', 'right', (r) => ms(r.timeToServeMs, 'not served')],
      ['primary reload ms (trigger)', 'right', (r) => (r.reload === undefined ? '?' : `${fmt(Number(r.reload.durationMs))} (${String(r.reload.trigger)})`)],
      ['probe saw it ms', 'right', (r) => ms(r.probeMs)],
      [
        'PUT round trip / serve from sent ms',
        'right',
        (r) => (r.putRoundTripMs === undefined ? '' : `${ms(r.putRoundTripMs)} / ${ms(r.timeToServeFromStartMs)}`),
      ],
      ['old cert last seen ms', 'right', (r) => ms(r.oldLastSeenMs)],
      ['probes', 'right', (r) => String(r.probes)],
    ]),
    '',
    '"time to serve": the first new connection, load or probe, whose handshake completed with the new certificate, counted from the write. "probe saw it": the same for the ~10 ms probe alone. ' +
      '"PUT round trip / serve from sent": the PUT\'s answer time, and the time to serve counted from sending it (the answer comes once every worker serves the new certificate). ' +
      '"primary reload ms": durationMs of the primary\'s "reload done" log line (from the trigger reaching the primary until every worker acknowledged the new state; a rename waits 150 ms of watch debounce before that). ' +
      '"old cert last seen": the latest new connection, load or probe, that still completed its handshake with the previous certificate, counted from the write ("–": none after it).',
    '',
    ...machineLines(machine),
    ...(counts.failures.length === 0 ? [] : ['', '## Failures', '', ...counts.failures.slice(0, 50).map((f) => `- ${f.at} ${f.what}: ${f.error}`)]),
  ].join('\n');
  const json = {
    benchmark: 'cert-reload',
    machine,
    settings,
    // The suite's one-row-per-scenario shape (harness/summary.ts): no rate or CPU; p50 / p99 are time to serve p50 / max.
    summary: byTrigger.map((t) =>
      durationRow('cert-reload', t.trigger, `replacement by ${TRIGGER_TITLE[t.trigger]}: time to serve (p99 = max)`, t.p50Ms, t.maxMs, failed),
    ),
    figures: summary,
    replacements: done.map(({ writtenAt: _w, startedAt: _s, serverName: _n, ...r }) => ({
      ...r,
      ...Object.fromEntries((['timeToServeMs', 'timeToServeFromStartMs', 'probeMs', 'putRoundTripMs', 'oldLastSeenMs'] as const).map((k) => [k, r2(r[k])])),
    })),
    failures: counts.failures,
  };
  publish(out, quick ? 'cert-reload-quick' : 'cert-reload', json, markdown, dateStamp(), log);
  return failed;
}
