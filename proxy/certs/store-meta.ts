/**
 * A certificate store entry's shape, whatever keeps it (the directory,
 * store.ts; the fleet's etcd, store/etcd-store.ts): its name rule, what a
 * listing and a read describe, and its metadata (`<name>.json`, or the
 * `meta` of an etcd entry) with the one schema both check it against, so an
 * entry means the same in either home.
 */
import { lstatSync } from 'node:fs';
import { z } from 'zod';
import { formatIssues } from '../../config/load.js';
import { CertificateError } from './errors.js';
import { checkMetaFile, errno, readCheckedFile } from './store-files.js';

/** What `<name>.json` holds; every field optional. */
export interface StoreMeta {
  /** The names the entry serves; default: the leaf's DNS SANs. */
  readonly names?: readonly string[];
  /** Pinned key id (hex SHA-256 of the SPKI): a chain for another key is refused. */
  readonly keyId?: string;
  /** ISO 8601 times, for operators. */
  readonly addedAt?: string;
  readonly replacedAt?: string;
}

export interface StoreEntryRef {
  readonly name: string;
  readonly chainPath: string;
  readonly metaPath: string;
  /** Of the chain file (the link's target when it is a symlink). */
  readonly mtimeMs: number;
  readonly size: number;
  /** Of the metadata file; undefined when there is none. */
  readonly metaMtimeMs: number | undefined;
  /**
   * Identity of both files as stat describes them: device, inode, size,
   * mtime and ctime of the chain (stat: the target) and of the link itself
   * when the chain is a symlink (lstat), and of the metadata. A re-pointed
   * link or a file replaced by `cp -p` (same size, same mtime) still changes
   * it: the inode or the ctime moves, and ctime cannot be set back.
   */
  readonly statId: string;
  /** The chain file's last change (ctime or mtime, the later), to tell whether it may still be being written. */
  readonly changedAtMs: number;
  /** The chain file is a symlink (to a renewal tool's live file, say). */
  readonly link: boolean;
}

export interface StoreEntry extends Omit<StoreEntryRef, 'statId' | 'changedAtMs' | 'link'> {
  readonly chainText: string;
  readonly meta: StoreMeta;
}

/**
 * Entry names: those of config certificates, minus a leading dot, which is
 * kept for temp files (and editors' swap files) so none can be taken for an
 * entry. No slash can appear, so a name never leaves the directory.
 */
export const STORE_ENTRY_NAME = /^[\w-][\w.-]{0,63}$/;
const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

const isoTime = z.iso.datetime({ offset: true, error: 'expected an ISO 8601 time' });
const metaSchema = z.strictObject(
  {
    names: z
      .array(z.string().regex(DNS_NAME, { error: 'expected a lower-case DNS name or *.wildcard' }), { error: 'expected an array of DNS names' })
      .min(1, { error: 'expected at least one name' })
      .optional(),
    keyId: z
      .string({ error: 'expected a key id' })
      .regex(/^[0-9a-f]{64}$/, { error: 'expected a key id: 64 lower-case hex digits' })
      .optional(),
    addedAt: isoTime.optional(),
    replacedAt: isoTime.optional(),
  },
  { error: 'expected a JSON object { "names", "keyId", "addedAt", "replacedAt" }' },
);

/** `raw` checked against the metadata schema: the metadata (fields left undefined dropped), or its first problem as one line. */
export function checkStoreMeta(raw: unknown): { readonly meta: StoreMeta } | { readonly problem: string } {
  const parsed = metaSchema.safeParse(raw);
  if (parsed.success) return { meta: definedOnly(parsed.data) };
  const problem = formatIssues(parsed.error.issues, raw)[0];
  return { problem: `${problem?.path ? `${problem.path}: ` : ''}${problem?.message ?? 'invalid'}` };
}

/**
 * The metadata of entry `name` at `metaPath`: none (`{}`) when there is no file; CertificateError naming the file
 * otherwise, a link whose target is missing included.
 */
export function readMeta(name: string, metaPath: string): { meta: StoreMeta; mtimeMs: number | undefined } {
  let text: string;
  let mtimeMs: number;
  try {
    // Opened and checked as a chain is (store-files.ts): a FIFO or /dev/zero in its place would hold the reload.
    const read = readCheckedFile(metaPath, (stat) => checkMetaFile(stat, metaPath, name));
    mtimeMs = read.stat.mtimeMs;
    text = read.text;
  } catch (err) {
    if (err instanceof CertificateError) throw err;
    // A link whose target is gone is no "no metadata": the entry would be served for every SAN of its chain, not its
    // pinned names, and could take names from other entries.
    if (errno(err) === 'ENOENT' && isLink(metaPath)) {
      throw new CertificateError(metaPath, 'the metadata is a symbolic link whose target is missing', { reason: 'parse', entry: name, cause: err });
    }
    if (errno(err) === 'ENOENT') return { meta: {}, mtimeMs: undefined };
    throw new CertificateError(metaPath, `cannot read the metadata: ${errno(err)}`, { reason: 'parse', entry: name, cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text) as unknown;
  } catch {
    // The SyntaxError is not kept: V8 quotes the text around the error.
    throw new CertificateError(metaPath, 'the metadata is not valid JSON', { reason: 'parse', entry: name });
  }
  const checked = checkStoreMeta(raw);
  if ('problem' in checked) throw new CertificateError(metaPath, `invalid metadata: ${checked.problem}`, { reason: 'parse', entry: name });
  return { meta: checked.meta, mtimeMs };
}

/** `raw` as entry metadata, or the first problem with it (for stores that keep metadata elsewhere than a file). */
export function parseStoreMeta(raw: unknown): StoreMeta | string {
  const checked = checkStoreMeta(raw);
  return 'meta' in checked ? checked.meta : `invalid metadata: ${checked.problem}`;
}

function definedOnly(meta: StoreMeta): StoreMeta {
  return Object.fromEntries(Object.entries(meta).filter(([, v]) => v !== undefined)) as StoreMeta;
}

function isLink(file: string): boolean {
  try {
    return lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}
