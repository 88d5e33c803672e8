/**
 * Whether a certificate chain may be served, decided once, before it replaces
 * anything: the one gate for the certificate store, the `keyedge cert` command
 * and the reload path. Pure apart from the key-server lookup, which is
 * injected, so every rule is testable without a network.
 *
 * Rules, in the order they are checked (the first failure is reported, with
 * its CertificateRefusal word):
 *   parse          no complete PEM certificate, or one that does not decode
 *   private_key    any block other than CERTIFICATE (a pasted key is named by
 *                  its label only, never quoted)
 *   weak_signature a certificate other than a self-issued root signed with a
 *                  hash weaker than SHA-256 (SHA-1, MD5: Apple ATS and the CA/B
 *                  Baseline Requirements §7.1.3); roots are exempt because a
 *                  client trusts a root by its key, not by its signature
 *   chain          the certificates do not form one issuer path from a leaf
 *   weak_key       a leaf key other than RSA ≥ 2048 or EC P-256/P-384 (what the
 *                  key server signs with), or an intermediate weaker than
 *                  RSA 2048 / EC P-256
 *   not_yet_valid, expired   the leaf outside its validity window
 *   names          the leaf's DNS SANs do not cover every name to serve (SANs
 *                  no client accepts, such as `*.com`, cover nothing and are
 *                  not served)
 *   key_mismatch   a pinned key id that is not the leaf's, or a key server
 *                  key whose SPKI is not the leaf's
 *   incomplete_chain  the leaf alone, not self-signed, and its issuer is not
 *                  a known CA certificate (IssuerPool: the configured
 *                  intermediates, the system roots) to complete it from
 *   key_unknown    the key server holds no key with that id
 *
 * The input chain may be in any order: it is reordered leaf first, each
 * certificate followed by the one that signed it (name and signature both
 * checked). A self-signed root at the end is kept, with a warning: the file
 * is served as given, and the OCSP stapler needs the leaf's issuer in the
 * chain even when that issuer is the root (RFC 8446 §4.4.2 lets a server omit
 * it; keeping it only costs bytes).
 *
 * Completeness: a chain that ends at a certificate whose issuer is not in it
 * is normal (the root is not sent), and nothing in a certificate says whether
 * its issuer is a root. But a leaf alone, not self-signed, is almost always a
 * chain cut short (a file read between the leaf's write and the rest's, or a
 * cert.pem given for fullchain.pem): the CA/B Baseline Requirements §6.1.7
 * keep roots from issuing leaves, so its issuer is an intermediate that
 * clients do not hold, and every handshake would fail verification. It is
 * completed from the known CA certificates when they hold its issuer path,
 * and refused otherwise. The same completion extends a longer chain whose
 * last certificate's issuer is a known intermediate; one ending elsewhere is
 * served as given.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { CertificateError, type CertificateRefusal } from './errors.js';
import * as x509 from '../../keyserver/shared/x509.js';
import { coveredBy, normaliseName } from '../tls/names.js';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import { dnsNames, type ServedCertificate, servedCertificate } from './certificate.js';
import { type IssuerPool, loadIssuerPool } from './issuers.js';

export type { CertificateRefusal } from './errors.js';

export interface CertificateCandidate {
  /** The store entry or config certificate name, for messages and the served certificate. */
  readonly name: string;
  /** The PEM text as read: any order, possibly garbage. */
  readonly chainText: string;
  /** Where the text came from (a file path, "admin API"), for messages. */
  readonly source: string;
  /** Names this entry must serve; default: every DNS SAN of the leaf. */
  readonly names?: readonly string[];
  /** The key id pinned at the key server; default: derived from the leaf. */
  readonly keyId?: string;
}

export interface ValidatedCertificate {
  readonly certificate: ServedCertificate;
  /** Facts an operator should act on that do not stop serving (near expiry, a root in the chain). */
  readonly warnings: readonly string[];
}

export interface ValidationContext {
  readonly now: Date;
  /**
   * The SPKI (DER) the key server holds under `keyId`; undefined when it has
   * no such key. Any other failure (key server unreachable) should throw: it
   * propagates unchanged, so a caller can tell "unfit" from "cannot check".
   * `leafSpki` is the leaf's own key, for a caller that must go ahead
   * without the key server (the proxy's start while it is down).
   */
  readonly keyserverSpki: (keyId: string, leafSpki: Buffer) => Promise<Buffer | undefined>;
  /** CA certificates that may complete a chain; default: the system roots only. */
  readonly issuers?: IssuerPool;
}

export interface ParsedChain {
  /** Leaf first, each certificate followed by its issuer. */
  readonly chain: readonly x509.X509Certificate[];
  readonly warnings: readonly string[];
}

/** More certificates than any real chain has (leaf, two intermediates, a cross-sign, a root). */
const MAX_CERTIFICATES = 10;
const WARN_EXPIRY_MS = 7 * 86_400_000;
const STRONG_HASHES = new Set(['SHA-256', 'SHA-384', 'SHA-512']);
/** Signature schemes with no separate hash to judge (RFC 8410). */
const HASHLESS_SIGNATURES = new Set(['Ed25519', 'Ed448']);
/** Names for the weak signature OIDs @peculiar/x509 does not map to a WebCrypto algorithm. */
const SIGNATURE_OIDS: Readonly<Record<string, string>> = {
  '1.2.840.113549.1.1.2': 'md2WithRSAEncryption',
  '1.2.840.113549.1.1.3': 'md4WithRSAEncryption',
  '1.2.840.113549.1.1.4': 'md5WithRSAEncryption',
  '1.2.840.10040.4.3': 'dsa-with-sha1',
};
/** Leaf key curves the key server signs with (keyserver/token/keys.ts), by node's name for them. */
const LEAF_CURVES: Readonly<Record<string, string>> = { prime256v1: 'P-256', secp384r1: 'P-384' };
const CA_CURVES: Readonly<Record<string, string>> = { ...LEAF_CURVES, secp521r1: 'P-521' };
const MIN_RSA_BITS = 2048;
const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const KEY_ID = /^[0-9a-f]{64}$/;
const PEM_BEGIN = /-----BEGIN ([A-Z0-9 ]+)-----/g;

type Refuse = (reason: CertificateRefusal, message: string, cause?: unknown) => CertificateError;

function refuser(candidate: Pick<CertificateCandidate, 'name' | 'source'>): Refuse {
  return (reason, message, cause) => new CertificateError(candidate.source, message, { reason, entry: candidate.name, cause });
}

/**
 * Every check, the key server's included. Resolves with what to serve, or
 * rejects with a CertificateError naming the entry, its source and the rule.
 */
export async function validateCertificate(candidate: CertificateCandidate, ctx: ValidationContext): Promise<ValidatedCertificate> {
  const inspected = await inspectCertificate(candidate, ctx.now, ctx.issuers);
  await checkKeyserverKey(candidate, inspected.certificate, ctx.keyserverSpki);
  return inspected;
}

/**
 * Every check that needs no key server (all but key_unknown and the SPKI
 * comparison): for `keyedge cert show` and for callers that check the key
 * server separately.
 */
export async function inspectCertificate(candidate: CertificateCandidate, now: Date, issuers?: IssuerPool): Promise<ValidatedCertificate> {
  let timed: string[] = [];
  const structure = await inspectStructure(candidate, issuers, (chain) => {
    timed = checkValidityWindow(candidate, validityOf(chain), now);
  });
  return { certificate: structure.certificate, warnings: [...structure.warnings, ...timed] };
}

/** What the time-dependent rules need of a chain: the leaf's window and the other certificates' ends. */
export interface ChainValidity {
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Every certificate after the leaf, by subject. */
  readonly chainExpiries: readonly { readonly subject: string; readonly notAfter: Date }[];
}

export function validityOf(chain: readonly x509.X509Certificate[]): ChainValidity {
  const leaf = chain[0]!;
  return { notBefore: leaf.notBefore, notAfter: leaf.notAfter, chainExpiries: chain.slice(1).map((c) => ({ subject: c.subject, notAfter: c.notAfter })) };
}

/**
 * The not_yet_valid and expired rules and the expiry warnings: the only
 * rules whose answer changes for the same bytes, so a remembered verdict
 * (verdicts.ts) is checked against them again every time it is used.
 */
export function checkValidityWindow(candidate: Pick<CertificateCandidate, 'name' | 'source'>, validity: ChainValidity, now: Date): string[] {
  const refuse = refuser(candidate);
  const warnings: string[] = [];
  // RFC 5280 §4.1.2.5: both bounds are inclusive.
  if (now < validity.notBefore) throw refuse('not_yet_valid', `the leaf is not valid before ${validity.notBefore.toISOString()} (now ${now.toISOString()})`);
  if (now > validity.notAfter) throw refuse('expired', `the leaf expired at ${validity.notAfter.toISOString()} (now ${now.toISOString()})`);
  const left = validity.notAfter.getTime() - now.getTime();
  if (left < WARN_EXPIRY_MS) warnings.push(`the leaf expires in ${formatDuration(left)}, at ${validity.notAfter.toISOString()}`);
  // Not refused: a chain may carry an expired cross-sign on purpose for old
  // clients (Let's Encrypt served one until 2024), and other clients build
  // a path around it.
  for (const cert of validity.chainExpiries) {
    if (now > cert.notAfter) warnings.push(`chain certificate "${cert.subject}" expired at ${cert.notAfter.toISOString()}`);
  }
  return warnings;
}

/**
 * Every rule that depends only on the input (the chain text, the pinned
 * names and key id) and the issuer pool, not on the time or the key server:
 * its verdict can be remembered by content hash (verdicts.ts).
 */
export async function inspectStructure(
  candidate: CertificateCandidate,
  issuers?: IssuerPool,
  /** Run after the key rules, before the names and completeness rules: where the time rules come in a full validation. */
  afterKeys?: (chain: readonly x509.X509Certificate[]) => void,
): Promise<ValidatedCertificate> {
  const refuse = refuser(candidate);
  const { chain, warnings: chainWarnings } = await parseChain(candidate);
  const warnings = [...chainWarnings];
  const leaf = chain[0]!;

  checkKey(leaf, LEAF_CURVES, 'the leaf', refuse);
  for (const cert of chain.slice(1)) if (!isSelfIssued(cert)) checkKey(cert, CA_CURVES, `intermediate "${cert.subject}"`, refuse);
  afterKeys?.(chain);

  const names = servedNames(candidate, leaf, refuse, warnings);

  if (candidate.keyId !== undefined) {
    const pinned = candidate.keyId.toLowerCase();
    if (!KEY_ID.test(pinned)) throw refuse('key_mismatch', 'the pinned key id is not a key id (64 hex digits)');
    const leafKeyId = keyIdOf(Buffer.from(leaf.publicKey.rawData));
    if (pinned !== leafKeyId) throw refuse('key_mismatch', `the leaf's key id is ${leafKeyId}, the entry pins key ${pinned}`);
  }
  const completed = completeChain(chain, issuers ?? defaultIssuerPool(), refuse);
  for (const { cert, from } of completed.added) {
    warnings.push(`intermediate "${cert.subject}" added from ${from}: the file ends before it`);
    const weakness = signatureWeakness(cert);
    if (weakness !== undefined) {
      throw refuse('weak_signature', `intermediate "${cert.subject}" from ${from} is signed with ${weakness}; expected SHA-256 or stronger`);
    }
    checkKey(cert, CA_CURVES, `intermediate "${cert.subject}" from ${from}`, refuse);
  }
  return { certificate: servedCertificate(candidate.name, candidate.source, completed.chain, names), warnings };
}

/** The pool validation uses when given none: the system roots only. */
export function defaultIssuerPool(): IssuerPool {
  defaultIssuers ??= loadIssuerPool(null, '');
  return defaultIssuers;
}

let defaultIssuers: IssuerPool | undefined;

/**
 * The chain followed past its last certificate through the known CA
 * certificates, up to a root (which is not appended) or an issuer nobody
 * knows; the incomplete_chain rule when that leaves the leaf alone (see the
 * module comment).
 */
function completeChain(
  chain: readonly x509.X509Certificate[],
  issuers: IssuerPool,
  refuse: Refuse,
): { chain: x509.X509Certificate[]; added: { cert: x509.X509Certificate; from: string }[] } {
  const out = [...chain];
  const added: { cert: x509.X509Certificate; from: string }[] = [];
  const seen = new Set(out.map((c) => c.subject));
  for (let last = out[out.length - 1]!; !isSelfIssued(last) && out.length < MAX_CERTIFICATES; last = out[out.length - 1]!) {
    const known = issuers.issuerOf(new Uint8Array(last.rawData));
    if (known === undefined) {
      if (out.length > 1) break;
      const aki = last.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId;
      throw refuse(
        'incomplete_chain',
        `the chain is the leaf alone and its issuer "${last.issuer}"${aki === undefined ? '' : ` (authority key id ${formatKeyId(aki)})`} is not in it ` +
          'nor a known CA certificate (certStore.intermediates, the system roots): append the intermediate certificate(s) after the leaf',
      );
    }
    if (known.root) break;
    const cert = parseBlock(known.pem);
    // A cross-signed loop in the configured certificates ends here.
    if (seen.has(cert.subject)) break;
    seen.add(cert.subject);
    out.push(cert);
    added.push({ cert, from: known.from });
  }
  return { chain: out, added };
}

function formatKeyId(hex: string): string {
  return hex.toLowerCase().match(/../g)?.join(':') ?? hex;
}

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

function parseBlock(block: string): x509.X509Certificate {
  let cert = parsedBlocks.get(block);
  if (cert === undefined) {
    cert = new x509.X509Certificate(block);
    parsedBlocks.set(block, cert);
  }
  return cert;
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
function isSelfIssued(cert: x509.X509Certificate): boolean {
  return cert.subject === cert.issuer;
}

function isCa(cert: x509.X509Certificate): boolean {
  return cert.getExtension(x509.BasicConstraintsExtension)?.ca === true;
}

/** What is weak about `cert`'s signature algorithm, or undefined when it is SHA-256 or stronger. */
function signatureWeakness(cert: x509.X509Certificate): string | undefined {
  const algorithm = cert.signatureAlgorithm as Algorithm & { hash?: Algorithm };
  if (HASHLESS_SIGNATURES.has(algorithm.name)) return undefined;
  const hash = algorithm.hash?.name;
  if (hash === undefined) return SIGNATURE_OIDS[algorithm.name] ?? `an unrecognised signature algorithm (${algorithm.name})`;
  return STRONG_HASHES.has(hash) ? undefined : `${hash} (${algorithm.name})`;
}

function checkKey(cert: x509.X509Certificate, curves: Readonly<Record<string, string>>, what: string, refuse: Refuse): void {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: 'der', type: 'spki' });
  } catch (err) {
    throw refuse('weak_key', `${what} has a public key of a type this system cannot read`, err);
  }
  const details = key.asymmetricKeyDetails ?? {};
  const allowed = `RSA ≥ ${MIN_RSA_BITS} bits or EC ${Object.values(curves).join('/')}`;
  if (key.asymmetricKeyType === 'rsa') {
    const bits = details.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) throw refuse('weak_key', `${what} has an RSA-${bits} key; expected ${allowed}`);
    return;
  }
  if (key.asymmetricKeyType === 'ec') {
    const curve = details.namedCurve ?? 'unnamed';
    if (curves[curve] === undefined) throw refuse('weak_key', `${what} has an EC key on curve ${curve}; expected ${allowed}`);
    return;
  }
  throw refuse('weak_key', `${what} has a ${key.asymmetricKeyType ?? 'unknown'} key; expected ${allowed}`);
}

/**
 * The names to serve, lower-case and unique, each covered by a DNS SAN of the
 * leaf (wildcards per RFC 6125 §6.4.3). Without pinned names, the leaf's SANs
 * that no client could be served for are left out with a warning: one that
 * is not an LDH name (an IDN's U-label, a wildcard not alone in the leftmost
 * label), or a wildcard over a single label (`*.com`: RFC 6125 §7.2, which
 * clients refuse), which would otherwise take every unknown name under that
 * top-level domain from the default answer and from on-demand issuance.
 */
function servedNames(candidate: CertificateCandidate, leaf: x509.X509Certificate, refuse: Refuse, warnings: string[]): string[] {
  const sans = dnsNames(leaf);
  if (sans.length === 0) throw refuse('names', 'the leaf has no DNS subjectAltName (RFC 6125 §6.4.4: the common name is not used)');
  if (candidate.names === undefined) {
    const served = new Set<string>();
    const unservable: string[] = [];
    for (const san of sans) {
      const name = normaliseName(san);
      if (name !== undefined && unservableBecause(name) === undefined) served.add(name);
      else unservable.push(san);
    }
    if (unservable.length > 0) {
      const because = unservableBecause(normaliseName(unservable[0]!) ?? '');
      warnings.push(`${unservable.length} DNS name(s) of the leaf are not served (${listed(unservable.map((n) => JSON.stringify(n)))}): the first ${because}`);
    }
    if (served.size === 0) throw refuse('names', `the leaf has no DNS name that can be served (its DNS names: ${listed(sans)})`);
    return [...served];
  }
  if (candidate.names.length === 0) throw refuse('names', 'the entry lists no names to serve');
  const names = new Set<string>();
  // Only by SANs a client accepts: `*.com` covers `shop.com` for no browser (RFC 6125 §7.2).
  const covered = coveredBy(sans.filter((san) => unservableBecause(normaliseName(san) ?? '') === undefined));
  for (const raw of candidate.names) {
    const name = normaliseName(raw.trim());
    const because = name === undefined ? 'is not a DNS name' : unservableBecause(name);
    if (because !== undefined) throw refuse('names', `"${raw}" ${because}`);
    if (!covered(name!)) throw refuse('names', `the leaf does not cover "${name}" (its DNS names: ${listed(sans)})`);
    names.add(name!);
  }
  return [...names];
}

/** Why a normalised name cannot be served, or undefined when it can. */
function unservableBecause(name: string): string | undefined {
  if (!DNS_NAME.test(name) || name.length > 253) return 'is not a DNS name (letters, digits, hyphens; an IDN in its xn-- form)';
  if (name.startsWith('*.') && !name.slice(2).includes('.')) return 'is a wildcard over a top-level domain (RFC 6125 §7.2)';
  return undefined;
}

/**
 * The key_unknown and key_mismatch rules against the key server: it must hold
 * a key under the entry's key id, and that key must be the leaf's. Keys are
 * compared as keys, not bytes, so two DER spellings of one key agree.
 */
export async function checkKeyserverKey(
  candidate: Pick<CertificateCandidate, 'name' | 'source'>,
  certificate: Pick<ServedCertificate, 'keyId' | 'spki'>,
  lookup: ValidationContext['keyserverSpki'],
): Promise<void> {
  const refuse = refuser(candidate);
  const keyId = certificate.keyId;
  const held = await lookup(keyId, certificate.spki);
  if (held === undefined) throw refuse('key_unknown', `the key server holds no key with id ${keyId} (the leaf's key); import or generate it there first`);
  // Equal DER is the same key (the usual case, and ~1 ms cheaper than decoding both).
  let same = held.equals(certificate.spki);
  try {
    same ||= createPublicKey({ key: held, format: 'der', type: 'spki' }).equals(createPublicKey({ key: certificate.spki, format: 'der', type: 'spki' }));
  } catch (err) {
    throw refuse('key_mismatch', `the key server's public key for ${keyId} does not decode`, err);
  }
  if (!same) throw refuse('key_mismatch', `the key server's key ${keyId} is not the leaf's public key`);
}

/** The first few of `names`, then how many more: a message names a certificate's thousands of SANs in a line, not in 200 KB. */
function listed(names: readonly string[], shown = 10): string {
  return names.length <= shown ? names.join(', ') : `${names.slice(0, shown).join(', ')} and ${names.length - shown} more`;
}

function formatDuration(ms: number): string {
  const hours = Math.max(0, Math.floor(ms / 3_600_000));
  return hours >= 48 ? `${Math.floor(hours / 24)} days` : `${hours} hours`;
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!.slice(0, 200);
}
