/**
 * What a worker serves now, and the transaction that replaces it: `apply`
 * takes a delta (spec.ts) from the cluster primary or the worker's own
 * source, builds what the new state needs, and swaps the one reference
 * (state.ts) only when all of it is ready. A failure leaves the current
 * state serving and throws, naming the certificate at fault.
 *
 * Ready means: the secure contexts of a renewal are built (and its keyless
 * key checked against the chain) before the swap, so no handshake pays for
 * them; the origin pools have read the new CA files (a bad one refuses the
 * delta, not a request). A delta larger than EAGER_CONTEXTS certificates (a
 * start with thousands of entries) builds none: each is built on its first
 * handshake (about a millisecond, once), so readiness does not wait on
 * thousands of them and memory stays bounded by contextCacheSize. A pack's
 * whole state (a start, a rebase: distribute.ts) lists no changes: the
 * cached contexts of certificates it no longer serves in the same version are
 * dropped after the swap (a look at each cached context, not at each
 * certificate), and the stapled ones are tracked anew where they changed.
 *
 * After the swap: the old certificates' contexts and staples are dropped
 * (connections that hold an old context keep it alive; a staple whose leaf
 * and issuer are served on, in another chain, is kept), and staples of the
 * new ones are fetched in the background. Listeners read the state per
 * connection (tls/listener.ts): the default certificate and every name
 * switch with it, nothing else to update.
 *
 * Contract: deltas arrive in generation order, one at a time. Synchronous.
 */
import type { TlsProfileName } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { ServedCertificate } from '../certs/certificate.js';
import { CertificateError } from '../certs/errors.js';
import type { OriginPools } from '../http/forward.js';
import { chainDigest, type SecureContextCache } from '../tls/contexts.js';
import type { OcspStapler } from '../tls/ocsp.js';
import type { CertificateRecord, ServingDelta } from './spec.js';
import { applyDelta, EMPTY_STATE, type ServingState } from './state.js';

/** Deltas up to this many certificates (renewals) get their contexts built before the swap, whatever the cache's room. */
const EAGER_CONTEXTS = 64;

export interface LiveServingOptions {
  readonly contexts: SecureContextCache;
  /** Every profile a listener of the worker runs: a certificate has one context per profile. */
  readonly profiles: readonly TlsProfileName[];
  readonly pools: Pick<OriginPools, 'retain'>;
  /** Present when OCSP stapling is on. */
  readonly stapler: OcspStapler | undefined;
  readonly log: Logger;
}

export class LiveServing {
  readonly #options: LiveServingOptions;
  #state: ServingState = EMPTY_STATE;

  constructor(options: LiveServingOptions) {
    this.#options = options;
  }

  get state(): ServingState {
    return this.#state;
  }

  /** Whether `certificate` (that very object: the stapler knows it by identity) is a stapled one served now. */
  readonly #stillStapled = (certificate: ServedCertificate): boolean => this.#state.layers.stapled.get(certificate.name) === certificate;

  apply(delta: ServingDelta): void {
    const { contexts, profiles, pools, stapler, log } = this.#options;
    const next = applyDelta(this.#state, delta, (name, kept, dropped) =>
      log.warn({ name, kept, dropped }, 'two certificates cover the same name; the first listed serves it'),
    );
    const eager = next.changed.length <= EAGER_CONTEXTS ? next.changed : [];
    const discard = (): void => {
      for (const certificate of eager) for (const profile of profiles) contexts.discard(profile, certificate);
    };
    let prepared = 0;
    try {
      for (const certificate of eager) {
        for (const profile of profiles) contexts.prepare(profile, certificate);
        prepared++;
      }
    } catch (err) {
      discard();
      const failed = eager[prepared]!;
      throw new CertificateError(failed.source, `certificate '${failed.name}' cannot be served: ${(err as Error).message}`, { cause: err });
    }
    try {
      // Pools of origins no longer routed to close once their requests finish.
      pools.retain(delta.routing.domains, delta.routing.originCas);
    } catch (err) {
      discard();
      throw err;
    }
    const previous = this.#state;
    this.#state = next.state;
    if (next.rebased) {
      const records = next.state.records;
      // The chain too: a re-bundled chain with the same leaf (another intermediate) must not keep the old context.
      contexts.retain((name, keyId, serial, chain) => {
        const record = records.get(name);
        return record !== undefined && record.keyId === keyId && record.serial === serial && chainDigest(record.chainPem) === chain;
      });
      if (stapler === undefined) return;
      const same = (a: ServedCertificate | undefined, b: ServedCertificate): boolean => a !== undefined && a.serial === b.serial && a.keyId === b.keyId;
      for (const [name, old] of previous.layers.stapled) if (!same(next.state.layers.stapled.get(name), old)) stapler.untrack(old);
      // Every one, unchanged ones too: the stapler knows a certificate by identity, and these are new objects (an unchanged leaf keeps its staple).
      trackInBackground(stapler, [...next.state.layers.stapled.values()], this.#stillStapled, log);
      return;
    }
    for (const name of [...next.removed, ...next.changed.map((c) => c.name)]) {
      const old = previous.certificates.get(name);
      if (old === undefined) continue;
      contexts.forget(old);
      // The same leaf and issuer in another chain (re-bundled): the loop and its staple go on, the new object tracked
      // on them below. Untracked, the staple was dropped and the loop began anew, its replay guard (the newest
      // thisUpdate taken) with it: no staple until the responder answered again.
      const was = previous.records.get(name);
      if (stapler !== undefined && was?.stapled === true && !sameStapledLeaf(was, next.state.records.get(name))) stapler.untrack(old);
    }
    for (const certificate of eager) for (const profile of profiles) contexts.commit(profile, certificate);
    // Only leaves the primary found an OCSP responder in: parsing all of them here would cost each worker seconds and megabytes at 10,000 entries.
    if (stapler !== undefined)
      trackInBackground(
        stapler,
        next.changed.filter((c) => next.state.records.get(c.name)?.stapled === true),
        this.#stillStapled,
        log,
      );
  }
}

/** Whether `next` staples the leaf `was` stapled, with the same issuer: compared as PEM text, nothing parsed. */
function sameStapledLeaf(was: CertificateRecord, next: CertificateRecord | undefined): boolean {
  if (next?.stapled !== true || next.serial !== was.serial || next.keyId !== was.keyId) return false;
  const [leaf, issuer] = leafAndIssuer(was.chainPem);
  const [nextLeaf, nextIssuer] = leafAndIssuer(next.chainPem);
  return leaf !== undefined && issuer !== undefined && leaf === nextLeaf && issuer === nextIssuer;
}

/** The first two certificates of a PEM chain, their base64 without line breaks. */
function leafAndIssuer(chainPem: string): (string | undefined)[] {
  const blocks = chainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  return [blocks[0], blocks[1]].map((block) => block?.replace(/\s+/g, ''));
}

/**
 * Staple fetching parses each leaf: spread over event-loop turns so a start
 * with many certificates stays responsive. A batch tracks only what is still
 * served (`current`, asked when it runs): a change applied before it ran (a
 * removal, a replacement) untracked the old certificate before it was ever
 * tracked, and tracking it then started a refresh loop for a certificate no
 * longer served, fetching until the worker exited. A certificate the stapler
 * cannot track is logged and skipped: thrown from a setImmediate callback it
 * would be uncaught, which ends the worker.
 */
function trackInBackground(
  stapler: OcspStapler,
  certificates: readonly ServedCertificate[],
  current: (certificate: ServedCertificate) => boolean,
  log: Logger,
): void {
  const BATCH = 100;
  const step = (from: number): void => {
    for (const certificate of certificates.slice(from, from + BATCH)) {
      if (!current(certificate)) continue;
      try {
        stapler.track(certificate);
      } catch (err) {
        log.warn({ certificate: certificate.name, err: (err as Error).message }, 'OCSP stapling not started for this certificate');
      }
    }
    if (from + BATCH < certificates.length) setImmediate(() => step(from + BATCH));
  };
  if (certificates.length > 0) step(0);
}
