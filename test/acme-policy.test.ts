import { createVerify, generateKeyPairSync, sign } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ecdsaRawToDer } from '../keyserver/token/ecdsa-der.js';
import { AcmeClient, parseRetryAfter } from '../proxy/acme/client.js';
import { AcmeError } from '../proxy/acme/errors.js';
import { ecdsaDerToRaw, jwkOfSpki, signJws, thumbprint } from '../proxy/acme/jws.js';
import { ariTime, backoffMs, leafTimes, renewalTime } from '../proxy/acme/policy.js';
import { type ManagedState, StateFile } from '../proxy/acme/state.js';
import type { CertificateRecord } from '../proxy/serving/spec.js';
import { heldAnswer, recordingManager, TEST_ACME } from './helpers/acme-manager.js';
import { createCa, issue } from './helpers/pki.js';

// Issue 14: the renewal policy (two thirds of the lifetime, the spread, the
// backoff with jitter and Retry-After), the ARI path against a small fake
// renewal-info endpoint (pebble 2.4.0 has none): the window decides the
// renewal time and the new order carries `replaces`; and the JWS signature
// format (DER from the key server to JWS r || s).
const acme = TEST_ACME;
const DAY = 86_400_000;

describe('renewal policy', () => {
  it('renews at two thirds of the lifetime, each name moved earlier by its own part of the spread', () => {
    const leaf = { notBefore: Date.parse('2026-01-01T00:00:00Z'), notAfter: Date.parse('2026-01-01T00:00:00Z') + 90 * DAY };
    const times = Array.from({ length: 1000 }, (_, i) => renewalTime(`n${i}.example`, leaf, acme.renewal));
    const at60 = leaf.notBefore + 60 * DAY;
    for (const t of times) {
      expect(t).toBeLessThanOrEqual(at60);
      expect(t).toBeGreaterThan(at60 - DAY - 1);
    }
    // A thousand certificates loaded at once spread over the day: no hour holds more than a few percent of them.
    const perHour = new Map<number, number>();
    for (const t of times) perHour.set(Math.floor((at60 - t) / 3_600_000), (perHour.get(Math.floor((at60 - t) / 3_600_000)) ?? 0) + 1);
    expect(perHour.size).toBe(24);
    expect(Math.max(...perHour.values())).toBeLessThan(80);
    expect(renewalTime('n1.example', leaf, acme.renewal)).toBe(times[1]);
  });

  it('backs off exponentially with jitter, capped, never before Retry-After', () => {
    const r = acme.renewal;
    expect(backoffMs(1, r, undefined, () => 0)).toBe(60_000);
    expect(backoffMs(2, r, undefined, () => 0)).toBe(120_000);
    expect(backoffMs(5, r, undefined, () => 0)).toBe(960_000);
    expect(backoffMs(40, r, undefined, () => 0)).toBe(86_400_000);
    expect(backoffMs(1, r, undefined, () => 0.999)).toBeCloseTo(60_000 * 1.4995, -2);
    expect(backoffMs(1, r, 3_600_000, () => 0)).toBe(3_600_000);
    expect(parseRetryAfter('120')).toBe(120_000);
    expect(parseRetryAfter(new Date(Date.now() + 60_000).toUTCString())).toBeGreaterThan(55_000);
    expect(parseRetryAfter('soon')).toBeUndefined();
  });

  it('an ARI window picks a time inside it', () => {
    const window = { start: new Date('2026-03-01T00:00:00Z'), end: new Date('2026-03-02T00:00:00Z') };
    expect(ariTime(window, () => 0)).toBe(window.start.getTime());
    expect(ariTime(window, () => 0.5)).toBe(window.start.getTime() + DAY / 2);
  });
});

describe('JWS ES256 from a DER signature', () => {
  it('DER → r || s gives a signature node verifies as JWS (ieee-p1363) and round-trips', async () => {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    for (let i = 0; i < 50; i++) {
      const data = Buffer.from(`input ${i}`);
      const der = sign('sha256', data, privateKey);
      const raw = ecdsaDerToRaw(der, 32);
      expect(raw).toHaveLength(64);
      expect(ecdsaRawToDer(raw).equals(der)).toBe(true);
      expect(createVerify('sha256').update(data).verify({ key: publicKey, dsaEncoding: 'ieee-p1363' }, raw)).toBe(true);
    }
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    const signer = { jwk: jwkOfSpki(spki), sign: async (input: Buffer) => ecdsaDerToRaw(sign('sha256', input, privateKey), 32) };
    const jws = JSON.parse(await signJws(signer, { nonce: 'n', url: 'https://ca.example/x' }, { a: 1 })) as Record<string, string>;
    const ok = createVerify('sha256')
      .update(`${jws.protected}.${jws.payload}`)
      .verify({ key: publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(jws.signature!, 'base64url'));
    expect(ok).toBe(true);
    expect(thumbprint(signer.jwk)).toMatch(/^[\w-]{43}$/);
  });
});

describe('ARI (RFC 9773) against a fake renewal-info endpoint', () => {
  let server: http.Server;
  let base: string;
  const asked: string[] = [];
  let window = { start: '', end: '' };
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyedge-ari-'));
    server = http.createServer((req, res) => {
      if (req.url === '/dir') {
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ newNonce: `${base}/nonce`, newAccount: `${base}/acct`, newOrder: `${base}/order`, renewalInfo: `${base}/renewal-info` }));
      } else if (req.url?.startsWith('/renewal-info/')) {
        asked.push(req.url.slice('/renewal-info/'.length));
        res.writeHead(200, { 'content-type': 'application/json', 'retry-after': '21600' }).end(JSON.stringify({ suggestedWindow: window }));
      } else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  it('a window already open renews now and the order replaces the current certificate; a later one waits', async () => {
    const ca = await createCa('ARI test CA');
    const leaf = await issue(ca, { commonName: 'ari.example', dnsNames: ['ari.example'], keyAlgorithm: 'ec-p256', notAfter: new Date(Date.now() + 90 * DAY) });
    const record = { name: 'ari.example', chainPem: leaf.certPem, keyId: 'k1' } as unknown as CertificateRecord;
    const times = leafTimes(leaf.certPem);
    expect(times.certId).toMatch(/^[\w-]+\.[\w-]+$/);

    const client = new AcmeClient({
      directoryUrl: `${base}/dir`,
      signer: { jwk: { crv: 'P-256', kty: 'EC', x: '', y: '' }, sign: async () => Buffer.alloc(0) },
      timeoutMs: 5_000,
    });
    const state = new StateFile(dir);
    state.state.certificates['ari.example'] = { domains: ['ari.example'], keyId: 'k1', failures: 0 };
    const { manager, orders } = recordingManager(state, {
      answer: async () => ({ keyId: 'k2', chainPem: leaf.certPem, newKey: true }),
      records: new Map([['ari.example', record]]),
      renewalWindow: (certId) => client.renewalInfo(certId),
    });

    // A window a month out: nothing is ordered, and GET /certs shows the chosen time inside it.
    window = { start: new Date(Date.now() + 30 * DAY).toISOString(), end: new Date(Date.now() + 31 * DAY).toISOString() };
    await manager.tick();
    expect(asked).toEqual([times.certId]);
    expect(orders).toHaveLength(0);
    const renewAt = Date.parse((manager.view('ari.example') as { renewAt: string }).renewAt);
    expect(renewAt).toBeGreaterThanOrEqual(Date.parse(window.start));
    expect(renewAt).toBeLessThanOrEqual(Date.parse(window.end));

    // The CA moves the window into the past (as for a revocation): the next look renews at once, with `replaces`.
    window = { start: new Date(Date.now() - 2 * DAY).toISOString(), end: new Date(Date.now() - DAY).toISOString() };
    Object.assign(state.state.certificates['ari.example']!.ari!, { checkedAt: new Date(0).toISOString(), recheckAt: new Date(0).toISOString() });
    await manager.tick();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(orders).toEqual([{ name: 'ari.example', domains: ['ari.example'], replaces: times.certId }]);
    client.close();
  });
});

describe('a CA answering JSON that is not what RFC 8555 says', () => {
  /** A "CA" whose directory, order and authorization are `answers`'s (JSON text), each request's URL its path. */
  async function fakeCa(answers: Record<string, string>): Promise<{ base: string; close: () => Promise<void> }> {
    let base = '';
    const server = http.createServer((req, res) => {
      const text = (answers[req.url ?? ''] ?? '').replaceAll('BASE', base);
      const location = req.url === '/acct' ? `${base}/acct/1` : req.url === '/order' ? `${base}/order/1` : undefined;
      res.writeHead(200, { 'content-type': 'application/json', 'replay-nonce': `n${Date.now()}`, ...(location === undefined ? {} : { location }) });
      res.end(text);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return { base, close: () => new Promise((resolve) => server.close(() => resolve())) };
  }
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const signer = {
    jwk: jwkOfSpki(publicKey.export({ type: 'spki', format: 'der' })),
    sign: async (input: Buffer) => sign('sha256', input, { key: privateKey, dsaEncoding: 'ieee-p1363' }),
  };
  const directory = JSON.stringify({ newNonce: 'BASE/nonce', newAccount: 'BASE/acct', newOrder: 'BASE/order' });

  it.each([
    ['a directory without its URLs (a JSON API at a mistyped path)', { '/dir': '{"meta":{}}' }, /GET http:\/\/127\.0\.0\.1:\d+\/dir: not an ACME directory/],
    [
      'an order without its authorizations',
      { '/dir': directory, '/acct': '{}', '/order': '{"status":"pending"}' },
      /POST http:\/\/127\.0\.0\.1:\d+\/order: not an ACME order/,
    ],
    ['an order that is null', { '/dir': directory, '/acct': '{}', '/order': 'null' }, /POST http:\/\/127\.0\.0\.1:\d+\/order: not an ACME order/],
    [
      'an authorization without its challenges',
      {
        '/dir': directory,
        '/acct': '{}',
        '/order': '{"status":"pending","authorizations":["BASE/authz/1"],"finalize":"BASE/finalize"}',
        '/authz/1': '{"status":"pending","identifier":{"type":"dns","value":"a.example"}}',
      },
      /POST http:\/\/127\.0\.0\.1:\d+\/authz\/1: not an ACME authorization/,
    ],
    [
      "a challenge token that is not base64url (RFC 8555 §8.1: it goes into a path and on the workers' board)",
      {
        '/dir': directory,
        '/acct': '{}',
        '/order': '{"status":"pending","authorizations":["BASE/authz/1"],"finalize":"BASE/finalize"}',
        '/authz/1':
          '{"status":"pending","identifier":{"type":"dns","value":"a.example"},"challenges":[{"type":"http-01","url":"BASE/chall","token":"../../admin","status":"pending"}]}',
      },
      /POST http:\/\/127\.0\.0\.1:\d+\/authz\/1: not an ACME authorization/,
    ],
  ])('%s: an ACME error naming the request and what is wrong, not a TypeError', async (_what, answers, message) => {
    const ca = await fakeCa(answers);
    const client = new AcmeClient({ directoryUrl: `${ca.base}/dir`, signer, timeoutMs: 5_000 });
    try {
      const failure = await (async () => {
        await client.account({ contact: [] });
        const { order } = await client.newOrder(['a.example']);
        for (const url of order.authorizations) await client.authorization(url);
      })().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(failure).toBeInstanceOf(AcmeError);
      expect((failure as AcmeError).code).toBe('KEYEDGE_ERR_ACME');
      expect((failure as Error).message).toMatch(message);
    } finally {
      client.close();
      await ca.close();
    }
  });
});

describe('an on-demand entry the operator orders', () => {
  it.each(['issue', 'renew'] as const)(
    "a failed on-demand entry the admin API orders (%s) is the operator's: the renewal loop retries it after a failure",
    async (how) => {
      const dir = mkdtempSync(join(tmpdir(), 'keyedge-adopt-'));
      try {
        const state = new StateFile(dir);
        // The first order of a handshake's name failed: the loop leaves it to the on-demand gate.
        state.state.certificates['shop.example'] = { domains: ['shop.example'], keyId: '', failures: 1, onDemand: true };
        const { manager, orders } = recordingManager(state, {
          answer: async () => {
            throw new Error('CA unavailable');
          },
        });
        await manager.tick();
        expect(orders).toHaveLength(0);
        // POST /acme/issue {"domains":["shop.example"]} or /acme/renew/shop.example: the operator asks for it; the CA is briefly down.
        await expect(how === 'issue' ? manager.issue(['shop.example']) : manager.renew('shop.example')).rejects.toThrow('CA unavailable');
        expect(orders).toHaveLength(1);
        // Its backoff over, the loop orders it again, as for any name the operator asked for.
        state.state.certificates['shop.example']!.notBefore = new Date(Date.now() - 1000).toISOString();
        await manager.tick();
        await new Promise((resolve) => setTimeout(resolve, 100));
        expect(orders).toHaveLength(2);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it('an on-demand entry whose first certificate serves though its order was counted failed (stored, not applied in time) is renewed by the loop', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-served-'));
    try {
      const ca = await createCa('on-demand served CA');
      // Issued 80 days ago for 90: past two thirds of its lifetime, due for renewal.
      const leaf = await issue(ca, {
        commonName: 'late.example',
        dnsNames: ['late.example'],
        keyAlgorithm: 'ec-p256',
        notBefore: new Date(Date.now() - 80 * DAY),
        notAfter: new Date(Date.now() + 10 * DAY),
      });
      const record = { name: 'late.example', chainPem: leaf.certPem, keyId: 'k2' } as unknown as CertificateRecord;
      const state = new StateFile(dir);
      // The first order's chain was stored and serves, but a worker did not apply it in time: the order counted as failed.
      state.state.certificates['late.example'] = {
        domains: ['late.example'],
        keyId: '',
        failures: 1,
        onDemand: true,
        notBefore: new Date(Date.now() - 1000).toISOString(),
      };
      const { manager, orders } = recordingManager(state, {
        answer: async () => ({ keyId: 'k3', chainPem: leaf.certPem, newKey: true }),
        records: new Map([['late.example', record]]),
      });
      // Its handshakes find a certificate: no uncovered name reaches the gate, so only the loop can renew it before it expires.
      await manager.tick();
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(orders.map((o) => o.name)).toEqual(['late.example']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('failed on-demand entries', () => {
  it('are forgotten a day after their last failure, unless a certificate serves them, an order runs or their backoff is not over', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-forget-'));
    try {
      const ca = await createCa('on-demand forget CA');
      const leaf = await issue(ca, {
        commonName: 'served.example',
        dnsNames: ['served.example'],
        keyAlgorithm: 'ec-p256',
        notAfter: new Date(Date.now() + 90 * DAY),
      });
      const state = new StateFile(dir);
      const failedAgo = (ms: number, extra: Partial<ManagedState> = {}): ManagedState => ({
        domains: [],
        keyId: '',
        failures: 1,
        onDemand: true,
        notBefore: new Date(Date.now() - ms + 60_000).toISOString(),
        lastError: { code: 'KEYEDGE_ERR_ACME', problem: 'unauthorized', message: 'validation failed', at: new Date(Date.now() - ms).toISOString() },
        ...extra,
      });
      const { certificates } = state.state;
      // A handshake's name whose order failed a day and a minute ago: nothing serves it; its 1-minute backoff is long over.
      certificates['old.example'] = failedAgo(DAY + 60_000, { domains: ['old.example'] });
      certificates['older.example'] = failedAgo(30 * DAY, { domains: ['older.example'] });
      // Failed an hour ago: still shown in GET /certs.
      certificates['recent.example'] = failedAgo(3_600_000, { domains: ['recent.example'] });
      // Its backoff (the CA's Retry-After, say) runs for another hour.
      certificates['waiting.example'] = failedAgo(DAY + 60_000, { domains: ['waiting.example'], notBefore: new Date(Date.now() + 3_600_000).toISOString() });
      // Its chain was stored though the order was counted failed: it serves.
      certificates['served.example'] = failedAgo(DAY + 60_000, { domains: ['served.example'] });
      // Its name came back through the gate: an order for it runs now.
      certificates['again.example'] = failedAgo(DAY + 60_000, { domains: ['again.example'] });
      // The operator's (admin API): the loop retries it, never forgets it.
      certificates['operator.example'] = failedAgo(DAY + 60_000, { domains: ['operator.example'], onDemand: undefined });
      state.save();
      let finish!: (err: Error) => void;
      const { manager, orders } = recordingManager(state, {
        answer: (request) =>
          request.name === 'again.example' ? new Promise((_resolve, reject) => (finish = reject)) : Promise.reject(new Error('CA unavailable')),
        records: new Map([['served.example', { name: 'served.example', chainPem: leaf.certPem, keyId: 'k1' } as unknown as CertificateRecord]]),
      });
      const running = manager.issue(['again.example'], 'again.example', true).catch(() => undefined);
      expect(orders.map((o) => o.name)).toEqual(['again.example']);

      await manager.tick();
      const kept = ['recent.example', 'waiting.example', 'served.example', 'again.example', 'operator.example'];
      expect(Object.keys(state.state.certificates).sort()).toEqual([...kept].sort());
      // Written: a restart does not bring them back.
      expect(Object.keys(new StateFile(dir).state.certificates).sort()).toEqual([...kept].sort());
      // Forgotten, its name is new to the gate again (it orders through its checks and hourly limits).
      expect(manager.isManaged('old.example')).toBe(false);

      // The order that ran fails now: its failure is new, so it is kept another day.
      finish(new Error('validation failed'));
      await running;
      await manager.tick();
      expect(state.state.certificates['again.example']?.failures).toBe(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("an operator's issue for another list of names than the entry records", () => {
  it('is not answered by a renewal of the recorded names that runs: its own order follows; the list is recorded once it serves', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-expand-'));
    try {
      const state = new StateFile(dir);
      state.state.certificates['shop.example'] = { domains: ['shop.example'], keyId: 'k1', failures: 0 };
      let release: () => void = () => undefined;
      const first = new Promise<void>((resolve) => {
        release = resolve;
      });
      let fail = false;
      const { manager, orders } = recordingManager(state, {
        answer: async (request) => {
          if (orders.length === 1) await first;
          if (fail) throw new Error('CA unavailable');
          return { keyId: `k${orders.length + 1}`, chainPem: '', newKey: true, domains: request.domains };
        },
      });
      const renewal = manager.renew('shop.example');
      const expanded = manager.issue(['shop.example', 'cart.example']);
      await new Promise((resolve) => setTimeout(resolve, 50));
      // The renewal's order is the only one running: the expansion waits for it rather than being answered by it.
      expect(orders.map((o) => o.domains)).toEqual([['shop.example']]);
      release();
      await renewal;
      const outcome = await expanded;
      expect(orders.map((o) => o.domains)).toEqual([['shop.example'], ['shop.example', 'cart.example']]);
      expect(outcome).toMatchObject({ entry: 'shop.example', domains: ['shop.example', 'cart.example'], previousDomains: ['shop.example'] });
      expect(state.state.certificates['shop.example']?.domains).toEqual(['shop.example', 'cart.example']);

      // Leaving a recorded name out is refused, nothing ordered; a failed order for a new list keeps the recorded one.
      await expect(manager.issue(['shop.example', 'till.example'])).rejects.toMatchObject({ code: 'KEYEDGE_ERR_ACME_DOMAINS' });
      expect(orders).toHaveLength(2);
      fail = true;
      await expect(manager.issue(['shop.example', 'cart.example', 'till.example'])).rejects.toThrow('CA unavailable');
      expect(orders).toHaveLength(3);
      expect(state.state.certificates['shop.example']?.domains).toEqual(['shop.example', 'cart.example']);

      // Two issues asked together: the second is judged again on the list the first recorded, and would drop its new name.
      fail = false;
      const pay = manager.issue(['shop.example', 'cart.example', 'pay.example']);
      const gift = manager.issue(['shop.example', 'cart.example', 'gift.example']);
      await expect(pay).resolves.toMatchObject({ domains: ['shop.example', 'cart.example', 'pay.example'] });
      await expect(gift).rejects.toMatchObject({ code: 'KEYEDGE_ERR_ACME_DOMAINS' });
      expect(orders).toHaveLength(4);
      expect(state.state.certificates['shop.example']?.domains).toEqual(['shop.example', 'cart.example', 'pay.example']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('names the on-demand gate takes as managed', () => {
  it("its own entry's, another entry's list's (a wildcard's too), and those of an expansion still ordering; not a failed on-demand entry's", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-covered-'));
    try {
      const state = new StateFile(dir);
      state.state.certificates['a.example'] = { domains: ['a.example', 'b.example'], keyId: 'k1', failures: 0 };
      state.state.certificates['_.wild.example'] = { domains: ['*.wild.example'], keyId: 'k2', failures: 0 };
      state.state.certificates['gone.example'] = { domains: ['gone.example'], keyId: '', failures: 1, onDemand: true };
      const { answer, release } = heldAnswer('k3');
      const { manager } = recordingManager(state, { answer });
      for (const name of ['a.example', 'b.example', 'x.wild.example']) expect(manager.isManaged(name), name).toBe(true);
      for (const name of ['c.example', 'x.y.wild.example', 'wild.example', 'gone.example']) expect(manager.isManaged(name), name).toBe(false);
      // An expansion runs: its new name is not recorded yet, and a handshake for it must not order a second certificate.
      const expanded = manager.issue(['a.example', 'b.example', 'c.example']);
      expect(manager.isManaged('c.example')).toBe(true);
      release();
      await expanded;
      expect(state.state.certificates['a.example']?.domains).toEqual(['a.example', 'b.example', 'c.example']);
      expect(manager.isManaged('c.example')).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('ARI windows a CA should not have given (RFC 9773): held to the lifetime', () => {
  /** A managed entry whose certificate was issued `ageDays` ago for 90 days, and a manager whose CA answers `window()`. */
  async function managed(ageDays: number, window: () => { start: Date; end: Date; retryAfterMs: number | undefined }) {
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-ari-clamp-'));
    const ca = await createCa('ARI clamp CA');
    const leaf = await issue(ca, {
      commonName: 'clamp.example',
      dnsNames: ['clamp.example'],
      keyAlgorithm: 'ec-p256',
      notBefore: new Date(Date.now() - ageDays * DAY),
      notAfter: new Date(Date.now() + (90 - ageDays) * DAY),
    });
    const record = { name: 'clamp.example', chainPem: leaf.certPem, keyId: 'k1' } as unknown as CertificateRecord;
    const state = new StateFile(dir);
    state.state.certificates['clamp.example'] = { domains: ['clamp.example'], keyId: 'k1', failures: 0 };
    let lookups = 0;
    const { manager, orders } = recordingManager(state, {
      answer: async () => ({ keyId: 'k2', chainPem: leaf.certPem, newKey: true }),
      records: new Map([['clamp.example', record]]),
      renewalWindow: async () => {
        lookups++;
        return window();
      },
    });
    const byLifetime = renewalTime('clamp.example', leafTimes(leaf.certPem), acme.renewal);
    const renewAt = (): number => Date.parse((manager.view('clamp.example') as { renewAt: string }).renewAt);
    return { manager, orders, byLifetime, renewAt, lookups: () => lookups, done: () => rmSync(dir, { recursive: true, force: true }) };
  }
  const settle = (): Promise<unknown> => new Promise((resolve) => setTimeout(resolve, 100));

  it('a window past the expiry of a certificate due by its lifetime: renewed now, not after it expired', async () => {
    const m = await managed(80, () => ({ start: new Date(Date.now() + 365 * DAY), end: new Date(Date.now() + 366 * DAY), retryAfterMs: undefined }));
    try {
      await m.manager.tick();
      await settle();
      expect(m.orders.map((o) => o.name)).toEqual(['clamp.example']);
    } finally {
      m.done();
    }
  });

  it('a window starting after notAfter for a new certificate: renewed at once; one past the lifetime time: at the lifetime time', async () => {
    const after = await managed(1, () => ({ start: new Date(Date.now() + 100 * DAY), end: new Date(Date.now() + 101 * DAY), retryAfterMs: undefined }));
    const late = await managed(1, () => ({ start: new Date(Date.now() + 85 * DAY), end: new Date(Date.now() + 86 * DAY), retryAfterMs: undefined }));
    try {
      await after.manager.tick();
      await late.manager.tick();
      await settle();
      expect(after.orders.map((o) => o.name)).toEqual(['clamp.example']);
      expect(late.orders).toHaveLength(0);
      expect(late.renewAt()).toBe(Math.floor(late.byLifetime));
    } finally {
      after.done();
      late.done();
    }
  });

  it("the renewal info is asked again after the CA's Retry-After (held to an hour .. a day), not always 6 hours later", async () => {
    const window = { start: new Date(Date.now() + 30 * DAY), end: new Date(Date.now() + 31 * DAY) };
    const soon = await managed(1, () => ({ ...window, retryAfterMs: 2 * 3_600_000 }));
    const later = await managed(1, () => ({ ...window, retryAfterMs: 20 * 3_600_000 }));
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      await soon.manager.tick();
      await later.manager.tick();
      expect([soon.lookups(), later.lookups()]).toEqual([1, 1]);
      vi.setSystemTime(Date.now() + 3 * 3_600_000);
      await soon.manager.tick();
      await later.manager.tick();
      vi.setSystemTime(Date.now() + 4 * 3_600_000);
      await later.manager.tick();
      // Three hours on, the one told two hours is asked again; seven hours on, the one told twenty is not yet.
      expect([soon.lookups(), later.lookups()]).toEqual([2, 1]);
    } finally {
      vi.useRealTimers();
      soon.done();
      later.done();
    }
  });
});

describe("a CA's error answer that is not a problem document (RFC 8555 §6.7)", () => {
  it.each([
    ['a body that is null', 'null', undefined],
    ['a type that is not a string', '{"type":5,"detail":{"a":1}}', undefined],
    ['an array', '[1,2]', undefined],
    ['a problem document', '{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many"}', 'rateLimited'],
  ])('%s: an ACME error with its status and Retry-After, not a TypeError', async (_what, body, problem) => {
    const server = http.createServer((_req, res) => {
      res.writeHead(429, { 'retry-after': '3600', 'content-type': 'application/problem+json' }).end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = new AcmeClient({
      directoryUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/dir`,
      signer: { jwk: { crv: 'P-256', kty: 'EC', x: '', y: '' }, sign: async () => Buffer.alloc(0) },
      timeoutMs: 5_000,
    });
    try {
      const failure = await client.directory().then(
        () => undefined,
        (err: unknown) => err,
      );
      // Without the status and Retry-After, a 429 asking for an hour was retried after retryMinSeconds (a minute).
      expect(failure).toBeInstanceOf(AcmeError);
      expect(failure).toMatchObject({ status: 429, retryAfterMs: 3_600_000, problem });
      expect((failure as Error).message).toMatch(/: 429\b/);
    } finally {
      client.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('a Retry-After too long for a number is capped at a day, not taken as absent', () => {
    expect(parseRetryAfter('9'.repeat(400))).toBe(86_400_000);
    expect(parseRetryAfter(' 172800 ')).toBe(86_400_000);
    expect(parseRetryAfter('-5')).toBe(0);
  });
});

describe('renewal info that fails (RFC 9773): the lifetime rule holds, and the pass is not held', () => {
  /** `count` managed entries, each serving a certificate issued a day ago for 90 days, whose renewal info `lookup` answers. */
  async function managedMany(count: number, lookup: () => Promise<never>) {
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-ari-fail-'));
    const ca = await createCa('ARI failing CA');
    const state = new StateFile(dir);
    const records = new Map<string, CertificateRecord>();
    for (let i = 0; i < count; i++) {
      const name = `f${i}.example`;
      const leaf = await issue(ca, {
        commonName: name,
        dnsNames: [name],
        keyAlgorithm: 'ec-p256',
        notBefore: new Date(Date.now() - DAY),
        notAfter: new Date(Date.now() + 89 * DAY),
      });
      records.set(name, { name, chainPem: leaf.certPem, keyId: `k${i}` } as unknown as CertificateRecord);
      state.state.certificates[name] = { domains: [name], keyId: `k${i}`, failures: 0 };
    }
    let lookups = 0;
    const { manager, orders } = recordingManager(state, {
      answer: async () => ({ keyId: 'k-new', chainPem: '', newKey: true }),
      records,
      renewalWindow: () => {
        lookups++;
        return lookup();
      },
    });
    return { manager, orders, lookups: () => lookups, done: () => rmSync(dir, { recursive: true, force: true }) };
  }

  it('an endpoint that does not answer in time is asked once, not once per certificate at every pass, and again an hour on', async () => {
    const m = await managedMany(5, async () => {
      throw new AcmeError('GET https://ca.example/renewal-info/x: no answer in time', {});
    });
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      // Each lookup was two requests of up to timeoutMs: the pass took 2 × timeoutMs per certificate, every pass.
      await m.manager.tick();
      await m.manager.tick();
      expect(m.lookups()).toBe(1);
      vi.setSystemTime(Date.now() + 2 * 3_600_000);
      await m.manager.tick();
      expect(m.lookups()).toBe(2);
      expect(m.orders).toHaveLength(0);
    } finally {
      vi.useRealTimers();
      m.done();
    }
  });

  it('a certificate the CA answers 404 for is not asked about again at the next pass; the others still are', async () => {
    const m = await managedMany(3, async () => {
      throw new AcmeError('GET https://ca.example/renewal-info/x: 404', { status: 404 });
    });
    try {
      await m.manager.tick();
      expect(m.lookups()).toBe(3);
      await m.manager.tick();
      expect(m.lookups()).toBe(3);
    } finally {
      m.done();
    }
  });
});
