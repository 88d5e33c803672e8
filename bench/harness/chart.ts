/**
 * A dependency-free SVG chart of summary rows: the rate (left panel) and the server CPU µs per unit (right), scaled
 * within each benchmark (the units differ). White background (GitHub's dark theme); every text XML-escaped.
 */
import { fmt } from './report.js';
import type { SummaryRow } from './summary.js';

export const escapeXml = (text: string): string =>
  text.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);

const GROUP_TITLE: Record<string, string> = {
  handshake: 'TLS 1.3 handshakes (new connection + one proxied GET each)',
  keepalive: 'keep-alive proxied requests (1 KiB page)',
  'keyserver-sign': 'key server signatures',
};

const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#76b7b2', '#edc948'];
const [LABEL, PANEL, VALUE, GAP, MARGIN, ROW] = [300, 300, 110, 24, 16, 22];
const formatValue = (v: number): string => fmt(v, v < 10 ? 1 : 0);

/** The SVG document; rows keep their order within each bench's group, groups their first appearance. */
export function renderChart(input: { readonly title: string; readonly subtitle?: string; readonly rows: readonly SummaryRow[] }): string {
  const groups = new Map<string, SummaryRow[]>();
  for (const row of input.rows) groups.set(row.bench, [...(groups.get(row.bench) ?? []), row]);
  const panelX = [MARGIN + LABEL, MARGIN + LABEL + PANEL + VALUE + GAP] as const;
  const width = panelX[1] + PANEL + VALUE + MARGIN;
  const out: string[] = [];
  let y = 64;
  for (const [i, [bench, rows]] of [...groups].entries()) {
    const fill = PALETTE[i % PALETTE.length]!;
    const unit = { rate: `${rows[0]!.unit}s/s`, cpu: `µs/${rows[0]!.unit}` };
    const max = (f: (r: SummaryRow) => number) => Math.max(0, ...rows.map((r) => (Number.isFinite(f(r)) ? f(r) : 0)));
    const [maxRate, maxCpu] = [max((r) => r.rate), max((r) => r.serverCpuUs)];
    out.push(`<text x="${MARGIN}" y="${y + 22}" class="group">${escapeXml(`${bench}: ${GROUP_TITLE[bench] ?? ''}`.replace(/: $/, ''))}</text>`);
    out.push(`<text x="${panelX[0]}" y="${y + 40}" class="axis">${escapeXml(unit.rate)} (higher is better)</text>`);
    out.push(`<text x="${panelX[1]}" y="${y + 40}" class="axis">server CPU ${escapeXml(unit.cpu)} (lower is better)</text>`);
    y += 44;
    for (const row of rows) {
      const mid = y + ROW / 2;
      const skipped = row.skipped === undefined ? '' : ` (skipped: ${row.skipped})`;
      out.push(`<g class="row" data-scenario="${escapeXml(`${row.bench}/${row.scenario}`)}">`);
      out.push(`<title>${escapeXml(`${row.label}: ${formatValue(row.rate)} ${unit.rate}, ${formatValue(row.serverCpuUs)} ${unit.cpu}${skipped}`)}</title>`);
      out.push(`<text x="${panelX[0] - 8}" y="${mid + 4}" class="label" text-anchor="end">${escapeXml(row.label)}</text>`);
      if (row.skipped !== undefined) {
        const reason = row.skipped.length > 90 ? `${row.skipped.slice(0, 87)}…` : row.skipped;
        out.push(`<text x="${panelX[0]}" y="${mid + 4}" class="skipped">skipped: ${escapeXml(reason)}</text>`);
      } else {
        const bars = [
          [panelX[0], row.rate, maxRate, `${formatValue(row.rate)}${row.clientSaturated ? ' (≥)' : ''}`],
          [panelX[1], row.serverCpuUs, maxCpu, formatValue(row.serverCpuUs)],
        ] as const;
        for (const [x, value, max, text] of bars) {
          const len = Number.isFinite(value) && max > 0 ? Math.max(1, (value / max) * PANEL) : 0;
          out.push(`<rect x="${x}" y="${y + 3}" width="${len.toFixed(1)}" height="${ROW - 6}" fill="${fill}" rx="2"/>`);
          out.push(`<text x="${(x + len + 5).toFixed(1)}" y="${mid + 4}" class="value">${escapeXml(text)}</text>`);
        }
      }
      out.push('</g>');
      y += ROW;
    }
  }
  const height = y + 34;
  const footer = 'Bars are scaled within each benchmark. "(≥)": the client saturated its core, so the rate is a lower bound.';
  const style =
    'text{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;font-size:12px;fill:#24292f}.title{font-size:16px;font-weight:600}.subtitle{fill:#57606a}' +
    '.group{font-weight:600}.axis{fill:#57606a;font-size:11px}.value{font-variant-numeric:tabular-nums}.skipped{fill:#9a6700;font-style:italic}';
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeXml(input.title)}">`,
    `<title>${escapeXml(input.title)}</title>`,
    `<style>${style}</style>`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${MARGIN}" y="26" class="title">${escapeXml(input.title)}</text>`,
    ...(input.subtitle === undefined ? [] : [`<text x="${MARGIN}" y="46" class="subtitle">${escapeXml(input.subtitle)}</text>`]),
    ...out,
    `<text x="${MARGIN}" y="${height - 12}" class="axis">${escapeXml(footer)}</text>`,
    '</svg>',
  ].join('\n');
}
