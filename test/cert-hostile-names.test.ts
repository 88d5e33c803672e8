import { beforeAll, describe, expect, it } from 'vitest';
import { CertificateError } from '../proxy/certs/errors.js';
import { inspectCertificate } from '../proxy/certs/validate.js';
import { coveredBy, nameCovers } from '../proxy/tls/names.js';
import { createCa, type Issued, issue, issueCa, type TestCa } from './helpers/pki.js';

// Validation of certificates with thousands of names: what `keyedge cert add`
// pins (every SAN) is checked against the leaf on every later validation (a
// renewal, a restart without remembered verdicts), in the cluster primary,
// whose event loop also runs the admin API and the workers' IPC.

/** Under asn1js's node cap (10,000 per structure), which refuses a larger SAN list as not decoding. */
const SANS = 9_000;

let inter: TestCa;
let big: Issued;
let chain: string;
const names = Array.from({ length: SANS }, (_, i) => `h${i}.many.example`);

beforeAll(async () => {
  const root = await createCa('Hostile Names Root');
  inter = await issueCa(root, 'Hostile Names Intermediate');
  big = await issue(inter, { commonName: 'many.example', dnsNames: names, keyAlgorithm: 'ec-p256' });
  chain = `${big.certPem}\n${inter.certPem}\n`;
}, 60_000);

async function timed<T>(run: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = performance.now();
  const value = await run();
  return { ms: performance.now() - start, value };
}

describe('a leaf with thousands of SANs', () => {
  it('checks every pinned name in time linear in the names (9,000 pinned: was 9 s, quadratic)', async () => {
    const candidate = { name: 'many', chainText: chain, source: '/store/many.pem' };
    // The same chain without pinned names: parsing and the other rules, the part that does not depend on the pins.
    const parse = await timed(() => inspectCertificate(candidate, new Date()));
    const pinned = await timed(() => inspectCertificate({ ...candidate, names: [...names].reverse() }, new Date()));
    expect(pinned.value.certificate.names).toHaveLength(SANS);
    // Linear: about the parse's cost again. The quadratic check took 15 times the parse here; the margin is generous.
    expect(pinned.ms).toBeLessThan(3 * parse.ms + 1_000);
  }, 60_000);

  it('names an uncovered name without listing every SAN', async () => {
    const refused = await inspectCertificate({ name: 'many', chainText: chain, source: '/store/many.pem', names: ['other.example'] }, new Date()).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refused).toBeInstanceOf(CertificateError);
    const message = (refused as CertificateError).message;
    expect(message).toMatch(/the leaf does not cover "other.example" \(its DNS names: h0.many.example, .* and 8990 more\)/);
    expect(message.length).toBeLessThan(1_000);
  }, 60_000);
});

describe('coveredBy', () => {
  it('says what nameCovers says of each pattern, for any of them', () => {
    const patterns = ['Shop.Example.', '*.shop.example', '*.WILD.example', 'a.*.example', '*', ''];
    const probes = [
      'shop.example',
      'SHOP.EXAMPLE.',
      'a.shop.example',
      'a.b.shop.example',
      'x.wild.example',
      'wild.example',
      'a.*.example',
      'a.b.example',
      '*',
      '.shop.example',
      '',
    ];
    const covered = coveredBy(patterns);
    for (const probe of probes) expect([probe, covered(probe)]).toEqual([probe, patterns.some((p) => nameCovers(p, probe))]);
  });
});

describe('names no client could be served for', () => {
  async function leafWith(dnsNames: string[]): Promise<string> {
    const leaf = await issue(inter, { commonName: 'odd.example', dnsNames, keyAlgorithm: 'ec-p256' });
    return `${leaf.certPem}\n${inter.certPem}\n`;
  }

  it('serves the SANs that are DNS names (case and a trailing dot normalised) and names the others in a warning', async () => {
    const chainText = await leafWith(['Shop.Example.', '*.com', '*', 'a.*.example', 'f*.example', 'bücher.example', '*.shop.example']);
    const { certificate, warnings } = await inspectCertificate({ name: 'odd', chainText, source: '/store/odd.pem' }, new Date());
    expect(certificate.names).toEqual(['shop.example', '*.shop.example']);
    expect(warnings).toContainEqual(
      expect.stringMatching(/^5 DNS name\(s\) of the leaf are not served \("\*\.com", "\*", "a\.\*\.example", "f\*\.example", "bücher\.example"\)/),
    );
  });

  it.each([
    ['*.com', /"\*\.com" is a wildcard over a top-level domain/],
    ['*', /"\*" is not a DNS name/],
  ])('refuses a leaf whose only SAN is %s, and the name when pinned', async (san, pinned) => {
    const chainText = await leafWith([san]);
    const alone = await inspectCertificate({ name: 'odd', chainText, source: '/store/odd.pem' }, new Date()).catch((err: unknown) => err);
    expect((alone as CertificateError).reason).toBe('names');
    expect((alone as CertificateError).message).toMatch(/the leaf has no DNS name that can be served/);
    const wide = await leafWith(['*.com', 'shop.example']);
    const named = await inspectCertificate({ name: 'odd', chainText: wide, source: '/store/odd.pem', names: [san] }, new Date()).catch((err: unknown) => err);
    expect((named as CertificateError).message).toMatch(pinned);
  });

  it('does not take a pinned name as covered by a wildcard over a top-level domain', async () => {
    const wide = await leafWith(['*.com', 'shop.example']);
    const named = await inspectCertificate({ name: 'odd', chainText: wide, source: '/store/odd.pem', names: ['shop.com'] }, new Date()).catch(
      (err: unknown) => err,
    );
    expect((named as CertificateError).reason).toBe('names');
    expect((named as CertificateError).message).toMatch(/the leaf does not cover "shop.com"/);
  });
});
