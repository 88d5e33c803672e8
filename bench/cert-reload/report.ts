/**
 * The cert-reload bench's result files (cert-reload/main.ts): the Markdown
 * (figures, one row per replacement, the failures) and the JSON, with the
 * suite's summary rows (time to serve by trigger, as p50 and p99 = max).
 */
import type { MachineInfo } from '../harness/machine.js';
import { columnTable, dateStamp, fmt, machineLines, markdownTable } from '../harness/report.js';
import { round } from '../harness/stats.js';
import { durationRow } from '../harness/summary.js';
import type { HandshakeCounters } from '../lab/counters.js';
import type { LoadCounters } from './load.js';

export type Trigger = 'rename' | 'put' | 'sighup';
export const TRIGGER_TITLE: Record<Trigger, string> = { rename: 'store file rename', put: 'admin PUT /certs/site', sighup: 'config chain + SIGHUP' };

export interface Replacement {
  readonly index: number;
  readonly trigger: Trigger;
  readonly certificate: string;
  readonly fromKey: string;
  readonly toKey: string;
  readonly serial: string;
  readonly oldSerial: string;
  /** The write's reference instant (performance.now()): rename returned, PUT answered, SIGHUP sent. */
  readonly writtenAt: number;
  /** When the write began: as writtenAt, but the PUT's request sent. */
  readonly startedAt: number;
  /** PUT only: from sending the request to its answer. */
  readonly putRoundTripMs?: number;
  /** From writtenAt until a new connection (load or probe) first completed a handshake with the new serial. */
  timeToServeMs?: number | undefined;
  /** The same from startedAt (differs for PUT only). */
  timeToServeFromStartMs?: number | undefined;
  /** From writtenAt until the probe saw the new serial. */
  readonly probeMs: number | undefined;
  readonly probes: number;
  readonly reload: { readonly trigger: unknown; readonly generation: unknown; readonly durationMs: unknown } | undefined;
  oldLastSeenMs?: number | undefined;
}

export interface ReloadFigures {
  readonly quick: boolean;
  readonly machine: MachineInfo;
  readonly settings: { readonly newLoops: number; readonly keepAliveLoops: number; readonly probeMs: number } & Record<string, number>;
  readonly loadSeconds: number;
  readonly done: readonly Replacement[];
  readonly byTrigger: readonly { readonly trigger: Trigger; readonly count: number; readonly p50Ms: number; readonly maxMs: number }[];
  readonly counts: LoadCounters;
  /** The proxy's own counters over the run. */
  readonly server: HandshakeCounters;
  readonly summary: {
    readonly handshakes: number;
    readonly requests: number;
    readonly newConnectionRequests: number;
    readonly timeToServeP50Ms: number;
    readonly timeToServeMaxMs: number;
    readonly handshakeP50Ms: number;
  } & Record<string, unknown>;
  readonly failed: number;
}

export function reloadReport({ quick, machine, settings, loadSeconds, done, byTrigger, counts, server, summary, failed }: ReloadFigures): {
  markdown: string;
  json: unknown;
} {
  const notServed = done.filter((r) => r.timeToServeMs === undefined).length;
  const markdown = [
    `# cert-reload${quick ? ' (quick)' : ''}: ${done.length} certificate replacements under load, ${dateStamp()}`,
    '',
    `\`keyedge proxy\`, 2 workers, key server with an ECDSA P-256 and an RSA-2048 key (SoftHSM2), demo origin. ` +
      `Load for ${fmt(loadSeconds, 1)} s: ${settings.newLoops} loops of new connections (node:tls connect + GET + close) and ${settings.keepAliveLoops} keep-alive loops (https.Agent, one connection each), over both certificates. ` +
      `Time to serve: from the write (rename returned / PUT answered / SIGHUP sent) until a new connection (probed every ${settings.probeMs} ms) first got the new serial.`,
    '',
    markdownTable(
      ['Figure', 'Value'],
      [
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
        ...byTrigger.map((t) => [`… ${TRIGGER_TITLE[t.trigger]} (${t.count}) p50 / max, ms`, `${fmt(t.p50Ms, 1)} / ${fmt(t.maxMs, 1)}`]),
        ['proxy counters: full handshakes / failed (server side)', `${fmt(server.full)} / ${fmt(server.failed)}`],
      ],
      ['left', 'right'],
    ),
    '',
    columnTable(done, [
      ['#', 'right', (r) => String(r.index)],
      ['trigger', 'left', (r) => TRIGGER_TITLE[r.trigger]],
      ['entry', 'left', (r) => r.certificate],
      ['key change', 'left', (r) => `${r.fromKey} → ${r.toKey}`],
      ['time to serve ms', 'right', (r) => (r.timeToServeMs === undefined ? 'not served' : fmt(r.timeToServeMs, 1))],
      ['primary reload ms (trigger)', 'right', (r) => (r.reload === undefined ? '?' : `${fmt(Number(r.reload.durationMs))} (${String(r.reload.trigger)})`)],
      ['probe saw it ms', 'right', (r) => (r.probeMs === undefined ? '–' : fmt(r.probeMs, 1))],
      [
        'PUT round trip / serve from sent ms',
        'right',
        (r) =>
          r.putRoundTripMs === undefined
            ? ''
            : `${fmt(r.putRoundTripMs, 1)} / ${r.timeToServeFromStartMs === undefined ? '–' : fmt(r.timeToServeFromStartMs, 1)}`,
      ],
      ['old cert last seen ms', 'right', (r) => (r.oldLastSeenMs === undefined ? '–' : fmt(r.oldLastSeenMs, 1))],
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
    // The suite's one-row-per-scenario shape (harness/summary.ts): no rate or CPU here; p50 / p99 are time to serve p50 / max.
    summary: byTrigger.map((t) =>
      durationRow(
        'cert-reload',
        t.trigger,
        `replacement by ${TRIGGER_TITLE[t.trigger]}: time to serve (p99 = max)`,
        round(t.p50Ms, 1),
        round(t.maxMs, 1),
        failed,
      ),
    ),
    figures: summary,
    replacements: done.map(({ writtenAt: _w, startedAt: _s, ...r }) => ({
      ...r,
      timeToServeMs: roundOrUndefined(r.timeToServeMs),
      timeToServeFromStartMs: roundOrUndefined(r.timeToServeFromStartMs),
      probeMs: roundOrUndefined(r.probeMs),
      putRoundTripMs: roundOrUndefined(r.putRoundTripMs),
      oldLastSeenMs: roundOrUndefined(r.oldLastSeenMs),
    })),
    failures: counts.failures,
  };
  return { markdown, json };
}

function roundOrUndefined(value: number | undefined): number | undefined {
  return value === undefined ? undefined : round(value, 2);
}
