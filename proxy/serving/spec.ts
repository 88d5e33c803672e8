/**
 * What the proxy serves, as data: the routing table and every validated
 * certificate. The cluster primary prepares it (prepare.ts) and sends it to
 * the workers over IPC, which is why everything here is plain JSON: a worker
 * turns it into secure contexts and name indexes (state.ts) without parsing
 * or validating anything again.
 *
 * A change travels as a `ServingDelta`: the routing table (small, sent whole)
 * plus only the certificates that changed, so a renewal among 10,000 entries
 * moves one chain, not all of them.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { ServedCertificate } from '../certs/certificate.js';
import type { Verdict } from '../certs/verdict-file.js';
import type { CertificateRefusal } from '../certs/validate.js';
import { ocspResponderUrl } from '../tls/ocsp.js';
import type { PackedTable } from './table.js';

export interface CertificateRecord {
  readonly name: string;
  /** Where it came from: the config's chain file or the store. */
  readonly from: 'config' | 'store';
  readonly source: string;
  /** Leaf first, in the validated order. */
  readonly chainPem: string;
  /** The names it serves (SNI), lower-case. */
  readonly names: readonly string[];
  readonly keyId: string;
  /** The leaf's SubjectPublicKeyInfo, base64 (the keyless key reference carries it). */
  readonly spki: string;
  readonly serial: string;
  readonly issuer: string;
  readonly notAfter: string;
  /** Whether the leaf names an OCSP responder and the chain holds its issuer: only then is it stapled. */
  readonly stapled: boolean;
  readonly loadedAt: string;
  /** Identifies the input this record was validated from; equal inputs are not validated again. */
  readonly inputId: string;
}

export interface Refusal {
  readonly name: string;
  readonly source: string;
  readonly reason: CertificateRefusal | 'unreadable';
  readonly message: string;
}

export interface Routing {
  readonly domains: ProxyConfig['domains'];
  readonly sni: ProxyConfig['sni'];
  /**
   * The domains' origin CA files (path → PEM) as the primary read and checked them for this table: a worker uses these,
   * never the files (a file deleted or rewritten since failed a replacement worker's start, or its apply of the reload).
   * Absent: a worker read the files itself (run without a primary).
   */
  readonly originCas?: Readonly<Record<string, string>>;
}

export interface ServingDelta {
  readonly generation: number;
  readonly routing: Routing;
  /** New or changed certificates. */
  readonly upsert: readonly CertificateRecord[];
  /** Names no longer served. */
  readonly remove: readonly string[];
  /** The whole state, not a change: a certificate not in it is no longer served (a worker's start, a rebase: distribute.ts). */
  readonly whole?: boolean;
  /** Read from a pack (pack.ts): the certificates as a table read on demand; `upsert` then materialises all of them. Never sent. */
  readonly table?: PackedTable;
}

export function recordOf(certificate: ServedCertificate, from: CertificateRecord['from'], inputId: string, loadedAt: Date): CertificateRecord {
  return {
    name: certificate.name,
    from,
    source: certificate.source,
    chainPem: certificate.chainPem,
    names: certificate.names,
    keyId: certificate.keyId,
    spki: certificate.spki.toString('base64'),
    serial: certificate.serial,
    issuer: certificate.leaf.issuer,
    notAfter: certificate.notAfter.toISOString(),
    stapled: ocspResponderUrl(certificate.leaf) !== undefined && certificate.chain.length > 1,
    loadedAt: loadedAt.toISOString(),
    inputId,
  };
}

/**
 * A record from a verdict (verdicts.ts): nothing is parsed. `chainText` is
 * the input the verdict was reached on, or a function that reads it (a kept
 * pack's row, kept.ts): the record then reads its chain on each use and
 * holds none.
 */
export function recordOfVerdict(
  verdict: Verdict,
  entry: { readonly name: string; readonly source: string; readonly chainText: string | (() => string) },
  from: CertificateRecord['from'],
  inputId: string,
  loadedAt: Date,
): CertificateRecord {
  const chainText = entry.chainText;
  const record = {
    name: entry.name,
    from,
    source: entry.source,
    chainPem: '',
    names: verdict.names,
    keyId: verdict.keyId,
    spki: verdict.spki,
    serial: verdict.serial,
    issuer: verdict.issuer,
    notAfter: verdict.notAfter,
    stapled: verdict.stapled,
    loadedAt: loadedAt.toISOString(),
    inputId,
  };
  if (verdict.chainPem !== undefined || typeof chainText === 'string') return { ...record, chainPem: verdict.chainPem ?? (chainText as string) };
  return Object.defineProperty(record, 'chainPem', { enumerable: true, get: chainText });
}
