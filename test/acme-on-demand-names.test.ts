import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { createLogger } from '../keyserver/shared/log.js';
import { OnDemandGate } from '../proxy/acme/on-demand.js';
import { missReporter } from '../proxy/acme/on-demand-names.js';
import { LocalLedger } from '../proxy/acme/on-demand-ledger.js';
import { sleep } from './helpers/basics.js';
import { captureLog } from './helpers/keyserver.js';

// The on-demand gate's first check, the name itself, against a real ask
// endpoint: a name that is not a DNS host name an ACME CA could validate (an
// IPv4 literal in the SNI, a numeric top-level label, a wildcard, an
// underscore) is ignored before the ask endpoint, the rate limits or the CA;
// a plain or punycode name goes on. A worker neither reports nor remembers
// such a name: an SNI of 16 KB (a ClientHello holds one) was kept in each
// worker's 10,000-name memory and sent to the primary. The per-domain hourly
// limit counts by the Public Suffix List (a customer under co.uk or a
// platform's suffix is a registrant of its own); a public suffix itself is
// ignored like a name no CA validates. The names here are under .test, a
// special-use TLD only a private CA issues for: the gates are a private CA's
// (publicNamesOnly off) but where a public CA's rules are the point.
let ask: http.Server;
const asked: string[] = [];

beforeAll(async () => {
  ask = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://ask');
    const domain = url.searchParams.get('domain') ?? '';
    asked.push(domain);
    // /flaky fails (503) a name's first ask and allows the next; /slow answers after a second, past the gate's deadline.
    if (url.pathname === '/flaky') return void res.writeHead(asked.filter((d) => d === domain).length === 1 ? 503 : 200).end();
    if (url.pathname === '/slow') return void setTimeout(() => res.writeHead(200).end(), 1_000);
    // /redirect sends the gate to the allow-all path; /endless allows with a body that never ends.
    if (url.pathname === '/redirect') return void res.writeHead(302, { location: `/ask?domain=${domain}` }).end();
    if (url.pathname === '/endless') {
      res.writeHead(200).on('error', () => undefined);
      const more = (): void => void (res.destroyed || res.write(Buffer.alloc(64 * 1024)) ? setImmediate(more) : res.once('drain', more));
      return more();
    }
    // /private allows only the user and password of the test below; /deny allows nothing.
    const allowed =
      url.pathname !== '/deny' && (url.pathname !== '/private' || req.headers.authorization === `Basic ${Buffer.from('edge:s3cr:t/@').toString('base64')}`);
    res.writeHead(allowed ? 200 : 401).end();
  });
  await new Promise<void>((resolve) => ask.listen(0, '127.0.0.1', resolve));
});

afterAll(() => new Promise((resolve) => ask.close(resolve)));

/** A gate asking the allow-all endpoint, one order per domain an hour, and the domains it judged the hourly limits under. */
function oneOrderPerDomain(): { gate: OnDemandGate; counted: string[] } {
  const config = loadProxyConfig(undefined, {
    acme: {
      directory: 'https://ca.test/dir',
      onDemand: { ask: `http://127.0.0.1:${(ask.address() as AddressInfo).port}/ask`, maxOrdersPerDomainPerHour: 1, publicNamesOnly: false },
    },
  }).acme!.onDemand!;
  const counted: string[] = [];
  const local = new LocalLedger(config);
  const ledger = {
    refused: (name: string) => local.refused(name),
    rememberRefusal: (name: string) => local.rememberRefusal(name),
    full: (domain: string) => {
      counted.push(domain);
      return local.full(domain);
    },
    takeOrderSlot: (domain: string) => local.takeOrderSlot(domain),
  };
  const log = createLogger('on-demand-names-test', 'silent', process.stderr);
  return { gate: new OnDemandGate({ config, ledger, log, isManaged: () => false, order: () => {} }), counted };
}

/** A private CA's gate asking the endpoint at `path` of the test's ask server, within `askTimeoutMs`. */
function gateAt(path: string, askTimeoutMs: number): OnDemandGate {
  const config = loadProxyConfig(undefined, {
    acme: {
      directory: 'https://ca.test/dir',
      onDemand: { ask: `http://127.0.0.1:${(ask.address() as AddressInfo).port}${path}`, askTimeoutMs, publicNamesOnly: false },
    },
  }).acme!.onDemand!;
  return new OnDemandGate({ config, log: createLogger('on-demand-names-test', 'silent', process.stderr), isManaged: () => false, order: () => undefined });
}

describe('on-demand names', () => {
  it('ignores IP literals and names no CA can validate; orders plain and punycode names', async () => {
    const config = loadProxyConfig(undefined, {
      acme: { directory: 'https://ca.test/dir', onDemand: { ask: `http://127.0.0.1:${(ask.address() as AddressInfo).port}/ask`, publicNamesOnly: false } },
    }).acme!.onDemand!;
    const ordered: string[] = [];
    const gate = new OnDemandGate({
      config,
      log: createLogger('on-demand-names-test', 'silent', process.stderr),
      isManaged: () => false,
      order: (name) => void ordered.push(name),
    });
    // A reserved label, and A-labels that are not Punycode of a U-label (decoding to nothing; to "bu" and a combining
    // diaeresis, not NFC): no CA issues for them.
    const badIdn = ['ab--cd.x.test', 'xn--zz.x.test', 'xn--bucher-xyd.x.test', 'xn--mnchen-3ya.xn--ab.test'];
    // 253 characters at most (RFC 1035 §2.3.4: 255 octets with the length bytes).
    const longest = `${'a'.repeat(63)}.`.repeat(3).concat('a'.repeat(54), '.x.test');
    expect(longest).toHaveLength(253);
    for (const name of ['192.0.2.1', '10.0.0.1', '127.0.0.1', 'host.123', '*.x.test', 'a_b.x.test', 'x.test.', '-a.x.test', `a${longest}`, ...badIdn]) {
      expect(await gate.wanted(name), name).toBe('ignored');
    }
    expect(asked).toEqual([]);
    expect(await gate.wanted('www.x.test')).toBe('ordered');
    expect(await gate.wanted('xn--bcher-kva.x.test')).toBe('ordered');
    expect(await gate.wanted('1.x.test')).toBe('ordered');
    // ß: kept by IDNA2008 (UTS 46 non-transitional), not mapped to "ss".
    expect(await gate.wanted('xn--zca.x.test')).toBe('ordered');
    expect(await gate.wanted(longest)).toBe('ordered');
    expect(ordered).toEqual(['www.x.test', 'xn--bcher-kva.x.test', '1.x.test', 'xn--zca.x.test', longest]);
    expect(asked).toEqual(ordered);
  });

  it('an ask URL with a user and password: sent as Basic authorization, never in a log line', async () => {
    // fetch refused the URL outright ("cannot be constructed from a URL that includes credentials: http://edge:…"):
    // every name was refused, and each refusal's log line carried the password.
    const logs = captureLog('info');
    const port = (ask.address() as AddressInfo).port;
    const config = loadProxyConfig(undefined, {
      acme: { directory: 'https://ca.test/dir', onDemand: { ask: `http://edge:s3cr%3At%2F%40@127.0.0.1:${port}/private?tenant=a`, publicNamesOnly: false } },
    }).acme!.onDemand!;
    const ordered: string[] = [];
    const gate = new OnDemandGate({ config, log: logs.logger, isManaged: () => false, order: (name) => void ordered.push(name) });
    expect(await gate.wanted('private.x.test')).toBe('ordered');
    expect(ordered).toEqual(['private.x.test']);
    expect(asked.at(-1)).toBe('private.x.test');
    expect(logs.text()).not.toContain('s3cr');
  });

  it('random names a client sends, refused or rate-limited: every one counted, a few lines logged', async () => {
    // One line per name, before: a client cycling names under a wildcard CNAME wrote the log at its own pace.
    const logs = captureLog('info');
    const port = (ask.address() as AddressInfo).port;
    const gateFor = (path: string, onOutcome: (outcome: string) => void): OnDemandGate => {
      const config = loadProxyConfig(undefined, {
        acme: { directory: 'https://ca.test/dir', onDemand: { ask: `http://127.0.0.1:${port}${path}`, maxOrdersPerDomainPerHour: 1, publicNamesOnly: false } },
      }).acme!.onDemand!;
      return new OnDemandGate({ config, log: logs.logger, isManaged: () => false, order: () => undefined, onOutcome });
    };
    const outcomes = new Map<string, number>();
    const count = (outcome: string): void => void outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    const denied = gateFor('/deny', count);
    const allowed = gateFor('/ask', count);
    for (let i = 0; i < 200; i++) {
      await denied.wanted(`d${i}.flood.test`);
      await allowed.wanted(`a${i}.flood.test`);
    }
    expect(Object.fromEntries(outcomes)).toEqual({ refused: 200, ordered: 1, rate_limited: 199 });
    expect(logs.find(/^on-demand certificate refused$/).length).toBeLessThanOrEqual(10);
    expect(logs.find(/^on-demand certificate rate-limited$/).length).toBeLessThanOrEqual(10);
    expect(logs.find(/^on-demand certificate ordered$/).length).toBe(1);
  });

  it('counts the per-domain limit per registrable domain by the Public Suffix List, private suffixes included', async () => {
    // The last two labels were the domain: every customer under co.uk (or github.io) shared one hourly counter, so
    // one tenant's names used up on-demand issuance for all the others under that suffix.
    const { gate, counted } = oneOrderPerDomain();
    const outcomes: Record<string, string> = {};
    for (const name of [
      'alice.co.uk',
      'bob.co.uk',
      'www.alice.co.uk',
      'shop.co.uk',
      'a.b.shop.co.uk',
      'alice.github.io',
      'bob.github.io',
      'www.bob.github.io',
      'www.psl.test',
    ]) {
      outcomes[name] = await gate.wanted(name);
    }
    expect(outcomes).toEqual({
      'alice.co.uk': 'ordered',
      'bob.co.uk': 'ordered',
      'www.alice.co.uk': 'rate_limited',
      'shop.co.uk': 'ordered',
      'a.b.shop.co.uk': 'rate_limited',
      'alice.github.io': 'ordered',
      'bob.github.io': 'ordered',
      'www.bob.github.io': 'rate_limited',
      'www.psl.test': 'ordered',
    });
    // The ledger's keys (acme/on-demand/orders/<domain> in a fleet) are the registrants, not their suffix. A full limit
    // answers before the ask endpoint (the next test).
    expect(counted).toEqual([
      'alice.co.uk',
      'bob.co.uk',
      'alice.co.uk',
      'shop.co.uk',
      'shop.co.uk',
      'alice.github.io',
      'bob.github.io',
      'bob.github.io',
      'psl.test',
    ]);
  });

  it('ignores a public suffix itself (ICANN, private, by a wildcard rule) before the ask endpoint: no registrant to count it with', async () => {
    const { gate, counted } = oneOrderPerDomain();
    const asksBefore = asked.length;
    for (const name of ['co.uk', 'github.io', 'x.kawasaki.jp', 'b.ck']) expect(await gate.wanted(name), name).toBe('ignored');
    expect(asked.length).toBe(asksBefore);
    expect(counted).toEqual([]);
  });

  it('a flood of names under a registered domain whose hourly limit is full: not asked about, rate-limited', async () => {
    // Each name was asked about, then rate-limited: a client cycling names under one wildcard CNAME sent the ask
    // endpoint one request per name, though the limit had stopped orders for the domain at its first name.
    const { gate } = oneOrderPerDomain();
    const asksBefore = asked.length;
    const outcomes: string[] = [];
    for (let i = 0; i < 20; i++) outcomes.push(await gate.wanted(`n${i}.full-limit.test`));
    expect(outcomes[0]).toBe('ordered');
    expect(outcomes.slice(1)).toEqual(Array(19).fill('rate_limited'));
    expect(asked.slice(asksBefore)).toEqual(['n0.full-limit.test']);
    // Another registrant's limit has room: asked, ordered.
    expect(await gate.wanted('www.other-limit.test')).toBe('ordered');
    expect(asked.slice(asksBefore)).toEqual(['n0.full-limit.test', 'www.other-limit.test']);
  });

  it('names a public CA refuses by policy: ignored before the ask endpoint, each counted with its reason', async () => {
    // The default gate (publicNamesOnly): these went on to the ask endpoint, an order slot and the CA, which refused them.
    const config = loadProxyConfig(undefined, {
      acme: { directory: 'https://ca.test/dir', onDemand: { ask: `http://127.0.0.1:${(ask.address() as AddressInfo).port}/ask` } },
    }).acme!.onDemand!;
    expect(config.publicNamesOnly).toBe(true);
    const counted: string[] = [];
    const gate = new OnDemandGate({
      config,
      log: createLogger('on-demand-names-test', 'silent', process.stderr),
      isManaged: (name) => name === 'managed.example-shop.com',
      order: () => undefined,
      onOutcome: (outcome, reason) => void counted.push(reason === undefined ? outcome : `${outcome}:${reason}`),
    });
    const asksBefore = asked.length;
    for (const name of [
      'a.b.c.d.e.f.g.h.i.example-shop.com',
      'www.x.test',
      'printer.local',
      'nas.lan',
      'www.example.com',
      'co.uk',
      'managed.example-shop.com',
    ]) {
      expect(await gate.wanted(name), name).toBe('ignored');
    }
    expect(asked.length).toBe(asksBefore);
    expect(await gate.wanted('b.c.d.e.f.g.h.i.example-shop.com')).toBe('ordered');
    expect(asked.slice(asksBefore)).toEqual(['b.c.d.e.f.g.h.i.example-shop.com']);
    expect(counted).toEqual([
      'ignored:too_many_labels',
      'ignored:special_use',
      'ignored:special_use',
      'ignored:not_icann_tld',
      'ignored:special_use',
      'ignored:public_suffix',
      'ignored:managed',
      'ordered',
    ]);
  });

  it('an ask endpoint failing (a 5xx, too slow): the name not remembered as refused; checks pause a moment, then ask again', async () => {
    // A failure was remembered as a refusal for refusedSeconds (an hour), in a fleet on every node: a new customer's
    // name seen while the ask endpoint restarted or was slow stayed refused for an hour after it was back.
    const flaky = gateAt('/flaky', 200);
    expect(await flaky.wanted('a.flaky.test')).toBe('refused');
    // Paused: nothing asked, nothing remembered.
    expect(await flaky.wanted('a.flaky.test')).toBe('busy');
    expect(await flaky.wanted('b.flaky.test')).toBe('busy');
    expect(asked.filter((d) => d.endsWith('.flaky.test'))).toEqual(['a.flaky.test']);
    await sleep(1_500);
    expect(await flaky.wanted('a.flaky.test')).toBe('ordered');
    // Too slow: refused this time; a burst of names meanwhile costs the endpoint nothing.
    const slow = gateAt('/slow', 200);
    expect(await slow.wanted('a.slow.test')).toBe('refused');
    const burst = await Promise.all(Array.from({ length: 50 }, (_, i) => slow.wanted(`n${i}.slow.test`)));
    expect(new Set(burst)).toEqual(new Set(['busy']));
    expect(asked.filter((d) => d.endsWith('.slow.test'))).toEqual(['a.slow.test']);
  });

  it('an ask endpoint redirecting is not followed (a refusal); one answering 2xx with an endless body allows at once', async () => {
    expect(await gateAt('/redirect', 2_000).wanted('a.redirect.test')).toBe('refused');
    expect(asked.filter((d) => d === 'a.redirect.test')).toHaveLength(1);
    // Read to its end, it would have run past askTimeoutMs: refused.
    expect(await gateAt('/endless', 2_000).wanted('a.endless.test')).toBe('ordered');
  });

  it('a worker reports only names that may be DNS names, and keeps no other', () => {
    const sent: string[] = [];
    const report = missReporter((name) => sent.push(name));
    report('x'.repeat(16_000));
    report(`${'a'.repeat(63)}.`.repeat(4).concat('test'));
    report('192.0.2.1');
    report('xn--zz.x.test');
    report('www.x.test');
    report('www.x.test');
    expect(sent).toEqual(['www.x.test']);
  });
});
