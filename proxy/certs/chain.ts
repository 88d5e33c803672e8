/**
 * A chain's PEM text as certificates in issuer order: the parse,
 * private_key, weak_signature and chain rules of certificate validation
 * (validate.ts). Pure apart from the signature checks, which are WebCrypto
 * promises.
 *
 * The input may be in any order: it is reordered leaf first, each
 * certificate followed by the one that signed it (name and signature both
 * checked). A self-signed root at the end is kept, with a warning: the file
 * is served as given, and the OCSP stapler needs the leaf's issuer in the
 * chain even when that issuer is the root (RFC 8446 §4.4.2 lets a server omit
 * it; keeping it only costs bytes).
 */
import { LRUCache } from 'lru-cache';
import * as x509 from '../../keyserver/shared/x509.js';
import { type CertificateCandidate, type Refuse, refuser } from './candidate.js';
import { signatureWeakness } from './key-strength.js';

export interface ParsedChain {
  /** Leaf first, each certificate followed by its issuer. */
  readonly chain: readonly x509.X509Certificate[];
  readonly warnings: readonly string[];
}

/** More certificates than any real chain has (leaf, two intermediates, a cross-sign, a root). */
export const MAX_CERTIFICATES = 10;
const PEM_BEGIN = /-----BEGIN ([A-Z0-9 ]+)-----/g;

/**
 * The PEM text as certificates in issuer order: the parse, private_key,
 * weak_signature and chain rules. For listings that must describe an entry
 * even once it has expired.
 */
export async function parseChain(candidate: Pick<CertificateCandidate, 'name' | 'chainText' | 'source'>): Promise<ParsedChain> {
  const refuse = refuser(candidate);
  const warnings: string[] = [];
  const parsed = parsePem(candidate.chainText, refuse);
  const certs: x509.X509Certificate[] = [];
  const positions: number[] = [];
  const seen = new Set<string>();
  for (const [index, cert] of parsed.entries()) {
    const der = Buffer.from(cert.rawData).toString('base64');
    if (seen.has(der)) {
      warnings.push(`certificate ${index + 1} ("${cert.subject}") appears twice; served once`);
      continue;
    }
    seen.add(der);
    certs.push(cert);
    positions.push(index + 1);
  }
  for (const [i, cert] of certs.entries()) {
    // Roots are exempt: a client trusts a root by its key, not by its signature.
    if (isSelfIssued(cert)) continue;
    const weakness = signatureWeakness(cert);
    if (weakness !== undefined)
      throw refuse('weak_signature', `certificate ${positions[i]} ("${cert.subject}") is signed with ${weakness}; expected SHA-256 or stronger`);
  }
  const chain = await orderChain(certs, positions, refuse);
  const last = chain[chain.length - 1]!;
  if (isSelfIssued(last)) {
    warnings.push(
      chain.length === 1
        ? `the leaf "${last.subject}" is self-signed: only clients that trust it directly accept it`
        : `the chain ends with the self-signed root "${last.subject}"; it is served as given, though clients use their own copy (RFC 8446 §4.4.2 lets it be left out)`,
    );
  }
  return { chain, warnings };
}

/** The CERTIFICATE blocks of `text`, decoded, in file order. */
function parsePem(text: string, refuse: Refuse): x509.X509Certificate[] {
  const begins = [...text.matchAll(PEM_BEGIN)];
  if (begins.length === 0) throw refuse('parse', 'no PEM certificate found (expected "-----BEGIN CERTIFICATE-----" blocks)');
  // Labels first, before anything is decoded: a private key is refused as
  // such even when it is also truncated, and its body is never touched.
  for (const [index, begin] of begins.entries()) {
    const label = begin[1]!;
    if (label !== 'CERTIFICATE') {
      throw refuse('private_key', `block ${index + 1} is a "${label}"; a chain holds only CERTIFICATE blocks (private keys stay in the key server)`);
    }
  }
  if (begins.length > MAX_CERTIFICATES) throw refuse('chain', `${begins.length} certificates; a chain holds at most ${MAX_CERTIFICATES}`);
  const certs: x509.X509Certificate[] = [];
  for (const [index, begin] of begins.entries()) {
    const start = begin.index;
    const next = begins[index + 1]?.index ?? text.length;
    const end = text.indexOf('-----END CERTIFICATE-----', start);
    if (end < 0 || end > next)
      throw refuse(
        'parse',
        `certificate ${index + 1} is truncated: no "-----END CERTIFICATE-----" line before ${index + 1 < begins.length ? 'the next block' : 'the end'}`,
      );
    const block = text.slice(start, end + '-----END CERTIFICATE-----'.length);
    try {
      certs.push(parseBlock(block));
    } catch (err) {
      // The library's messages describe structure (ASN.1 schema), never content.
      throw refuse('parse', `certificate ${index + 1} does not decode as X.509: ${firstLine(err)}`, err);
    }
  }
  return certs;
}

/**
 * Leaf first, then issuers. The leaf is the certificate that signs no other
 * in the set; from it the path follows, at each step, the first remaining
 * certificate whose subject is the current issuer and whose key verifies the
 * current signature. Anything left over (an unrelated certificate, a gap in
 * the path) is refused, named by its position in the file.
 */
async function orderChain(certs: readonly x509.X509Certificate[], positions: readonly number[], refuse: Refuse): Promise<x509.X509Certificate[]> {
  const n = certs.length;
  // signs[i][j]: certs[i] issued certs[j] (name and signature), i ≠ j.
  const signs = await Promise.all(
    certs.map((issuer, i) => Promise.all(certs.map((subject, j) => (i !== j && subject.issuer === issuer.subject ? verifies(subject, issuer) : false)))),
  );
  const ends = certs.map((_, i) => i).filter((i) => !signs[i]!.some(Boolean));
  if (ends.length === 0) throw refuse('chain', 'no leaf: every certificate signs another one in the file');
  // With strays, the leaf is the first end-entity (not a CA) certificate, so
  // the error below names the stray rather than the leaf.
  const leaf = ends.length === 1 ? ends[0]! : (ends.find((i) => !isCa(certs[i]!)) ?? ends[0]!);
  const path = [leaf];
  const used = new Set(path);
  for (let current = leaf; !isSelfIssued(certs[current]!); ) {
    const issuer = certs.findIndex((_, i) => !used.has(i) && signs[i]![current]);
    if (issuer < 0) break;
    path.push(issuer);
    used.add(issuer);
    current = issuer;
  }
  if (path.length < n) {
    const stray = certs.findIndex((_, i) => !used.has(i));
    const last = certs[path[path.length - 1]!]!;
    const what = `certificate ${positions[stray]} ("${certs[stray]!.subject}") is not on the leaf's issuer path`;
    if (isSelfIssued(last)) throw refuse('chain', `${what}: the path ends at the self-signed root "${last.subject}"`);
    const namesake = certs.findIndex((c, i) => !used.has(i) && c.subject === last.issuer);
    if (namesake >= 0) {
      throw refuse(
        'chain',
        `"${last.subject}" is not signed by certificate ${positions[namesake]} ("${last.issuer}"): the name matches but the signature does not verify with its key`,
      );
    }
    throw refuse('chain', `${what}: the path stops at "${last.subject}", whose issuer "${last.issuer}" is not in the file`);
  }
  return path.map((i) => certs[i]!);
}

/**
 * Parsed certificates by their PEM block. A store's entries share a few
 * intermediates: parsing each once instead of once per entry took about a
 * fifth off validating 10,000 entries (bench/cert-scale.ts). Parsed
 * certificates are only read, never changed, so sharing them is safe.
 */
const parsedBlocks = new LRUCache<string, x509.X509Certificate>({ max: 256 });

/**
 * One PEM certificate block, decoded (once per block while it stays in the
 * cache). Throws what the library throws when any part does not decode.
 */
export function parseBlock(block: string): x509.X509Certificate {
  let cert = parsedBlocks.get(block);
  if (cert === undefined) {
    cert = new x509.X509Certificate(block);
    decodeAll(cert);
    parsedBlocks.set(block, cert);
  }
  return cert;
}

/**
 * Reads every part the library decodes lazily (@peculiar/x509 decodes names,
 * dates, the signature algorithm, the key and the extensions on first read),
 * so a malformed one (a SAN that is not GeneralNames, RSASSA-PSS parameters
 * that do not decode) throws here, inside parsePem's try, as a parse refusal
 * naming the certificate, not later from a rule as an error naming no entry.
 * A failed extension decode also leaves the library's list empty for good:
 * such a certificate must never reach the cache.
 */
function decodeAll(cert: x509.X509Certificate): void {
  void cert.subject;
  void cert.issuer;
  void cert.serialNumber;
  void cert.notBefore;
  void cert.notAfter;
  void cert.signatureAlgorithm;
  void cert.publicKey;
  void cert.extensions;
}

async function verifies(subject: x509.X509Certificate, issuer: x509.X509Certificate): Promise<boolean> {
  try {
    return await subject.verify({ publicKey: issuer.publicKey, signatureOnly: true });
  } catch {
    // An algorithm WebCrypto cannot verify (weak ones are refused before this) is no signature.
    return false;
  }
}

/** RFC 5280 §6.1: subject and issuer names equal. Such a certificate ends a path. */
export function isSelfIssued(cert: x509.X509Certificate): boolean {
  return cert.subject === cert.issuer;
}

function isCa(cert: x509.X509Certificate): boolean {
  return cert.getExtension(x509.BasicConstraintsExtension)?.ca === true;
}

/** An error's first line, short: for a refusal's message. */
export function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!.slice(0, 200);
}
