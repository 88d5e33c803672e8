import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../keyserver/shared/errors.js';
import * as x509 from '../keyserver/shared/x509.js';
import { CertificateError } from '../proxy/certs/errors.js';
import { loadIssuerPool } from '../proxy/certs/issuers.js';
import {
  type CertificateCandidate,
  type CertificateRefusal,
  inspectCertificate,
  validateCertificate,
  type ValidationContext,
} from '../proxy/certs/validate.js';
import { createCa, type Issued, issue, issueCa, type TestCa } from './helpers/pki.js';

// Certificate validation against a test PKI: every rule refuses with its own
// reason and a message naming the entry; good chains come back reordered.

const DAY = 86_400_000;
const NAMES = ['shop.example', '*.shop.example'];

let dir: string;
let root: TestCa;
let inter: TestCa;
let leaf: Issued;
let other: Issued;

function spkiOf(issued: Issued): Buffer {
  return Buffer.from(issued.cert.publicKey.rawData);
}

function keyIdOf(issued: Issued): string {
  return createHash('sha256').update(spkiOf(issued)).digest('hex');
}

/** A key server that holds the keys of `held`, by key id. */
function keyserver(...held: Issued[]): ValidationContext['keyserverSpki'] {
  return async (keyId) => {
    const found = held.find((h) => keyIdOf(h) === keyId);
    return found === undefined ? undefined : spkiOf(found);
  };
}

function pem(...parts: (Issued | string)[]): string {
  return parts.map((p) => (typeof p === 'string' ? p : p.certPem)).join('\n') + '\n';
}

function candidate(chainText: string, extra: Partial<CertificateCandidate> = {}): CertificateCandidate {
  return { name: 'shop', chainText, source: '/store/shop.pem', ...extra };
}

async function refusal(promise: Promise<unknown>): Promise<CertificateError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(CertificateError);
    return err as CertificateError;
  }
  throw new Error('expected a refusal');
}

/**
 * `issued` (an ECDSA SHA-256 signed certificate) with its outer signature
 * algorithm replaced by RSASSA-PSS whose parameters are an INTEGER, not
 * RSASSA-PSS-params: the structure decodes, the algorithm does not.
 */
function withPssSignatureAlgorithm(issued: Issued): string {
  const der = Buffer.from(issued.cert.rawData);
  const ecdsaSha256 = Buffer.from('300a06082a8648ce3d040302', 'hex');
  const at = der.lastIndexOf(ecdsaSha256);
  expect(der.subarray(0, 2).toString('hex')).toBe('3082');
  const body = Buffer.concat([der.subarray(4, at), Buffer.from('300e06092a864886f70d01010a020101', 'hex'), der.subarray(at + ecdsaSha256.length)]);
  return x509.PemConverter.encode(Buffer.concat([Buffer.from([0x30, 0x82, body.length >> 8, body.length & 0xff]), body]), 'CERTIFICATE');
}

/** The base64 body lines of a PEM block, none of which may ever appear in a message. */
function bodyLines(blockPem: string): string[] {
  return blockPem.split('\n').filter((l) => l.length > 0 && !l.startsWith('-----'));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-cert-validate-'));
  root = await createCa('Validate Root');
  inter = await issueCa(root, 'Validate Intermediate');
  leaf = await issue(inter, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'ec-p256' });
  other = await issue(inter, { commonName: 'other.example', dnsNames: ['other.example'], keyAlgorithm: 'ec-p256' });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('accepted chains', () => {
  it('serves a leaf-first chain with the SANs as names and the leaf key id', async () => {
    const { certificate, warnings } = await validateCertificate(candidate(pem(leaf, inter)), { now: new Date(), keyserverSpki: keyserver(leaf) });
    expect(certificate.name).toBe('shop');
    expect(certificate.source).toBe('/store/shop.pem');
    expect(certificate.chain.map((c) => c.subject)).toEqual(['CN=shop.example', 'CN=Validate Intermediate']);
    expect(certificate.names).toEqual(NAMES);
    expect(certificate.keyId).toBe(keyIdOf(leaf));
    expect(certificate.spki.equals(spkiOf(leaf))).toBe(true);
    expect(certificate.serial).toBe(leaf.cert.serialNumber);
    expect(certificate.notAfter).toEqual(leaf.cert.notAfter);
    expect(certificate.chainPem.indexOf(leaf.certPem.split('\n')[1]!)).toBeLessThan(certificate.chainPem.indexOf(inter.certPem.split('\n')[1]!));
    expect(warnings).toEqual([expect.stringMatching(/^the leaf expires in \d+ hours/)]);
  });

  it('reorders a shuffled chain leaf first and keeps the root at the end, with a warning', async () => {
    const { certificate, warnings } = await validateCertificate(candidate(pem(root, leaf, inter)), { now: new Date(), keyserverSpki: keyserver(leaf) });
    expect(certificate.chain.map((c) => c.subject)).toEqual(['CN=shop.example', 'CN=Validate Intermediate', 'CN=Validate Root']);
    expect(certificate.chainPem.startsWith(leaf.certPem.trim())).toBe(true);
    expect(warnings).toContainEqual(expect.stringContaining('ends with the self-signed root "CN=Validate Root"'));
  });

  it('serves a subset of the SANs, wildcards covering one label', async () => {
    const { certificate } = await validateCertificate(candidate(pem(leaf, inter), { names: ['SHOP.example.', 'a.shop.example'] }), {
      now: new Date(),
      keyserverSpki: keyserver(leaf),
    });
    expect(certificate.names).toEqual(['shop.example', 'a.shop.example']);
  });

  it('accepts a pinned key id equal to the leaf key id', async () => {
    const { certificate } = await validateCertificate(candidate(pem(leaf, inter), { keyId: keyIdOf(leaf).toUpperCase() }), {
      now: new Date(),
      keyserverSpki: keyserver(leaf),
    });
    expect(certificate.keyId).toBe(keyIdOf(leaf));
  });

  it.each(['rsa-2048', 'ec-p384'] as const)('accepts a %s leaf', async (keyAlgorithm) => {
    const issued = await issue(inter, { commonName: 'k.example', dnsNames: ['k.example'], keyAlgorithm });
    await expect(validateCertificate(candidate(pem(issued, inter)), { now: new Date(), keyserverSpki: keyserver(issued) })).resolves.toBeDefined();
  });

  it('accepts a root self-signed with SHA-1 (clients trust a root by its key, not its signature)', async () => {
    const legacy = await createCa('Legacy Root', 'rsa-2048', 'SHA-1');
    expect(legacy.cert.signatureAlgorithm).toMatchObject({ hash: { name: 'SHA-1' } });
    const mid = await issueCa(legacy, 'Legacy Intermediate');
    const l = await issue(mid, { commonName: 'legacy.example', dnsNames: ['legacy.example'], keyAlgorithm: 'ec-p256' });
    const { certificate } = await validateCertificate(candidate(pem(l, mid, legacy)), { now: new Date(), keyserverSpki: keyserver(l) });
    expect(certificate.chain.map((c) => c.subject)).toEqual(['CN=legacy.example', 'CN=Legacy Intermediate', 'CN=Legacy Root']);
  });

  it('warns about a leaf that expires within seven days, and not about one further out', async () => {
    const soon = await issue(inter, {
      commonName: 'soon.example',
      dnsNames: ['soon.example'],
      keyAlgorithm: 'ec-p256',
      notAfter: new Date(Date.now() + 3 * DAY),
    });
    const later = await issue(inter, {
      commonName: 'later.example',
      dnsNames: ['later.example'],
      keyAlgorithm: 'ec-p256',
      notAfter: new Date(Date.now() + 30 * DAY),
    });
    const a = await validateCertificate(candidate(pem(soon, inter)), { now: new Date(), keyserverSpki: keyserver(soon) });
    expect(a.warnings).toEqual([expect.stringMatching(/^the leaf expires in 2 days, at /)]);
    const b = await validateCertificate(candidate(pem(later, inter)), { now: new Date(), keyserverSpki: keyserver(later) });
    expect(b.warnings).toEqual([]);
  });

  it('drops a certificate given twice, with a warning', async () => {
    const { certificate, warnings } = await validateCertificate(candidate(pem(leaf, inter, inter)), { now: new Date(), keyserverSpki: keyserver(leaf) });
    expect(certificate.chain).toHaveLength(2);
    expect(warnings).toContainEqual(expect.stringContaining('appears twice'));
  });
});

interface RefusalCase {
  readonly title: string;
  readonly reason: CertificateRefusal;
  readonly message: RegExp;
  readonly make: () => Promise<{ candidate: CertificateCandidate; lookup?: ValidationContext['keyserverSpki']; now?: Date }>;
}

const refusals: RefusalCase[] = [
  { title: 'an empty file', reason: 'parse', message: /no PEM certificate found/, make: async () => ({ candidate: candidate('') }) },
  { title: 'text that is not PEM', reason: 'parse', message: /no PEM certificate found/, make: async () => ({ candidate: candidate('hello, world\n') }) },
  {
    title: 'a truncated PEM',
    reason: 'parse',
    message: /certificate 2 is truncated/,
    make: async () => ({ candidate: candidate(pem(leaf, inter.certPem.slice(0, inter.certPem.length / 2))) }),
  },
  {
    title: 'a PEM block that is not X.509',
    reason: 'parse',
    message: /certificate 1 does not decode as X.509/,
    make: async () => ({ candidate: candidate('-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n') }),
  },
  {
    // The library decodes extensions only when first read: a rule reading the SAN threw a schema error naming no entry.
    title: 'a leaf whose subjectAltName does not decode (content 04 02 ff ff)',
    reason: 'parse',
    message: /certificate 1 does not decode as X\.509: .*SubjectAlternativeName/,
    make: async () => {
      const badSan = new x509.Extension('2.5.29.17', false, new Uint8Array([0x04, 0x02, 0xff, 0xff]));
      const l = await issue(inter, { commonName: 'shop.example', keyAlgorithm: 'ec-p256', extraExtensions: [badSan] });
      return { candidate: candidate(pem(l, inter)), lookup: keyserver(l) };
    },
  },
  {
    title: 'a leaf whose signature algorithm is RSASSA-PSS with parameters that do not decode',
    reason: 'parse',
    message: /certificate 1 does not decode as X\.509: .*RsaSaPssParams/,
    make: async () => ({ candidate: candidate(pem(withPssSignatureAlgorithm(leaf), inter)) }),
  },
  {
    title: 'a private key pasted into the chain',
    reason: 'private_key',
    message: /block 2 is a "PRIVATE KEY"; a chain holds only CERTIFICATE blocks/,
    make: async () => ({ candidate: candidate(pem(leaf, leaf.keyPem, inter)) }),
  },
  {
    title: 'a broken chain (issuer name matches, signature does not)',
    reason: 'chain',
    message: /"CN=shop.example" is not signed by certificate 2 \("CN=Validate Intermediate"\): the name matches but the signature does not verify/,
    make: async () => ({ candidate: candidate(pem(leaf, await issueCa(root, 'Validate Intermediate'))) }),
  },
  {
    title: 'a gap (intermediate missing)',
    reason: 'chain',
    message:
      /certificate 2 \("CN=Validate Root"\) is not on the leaf's issuer path: the path stops at "CN=shop.example", whose issuer "CN=Validate Intermediate" is not in the file/,
    make: async () => ({ candidate: candidate(pem(leaf, root)) }),
  },
  {
    title: 'an unrelated extra certificate',
    reason: 'chain',
    message: /certificate 3 \("CN=other.example"\) is not on the leaf's issuer path/,
    make: async () => ({ candidate: candidate(pem(leaf, inter, other)) }),
  },
  {
    title: 'an expired leaf',
    reason: 'expired',
    message: /the leaf expired at /,
    make: async () => {
      const old = await issue(inter, {
        commonName: 'shop.example',
        dnsNames: NAMES,
        keyAlgorithm: 'ec-p256',
        notBefore: new Date(Date.now() - 3 * DAY),
        notAfter: new Date(Date.now() - DAY),
      });
      return { candidate: candidate(pem(old, inter)), lookup: keyserver(old) };
    },
  },
  {
    title: 'a leaf not yet valid',
    reason: 'not_yet_valid',
    message: /the leaf is not valid before /,
    make: async () => {
      const early = await issue(inter, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'ec-p256', notBefore: new Date(Date.now() + DAY) });
      return { candidate: candidate(pem(early, inter)), lookup: keyserver(early) };
    },
  },
  {
    title: 'a leaf valid only at another time (the context clock decides)',
    reason: 'expired',
    message: /the leaf expired at /,
    make: async () => ({ candidate: candidate(pem(leaf, inter)), now: new Date(Date.now() + 5 * DAY) }),
  },
  {
    title: 'names the SANs do not cover',
    reason: 'names',
    message: /the leaf does not cover "other.example" \(its DNS names: shop.example, \*.shop.example\)/,
    make: async () => ({ candidate: candidate(pem(leaf, inter), { names: ['shop.example', 'other.example'] }) }),
  },
  {
    title: 'a name two labels under a wildcard',
    reason: 'names',
    message: /does not cover "a.b.shop.example"/,
    make: async () => ({ candidate: candidate(pem(leaf, inter), { names: ['a.b.shop.example'] }) }),
  },
  {
    title: 'a name that is not a DNS name',
    reason: 'names',
    message: /"shop example" is not a DNS name/,
    make: async () => ({ candidate: candidate(pem(leaf, inter), { names: ['shop example'] }) }),
  },
  {
    title: 'a leaf without DNS SANs',
    reason: 'names',
    message: /the leaf has no DNS subjectAltName/,
    make: async () => {
      const bare = await issue(inter, { commonName: 'shop.example', ips: ['127.0.0.1'], keyAlgorithm: 'ec-p256' });
      return { candidate: candidate(pem(bare, inter)), lookup: keyserver(bare) };
    },
  },
  {
    title: 'an RSA-1024 leaf',
    reason: 'weak_key',
    message: /the leaf has an RSA-1024 key; expected RSA ≥ 2048 bits or EC P-256\/P-384/,
    make: async () => {
      const weak = await issue(inter, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'rsa-1024' });
      return { candidate: candidate(pem(weak, inter)), lookup: keyserver(weak) };
    },
  },
  {
    title: 'an EC P-521 leaf (the key server does not sign with it)',
    reason: 'weak_key',
    message: /the leaf has an EC key on curve secp521r1/,
    make: async () => {
      const p521 = await issue(inter, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'ec-p521' });
      return { candidate: candidate(pem(p521, inter)), lookup: keyserver(p521) };
    },
  },
  {
    title: 'an RSA-1024 intermediate',
    reason: 'weak_key',
    message: /intermediate "CN=Weak Intermediate" has an RSA-1024 key/,
    make: async () => {
      const weakCa = await issueCa(root, 'Weak Intermediate', 'rsa-1024');
      const l = await issue(weakCa, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'ec-p256' });
      return { candidate: candidate(pem(l, weakCa)), lookup: keyserver(l) };
    },
  },
  {
    title: 'a SHA-1-signed leaf',
    reason: 'weak_signature',
    message: /certificate 1 \("CN=shop.example"\) is signed with SHA-1 \(ECDSA\); expected SHA-256 or stronger/,
    make: async () => {
      const sha1 = await issue(inter, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'ec-p256', signatureHash: 'SHA-1' });
      return { candidate: candidate(pem(sha1, inter)), lookup: keyserver(sha1) };
    },
  },
  {
    title: 'a SHA-1-signed RSA intermediate',
    reason: 'weak_signature',
    message: /certificate 2 \("CN=SHA-1 Intermediate"\) is signed with SHA-1 \(RSASSA-PKCS1-v1_5\)/,
    make: async () => {
      const rsaRoot = await createCa('RSA Root', 'rsa-2048');
      const sha1Ca = await issueCa(rsaRoot, 'SHA-1 Intermediate', 'ec-p256', { signatureHash: 'SHA-1' });
      const l = await issue(sha1Ca, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'ec-p256' });
      return { candidate: candidate(pem(l, sha1Ca, rsaRoot)), lookup: keyserver(l) };
    },
  },
  {
    title: 'an MD5-signed leaf (made by openssl)',
    reason: 'weak_signature',
    message: /certificate 1 \("CN=md5.example"\) is signed with md5WithRSAEncryption/,
    make: async () => {
      const rsaRoot = await createCa('MD5 Root', 'rsa-2048');
      const f = (name: string) => join(dir, name);
      writeFileSync(f('md5-ca.pem'), rsaRoot.certPem);
      writeFileSync(f('md5-ca.key'), rsaRoot.keyPem, { mode: 0o600 });
      writeFileSync(f('md5-ext.cnf'), 'subjectAltName=DNS:md5.example\n');
      const run = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
      run(
        'req',
        '-new',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        f('md5.key'),
        '-subj',
        '/CN=md5.example',
        '-out',
        f('md5.csr'),
      );
      run(
        'x509',
        '-req',
        '-in',
        f('md5.csr'),
        '-CA',
        f('md5-ca.pem'),
        '-CAkey',
        f('md5-ca.key'),
        '-md5',
        '-days',
        '1',
        '-set_serial',
        '5',
        '-extfile',
        f('md5-ext.cnf'),
        '-out',
        f('md5.pem'),
      );
      return { candidate: candidate(pem(readFileSync(f('md5.pem'), 'utf8').trim(), rsaRoot)) };
    },
  },
  {
    title: 'a pinned key id that is not the leaf key',
    reason: 'key_mismatch',
    message: /the leaf's key id is [0-9a-f]{64}, the entry pins key [0-9a-f]{64}/,
    make: async () => ({ candidate: candidate(pem(leaf, inter), { keyId: keyIdOf(other) }), lookup: keyserver(leaf, other) }),
  },
  {
    title: 'a pinned key id that is not a key id',
    reason: 'key_mismatch',
    message: /the pinned key id is not a key id/,
    make: async () => ({ candidate: candidate(pem(leaf, inter), { keyId: 'lab-ec' }) }),
  },
  {
    title: 'a key server whose key under that id is another key',
    reason: 'key_mismatch',
    message: /the key server's key [0-9a-f]{64} is not the leaf's public key/,
    make: async () => ({ candidate: candidate(pem(leaf, inter)), lookup: async () => spkiOf(other) }),
  },
  {
    title: 'a leaf alone, issued by an intermediate nobody knows',
    reason: 'incomplete_chain',
    message: /the leaf alone and its issuer "CN=Validate Intermediate" \(authority key id ([0-9a-f]{2}:){19}[0-9a-f]{2}\) is not in it nor a known CA/,
    make: async () => ({ candidate: candidate(pem(leaf)) }),
  },
  {
    title: 'a leaf alone, issued by a root nobody knows',
    reason: 'incomplete_chain',
    message: /the chain is the leaf alone and its issuer "CN=Validate Root"/,
    make: async () => {
      const direct = await issue(root, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'ec-p256' });
      return { candidate: candidate(pem(direct)), lookup: keyserver(direct) };
    },
  },
  {
    title: 'a key server without the key',
    reason: 'key_unknown',
    message: /the key server holds no key with id [0-9a-f]{64}/,
    make: async () => ({ candidate: candidate(pem(leaf, inter)), lookup: keyserver(other) }),
  },
];

describe('chains completed from the known CA certificates', () => {
  it('completes a leaf alone from certStore.intermediates, up to the root (not appended)', async () => {
    const file = join(dir, 'intermediates.pem');
    writeFileSync(file, pem(root, inter));
    const issuers = loadIssuerPool(file, '/etc/keyedge/proxy.json');
    const { certificate, warnings } = await validateCertificate(candidate(pem(leaf)), { now: new Date(), keyserverSpki: keyserver(leaf), issuers });
    expect(certificate.chain.map((c) => c.subject)).toEqual(['CN=shop.example', 'CN=Validate Intermediate']);
    expect(certificate.chainPem.startsWith(leaf.certPem.trim())).toBe(true);
    expect(warnings).toContainEqual(`intermediate "CN=Validate Intermediate" added from ${file}: the file ends before it`);
  });

  it('accepts a leaf alone whose issuer is a configured root, and reads a directory of them', async () => {
    const direct = await issue(root, { commonName: 'shop.example', dnsNames: NAMES, keyAlgorithm: 'ec-p256' });
    const cas = mkdtempSync(join(dir, 'cas-'));
    writeFileSync(join(cas, 'root.crt'), root.certPem);
    writeFileSync(join(cas, 'notes.txt'), 'not a certificate');
    const issuers = loadIssuerPool(cas, 'p.json');
    const { certificate } = await validateCertificate(candidate(pem(direct)), { now: new Date(), keyserverSpki: keyserver(direct), issuers });
    expect(certificate.chain.map((c) => c.subject)).toEqual(['CN=shop.example']);
  });

  it('does not take a namesake for the issuer: the signature decides', async () => {
    const file = join(dir, 'namesake.pem');
    writeFileSync(file, pem(await issueCa(root, 'Validate Intermediate')));
    const issuers = loadIssuerPool(file, 'p.json');
    const err = await refusal(validateCertificate(candidate(pem(leaf)), { now: new Date(), keyserverSpki: keyserver(leaf), issuers }));
    expect(err.reason).toBe('incomplete_chain');
  });

  it('refuses an intermediates path that cannot be read or holds no certificate, as config', () => {
    expect(() => loadIssuerPool(join(dir, 'missing.pem'), 'p.json')).toThrow(ConfigError);
    writeFileSync(join(dir, 'empty.pem'), 'nothing here\n');
    expect(() => loadIssuerPool(join(dir, 'empty.pem'), 'p.json')).toThrow(/certStore.intermediates: no PEM certificate/);
  });
});

describe('refused chains', () => {
  it.each(refusals)('refuses $title ($reason)', async ({ reason, message, make }) => {
    const made = await make();
    const lookup = made.lookup ?? keyserver(leaf);
    const err = await refusal(validateCertificate(made.candidate, { now: made.now ?? new Date(), keyserverSpki: lookup }));
    expect(err.code).toBe('KEYEDGE_ERR_CERTIFICATE');
    expect(err.reason).toBe(reason);
    expect(err.entry).toBe('shop');
    expect(err.message).toContain("certificate 'shop' (/store/shop.pem): ");
    expect(err.message).toMatch(message);
  });

  it('never echoes a pasted private key, in the message, the cause chain or the serialised error', async () => {
    for (const text of [pem(leaf, leaf.keyPem, inter), pem(leaf.keyPem), pem(leaf, leaf.keyPem.slice(0, 120))]) {
      const err = await refusal(validateCertificate(candidate(text), { now: new Date(), keyserverSpki: keyserver(leaf) }));
      expect(err.reason).toBe('private_key');
      const everything = [err.message, err.stack ?? '', JSON.stringify(err), String(err.cause ?? '')].join('\n');
      for (const line of bodyLines(leaf.keyPem)) expect(everything).not.toContain(line.slice(0, 40));
    }
  });

  it('checks nothing at the key server for a chain refused earlier', async () => {
    let asked = 0;
    const counting: ValidationContext['keyserverSpki'] = async () => {
      asked++;
      return spkiOf(leaf);
    };
    await refusal(validateCertificate(candidate(pem(leaf, root)), { now: new Date(), keyserverSpki: counting }));
    expect(asked).toBe(0);
  });

  it('lets a failing key server lookup through unchanged', async () => {
    const down = new Error('key server unreachable');
    await expect(validateCertificate(candidate(pem(leaf, inter)), { now: new Date(), keyserverSpki: () => Promise.reject(down) })).rejects.toBe(down);
  });

  it('inspects without a key server', async () => {
    const { certificate } = await inspectCertificate(candidate(pem(inter, leaf)), new Date());
    expect(certificate.keyId).toBe(keyIdOf(leaf));
  });
});
