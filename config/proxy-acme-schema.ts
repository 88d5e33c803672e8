/**
 * The "acme" section of the proxy's config file: managed certificates over
 * ACME (RFC 8555, proxy/acme/), the CA and account, the challenge types, the
 * renewal policy, and certificates on demand for names first seen in a
 * handshake. Resolved into AcmeConfig and OnDemandConfig
 * (config/proxy-config.ts).
 */
import { z } from 'zod';
import { acmeDirectory, HOST_NAME } from './proxy-values.js';
import { intIn, strict, text } from './schema-kit.js';

export const acmeSectionSchema = strict(
  {
    directory: acmeDirectory,
    caBundle: text('a PEM file of CAs trusted for the directory').nullable().optional(),
    contact: z.array(z.string().regex(/^mailto:[^@\s]+@[^@\s]+$/, { error: 'expected "mailto:someone@example.com"' })).optional(),
    eab: strict({ kid: text('the key id the CA gave'), hmacKeyFile: text('a file holding the base64url HMAC key') }, 'an object { "kid", "hmacKeyFile" }')
      .nullable()
      .optional(),
    challenges: z
      .array(z.enum(['http-01', 'tls-alpn-01'], { error: 'expected "http-01" or "tls-alpn-01"' }))
      .min(1, { error: 'expected at least one challenge type' })
      .optional(),
    keyType: z
      .enum(['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072', 'rsa-4096'], { error: 'expected ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096' })
      .optional(),
    keyserverConfig: text("the key server's config file").nullable().optional(),
    profile: text('an ACME profile name').nullable().optional(),
    timeoutMs: intIn(100, 600_000).optional(),
    orderTimeoutSeconds: intIn(5, 86_400).optional(),
    renewal: strict(
      {
        lifetimeFraction: z.number({ error: 'expected a number from 0.1 to 0.95' }).min(0.1).max(0.95).optional(),
        checkSeconds: intIn(1, 86_400).optional(),
        spreadSeconds: intIn(0, 2_592_000).optional(),
        maxConcurrent: intIn(1, 64).optional(),
        retryMinSeconds: intIn(1, 86_400).optional(),
        retryMaxSeconds: intIn(1, 2_592_000).optional(),
        jitter: z.number({ error: 'expected a number from 0 to 1' }).min(0).max(1).optional(),
        newKey: z.boolean({ error: 'expected true or false' }).optional(),
        keyGraceSeconds: intIn(0, 2_592_000).optional(),
      },
      'an object',
    ).optional(),
    onDemand: strict(
      {
        ask: z
          .url({ protocol: /^https?$/, error: 'expected an http(s) URL' })
          // Its user and password go out as Basic auth, percent-decoded (on-demand-ask.ts): a bad escape would fail there.
          .refine(decodableCredentials, { error: 'expected an http(s) URL whose user and password are percent-encoded (RFC 3986 §2.1)' })
          .nullable()
          .optional(),
        askTimeoutMs: intIn(100, 60_000).optional(),
        cnameTarget: z.string().regex(HOST_NAME, { error: 'expected a lower-case DNS name' }).nullable().optional(),
        resolver: text('a DNS server "host:port"').nullable().optional(),
        refusedSeconds: intIn(1, 604_800).optional(),
        maxOrdersPerHour: intIn(1, 100_000).optional(),
        maxOrdersPerDomainPerHour: intIn(1, 100_000).optional(),
        maxPendingChecks: intIn(1, 1_000).optional(),
        maxChecksPerClientPerMinute: intIn(1, 100_000).nullable().optional(),
        publicNamesOnly: z.boolean({ error: 'expected true or false' }).optional(),
      },
      'an object, or null',
    )
      .nullable()
      .optional(),
  },
  'an object { "directory", … }, or null',
);

/** Whether the URL's user and password percent-decode (never quoted in an error: they are credentials). */
function decodableCredentials(url: string): boolean {
  try {
    const { username, password } = new URL(url);
    decodeURIComponent(username);
    decodeURIComponent(password);
    return true;
  } catch {
    return false;
  }
}
