/**
 * The cert-reload bench's figures and result files: when each new certificate was first served (from the load's
 * observations), the totals, the Markdown (figures, one row per replacement, the failures) and the JSON with the
 * suite's summary rows (time to serve by trigger, p99 = max).
 */
import { columnTable, dateStamp, fmt, type MachineInfo, machineLines, markdownTable } from '../harness/report.js';
import { publish } from '../harness/runner.js';
import { median, round } from '../harness/stats.js';
import { durationRow } from '../harness/summary.js';
import type { ReloadLoad } from './load.js';
import type { Replacement } from './main.js';

export type Trigger = 'rename' | 'put' | 'sighup';
export const TRIGGER_TITLE: Record<Trigger, string> = { rename: 'store file rename', put: 'admin PUT /certs/site', sighup: 'config chain + SIGHUP' };

const ms = (v: number | undefined, none = '–') => (v === undefined ? none : fmt(v, 1));
const p50Max = (values: readonly number[]) => ({ p50Ms: round(median(values), 1), maxMs: round(values.length > 0 ? Math.max(...values) : Number.NaN, 1) });

/** Writes the result files; the count of failures (handshakes, requests, certificates never served). */
export function reloadReport(
  run: { quick: boolean; machine: MachineInfo; settings: Record<string, number>; loadSeconds: number; replacements: readonly Replacement[] },
  load: ReloadLoad,
  out: string,
  log: (line: string) => void,
): number {
  const { quick, machine, settings, loadSeconds } = run;
  const { counts, observations, failures } = load;
  // Per replacement: the first new connection after the write (load or probe) with the new serial, and the last one
  // still handed the old certificate.
  const done = run.replacements.map(({ writtenAt, serverName, ...r }) => {
    const after = (serial: string) => observations.filter((o) => o.serverName === serverName && o.serial === serial && o.at >= writtenAt);
    const since = (o: { at: number } | undefined) => (o === undefined ? undefined : round(o.at - writtenAt, 2));
    return { ...r, timeToServeMs: since(after(r.serial)[0]), oldLastSeenMs: since(after(r.oldSerial).at(-1)) };
  });
  const served = (rs: typeof done) => rs.flatMap((r) => (r.timeToServeMs === undefined ? [] : [r.timeToServeMs]));
  const byTrigger = (['rename', 'put', 'sighup'] as const).map((trigger) => {
    const of = done.filter((r) => r.trigger === trigger);
    return { trigger, count: of.length, served: served(of).length, ...p50Max(served(of)) };
  });
  const notServed = done.length - served(done).length;
  const failed = counts.failedHandshakes + counts.failedRequests + notServed;
  const all = p50Max(served(done));
  const handshakeP50Ms = round(median(observations.map((o) => o.handshakeMs)), 1);
  const n = (...values: number[]) => values.map((v) => fmt(v)).join(' / ');
  const slash = (t: { p50Ms: number; maxMs: number }) => `${fmt(t.p50Ms, 1)} / ${fmt(t.maxMs, 1)}`;
  const rows: [string, string][] = [
    ['replacements (rename / PUT / SIGHUP)', `${done.length} (${n(...byTrigger.map((t) => t.count))})`],
    [
      'requests on new connections / keep-alive / … of them on a reused connection',
      n(counts.newConnectionRequests, counts.keepAliveRequests, counts.keepAliveReused),
    ],
    ['failed handshakes / failed requests / replacements not served within 15 s', n(counts.failedHandshakes, counts.failedRequests, notServed)],
    ['time to serve p50 / max, ms', slash(all)],
    ['new connection: connect → handshake done, p50 ms (part of every time to serve)', fmt(handshakeP50Ms, 1)],
    ...byTrigger.map((t): [string, string] => [`… ${TRIGGER_TITLE[t.trigger]} (${t.served}) p50 / max, ms`, slash(t)]),
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
      ['PUT round trip ms', 'right', (r) => ms(r.putRoundTripMs, '')],
      ['old cert last seen ms', 'right', (r) => ms(r.oldLastSeenMs)],
    ]),
    '',
    'Columns (bench/README.md, "cert-reload"): "time to serve" and "old cert last seen" count from the write to the first new connection, load or probe, ' +
      'whose handshake got the new certificate, and to the last that still got the previous one ("–": none after it). The PUT answers once every worker ' +
      'serves the new certificate. "primary reload ms": durationMs of the primary\'s "reload done" line (a rename waits 150 ms of watch debounce before it).',
    '',
    ...machineLines(machine),
    ...(failures.length === 0 ? [] : ['', '## Failures', '', ...failures.slice(0, 50).map((f) => `- ${f.at} ${f.what}: ${f.error}`)]),
  ].join('\n');
  const figures = { loadSeconds: round(loadSeconds, 1), ...counts, notServed, timeToServe: all, handshakeP50Ms, byTrigger };
  const json = {
    benchmark: 'cert-reload',
    machine,
    settings,
    // The suite's one-row-per-scenario shape (harness/summary.ts): no rate or CPU; p50 / p99 are time to serve p50 / max.
    summary: byTrigger.map((t) =>
      durationRow('cert-reload', t.trigger, `replacement by ${TRIGGER_TITLE[t.trigger]}: time to serve (p99 = max)`, t.p50Ms, t.maxMs, failed),
    ),
    figures,
    replacements: done,
    failures,
  };
  publish(out, quick ? 'cert-reload-quick' : 'cert-reload', json, markdown, dateStamp(), log);
  return failed;
}
