/**
 * Where a store entry's files are in the store directory, and which names
 * are entries: `<dir>/<name>.pem` (the chain) and `<dir>/<name>.json` (its
 * metadata), the name checked against STORE_ENTRY_NAME (store-meta.ts)
 * before any path is made of it, so no name leaves the directory. Shared by
 * the listing, reading and writing modules (store-listing.ts, store-read.ts,
 * store-write.ts), so the three agree on what a name means.
 */
import { join } from 'node:path';
import { CertificateStoreError } from './errors.js';
import { STORE_ENTRY_NAME } from './store-meta.js';

/** A chain file's name in a directory listing; group 1: the entry's name. */
export const CHAIN_FILE = /^([\w-][\w.-]{0,63})\.pem$/;

export interface EntryPaths {
  readonly chainPath: string;
  readonly metaPath: string;
}

export function entryPaths(dir: string, name: string): EntryPaths {
  return { chainPath: join(dir, `${name}.pem`), metaPath: join(dir, `${name}.json`) };
}

/** Throws KEYEDGE_ERR_CERT_STORE, quoting (at most 80 characters of) it, when `name` is not an entry name. */
export function checkEntryName(name: string): void {
  if (!STORE_ENTRY_NAME.test(name)) {
    throw new CertificateStoreError(
      'KEYEDGE_ERR_CERT_STORE',
      name,
      `'${name.slice(0, 80)}' is not a certificate name: expected 1-64 letters, digits, _ . - (not starting with ".")`,
    );
  }
}

export function byName(a: { readonly name: string }, b: { readonly name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}
