/**
 * The client identity of a mutual-TLS key-server connection, judged where the
 * key server and the files can be named: OpenSSL refused a key that is no key
 * ("DECODER routines::unsupported") or another certificate's ("x509
 * certificate routines::key values mismatch") as the connection's context was
 * built, naming neither the setting nor a file (nor, in a pool, which
 * server). Used by the client (client.ts) at each connection and by the
 * proxy's native bridge (proxy/keyless/bridge.ts) as a worker starts and at
 * each renewal of the files (proxy/keyless/tcp-files.ts). Neither file's
 * content is ever quoted.
 *
 * A keyless key (KEYEDGE KEYLESS KEY) is refused by name: the connection's
 * TLS 1.3 CertificateVerify would be signed through the native bridge, from
 * inside a sign of the bridge's, which waits for ever on its own lock. Once
 * the bridge's provider is registered such a key decodes and matches its
 * certificate, so the checks below would take it (a worker's renewal did).
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { KeyedgeError } from '../shared/errors.js';
import { isKeylessPem, KEYLESS_PEM_LABEL } from '../shared/keyless-pem.js';

/** The client certificate and key of key server `name` (the proxy's servers[].name; an address otherwise), their files and text. */
export interface ClientIdentity {
  readonly name: string;
  readonly certFile: string;
  readonly keyFile: string;
  readonly certPem: string | Buffer;
  readonly keyPem: string | Buffer;
}

/** Throws KEYEDGE_ERR_CONFIG naming the key server, both settings and both files unless the key is an unencrypted PEM key of the certificate, and no keyless key. */
export function assertClientKeyMatches(identity: ClientIdentity): void {
  if (isKeylessPem(identity.keyPem)) {
    throw new KeyedgeError(
      'KEYEDGE_ERR_CONFIG',
      `key server ${identity.name}: its client key ${identity.keyFile} (tcp.key) is a keyless key (${KEYLESS_PEM_LABEL}): the client key of a key server connection must be a local private key`,
    );
  }
  let matches = false;
  try {
    matches = new X509Certificate(identity.certPem).checkPrivateKey(createPrivateKey(identity.keyPem));
  } catch {
    // Not a certificate, or not a key: it matches nothing.
  }
  if (!matches) {
    throw new KeyedgeError(
      'KEYEDGE_ERR_CONFIG',
      `key server ${identity.name}: its client key ${identity.keyFile} (tcp.key) is not an unencrypted PEM private key matching its certificate ${identity.certFile} (tcp.cert)`,
    );
  }
}
