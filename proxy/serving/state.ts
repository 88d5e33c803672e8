/**
 * A worker's serving state: the certificates it serves, the SNI and Host
 * indexes over them, and the default certificate. Immutable once built; a
 * reload builds the next state beside the current one and the worker swaps a
 * single reference, so a handshake or request sees one state or the other,
 * never a mix.
 *
 * Building does no X.509 parsing (the primary validated everything): a
 * certificate is made from its record, and the parsed leaf that OCSP
 * stapling needs is made on first use, in the stapler's background loop.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { ServedCertificate } from '../certs/certificate.js';
import type { Domain } from '../http/handler.js';
import { buildNameIndex, type NameIndex } from '../tls/names.js';
import * as x509 from '../../keyserver/shared/x509.js';
import type { CertificateRecord, ServingDelta } from './spec.js';

export interface ServingState {
  readonly generation: number;
  readonly records: ReadonlyMap<string, CertificateRecord>;
  readonly certificates: ReadonlyMap<string, ServedCertificate>;
  readonly sni: NameIndex<ServedCertificate>;
  /** Serves unknown names when sni.onUnknown is "default". */
  readonly fallback: ServedCertificate | undefined;
  /** Serves clients that send no SNI. */
  readonly noSni: ServedCertificate | undefined;
  readonly domains: NameIndex<Domain>;
  readonly sniConfig: ProxyConfig['sni'];
}

export const EMPTY_STATE: ServingState = {
  generation: 0,
  records: new Map(),
  certificates: new Map(),
  sni: buildNameIndex([]),
  fallback: undefined,
  noSni: undefined,
  domains: buildNameIndex([]),
  sniConfig: { default: null, onUnknown: 'reject' },
};

/** Conflicting names are reported, first listed wins (config order, then store order). */
export function applyDelta(
  current: ServingState,
  delta: ServingDelta,
  onConflict: (name: string, kept: string, dropped: string) => void = () => {},
): { readonly state: ServingState; readonly changed: readonly ServedCertificate[]; readonly removed: readonly string[] } {
  const records = new Map(current.records);
  const certificates = new Map(current.certificates);
  for (const name of delta.remove) {
    records.delete(name);
    certificates.delete(name);
  }
  const changed: ServedCertificate[] = [];
  for (const record of delta.upsert) {
    const certificate = servedFromRecord(record);
    records.set(record.name, record);
    certificates.set(record.name, certificate);
    changed.push(certificate);
  }
  const sni = buildNameIndex(
    [...certificates.values()].map((c) => ({ names: c.names, value: c })),
    (name, kept, dropped) => onConflict(name, kept.name, dropped.name),
  );
  const { sni: sniConfig, domains } = delta.routing;
  const byDefault = sniConfig.default === null ? undefined : certificates.get(sniConfig.default);
  return {
    state: {
      generation: delta.generation,
      records,
      certificates,
      sni,
      fallback: sniConfig.onUnknown === 'default' ? byDefault : undefined,
      noSni: byDefault,
      domains: buildNameIndex(domains.map((d) => ({ names: [d.name], value: d }))),
      sniConfig,
    },
    changed,
    removed: delta.remove,
  };
}

/** A served certificate backed by its record; the X.509 objects are parsed on first access. */
export function servedFromRecord(record: CertificateRecord): ServedCertificate {
  let parsed: x509.X509Certificate[] | undefined;
  const chain = (): x509.X509Certificate[] =>
    (parsed ??= [...record.chainPem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) => new x509.X509Certificate(m[0])));
  return {
    name: record.name,
    source: record.source,
    // Read on use: a worker given its state as a pack (pack.ts) reads a chain only to build its context.
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
