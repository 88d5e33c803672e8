/**
 * When to renew and how long to wait after a failure: pure functions of the
 * certificate, the config and the clock, so the policy is tested without a CA.
 *
 * - Renewal at `lifetimeFraction` of the lifetime (2/3: day 60 of 90, as Let's
 *   Encrypt advises), moved earlier by a per-name offset of up to
 *   `spreadSeconds` (at most a tenth of the lifetime), so certificates loaded
 *   together do not renew together.
 * - When the CA offers ARI (RFC 9773), its suggested window wins: a time
 *   chosen uniformly at random inside it (§4.2), renewing at once if that is
 *   already past; but never later than the lifetime's time, and at once when
 *   the window starts at or after the certificate's notAfter (a CA's bug, or a
 *   hostile one: followed, nothing was ordered until the certificate expired).
 * - After a failure: retryMin × 2^(failures−1) capped at retryMax, plus up to
 *   `jitter` of it at random (so retries of many certificates spread out),
 *   and never sooner than the CA's Retry-After (RFC 8555 §6.6).
 */
import { createHash } from 'node:crypto';
import type { AcmeConfig } from '../../config/proxy-schema.js';
import * as x509 from '../../keyserver/shared/x509.js';

export interface LeafTimes {
  readonly notBefore: number;
  readonly notAfter: number;
  /** RFC 9773 §4.1 certID: base64url(AKI keyIdentifier) "." base64url(serial), or undefined without an AKI. */
  readonly certId: string | undefined;
  readonly serial: string;
}

export function leafTimes(chainPem: string): LeafTimes {
  const leaf = new x509.X509Certificate(chainPem.slice(0, chainPem.indexOf('-----END CERTIFICATE-----') + 25));
  const aki = leaf.getExtension(x509.AuthorityKeyIdentifierExtension);
  const serial = leaf.serialNumber;
  const certId =
    aki?.keyId === undefined ? undefined : `${Buffer.from(aki.keyId, 'hex').toString('base64url')}.${Buffer.from(serial, 'hex').toString('base64url')}`;
  return { notBefore: leaf.notBefore.getTime(), notAfter: leaf.notAfter.getTime(), certId, serial };
}

/** A stable fraction in [0, 1) per name: the same name always gets the same place in the spread. */
function nameFraction(name: string): number {
  return createHash('sha256').update(name).digest().readUInt32BE(0) / 2 ** 32;
}

/** When the certificate should be renewed by its lifetime alone (ms since the epoch). */
export function renewalTime(name: string, leaf: Pick<LeafTimes, 'notBefore' | 'notAfter'>, renewal: AcmeConfig['renewal']): number {
  const lifetime = leaf.notAfter - leaf.notBefore;
  const spread = Math.min(renewal.spreadSeconds * 1000, lifetime / 10);
  return leaf.notBefore + lifetime * renewal.lifetimeFraction - spread * nameFraction(name);
}

/** A time inside an ARI suggested window, uniformly at random (RFC 9773 §4.2). */
export function ariTime(window: { start: Date; end: Date }, random: () => number = Math.random): number {
  return window.start.getTime() + (window.end.getTime() - window.start.getTime()) * random();
}

/**
 * When to renew by the CA's ARI window (ariTime), `byLifetime` (renewalTime) at the latest: the window only moves the renewal
 * earlier. A window starting at or after `notAfter` is not one for this certificate: renewed at once (`now`).
 */
export function ariRenewalTime(
  window: { start: Date; end: Date },
  leaf: Pick<LeafTimes, 'notAfter'>,
  byLifetime: number,
  now: number,
  random: () => number = Math.random,
): number {
  if (window.start.getTime() >= leaf.notAfter) return now;
  return Math.min(ariTime(window, random), byLifetime);
}

/** How long to wait after the `failures`-th consecutive failure. */
export function backoffMs(failures: number, renewal: AcmeConfig['renewal'], retryAfterMs?: number, random: () => number = Math.random): number {
  const base = Math.min(renewal.retryMaxSeconds * 1000, renewal.retryMinSeconds * 1000 * 2 ** Math.max(0, failures - 1));
  return Math.max(base * (1 + renewal.jitter * random()), retryAfterMs ?? 0);
}
