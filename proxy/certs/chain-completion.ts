/**
 * A chain followed past its last certificate through the known CA
 * certificates (issuers.ts), and the incomplete_chain rule of certificate
 * validation (validate.ts).
 *
 * A chain that ends at a certificate whose issuer is not in it is normal (the
 * root is not sent), and nothing in a certificate says whether its issuer is
 * a root. But a leaf alone, not self-signed, is almost always a chain cut
 * short (a file read between the leaf's write and the rest's, or a cert.pem
 * given for fullchain.pem): the CA/B Baseline Requirements §6.1.7 keep roots
 * from issuing leaves, so its issuer is an intermediate that clients do not
 * hold, and every handshake would fail verification. It is completed from the
 * known CA certificates when they hold its issuer path, and refused
 * otherwise. The same completion extends a longer chain whose last
 * certificate's issuer is a known intermediate; one ending elsewhere is
 * served as given.
 */
import * as x509 from '../../keyserver/shared/x509.js';
import type { Refuse } from './candidate.js';
import { isSelfIssued, MAX_CERTIFICATES, parseBlock } from './chain.js';
import { type IssuerPool, loadIssuerPool } from './issuers.js';

export interface CompletedChain {
  readonly chain: x509.X509Certificate[];
  /** The certificates appended, each with where it was found (for the warning and the rules it must still pass). */
  readonly added: { cert: x509.X509Certificate; from: string }[];
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
 * knows; the incomplete_chain rule when that leaves the leaf alone.
 */
export function completeChain(chain: readonly x509.X509Certificate[], issuers: IssuerPool, refuse: Refuse): CompletedChain {
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
