/**
 * Who a connection's client is, and which keys it may use.
 *
 * Over mutual TLS the identity is the verified client certificate: the first
 * configured client whose every `match` field holds (subject CN, a SAN DNS
 * name or URI, or the SHA-256 of the certificate's SPKI) names it. A
 * certificate from the right CA that matches no client may connect and ping
 * but use no key, so a mis-provisioned proxy fails loudly per request (with an
 * audit line) rather than being cut off silently.
 *
 * Over the unix socket the identity is the socket's file mode: whoever can open
 * it is the local client, with the keys listed for the socket.
 */
import { createHash, type X509Certificate } from 'node:crypto';

export interface ClientRule {
  readonly name: string;
  readonly match: { readonly commonName?: string; readonly dnsName?: string; readonly uri?: string; readonly spkiSha256?: string };
  readonly keys: '*' | readonly string[];
}

export interface ClientIdentity {
  readonly transport: 'unix' | 'tls';
  /** The matching rule's name, or a description of an unmatched certificate, for logs only. */
  readonly name: string;
  /**
   * The configured client that matched, `unix-socket`, or `unmatched`: one of
   * a bounded set of names (unlike `name`), so rate-limited log lines can be
   * counted per client (service.ts) without a table growing with certificates.
   */
  readonly rule: string;
  /** null means every key. */
  readonly keys: ReadonlySet<string> | null;
}

export function unixIdentity(keys: '*' | readonly string[]): ClientIdentity {
  return { transport: 'unix', name: 'unix-socket', rule: 'unix-socket', keys: keys === '*' ? null : new Set(keys) };
}

export function tlsIdentity(cert: X509Certificate, rules: readonly ClientRule[]): ClientIdentity {
  const facts = certificateFacts(cert);
  for (const rule of rules) {
    const { commonName, dnsName, uri, spkiSha256 } = rule.match;
    if (commonName !== undefined && !facts.commonNames.includes(commonName)) continue;
    if (dnsName !== undefined && !facts.dnsNames.includes(dnsName)) continue;
    if (uri !== undefined && !facts.uris.includes(uri)) continue;
    if (spkiSha256 !== undefined && facts.spkiSha256 !== spkiSha256) continue;
    return { transport: 'tls', name: rule.name, rule: rule.name, keys: rule.keys === '*' ? null : new Set(rule.keys) };
  }
  const cn = facts.commonNames[0] ?? '(no CN)';
  return { transport: 'tls', name: `unmatched certificate CN=${cn} spki-sha256=${facts.spkiSha256}`, rule: 'unmatched', keys: new Set() };
}

export function mayUseKey(identity: ClientIdentity, keyId: string): boolean {
  return identity.keys === null || identity.keys.has(keyId);
}

interface CertificateFacts {
  readonly commonNames: string[];
  readonly dnsNames: string[];
  readonly uris: string[];
  readonly spkiSha256: string;
}

/** Reads node:crypto's already-parsed subject and SAN text: one `KEY=value` per line, `DNS:a, URI:b`. */
function certificateFacts(cert: X509Certificate): CertificateFacts {
  const commonNames = cert.subject
    .split('\n')
    .filter((line) => line.startsWith('CN='))
    .map((line) => line.slice(3));
  const sans = (cert.subjectAltName ?? '').split(', ');
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return {
    commonNames,
    dnsNames: sans.filter((san) => san.startsWith('DNS:')).map((san) => san.slice(4)),
    uris: sans.filter((san) => san.startsWith('URI:')).map((san) => san.slice(4)),
    spkiSha256: createHash('sha256').update(spki).digest('hex'),
  };
}
