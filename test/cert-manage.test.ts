import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateError, CertificateStoreError } from '../proxy/certs/errors.js';
import { loadIssuerPool } from '../proxy/certs/issuers.js';
import { entryCandidate, putCertificate } from '../proxy/certs/manage.js';
import { CertificateStore } from '../proxy/certs/store.js';
import { inspectCertificate, type ValidationContext } from '../proxy/certs/validate.js';
import { createCa, type Issued, issue, issueForPublicKey, type TestCa } from './helpers/pki.js';

// Add/replace as the admin API and `keyedge cert` share them: validation
// first, the store untouched on any refusal, names and pins kept on renewal.

let dir: string;
let ca: TestCa;
let first: Issued;
let renewedSameKey: Issued;
let otherKey: Issued;
let caFile: string;

function keyIdOf(issued: Issued): string {
  return createHash('sha256').update(Buffer.from(issued.cert.publicKey.rawData)).digest('hex');
}

/** A key server holding the keys of `held`; the leaves here are issued by the root itself, which the proxy is told about. */
function context(...held: Issued[]): ValidationContext {
  return {
    now: new Date(),
    issuers: loadIssuerPool(caFile, 'proxy.json'),
    keyserverSpki: async (keyId) => {
      const found = held.find((h) => keyIdOf(h) === keyId);
      return found === undefined ? undefined : Buffer.from(found.cert.publicKey.rawData);
    },
  };
}

function files(store: CertificateStore): Record<string, string> {
  return Object.fromEntries(readdirSync(store.dir).map((f) => [f, readFileSync(join(store.dir, f), 'utf8')]));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-cert-manage-'));
  ca = await createCa('Manage CA');
  caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, ca.certPem);
  first = await issue(ca, { commonName: 'a.example', dnsNames: ['a.example', 'b.example'], keyAlgorithm: 'ec-p256' });
  // The same key renewed: a second certificate over the first one's public key.
  renewedSameKey = await issueForPublicKey(ca, Buffer.from(first.cert.publicKey.rawData), { commonName: 'a.example', dnsNames: ['a.example', 'b.example'] });
  otherKey = await issue(ca, { commonName: 'a.example', dnsNames: ['a.example', 'b.example'], keyAlgorithm: 'rsa-2048' });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('putCertificate', () => {
  it('adds, then renews keeping names and pin, and refuses a new key unless pinned anew', async () => {
    const store = new CertificateStore(join(dir, 'pinned'));
    store.create();
    const added = await putCertificate(
      store,
      { mode: 'add', name: 'a', chainText: `${ca.certPem}\n${first.certPem}`, source: 'admin API', names: ['a.example'], keyId: keyIdOf(first) },
      context(first, otherKey),
    );
    expect(added.previous).toBeUndefined();
    expect(added.meta).toEqual({ names: ['a.example'], keyId: keyIdOf(first), addedAt: expect.any(String) });
    expect(store.read('a').chainText).toBe(added.validated.certificate.chainPem);
    expect(added.validated.certificate.chain[0]!.subject).toBe('CN=a.example');

    const renewed = await putCertificate(
      store,
      { mode: 'replace', name: 'a', chainText: renewedSameKey.certPem, source: 'admin API' },
      context(first, otherKey),
    );
    expect(renewed.previous?.meta.addedAt).toBe(added.meta.addedAt);
    expect(renewed.meta).toEqual({ names: ['a.example'], keyId: keyIdOf(first), addedAt: added.meta.addedAt, replacedAt: expect.any(String) });

    const before = files(store);
    const refused = await putCertificate(
      store,
      { mode: 'replace', name: 'a', chainText: otherKey.certPem, source: 'admin API' },
      context(first, otherKey),
    ).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(CertificateError);
    expect((refused as CertificateError).reason).toBe('key_mismatch');
    expect(files(store)).toEqual(before);

    const moved = await putCertificate(
      store,
      { mode: 'replace', name: 'a', chainText: otherKey.certPem, source: 'admin API', keyId: keyIdOf(otherKey) },
      context(first, otherKey),
    );
    expect(moved.meta.keyId).toBe(keyIdOf(otherKey));
    expect((await inspectCertificate(entryCandidate(store.read('a')), new Date(), context().issuers)).certificate.names).toEqual(['a.example']);
  });

  it('follows the leaf key when nothing is pinned, and pins every SAN served at the add', async () => {
    const store = new CertificateStore(join(dir, 'unpinned'));
    store.create();
    const added = await putCertificate(store, { mode: 'add', name: 'a', chainText: first.certPem, source: 'f.pem' }, context(first, otherKey));
    expect(added.meta).toEqual({ names: ['a.example', 'b.example'], addedAt: expect.any(String) });
    expect(added.validated.certificate.names).toEqual(['a.example', 'b.example']);
    const replaced = await putCertificate(store, { mode: 'replace', name: 'a', chainText: otherKey.certPem, source: 'f.pem' }, context(first, otherKey));
    expect(replaced.validated.certificate.keyId).toBe(keyIdOf(otherKey));
  });

  it('refuses to add over an entry or a reserved name, and to replace a missing one', async () => {
    const store = new CertificateStore(join(dir, 'names'));
    store.create();
    await putCertificate(store, { mode: 'add', name: 'a', chainText: first.certPem, source: 'f.pem' }, context(first));
    const cases = [
      [{ mode: 'add', name: 'a' }, 'KEYEDGE_ERR_CERT_EXISTS'],
      [{ mode: 'add', name: 'from-config' }, 'KEYEDGE_ERR_CERT_EXISTS'],
      [{ mode: 'replace', name: 'missing' }, 'KEYEDGE_ERR_CERT_NOT_FOUND'],
      [{ mode: 'add', name: '../a' }, 'KEYEDGE_ERR_CERT_STORE'],
    ] as const;
    for (const [request, code] of cases) {
      const err = await putCertificate(
        store,
        { ...request, chainText: first.certPem, source: 'f.pem' },
        { ...context(first), reserved: ['from-config'] },
      ).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CertificateStoreError);
      expect((err as CertificateStoreError).code).toBe(code);
    }
    expect(store.list().map((e) => e.name)).toEqual(['a']);
  });
});
