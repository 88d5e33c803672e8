/**
 * The usage rule of certificate validation (validate.ts): a leaf that TLS
 * clients refuse as a server's certificate whatever its chain, refused
 * before it replaces one they accept (a client certificate or a CA
 * certificate given for fullchain.pem would otherwise fail every handshake
 * for its names until the next renewal).
 *
 *   - an extended key usage without id-kp-serverAuth (nor
 *     anyExtendedKeyUsage): RFC 5280 §4.2.1.12, a certificate "MUST only be
 *     used for one of the purposes indicated"; OpenSSL ("unsupported
 *     certificate purpose"), the browsers and Go refuse it;
 *   - a CA certificate (basicConstraints cA, RFC 5280 §4.2.1.9) issued by
 *     another CA: Firefox refuses it as a server's certificate
 *     (MOZILLA_PKIX_ERROR_CA_CERT_USED_AS_END_ENTITY). A self-signed one is
 *     left alone, as `openssl req -x509` makes them by default.
 */
import * as x509 from '../../keyserver/shared/x509.js';
import type { Refuse } from './candidate.js';
import { isSelfIssued } from './chain.js';

/** id-kp-serverAuth (RFC 5280 §4.2.1.12). */
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
/** anyExtendedKeyUsage (RFC 5280 §4.2.1.12). */
const ANY_USAGE = '2.5.29.37.0';

/** Refuses (reason `usage`) a leaf that TLS clients do not accept as a server's certificate. */
export function checkLeafUsage(leaf: x509.X509Certificate, refuse: Refuse): void {
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku !== null && !eku.usages.some((u) => u === SERVER_AUTH || u === ANY_USAGE)) {
    throw refuse(
      'usage',
      `the leaf's extended key usage (${eku.usages.join(', ')}) does not include TLS server authentication (${SERVER_AUTH}); clients refuse it as a server's certificate`,
    );
  }
  if (leaf.getExtension(x509.BasicConstraintsExtension)?.ca === true && !isSelfIssued(leaf)) {
    throw refuse(
      'usage',
      `the leaf "${leaf.subject}" is a CA certificate (basicConstraints cA); clients refuse a CA certificate as a server's: is this the intermediate?`,
    );
  }
}
