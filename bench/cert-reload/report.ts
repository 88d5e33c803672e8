/**
 * The cert-reload bench's figures and result files: when each new certificate was first served (from the load's
 * observations), the totals, the Markdown (figures, one row per replacement, the failures) and the JSON with the
 * suite's summary rows (time to serve by trigger, p99 = max).
 */
import type { MachineInfo } from '../harness/report.js';
import { columnTable, dateStamp, fmt, machineLines, markdownTable } from '../harness/report.js';
import { publish } from '../harness/runner.js';
import { median, round } from '../harness/stats.js';
import { durationRow } from '../harness/summary.js';
import type { HandshakeCounters } from '../lab/counters.js';
import type { ReloadLoad } from './load.js';
import type { Replacement } from './main.js';

export type Trigger = 'rename' | 'put' | 'sighup';
export const TRIGGER_TITLE: Record<Trigger, string> = { rename: 'store file rename', put: 'admin PUT /certs/site', sighup: 'config chain + SIGHUP' };

const r1 = (v: number) => round(v, 1);
const ms = (v: number | undefined, none = '–') => (v === undefined ? none : fmt(v, 1));
const p50Max = (values: readonly number[]) => ({ p50Ms: r1(median(values)), maxMs: r1(values.length > 0 ? Math.max(...values) : Number.NaN) });
const firstOf = (v: readonly number[]) => (v.length === 0 ? undefined : Math.min(...v));
const lastOf = (v: readonly number[]) => (v.length === 0 ? undefined : Math.max(...v));
const slash = (...values: number[]) => values.map((v) => fmt(v, 1)).join(' / ');

/** Writes the result files; the count of failures (handshakes, requests, certificates never served). */
export function reloadReport(
  run: { quick: boolean; machine: MachineInfo; settings: Record<string, number>; loadSeconds: number; replacements: readonly Replacement[] },
  load: ReloadLoad,
  server: HandshakeCounters,
  out: string,
  log: (line: string) => void,
): number {
  const { quick, machine, settings, loadSeconds } = run;
  const { counts, observations, failures } = load;
  // Per replacement: the first new connection (load or probe) with the new serial, from the write and from its start;
  // the last one still handed the old certificate after the write.
  const done = run.replacements.map((r) => {
    const mine = observations.filter((o) => o.serverName === r.serverName);
    const after = (serial: string, from: number) => mine.filter((o) => o.serial === serial && o.at >= from).map((o) => o.at - from);
    const [timeToServeMs, timeToServeFromStartMs] = [firstOf(after(r.serial, r.writtenAt)), firstOf(after(r.serial, r.startedAt))];
    return { ...r, timeToServeMs, timeToServeFromStartMs, oldLastSeenMs: lastOf(after(r.oldSerial, r.writtenAt)) };
  });
  const served = (rs: typeof done) => rs.flatMap((r) => (r.timeToServeMs === undefined ? [] : [r.timeToServeMs]));
  const byTrigger = (['rename', 'put', 'sighup'] as const).map((trigger) => {
    const of = done.filter((r) => r.trigger === trigger);
    return { trigger, count: of.length, served: served(of).length, ...p50Max(served(of)) };
  });
  const notServed = done.filter((r) => r.timeToServeMs === undefined).length;
  const failed = counts.failedHandshakes + counts.failedRequests + notServed;
  const all = p50Max(served(done));
  const figures = {
    replacements: done.length,
    loadSeconds: r1(loadSeconds),
    ...counts,
    handshakes: counts.loadHandshakes + counts.probeHandshakes,
    requests: counts.newConnectionRequests + counts.keepAliveRequests,
    notServed,
    timeToServeP50Ms: all.p50Ms,
    timeToServeMaxMs: all.maxMs,
    handshakeP50Ms: r1(median(observations.map((o) => o.handshakeMs))),
    byTrigger,
    server: { fullHandshakes: server.full, resumedHandshakes: server.resumed, failedHandshakes: server.failed, requests: server.requests },
  };
  const n = (v: number) => fmt(v);
  const rows: [string, string][] = [
    ['replacements (rename / PUT / SIGHUP)', `${done.length} (${byTrigger.map((t) => t.count).join(' / ')})`],
    ['handshakes (load + probes)', `${n(figures.handshakes)} (${n(counts.loadHandshakes)} + ${n(counts.probeHandshakes)})`],
    ['requests (new connections + keep-alive)', `${n(figures.requests)} (${n(counts.newConnectionRequests)} + ${n(counts.keepAliveRequests)})`],
    ['… keep-alive requests on a reused connection', n(counts.keepAliveReused)],
    ['failed handshakes / failed requests', `${n(counts.failedHandshakes)} / ${n(counts.failedRequests)}`],
    ['replacements not served within 15 s', n(notServed)],
    ['time to serve p50 / max, ms', slash(all.p50Ms, all.maxMs)],
    ['new connection: connect → handshake done, p50 ms (part of every time to serve)', fmt(figures.handshakeP50Ms, 1)],
    ...byTrigger.map((t): [string, string] => [`… ${TRIGGER_TITLE[t.trigger]} (${t.served}) p50 / max, ms`, slash(t.p50Ms, t.maxMs)]),
    ['proxy counters: full handshakes / failed (server side)', `${n(server.full)} / ${n(server.failed)}`],
  ];
  const markdown = [
    `# cert-reload${quick ? ' (quick)' : ''}: ${done.length} certificate replacements under load, ${dateStamp()}`,
    '',
    `\`keyedge proxy\`, 2 workers, key server with an ECDSA P-256 and an RSA-2048 key (SoftHSM2), demo origin. ` +
      `Load for ${fmt(loadSeconds, 1)} s: ${settings.newLoops} loops of new connections (connect + GET + close) and ${settings.keepAliveLoops} keep-alive loops (https.Agent, one connection each), over both certificates. ` +
      `Time to serve: from the write (rename returned / PUT answered / SIGHUP sent) until a new connection (probed every ${settings.probeMs} ms) first got the new serial.`,
    '',
    markdownTable(['Figure', 'Value'], rows, ['left', 'right']),
    '',
    columnTable(done, [
      ['#', 'right', (r) => String(r.index)],
      ['trigger', 'left', (r) => TRIGGER_TITLE[r.trigger]],
      ['entry', 'left', (r) => r.certificate],
      ['key change', 'left', (r) => `${r.fromKey} → ${r.toKey}`],
      ['time to serve ms', 'right', (r) => ms(r.timeToServeMs, 'not served')],
      ['primary reload ms (trigger)', 'right', (r) => (r.reload === undefined ? '?' : `${fmt(r.reload.durationMs)} (${r.reload.trigger})`)],
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
    'Columns (bench/README.md, "cert-reload"): "time to serve" and "old cert last seen" count from the write to the first new connection, load or probe, ' +
      'whose handshake got the new certificate, and to the last that still got the previous one ("–": none after it); "probe saw it": the probe alone. ' +
      '"PUT round trip / serve from sent": the PUT answers once every worker serves the new certificate. ' +
      '"primary reload ms": durationMs of the primary\'s "reload done" line (a rename waits 150 ms of watch debounce before it).',
    '',
    ...machineLines(machine),
    ...(failures.length === 0 ? [] : ['', '## Failures', '', ...failures.slice(0, 50).map((f) => `- ${f.at} ${f.what}: ${f.error}`)]),
  ].join('\n');
  const times = ['timeToServeMs', 'timeToServeFromStartMs', 'probeMs', 'putRoundTripMs', 'oldLastSeenMs'] as const;
  const json = {
    benchmark: 'cert-reload',
    machine,
    settings,
    // The suite's one-row-per-scenario shape (harness/summary.ts): no rate or CPU; p50 / p99 are time to serve p50 / max.
    summary: byTrigger.map((t) =>
      durationRow('cert-reload', t.trigger, `replacement by ${TRIGGER_TITLE[t.trigger]}: time to serve (p99 = max)`, t.p50Ms, t.maxMs, failed),
    ),
    figures,
    replacements: done.map(({ writtenAt: _w, startedAt: _s, serverName: _n, ...r }) => ({
      ...r,
      ...Object.fromEntries(times.map((k) => [k, r[k] === undefined ? undefined : round(r[k], 2)])),
    })),
    failures,
  };
  publish(out, quick ? 'cert-reload-quick' : 'cert-reload', json, markdown, dateStamp(), log);
  return failed;
}
