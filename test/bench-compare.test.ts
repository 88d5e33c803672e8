import { describe, expect, it } from 'vitest';
import { compareSummaries, formatComparison, pct, relativeChange } from '../bench/harness/summary.js';
import { readSummary, type SummaryRow } from '../bench/harness/summary.js';

function row(scenario: string, rate: number, serverCpuUs: number, extra: Partial<SummaryRow> = {}): SummaryRow {
  return {
    bench: 'keepalive',
    scenario,
    label: scenario,
    unit: 'request',
    rate,
    serverCpuUs,
    p50Ms: 1,
    p99Ms: 2,
    clientSaturated: false,
    errors: 0,
    spreadPct: 5,
    otherCores: 0,
    ...extra,
  };
}

describe('bench comparison', () => {
  it('flags a scenario whose rate or CPU per unit moved beyond the threshold, either way', () => {
    const old = [row('keyedge', 1000, 100), row('nginx', 5000, 26), row('caddy', 2000, 108)];
    const now = [row('keyedge', 1050, 89), row('nginx', 4400, 27), row('caddy', 2100, 110)];
    const c = compareSummaries(old, now, { threshold: 0.1 });
    expect(c.flagged.map((x) => x.key)).toEqual(['keepalive/keyedge', 'keepalive/nginx']);
    const keyedge = c.changes.find((x) => x.key === 'keepalive/keyedge')!;
    expect(keyedge.rateChange).toBeCloseTo(0.05);
    expect(keyedge.cpuChange).toBeCloseTo(-0.11);
    expect(keyedge.reasons).toEqual(['CPU/unit −11.0%']);
    expect(c.changes.find((x) => x.key === 'keepalive/nginx')!.reasons).toEqual(['rate −12.0%']);
    expect(c.changes.find((x) => x.key === 'keepalive/caddy')!.status).toBe('ok');
  });

  it('takes the threshold as given', () => {
    const old = [row('keyedge', 1000, 100)];
    const now = [row('keyedge', 1150, 100)];
    expect(compareSummaries(old, now, { threshold: 0.1 }).flagged).toHaveLength(1);
    expect(compareSummaries(old, now, { threshold: 0.2 }).flagged).toHaveLength(0);
    expect(() => compareSummaries(old, now, { threshold: 0 })).toThrow(/threshold/);
  });

  it('lists scenarios in one file only, or skipped, without flagging them', () => {
    const old = [row('keyedge', 1000, 100), row('gone', 10, 10), row('caddy', 2000, 108)];
    const now = [row('keyedge', 1000, 100), row('new', 10, 10), row('caddy', Number.NaN, Number.NaN, { skipped: 'caddy is not installed' })];
    const c = compareSummaries(old, now, { threshold: 0.1 });
    expect(Object.fromEntries(c.changes.map((x) => [x.key, x.status]))).toEqual({
      'keepalive/keyedge': 'ok',
      'keepalive/new': 'only-new',
      'keepalive/caddy': 'skipped',
      'keepalive/gone': 'only-old',
    });
    expect(c.flagged).toEqual([]);
  });

  it('matches scenarios by bench as well as name', () => {
    const a = [row('x', 100, 10), { ...row('x', 100, 10), bench: 'handshake', unit: 'handshake' as const }];
    const b = [row('x', 100, 10), { ...row('x', 300, 10), bench: 'handshake', unit: 'handshake' as const }];
    expect(compareSummaries(a, b, { threshold: 0.1 }).flagged.map((x) => x.key)).toEqual(['handshake/x']);
  });

  it('prints a table and a verdict naming what moved', () => {
    const text = formatComparison(compareSummaries([row('keyedge', 1000, 100)], [row('keyedge', 800, 130)], { threshold: 0.1 }));
    expect(text).toContain('| keepalive/keyedge');
    expect(text).toContain('1,000 → 800');
    expect(text).toContain('MOVED: rate −20.0%, CPU/unit +30.0%');
    expect(text).toContain('1 scenario moved by more than 10%: keepalive/keyedge');
    expect(formatComparison(compareSummaries([row('a', 1, 1)], [row('a', 1, 1)], { threshold: 0.1 }))).toContain('No scenario moved by more than 10%.');
  });

  it('relative change and percentages handle missing figures', () => {
    expect(relativeChange(100, 110)).toBeCloseTo(0.1);
    expect(relativeChange(0, 10)).toBeNaN();
    expect(relativeChange(Number.NaN, 10)).toBeNaN();
    expect(pct(0.123)).toBe('+12.3%');
    expect(pct(-0.04)).toBe('−4.0%');
    expect(pct(Number.NaN)).toBe('–');
  });
});

describe('reading result files', () => {
  it('reads a bench summary array with its own rate and CPU names', () => {
    const rows = readSummary(
      {
        benchmark: 'keepalive',
        summary: [
          {
            scenario: 'keyedge',
            label: 'keyedge proxy',
            requestsPerSecond: 4000,
            serverCpuUsPerRequest: 95,
            p50Ms: 15,
            p99Ms: 40,
            clientSaturated: false,
            errors: 0,
            spreadPct: 8,
            otherCores: 0.1,
          },
        ],
      },
      'k.json',
    );
    expect(rows).toEqual([
      {
        bench: 'keepalive',
        scenario: 'keyedge',
        label: 'keyedge proxy',
        unit: 'request',
        rate: 4000,
        serverCpuUs: 95,
        p50Ms: 15,
        p99Ms: 40,
        clientSaturated: false,
        errors: 0,
        spreadPct: 8,
        otherCores: 0.1,
      },
    ]);
  });

  it('derives rows from a scenarios array (spreads, µs latencies, error objects) when there is no summary', () => {
    const [r] = readSummary(
      {
        benchmark: 'handshake',
        scenarios: [
          {
            name: 'keyless-ec',
            handshakesPerSecond: { median: 346, min: 300, max: 380, spreadPct: 23, n: 5 },
            serverUs: { median: 2573, min: 2400, max: 2700, spreadPct: 11, n: 5 },
            p50Us: 180_000,
            p99Us: 400_000,
            clientSaturated: false,
            errors: { abFailed: 1, non2xx: 2, windowFailedHandshakes: 0, abStderrLines: 7 },
            otherCores: 0.3,
          },
        ],
      },
      'h.json',
    );
    expect(r).toMatchObject({
      bench: 'handshake',
      scenario: 'keyless-ec',
      unit: 'handshake',
      rate: 346,
      serverCpuUs: 2573,
      p50Ms: 180,
      p99Ms: 400,
      errors: 3,
      spreadPct: 23,
    });
  });

  it("reads a suite file, keeping each row's bench, and skipped rows (null figures)", () => {
    const rows = readSummary(
      {
        benchmark: 'suite',
        summary: [
          {
            bench: 'handshake',
            scenario: 'keyless-ec',
            label: 'keyless-ec',
            unit: 'handshake',
            rate: 346,
            serverCpuUs: 2573,
            p50Ms: 1,
            p99Ms: 2,
            clientSaturated: false,
            errors: 0,
            spreadPct: 3,
            otherCores: 0,
          },
          {
            bench: 'keepalive',
            scenario: 'caddy',
            label: 'caddy',
            unit: 'request',
            rate: null,
            serverCpuUs: null,
            p50Ms: null,
            p99Ms: null,
            clientSaturated: false,
            errors: 0,
            spreadPct: null,
            otherCores: null,
            skipped: 'not installed',
          },
        ],
      },
      's.json',
    );
    expect(rows.map((r) => `${r.bench}/${r.scenario}`)).toEqual(['handshake/keyless-ec', 'keepalive/caddy']);
    expect(rows[1]!.rate).toBeNaN();
    expect(rows[1]!.skipped).toBe('not installed');
  });

  it('names the file when it is not a result', () => {
    expect(() => readSummary([1, 2], 'x.json')).toThrow(/x\.json: not a benchmark result/);
    expect(() => readSummary({ benchmark: 'y' }, 'y.json')).toThrow(/y\.json: no "summary" or "scenarios" array/);
    expect(() => readSummary({ summary: [{ rate: 1 }] }, 'z.json')).toThrow(/neither "scenario" nor "name"/);
  });
});
