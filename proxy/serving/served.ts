/**
 * A served certificate (certs/certificate.ts) made from its record (spec.ts)
 * with no X.509 parsing: the primary validated it, and the parsed leaf that
 * OCSP stapling needs is made on first access, in the stapler's background
 * loop. The chain is read from the record on each use, so a record read from
 * a pack (pack.ts) keeps no chain in memory; the secure context built from
 * it does.
 */
import type { ServedCertificate } from '../certs/certificate.js';
import * as x509 from '../../keyserver/shared/x509.js';
import type { CertificateRecord } from './spec.js';

export function servedFromRecord(record: CertificateRecord): ServedCertificate {
  let parsed: x509.X509Certificate[] | undefined;
  const chain = (): x509.X509Certificate[] =>
    (parsed ??= [...record.chainPem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) => new x509.X509Certificate(m[0])));
  return {
    name: record.name,
    source: record.source,
    get chainPem() {
      return record.chainPem;
    },
    names: record.names,
    keyId: record.keyId,
    spki: Buffer.from(record.spki, 'base64'),
    serial: record.serial,
    notAfter: new Date(record.notAfter),
    get leaf() {
      return chain()[0]!;
    },
    get chain() {
      return chain();
    },
  };
}
