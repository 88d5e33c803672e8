/**
 * A certificate the proxy serves: its chain as loaded from PEM, the names it
 * covers and the key id under which the key server holds its private key.
 *
 * The key id is derived from the leaf, never configured: the SHA-256 of the
 * leaf's SubjectPublicKeyInfo (the key server's key id), so a chain can only
 * ever be served with the key that matches it.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CertificateError } from './errors.js';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import * as x509 from '../../keyserver/shared/x509.js';

export interface ServedCertificate {
  readonly name: string;
  readonly source: string;
  /** The chain as PEM, leaf first. */
  readonly chainPem: string;
  readonly leaf: x509.X509Certificate;
  readonly chain: readonly x509.X509Certificate[];
  /**
   * The names this certificate is served for: DNS names from the leaf's
   * subjectAltName (RFC 6125 §6.4.4: the CN is not consulted when SANs exist),
   * or the subset its store entry names (proxy/certs/served-names.ts).
   */
  readonly names: readonly string[];
  readonly keyId: string;
  readonly spki: Buffer;
  readonly serial: string;
  readonly notAfter: Date;
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g;

export function loadCertificateFile(name: string, path: string): ServedCertificate {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CertificateError(path, `cannot read the chain: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { cause: err });
  }
  return parseCertificateChain(name, text, path);
}

/** Parses a PEM chain (leaf first). Refuses anything but CERTIFICATE blocks, naming only the block's label. */
export function parseCertificateChain(name: string, text: string, source: string): ServedCertificate {
  const blocks = [...text.matchAll(PEM_BLOCK)];
  if (blocks.length === 0) throw new CertificateError(source, 'no PEM certificate found');
  const chain: x509.X509Certificate[] = [];
  for (const [index, block] of blocks.entries()) {
    const label = block[1] ?? '';
    // A private key pasted into a chain file is refused without echoing it.
    if (label !== 'CERTIFICATE') {
      throw new CertificateError(source, `block ${index + 1} is a "${label}", expected only CERTIFICATE blocks`, { reason: 'private_key' });
    }
    try {
      chain.push(new x509.X509Certificate(block[0]));
    } catch (err) {
      throw new CertificateError(source, `certificate ${index + 1} does not parse: ${(err as Error).message}`, { cause: err });
    }
  }
  const names = dnsNames(chain[0]!);
  if (names.length === 0) throw new CertificateError(source, 'the leaf certificate has no DNS subjectAltName', { reason: 'names' });
  return servedCertificate(name, source, chain, names);
}

/** The DNS names in `cert`'s subjectAltName, lower-case, in certificate order. */
export function dnsNames(cert: x509.X509Certificate): string[] {
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  return san?.names.items.filter((n) => n.type === 'dns').map((n) => n.value.toLowerCase()) ?? [];
}

/** A ServedCertificate from an already ordered chain (leaf first) and the names it is served for. */
export function servedCertificate(name: string, source: string, chain: readonly x509.X509Certificate[], names: readonly string[]): ServedCertificate {
  const leaf = chain[0];
  assert(leaf !== undefined, 'a served chain holds at least its leaf');
  const spki = Buffer.from(leaf.publicKey.rawData);
  return {
    name,
    source,
    chainPem: chain.map((c) => c.toString('pem')).join('\n') + '\n',
    leaf,
    chain,
    names,
    keyId: keyIdOf(spki),
    spki,
    serial: leaf.serialNumber,
    notAfter: leaf.notAfter,
  };
}
