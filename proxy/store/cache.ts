/**
 * The last good state of the fleet's store on this node's disk, so that a
 * node restarted while etcd is away still serves what it served: the
 * certificate chains, their metadata and the routes, with the etcd revision
 * they were read at. Nothing secret is ever in it: session-ticket keys are
 * kept out by the caller (mirror.ts), and private keys never reach the
 * proxy at all. One JSON file in the state directory, written atomically
 * as the certificate store writes its files (temp file, fsync, rename:
 * certs/store-files.ts), 0644 like them.
 *
 * The revision is also this node's floor: a snapshot of etcd older than one
 * the node has already served is refused (etcd restored from an old backup,
 * a lagging member), so no node ever goes back in time.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { writeAtomic } from '../certs/store-files.js';

export interface CachedState {
  readonly prefix: string;
  readonly revision: number;
  /** Key (below the prefix) → value, as etcd held them at `revision`. */
  readonly entries: Readonly<Record<string, { readonly value: string; readonly modRevision: number }>>;
}

export const CACHE_FILE = 'fleet-cache.json';

/**
 * The cached state for `prefix`, or undefined when there is none, it is unreadable, or it belongs to another prefix.
 * An entry that is not a value with its revision (a hand edit, a broken disk) is left out: the mirror's readers take
 * every item for a string value, and one such entry made every reload throw until etcd answered.
 */
export function readCache(file: string, prefix: string): CachedState | undefined {
  try {
    const parsed = JSON.parse(readFileSync(file, 'utf8')) as Partial<CachedState> | null;
    if (parsed?.prefix !== prefix || !Number.isSafeInteger(parsed.revision) || typeof parsed.entries !== 'object' || parsed.entries === null) return undefined;
    const entries = Object.entries(parsed.entries as Record<string, unknown>).filter(
      ([, e]) =>
        typeof e === 'object' &&
        e !== null &&
        typeof (e as { value?: unknown }).value === 'string' &&
        Number.isSafeInteger((e as { modRevision?: unknown }).modRevision),
    );
    return { prefix, revision: parsed.revision as number, entries: Object.fromEntries(entries) as CachedState['entries'] };
  } catch {
    return undefined;
  }
}

export function writeCache(file: string, state: CachedState): void {
  // The state directory's, its owner's alone (README: stateDir).
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeAtomic(path.dirname(file), file, JSON.stringify(state), 0o600);
}
