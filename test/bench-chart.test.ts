import { describe, expect, it } from 'vitest';
import { escapeXml, renderChart } from '../bench/harness/chart.js';
import type { SummaryRow } from '../bench/harness/summary.js';

function row(bench: string, scenario: string, rate: number, serverCpuUs: number, extra: Partial<SummaryRow> = {}): SummaryRow {
  const unit = bench === 'handshake' ? 'handshake' : bench === 'keepalive' ? 'request' : 'sign';
  return {
    bench,
    scenario,
    label: scenario,
    unit,
    rate,
    serverCpuUs,
    p50Ms: 1,
    p99Ms: 2,
    clientSaturated: false,
    errors: 0,
    spreadPct: 5,
    otherCores: 0.1,
    ...extra,
  };
}

/**
 * Well-formedness without an XML library: every tag closes in order, attribute values are quoted, and text holds no
 * raw '<' and no '&' that does not start one of the five predefined entities.
 */
function assertWellFormed(svg: string): void {
  const stack: string[] = [];
  const tag = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let last = 0;
  for (let m = tag.exec(svg); m !== null; m = tag.exec(svg)) {
    const text = svg.slice(last, m.index);
    expect(text, `text before ${m[0]}`).not.toMatch(/<|&(?!(amp|lt|gt|quot|apos);)/);
    last = tag.lastIndex;
    const [, closing, name, , selfClosing] = m;
    if (closing === '/') expect(stack.pop(), `closing </${name}>`).toBe(name);
    else if (selfClosing !== '/') stack.push(name!);
  }
  expect(svg.slice(last).trim()).toBe('');
  expect(stack).toEqual([]);
}

describe('bench chart', () => {
  const rows: SummaryRow[] = [
    row('handshake', 'keyless-ec', 346, 2573),
    row('handshake', 'inmemory-ec', 506, 1759),
    row('keepalive', 'keyedge', 4000, 120.4, { label: 'keyedge proxy (keyless, 1 worker)', clientSaturated: true }),
    row('keepalive', 'nginx', 12000, 26),
    row('keepalive', 'caddy', Number.NaN, Number.NaN, { skipped: 'caddy is not installed (install it with: apt-get install -y caddy)' }),
  ];

  it('renders a well-formed standalone SVG document', () => {
    const svg = renderChart({ title: 'keyedge benchmarks', subtitle: 'AMD EPYC, 2 cores', rows });
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg).toMatch(/viewBox="0 0 \d+ \d+"/);
    expect(svg).not.toMatch(/<script|href=/);
    assertWellFormed(svg);
  });

  it('has one labelled row per scenario, with both values, and says which were skipped', () => {
    const svg = renderChart({ title: 't', rows });
    for (const r of rows) expect(svg).toContain(`data-scenario="${r.bench}/${r.scenario}"`);
    expect(svg).toContain('keyedge proxy (keyless, 1 worker)');
    expect(svg).toContain('>4,000 (≥)<');
    expect(svg).toContain('>120<'); // whole µs above 10
    expect(svg).toContain('>2,573<');
    expect(svg).toContain('skipped: caddy is not installed');
    // Two bars (rate, CPU) per scenario that ran, none for the skipped one.
    expect(svg.match(/<rect x=/g)).toHaveLength(4 * 2);
    // Bars scale within their bench: the largest of each group is full width.
    const widths = [...svg.matchAll(/<rect x="\d+" y="\d+" width="([\d.]+)"/g)].map((m) => Number(m[1]));
    expect(widths.filter((w) => w === 300)).toHaveLength(4);
  });

  it('escapes every piece of text taken from result files', () => {
    const hostile = row('keepalive', 'a<b>&"c"', 1, 1, { label: `<script>alert('x')</script> & co` });
    const svg = renderChart({ title: 'x < y & "z"', subtitle: "it's", rows: [hostile, row('keepalive', 'n', 2, 2, { skipped: '<missing> & gone' })] });
    assertWellFormed(svg);
    expect(svg).not.toContain('<script>');
    expect(svg).toContain('&lt;script&gt;alert(&apos;x&apos;)&lt;/script&gt; &amp; co');
    expect(svg).toContain('data-scenario="keepalive/a&lt;b&gt;&amp;&quot;c&quot;"');
    expect(svg).toContain('x &lt; y &amp; &quot;z&quot;');
    expect(svg).toContain('skipped: &lt;missing&gt; &amp; gone');
    expect(escapeXml(`<&>"'`)).toBe('&lt;&amp;&gt;&quot;&apos;');
  });
});
