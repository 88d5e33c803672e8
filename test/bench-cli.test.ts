// The benchmarks' shared option table (bench/harness/cli.ts) and the HTTP/2 client's report parser
// (bench/keepalive/clients.ts): what decides which settings a bench runs with and what its h2 figures mean.
import { describe, expect, it, vi } from 'vitest';
import { listOf, parseCli, std } from '../bench/harness/cli.js';
import { parseMajors } from '../bench/harness/install.js';
import { parseH2load } from '../bench/keepalive/clients.js';

const TABLE = {
  quick: std.quick('short'),
  rounds: std.rounds(5, 3),
  install: std.install('nginx'),
  sessions: { kind: 'number', arg: 'N', min: 1, integer: true, help: 'sessions' },
  name: { kind: 'string', arg: 'X', help: 'a name' },
} as const;

describe('option table', () => {
  it('gives defaults, quick defaults, and given values, typed', () => {
    expect(parseCli('x.js', TABLE, [])).toEqual({ quick: false, rounds: 5, install: 'yes', sessions: undefined, name: undefined });
    expect(parseCli('x.js', TABLE, ['--quick'])).toEqual({ quick: true, rounds: 3, install: 'no', sessions: undefined, name: undefined });
    expect(parseCli('x.js', TABLE, ['--quick', '--rounds', '7.4', '--install', 'yes', '--name', 'a'])).toMatchObject({ rounds: 7, install: 'yes', name: 'a' });
  });

  it('names the flag of a bad value, and refuses unknown flags', () => {
    expect(() => parseCli('x.js', TABLE, ['--rounds', '0'])).toThrow(/--rounds must be a number >= 1, got '0'/);
    expect(() => parseCli('x.js', TABLE, ['--install', 'maybe'])).toThrow(/--install takes yes, no; got 'maybe'/);
    expect(() => parseCli('x.js', TABLE, ['--nope'])).toThrow(/nope/);
    expect(() => listOf('a,b', '--servers', ['a'])).toThrow(/--servers takes a; got 'b'/);
    expect(() => parseMajors('20,x')).toThrow(/--node/);
    expect(parseMajors('22,24,22')).toEqual([22, 24]);
  });

  it('prints --help from the same table', () => {
    const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      expect(parseCli('x.js', TABLE, ['--help'])).toBeUndefined();
      const text = String(write.mock.calls[0]?.[0]);
      expect(text).toContain('Usage: node dist/bench/x.js');
      expect(text).toMatch(/--rounds N\s+measuring rounds \(default 5; quick 3\)/);
      expect(text).toMatch(/--sessions N\s+sessions\n/);
    } finally {
      write.mockRestore();
    }
  });
});

describe('h2load report', () => {
  it('reads requests, failures, status classes and times', () => {
    const text = [
      'finished in 2.00s, 5123.50 req/s, 1.23MB/s',
      'requests: 10247 total, 10257 started, 10247 done, 10240 succeeded, 7 failed, 2 errored, 1 timeout',
      'status codes: 10240 2xx, 0 3xx, 5 4xx, 2 5xx',
      '                     min         max         mean         sd        +/- sd',
      'time for request:   310us     42.51ms      7.71ms      2.10ms    80.11%',
    ].join('\n');
    expect(parseH2load(text, 2)).toMatchObject({ requests: 10240, errors: 9, timeouts: 1, non2xx: 7, p50Ms: 7.71, p99Ms: 42.51 });
    expect(() => parseH2load('nothing here', 1)).toThrow(/not an h2load report/);
  });
});
