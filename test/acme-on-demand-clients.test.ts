import { describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { createLogger } from '../keyserver/shared/log.js';
import { OnDemandGate } from '../proxy/acme/on-demand.js';
import { ClientChecks } from '../proxy/acme/on-demand-clients.js';
import { missReporter, wantedClient, wantedMessage, wantedName } from '../proxy/acme/on-demand-names.js';

// The on-demand gate's per-client bound, by itself (the cluster case, two source
// addresses against a real ask endpoint, is in acme-on-demand.test.ts): a client
// starts at most maxChecksPerClientPerMinute checks, refilled over a minute; its
// other new names are ignored (reason client_limit) before any check, another
// client keeps its own; a trusted proxy (no client) and `null` are not bounded.
// A client is what the connection caps count: an IPv4 address, an IPv6 /64.

/** A private CA's gate with no ask endpoint (every check allows: an order), names counted by outcome and reason. */
function gate(maxChecksPerClientPerMinute: number | null): { gate: OnDemandGate; outcomes: string[]; ordered: string[] } {
  const config = loadProxyConfig(undefined, {
    acme: { directory: 'https://ca.test/dir', onDemand: { publicNamesOnly: false, maxOrdersPerHour: 1_000, maxChecksPerClientPerMinute } },
  }).acme!.onDemand!;
  const outcomes: string[] = [];
  const ordered: string[] = [];
  return {
    gate: new OnDemandGate({
      config,
      log: createLogger('on-demand-clients-test', 'silent', process.stderr),
      isManaged: () => false,
      order: (name) => void ordered.push(name),
      onOutcome: (outcome, reason) => void outcomes.push(reason === undefined ? outcome : `${outcome}:${reason}`),
    }),
    outcomes,
    ordered,
  };
}

describe('on-demand checks per client', () => {
  it('defaults to 10 a minute; null is no bound', () => {
    const config = (onDemand: Record<string, unknown>) => loadProxyConfig(undefined, { acme: { directory: 'https://ca.test/dir', onDemand } }).acme!.onDemand!;
    expect(config({}).maxChecksPerClientPerMinute).toBe(10);
    expect(config({ maxChecksPerClientPerMinute: null }).maxChecksPerClientPerMinute).toBeNull();
    expect(() => config({ maxChecksPerClientPerMinute: 0 })).toThrow(/maxChecksPerClientPerMinute/);
  });

  it('a client over its checks: its names ignored before any check; another client, a trusted proxy, still checked', async () => {
    const { gate: g, outcomes, ordered } = gate(3);
    for (let i = 0; i < 6; i++) await g.wanted(`www.a${i}.test`, '192.0.2.1');
    expect(ordered).toEqual(['www.a0.test', 'www.a1.test', 'www.a2.test']);
    expect(outcomes.slice(3)).toEqual(Array(3).fill('ignored:client_limit'));
    expect(await g.wanted('www.b.test', '2001:db8:1:2::/64')).toBe('ordered');
    // No client: a trusted proxy's handshakes carry many clients, not bounded as one.
    for (let i = 0; i < 6; i++) expect(await g.wanted(`www.c${i}.test`)).toBe('ordered');
    // A name ignored for its client was not remembered: it is checked once its client has checks again (or from another).
    expect(await g.wanted('www.a3.test', '192.0.2.9')).toBe('ordered');
  });

  it('null: no per-client bound', async () => {
    const { gate: g } = gate(null);
    for (let i = 0; i < 20; i++) expect(await g.wanted(`www.n${i}.test`, '192.0.2.1')).toBe('ordered');
  });

  it('refills at its rate a minute, up to its burst', () => {
    let now = 0;
    const checks = new ClientChecks(6, () => now);
    for (let i = 0; i < 6; i++) {
      expect(checks.allows('c')).toBe(true);
      checks.take('c');
    }
    expect(checks.allows('c')).toBe(false);
    now += 10_000;
    expect(checks.allows('c')).toBe(true);
    checks.take('c');
    expect(checks.allows('c')).toBe(false);
    now += 3_600_000;
    for (let i = 0; i < 6; i++) checks.take('c');
    expect(checks.allows('c')).toBe(false);
    expect(checks.size).toBe(1);
  });

  it("a worker sends each name with its client: an IPv4 address, an IPv6 /64, none for a trusted proxy's", () => {
    const sent: unknown[] = [];
    const report = missReporter(
      (name, client) => sent.push(wantedMessage(name, client)),
      (address) => address === '198.51.100.1',
    );
    report('www.v4.test', '192.0.2.7');
    report('www.mapped.test', '::ffff:192.0.2.7');
    report('www.v6.test', '2001:db8:1:2::1');
    report('www.v6b.test', '2001:db8:1:2:ffff::9');
    report('www.trusted.test', '198.51.100.1');
    report('www.gone.test', undefined);
    expect(sent.map((m) => [wantedName(m), wantedClient(m)])).toEqual([
      ['www.v4.test', '192.0.2.7'],
      ['www.mapped.test', '192.0.2.7'],
      ['www.v6.test', '2001:db8:1:2::/64'],
      ['www.v6b.test', '2001:db8:1:2::/64'],
      ['www.trusted.test', undefined],
      ['www.gone.test', undefined],
    ]);
    expect(wantedClient({ ...wantedMessage('www.x.test', undefined), client: 'x'.repeat(65) })).toBeUndefined();
  });
});
