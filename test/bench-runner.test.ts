// The report pieces the measuring benches share, and the
// handshake bench's targets table (which ratios it reports per Node major, and
// when a row is left out), and the clients' command lines the reports show.
import { describe, expect, it } from 'vitest';
import { abArgs } from '../bench/handshake/ab.js';
import { HANDSHAKE_KEYS, setupProcesses, setupTitle } from '../bench/handshake/lab.js';
import { targets } from '../bench/handshake/summary.js';
import { minMax, plural, specTable } from '../bench/harness/report.js';
import { OWN_MAJOR } from '../bench/harness/install.js';
import { autocannonArgs, h2loadArgs } from '../bench/keepalive/clients.js';

describe('runner report pieces', () => {
  it('specTable renders headers, alignment and cells from column specs; an empty list gives the note', () => {
    const rows = [
      { name: 'a', n: 1 },
      { name: 'b|c', n: 22 },
    ];
    const table = specTable(
      rows,
      [
        ['name', 'left', (r) => r.name],
        ['n', 'right', (r) => String(r.n)],
      ],
      '(none)',
    );
    expect(table.split('\n')).toEqual(['| name |   n |', '|------|----:|', '| a    |   1 |', '| b\\|c |  22 |']);
    expect(specTable([], [['x', 'left', () => '']], '(none)')).toBe('(none)');
  });

  it('minMax and plural', () => {
    expect(minMax([3, 1.234, 2], 2)).toBe('1.23–3.00');
    expect(minMax([1500, 20])).toBe('20–1,500');
    expect(plural(1, 'worker')).toBe('1 worker');
    expect(plural(2, 'worker')).toBe('2 workers');
  });
});

describe('handshake set-ups and targets', () => {
  it('names each set-up and what runs in it, also under another Node major', () => {
    expect(setupTitle('keyless-unix')).toBe('keyless (unix)');
    expect(setupTitle('inmemory-node22')).toBe('in memory, Node 22');
    expect(setupProcesses('keyless-unix-node22', 2)).toBe('proxy 2 workers + key server (unix), Node 22');
    expect(setupProcesses('keyless-tcp', 1)).toBe('proxy 1 worker + key server (mTLS)');
    expect(setupProcesses('nginx-p11kit', 4)).toBe('nginx 1 process + p11-kit server');
  });

  const row = (kind: string, setup: string, key: string, us: number) => ({
    kind,
    setup,
    key: HANDSHAKE_KEYS.find((k) => k.id === key)!,
    serverUs: { median: us },
  });
  type Summaries = Parameters<typeof targets>[0];

  it('divides the medians, the hop as a difference of differences, and leaves out rows whose scenarios did not run', () => {
    const summaries = [
      row('full-tls13', 'keyless-unix', 'ec', 900),
      row('full-tls13', 'inmemory', 'ec', 600),
      row('full-tls13', 'nginx-file', 'ec', 500),
      row('full-tls13', 'nginx-p11kit', 'ec', 800),
      row('resumed-tls13', 'keyless-unix', 'ec', 130),
      row('resumed-tls13', 'nginx-file', 'ec', 100),
    ] as unknown as Summaries;
    const rows = targets(summaries, [OWN_MAJOR]);
    expect(rows.map((r) => [r.name, r.value, r.met])).toEqual([
      ['full handshake: keyless (unix) ÷ nginx + p11-kit', 900 / 800, true],
      ['full handshake: in memory ÷ nginx key file', 600 / 500, true],
      ['keyless hop ÷ p11-kit hop: (keyless − in memory) ÷ (nginx + p11-kit − nginx key file)', 1, true],
      ['resumed handshake: keyless ÷ nginx', 1.3, true],
    ]);
    expect(rows[2]!.detail).toBe('300 ÷ 300 µs');
    expect(rows.every((r) => r.key === 'ECDSA P-256' && r.node === String(OWN_MAJOR))).toBe(true);
  });

  it('reads the Node side under each other major against the same nginx, and the ALPN rows under this node only', () => {
    const other = OWN_MAJOR + 2;
    const summaries = [
      row('full-tls13', 'inmemory', 'ec', 600),
      row('full-tls13', `inmemory-node${other}`, 'ec', 700),
      row('full-tls13', 'nginx-file', 'ec', 500),
      row('alpn-h2', 'keyless-unix', 'ec', 1100),
      row('alpn-h1', 'keyless-unix', 'ec', 1000),
    ] as unknown as Summaries;
    const rows = targets(summaries, [OWN_MAJOR, other]);
    expect(rows.map((r) => [r.node, r.name, r.value])).toEqual([
      [String(OWN_MAJOR), 'full handshake: in memory ÷ nginx key file', 1.2],
      [String(OWN_MAJOR), 'full handshake with h2 ÷ with http/1.1: keyless', 1.1],
      [String(other), 'full handshake: in memory ÷ nginx key file', 1.4],
    ]);
    expect(rows[2]!.met).toBe(false);
  });
});

describe('client command lines', () => {
  it('ab: full handshakes for a bounded time, percentiles to a CSV', () => {
    const args = abArgs({ port: 8443, host: 'ec.bench.localhost', concurrency: 64, maxSeconds: 10, csvPath: '/tmp/x.csv', cpus: undefined });
    expect(args.join(' ')).toBe('-q -r -t 10 -n 200000 -c 64 -s 30 -f TLS1.3 -H Host: ec.bench.localhost -e /tmp/x.csv https://127.0.0.1:8443/');
  });

  it('autocannon and h2load', () => {
    const ac = autocannonArgs({ url: 'https://127.0.0.1:1/', serverName: 'ka', connections: 64, durationSec: 7, cpus: undefined });
    expect(ac.join(' ')).toBe('--json -c 64 -d 7 -t 10 -s ka -H host=ka https://127.0.0.1:1/');
    const h2 = h2loadArgs({ port: 9, serverName: 'ka', connections: 4, streams: 10, durationSec: 6.5, cpus: undefined });
    expect(h2.join(' ')).toBe('-c 4 -m 10 -D 7 --npn-list=h2 --connect-to=127.0.0.1:9 https://ka:9/');
  });
});
