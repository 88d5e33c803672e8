/**
 * Which managed entries record a name, looked up in constant time: the
 * on-demand gate's first question about every name a handshake brings that
 * no certificate covers (maintain.ts isManaged), asked before any limit.
 *
 * Why an index: the question walked every managed entry's list, so each such
 * name cost the primary time in proportion to the entries (20,000 entries:
 * some 35 ms), and a client sending random names (a ClientHello each, no
 * crypto on either side) at a few dozen a second held the primary's event
 * loop: reloads, admin answers, renewals and the challenge board's
 * acknowledgements waited, and the workers' reports queued in their IPC
 * channels.
 *
 * Guarantees: `candidates(name)` lists every entry whose recorded names
 * cover `name` (listed, or under a listed one-label wildcard) as of the last
 * build; the caller checks each on the entry as it is now, so an entry
 * changed or forgotten since is never taken for one that covers the name. A
 * name recorded since the build is found once the index is rebuilt: at the
 * next question after `changed()` (the manager says so when it records or
 * orders names, and when the fleet's state is taken), or once the build is
 * MAX_AGE_MS old, whatever changed it. Cost: a build walks every entry's list
 * once; it happens at most once per change or per MAX_AGE_MS.
 */
import type { ManagedState } from './state.js';

/** A build is trusted this long without a word of a change (the fleet's state taken by a path that says nothing). */
const MAX_AGE_MS = 1_000;

export class RecordedNames {
  readonly #certificates: () => Readonly<Record<string, ManagedState>>;
  /** Each recorded name (a wildcard as `*.parent`) → the entries that record it. */
  #index = new Map<string, string[]>();
  #builtAt = Number.NEGATIVE_INFINITY;
  #stale = true;

  constructor(certificates: () => Readonly<Record<string, ManagedState>>) {
    this.#certificates = certificates;
  }

  /** The recorded names may have changed: the next question rebuilds the index. */
  changed(): void {
    this.#stale = true;
  }

  /** The entries whose recorded names covered `name` (exactly, or by a one-label wildcard) at the last build. */
  candidates(name: string): readonly string[] {
    const index = this.#current();
    const dot = name.indexOf('.');
    const exact = index.get(name) ?? [];
    const wildcard = dot > 0 ? (index.get(`*${name.slice(dot)}`) ?? []) : [];
    return wildcard.length === 0 ? exact : [...exact, ...wildcard];
  }

  #current(): ReadonlyMap<string, readonly string[]> {
    const now = performance.now();
    if (!this.#stale && now - this.#builtAt < MAX_AGE_MS) return this.#index;
    const index = new Map<string, string[]>();
    for (const [entry, managed] of Object.entries(this.#certificates())) {
      for (const domain of managed.domains) {
        const entries = index.get(domain);
        if (entries === undefined) index.set(domain, [entry]);
        else if (!entries.includes(entry)) entries.push(entry);
      }
    }
    this.#index = index;
    this.#builtAt = now;
    this.#stale = false;
    return index;
  }
}
