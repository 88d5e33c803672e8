/**
 * One preparing pass's tally (prepare.ts): the records it will serve, the
 * refusals it says, the refusals it carries over unsaid, its warnings and
 * the certificates still to judge. Its parts (prepare-config.ts,
 * prepare-store.ts, prepare-judge.ts, serve-last.ts) add to one tally, so
 * the rule every one of them follows lives here once: a refusal, a carried
 * refusal or a file left unsettled never removes what serves (the previous
 * record of the name stays).
 */
import { createHash } from 'node:crypto';
import type { CertificateCandidate } from '../certs/validate.js';
import { SETTLE_LIMIT_MS } from './settling-read.js';
import type { Pending } from './prepare-types.js';
import type { CertificateRecord, Refusal } from './spec.js';

export class PassTally {
  readonly records = new Map<string, CertificateRecord>();
  readonly refused: Refusal[] = [];
  readonly pending: Pending[] = [];
  readonly warnings: { name: string; message: string }[] = [];
  /** Refusals said by an earlier pass, carried over unsaid (to explain an `sni.default` not served). */
  readonly carriedRefusals = new Map<string, Refusal>();
  readonly changed: string[] = [];
  readonly fromKept = new Set<string>();

  constructor(readonly previous: ReadonlyMap<string, CertificateRecord>) {}

  /** A refusal said now; what served of the entry serves on. */
  refuse(name: string, source: string, reason: Refusal['reason'], message: string): void {
    this.refused.push({ name, source, reason, message });
    this.#keep(name);
  }

  /** A refusal said before, carried over unsaid; what served of the entry serves on. */
  carryOver(refusal: Refusal): void {
    this.carriedRefusals.set(refusal.name, refusal);
    this.#keep(refusal.name);
  }

  /** A file that kept changing while read: nothing concluded, what served serves on. */
  leave(name: string, what: string): void {
    this.warnings.push({ name, message: `${what} kept changing for ${SETTLE_LIMIT_MS / 1000} s while read; it is read again once it stops` });
    this.#keep(name);
  }

  #keep(name: string): void {
    const kept = this.previous.get(name);
    if (kept !== undefined) this.records.set(name, kept);
  }
}

/** What identifies a store entry's input: its chain text and the names and key id it pins (a verdict's key, certs/verdicts.ts). */
export function storeInputId(candidate: CertificateCandidate): string {
  return `store:${sha256(`${candidate.chainText}\0${JSON.stringify(candidate.names ?? null)}\0${candidate.keyId ?? ''}`)}`;
}

export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
