import { createHash, X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { CertificateError } from '../proxy/certs/errors.js';
import { loadIssuerPool } from '../proxy/certs/issuers.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { defaultIssuerPool, type ValidationContext } from '../proxy/certs/validate.js';
import { VERDICT_FILE, VerdictCache } from '../proxy/certs/verdict-cache.js';
import { judgeCertificate, verdictContext } from '../proxy/certs/verdicts.js';
import { prepareServing } from '../proxy/serving/prepare.js';
import { createCa, type Issued, issue, issueCa, type TestCa } from './helpers/pki.js';

// Verdicts remembered by content hash: a start does not judge again what was
// judged before, and a verdict is never used for other bytes, other rules or
// other trust anchors, nor read from a file that is not whole.

let dir: string;
let inter: TestCa;
let issued: Issued;
let chain: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-cert-verdicts-'));
  const root = await createCa('Verdict Root');
  inter = await issueCa(root, 'Verdict Intermediate');
  issued = await issue(inter, { commonName: 'v.example', dnsNames: ['v.example'], keyAlgorithm: 'ec-p256' });
  chain = `${issued.certPem}\n${inter.certPem}`;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const leafKey: ValidationContext['keyserverSpki'] = async (_keyId, leafSpki) => leafSpki;
const context = (): string => verdictContext(defaultIssuerPool().fingerprint);

function cacheIn(sub: string, warnings: string[] = []): VerdictCache {
  mkdirSync(join(dir, sub), { recursive: true });
  return new VerdictCache({ file: join(dir, sub, VERDICT_FILE), warn: (m) => warnings.push(m) });
}

function candidate(name = 'v', text = chain) {
  return { name, chainText: text, source: `${name}.pem` };
}

describe('verdict cache', () => {
  it('remembers an accepted chain by content hash, across a restart, and does not judge it again', async () => {
    const cache = cacheIn('hit');
    cache.useContext(context());
    const first = await judgeCertificate(candidate(), 'store:a', { now: new Date(), keyserverSpki: leafKey }, cache);
    expect(first.verdict.names).toEqual(['v.example']);
    expect(cache.size).toBe(1);
    cache.flush();

    const warnings: string[] = [];
    const again = cacheIn('hit', warnings);
    again.useContext(context());
    expect(warnings).toEqual([]);
    expect(again.get('store:a')).toEqual(first.verdict);
    // A hit parses nothing: the remembered verdict serves even for text that
    // would not parse, which is why the key is the hash of the exact input.
    const hit = await judgeCertificate(candidate('v', 'not a certificate'), 'store:a', { now: new Date(), keyserverSpki: leafKey }, again);
    expect(hit.verdict.serial).toBe(first.verdict.serial);
    expect(hit.warnings).toEqual(first.warnings);
  });

  it('checks the validity window and the key server again on every use of a verdict', async () => {
    const cache = cacheIn('rejudge');
    cache.useContext(context());
    const { verdict } = await judgeCertificate(candidate(), 'store:b', { now: new Date(), keyserverSpki: leafKey }, cache);
    const later = new Date(new Date(verdict.notAfter).getTime() + 1000);
    await expect(judgeCertificate(candidate(), 'store:b', { now: later, keyserverSpki: leafKey }, cache)).rejects.toMatchObject({ reason: 'expired' });
    await expect(judgeCertificate(candidate(), 'store:b', { now: new Date(), keyserverSpki: async () => undefined }, cache)).rejects.toMatchObject({
      reason: 'key_unknown',
    });
    const other = await issue(inter, { commonName: 'o.example', dnsNames: ['o.example'], keyAlgorithm: 'ec-p256' });
    const otherSpki: ValidationContext['keyserverSpki'] = async () => new X509Certificate(other.certPem).publicKey.export({ type: 'spki', format: 'der' });
    await expect(judgeCertificate(candidate(), 'store:b', { now: new Date(), keyserverSpki: otherSpki }, cache)).rejects.toMatchObject({
      reason: 'key_mismatch',
    });
  });

  it('does not remember a refusal', async () => {
    const cache = cacheIn('refused');
    cache.useContext(context());
    await expect(
      judgeCertificate(candidate('v', issued.certPem.replace('CERTIFICATE', 'PRIVATE KEY')), 'store:c', { now: new Date(), keyserverSpki: leafKey }, cache),
    ).rejects.toBeInstanceOf(CertificateError);
    expect(cache.size).toBe(0);
  });

  it('drops every verdict when the rules, the Node or the trust anchors change', async () => {
    const cache = cacheIn('context');
    cache.useContext(context());
    await judgeCertificate(candidate(), 'store:d', { now: new Date(), keyserverSpki: leafKey }, cache);
    cache.flush();

    // Another issuer pool (certStore.intermediates configured): another context.
    const interFile = join(dir, 'context', 'inter.pem');
    writeFileSync(interFile, inter.certPem);
    const withIntermediates = verdictContext(loadIssuerPool(interFile, 'proxy.json').fingerprint);
    expect(withIntermediates).not.toBe(context());
    const warnings: string[] = [];
    const reread = cacheIn('context', warnings);
    reread.useContext(withIntermediates);
    expect(reread.size).toBe(0);
    expect(warnings).toEqual([]);

    // The file now names the other context; going back finds nothing either.
    reread.flush();
    const back = cacheIn('context');
    back.useContext(context());
    expect(back.size).toBe(0);

    // In memory too: a context change mid-run drops what was known.
    const live = cacheIn('context-live');
    live.useContext(context());
    await judgeCertificate(candidate(), 'store:e', { now: new Date(), keyserverSpki: leafKey }, live);
    live.useContext(withIntermediates);
    expect(live.get('store:e')).toBeUndefined();
  });

  it('ignores, with a warning, a file that is not whole or not a verdict file, and rewrites it', async () => {
    const good = cacheIn('corrupt');
    good.useContext(context());
    await judgeCertificate(candidate(), 'store:f', { now: new Date(), keyserverSpki: leafKey }, good);
    good.flush();
    const file = join(dir, 'corrupt', VERDICT_FILE);
    const whole = readFileSync(file, 'utf8');
    const [headerLine, body] = [whole.slice(0, whole.indexOf('\n')), whole.slice(whole.indexOf('\n') + 1)];
    const header = JSON.parse(headerLine) as Record<string, unknown>;
    const withBody = (text: string, fixHash: boolean): string =>
      `${JSON.stringify({ ...header, ...(fixHash ? { sha256: createHash('sha256').update(text).digest('hex') } : {}) })}\n${text}`;

    const cases: [string, string, RegExp][] = [
      ['garbage', 'not json at all', /no header line|not a verdict file/],
      ['truncated', whole.slice(0, whole.length - 20), /checksum/],
      // A changed time with the old checksum: a bit flip, or an edit.
      ['edited', withBody(body.replace(/,(\d)(\d{12}),/, ',9$2,'), false), /checksum/],
      // Checksum fixed up, but a verdict pointing past the string table: never trusted in part.
      ['malformed', withBody(body.replace(/"verdicts":\{"store:f":\[(\[[^\]]*\]),\d+/, '"verdicts":{"store:f":[$1,99'), true), /malformed verdict/],
      // Checksum fixed up, but not the shape of a verdict file at all.
      ['other JSON', withBody('{"verdicts":[]}', true), /not a verdict file/],
    ];
    for (const [what, text, message] of cases) {
      writeFileSync(file, text);
      const warnings: string[] = [];
      const cache = cacheIn('corrupt', warnings);
      cache.useContext(context());
      expect(cache.size, what).toBe(0);
      expect(warnings, what).toHaveLength(1);
      expect(warnings[0], what).toMatch(message);
      // Rewritten whole at the next write: the following start reads it without a warning.
      await judgeCertificate(candidate(), 'store:f', { now: new Date(), keyserverSpki: leafKey }, cache);
      cache.flush();
      const after: string[] = [];
      const next = cacheIn('corrupt', after);
      next.useContext(context());
      expect(after, what).toEqual([]);
      expect(next.size, what).toBe(1);
    }
  });

  it('serves a store from remembered verdicts: a changed entry is judged again, a removed one forgotten', async () => {
    const storeDir = join(dir, 'store');
    const store = new CertificateStore(storeDir);
    store.create();
    store.write('a', chain, {});
    store.write('b', `${inter.certPem}\n${issued.certPem}`, {});
    const config = loadProxyConfig(undefined, { stateDir: dir, certStore: { dir: storeDir } });
    const pass = (cache: VerdictCache, previous = new Map()) =>
      prepareServing({ config, store, previous, seen: new Map(), verdicts: cache, validation: { now: new Date(), keyserverSpki: leafKey } });

    const cache = cacheIn('store-cache');
    const first = await pass(cache);
    expect([...first.records.keys()].sort()).toEqual(['a', 'b']); // The order entries settle in is not fixed.
    // Two inputs (the same certificates, the second in reverse order): two verdicts; the second serves the validated order.
    expect(cache.size).toBe(2);
    expect(first.records.get('b')!.chainPem).toBe(first.records.get('a')!.chainPem);
    cache.flush();

    const restarted = cacheIn('store-cache');
    const second = await pass(restarted);
    expect(second.records.get('a')).toMatchObject({ serial: first.records.get('a')!.serial, chainPem: first.records.get('a')!.chainPem });
    expect(restarted.size).toBe(2);

    // A renewal: new bytes, a new verdict.
    const renewed = await issue(inter, { commonName: 'v.example', dnsNames: ['v.example'], keyAlgorithm: 'ec-p256' });
    store.write('a', `${renewed.certPem}\n${inter.certPem}`, {});
    store.remove('b');
    const third = await pass(restarted, new Map(second.records));
    expect(third.records.get('a')!.serial).not.toBe(first.records.get('a')!.serial);
    expect(restarted.size).toBe(3);
    restarted.retain(new Set([...third.records.values()].map((r) => r.inputId)));
    expect(restarted.size).toBe(1);
  });
});
