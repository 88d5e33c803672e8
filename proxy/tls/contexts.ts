/**
 * Secure contexts by (profile, certificate), in an LRU bounded by count.
 *
 * A context is built once per certificate and profile, before first use for
 * every certificate when the cache is large enough (`warm`), else on the first
 * handshake that needs it (a one-time cost of parsing the chain and binding
 * the keyless key, about a millisecond); never once per handshake. Evicted
 * contexts are rebuilt on demand; connections using one keep it alive.
 *
 * Reloads: `prepare` builds a new certificate's contexts beside the cache
 * (failing there, before anything is swapped), `commit` moves them in once
 * the worker's serving state points at the new certificate, and `forget`
 * drops the old one's. Keys include the key id, the serial and a digest of
 * the chain, so old and new never share an entry, a chain-only change (the
 * same leaf, another intermediate) included: `retain` after a whole state
 * kept such a context, and running workers served the old chain.
 * Connections that hold an old context keep it alive.
 *
 * Concurrency: worker-local, synchronous.
 */
import { constants, createHash } from 'node:crypto';
import tls from 'node:tls';
import { LRUCache } from 'lru-cache';
import type { TlsProfileName } from '../../config/proxy-schema.js';
import type { ServedCertificate } from '../certs/certificate.js';
import { TLS_PROFILES } from './profile.js';
import { type TicketKeyLookup, type TicketKeyRing, useTicketKeyRing } from './tickets.js';

export type KeyPemFor = (certificate: ServedCertificate) => string | Buffer;

/** Session-ticket keys every context built here uses (tickets.ts), so a socket secured directly with one shares and renews tickets. */
export interface ContextTickets {
  readonly ring: TicketKeyRing;
  readonly onLookup?: (lookup: TicketKeyLookup) => void;
}

export class SecureContextCache {
  readonly #cache: LRUCache<string, tls.SecureContext>;
  readonly #keyPemFor: KeyPemFor;
  readonly #extra: tls.SecureContextOptions;
  readonly #prepared = new Map<string, tls.SecureContext>();
  readonly #tickets: ContextTickets | undefined;
  readonly #bare = new Map<TlsProfileName, tls.SecureContext>();

  constructor(max: number, keyPemFor: KeyPemFor, extra: tls.SecureContextOptions = {}, tickets?: ContextTickets) {
    this.#cache = new LRUCache({ max });
    this.#keyPemFor = keyPemFor;
    this.#extra = extra;
    this.#tickets = tickets;
  }

  get size(): number {
    return this.#cache.size;
  }

  get(profile: TlsProfileName, certificate: ServedCertificate): tls.SecureContext {
    const key = cacheKey(profile, certificate);
    let context = this.#cache.get(key);
    if (context === undefined) {
      context = this.build(profile, certificate);
      this.#cache.set(key, context);
    }
    return context;
  }

  /** Builds without caching: for validating a certificate before it replaces another. */
  build(profile: TlsProfileName, certificate: ServedCertificate): tls.SecureContext {
    const context = tls.createSecureContext({
      ...TLS_PROFILES[profile],
      ...this.#extra,
      sessionIdContext: sessionIdContext(profile, certificate),
      cert: certificate.chainPem,
      key: this.#keyPemFor(certificate),
    });
    if (this.#tickets !== undefined) useTicketKeyRing(context, this.#tickets.ring, this.#tickets.onLookup);
    return context;
  }

  /**
   * A context with the profile and no certificate, built once per profile: a
   * handshake on it fails (no certificate to show) unless an SNI callback
   * lends it a certificate's (the listener's path for a ClientHello it could
   * not read). No session resumes on it and none is issued there
   * (SSL_OP_NO_TICKET; Node keeps no session cache): OpenSSL decides on
   * resumption before the SNI callback picks the certificate, in this
   * context's session-id context, so a session made with one certificate
   * would resume under another's name (RFC 6066 §3), and a resumed
   * connection skips the callback, so its certificate would be unknown.
   */
  withoutCertificate(profile: TlsProfileName): tls.SecureContext {
    let context = this.#bare.get(profile);
    if (context === undefined) {
      const options = { ...TLS_PROFILES[profile], ...this.#extra };
      context = tls.createSecureContext({ ...options, secureOptions: (options.secureOptions ?? 0) | constants.SSL_OP_NO_TICKET });
      this.#bare.set(profile, context);
    }
    return context;
  }

  /** Builds and caches contexts for `certificates` while the cache has room. */
  warm(profiles: readonly TlsProfileName[], certificates: Iterable<ServedCertificate>): void {
    for (const certificate of certificates) {
      for (const profile of profiles) {
        if (this.#cache.size >= this.#cache.max) return;
        this.get(profile, certificate);
      }
    }
  }

  /** Builds a context to be committed; throws when the certificate cannot be served with its key. */
  prepare(profile: TlsProfileName, certificate: ServedCertificate): void {
    const key = cacheKey(profile, certificate);
    if (!this.#cache.has(key)) this.#prepared.set(key, this.build(profile, certificate));
  }

  /** Caches a prepared context (builds it if it was not prepared). */
  commit(profile: TlsProfileName, certificate: ServedCertificate): void {
    const key = cacheKey(profile, certificate);
    const prepared = this.#prepared.get(key);
    this.#prepared.delete(key);
    if (prepared !== undefined) this.#cache.set(key, prepared);
  }

  /** Drops a prepared context that will not be committed. */
  discard(profile: TlsProfileName, certificate: ServedCertificate): void {
    this.#prepared.delete(cacheKey(profile, certificate));
  }

  /** How many more contexts fit before the least recently used are evicted. */
  get room(): number {
    return Math.max(0, this.#cache.max - this.#cache.size - this.#prepared.size);
  }

  /**
   * Keeps only the contexts of certificates `current` still serves in that
   * version, chain included (`chain`: chainDigest of the context's chain),
   * after a whole new state; O(cached contexts).
   */
  retain(current: (name: string, keyId: string, serial: string, chain: string) => boolean): void {
    for (const key of [...this.#cache.keys()]) {
      const [, keyId = '', serial = '', chain = '', name = ''] = key.split('\0');
      if (!current(name, keyId, serial, chain)) this.#cache.delete(key);
    }
  }

  /** Drops every context of a certificate (it was replaced or removed). */
  forget(certificate: ServedCertificate): void {
    const suffix = `\0${certificate.keyId}\0${certificate.serial}\0${chainOf(certificate)}\0${certificate.name}`;
    for (const key of [...this.#cache.keys()]) if (key.endsWith(suffix)) this.#cache.delete(key);
  }
}

/**
 * One session-id context per profile and certificate name: OpenSSL resumes a
 * session (a ticket: the ring is the same for every certificate) only in the
 * context it was made in, so a session authenticated by one certificate never
 * resumes on a connection served another one (RFC 6066 §3: not for another
 * server name; RFC 8446 §4.6.1: only for a name the original certificate is
 * valid for). By name, not serial: a renewed certificate keeps its sessions,
 * and every node of a fleet derives the same one. OpenSSL takes at most 32 bytes.
 */
function sessionIdContext(profile: TlsProfileName, certificate: ServedCertificate): string {
  return createHash('sha256').update(`${TLS_PROFILES[profile].sessionIdContext}\0${certificate.name}`).digest('hex').slice(0, 32);
}

function cacheKey(profile: TlsProfileName, certificate: ServedCertificate): string {
  return `${profile}\0${certificate.keyId}\0${certificate.serial}\0${chainOf(certificate)}\0${certificate.name}`;
}

/** A chain's identity in a cache key: the same PEM text, the same digest (a serving record's chainPem is its certificate's). */
export function chainDigest(chainPem: string): string {
  return createHash('sha256').update(chainPem).digest('base64url').slice(0, 22);
}

/** Once per certificate object: cacheKey runs on every handshake. */
const chains = new WeakMap<ServedCertificate, string>();

function chainOf(certificate: ServedCertificate): string {
  let digest = chains.get(certificate);
  if (digest === undefined) chains.set(certificate, (digest = chainDigest(certificate.chainPem)));
  return digest;
}
