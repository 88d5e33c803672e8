/**
 * `keyedge cert list` and `keyedge cert show` (cli.ts dispatches): what the
 * certificate store holds, described even when an entry is refused (an
 * expired entry must still be listed), as a table, text or JSON. Reads only:
 * nothing here writes to the store.
 */
import { loadProxyConfig } from '../../config/load.js';
import { formatTable } from '../../keyserver/shared/command.js';
import { KeyedgeError } from '../../keyserver/shared/errors.js';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import { issuersOf, withKeyserver } from './cli-keyserver.js';
import { CertificateError, CertificateStoreError } from './errors.js';
import type { IssuerPool } from './issuers.js';
import { entryCandidate } from './manage.js';
import { CertificateStore, type StoreEntry } from './store.js';
import { directoryId } from './store-dir.js';
import { inspectCertificate, parseChain, type ValidatedCertificate, validateCertificate } from './validate.js';

/** The options list and show take: the proxy's config file, and JSON output. */
export interface ListingOptions {
  readonly config?: string | undefined;
  readonly json?: boolean | undefined;
}

/**
 * The store at `dir`, or KEYEDGE_ERR_CERT_STORE_GONE when no directory is there: listed as empty, a store renamed away
 * or a mistyped certStore.dir was "no certificates" (`[]`, status 0), and a check of what expires soon found nothing
 * to warn of while the running proxy served what the store had held.
 */
function storeToRead(dir: string): CertificateStore {
  if (directoryId(dir) === undefined) {
    throw new CertificateStoreError(
      'KEYEDGE_ERR_CERT_STORE_GONE',
      '',
      `the certificate store ${dir} is not there (or is not a directory): nothing to list or show. The proxy makes it when it ` +
        'starts; one renamed away keeps its entries served by a running proxy until it is put back (check certStore.dir)',
    );
  }
  return new CertificateStore(dir);
}

/** `keyedge cert list`: every entry, refused ones too, without asking the key server. */
export async function listEntries(values: ListingOptions): Promise<number> {
  const config = loadProxyConfig(values.config);
  const store = storeToRead(config.certStore.dir);
  const now = new Date();
  const issuers = issuersOf(config);
  const rows = [];
  for (const ref of store.list()) {
    try {
      rows.push(await describeEntry(store, ref.name, now, issuers));
    } catch (err) {
      // Removed between the listing and the read: no longer an entry.
      if (err instanceof CertificateStoreError && err.code === 'KEYEDGE_ERR_CERT_NOT_FOUND') continue;
      throw err;
    }
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return 0;
  }
  if (rows.length === 0) {
    process.stdout.write(`no certificates in ${store.dir}\n`);
    return 0;
  }
  const header = ['NAME', 'STATUS', 'NOT AFTER', 'SERIAL', 'KEY ID', 'NAMES', 'ISSUER'];
  const lines = rows.map((r) => [r.name, r.status, r.notAfter ?? '-', r.serial ?? '-', r.keyId ?? '-', r.names?.join(',') ?? '-', r.issuer ?? r.error ?? '-']);
  process.stdout.write(formatTable(header, lines));
  return 0;
}

/**
 * `keyedge cert show`'s status when the entry passes every rule checked here but the key server could not be asked:
 * not 0, which said "served" for an entry whose key may be gone (a script checking `cert show` took it as ok).
 */
export const SHOW_NOT_CHECKED = 3;

/**
 * `keyedge cert show`: one entry, with the key server's verdict when every other rule passes; 1 when it would be
 * refused, SHOW_NOT_CHECKED when the key server could not be asked.
 */
export async function showEntry(name: string, values: ListingOptions): Promise<number> {
  const config = loadProxyConfig(values.config);
  const store = storeToRead(config.certStore.dir);
  const now = new Date();
  const issuers = issuersOf(config);
  const row = await describeEntry(store, name, now, issuers);
  // The key server's verdict only matters for an entry that passes every other rule.
  let keyserver: string;
  /** For scripts (--json): 'holds_key', 'refused', 'not_checked' (it could not be asked), 'not_asked' (refused already). */
  let keyserverVerdict: 'holds_key' | 'refused' | 'not_checked' | 'not_asked';
  if (row.status !== 'ok') {
    keyserver = 'not asked (the entry is refused already)';
    keyserverVerdict = 'not_asked';
  } else {
    try {
      const entry = store.read(name);
      await withKeyserver(config, (lookup) => validateCertificate(entryCandidate(entry), { now, keyserverSpki: lookup, issuers }));
      keyserver = 'holds the key';
      keyserverVerdict = 'holds_key';
    } catch (err) {
      if (err instanceof CertificateError) {
        keyserver = `refused (${err.reason})`;
        keyserverVerdict = 'refused';
        row.status = err.reason;
        row.error = err.message;
      } else if (err instanceof KeyedgeError) {
        keyserver = `not checked: ${err.message}`;
        keyserverVerdict = 'not_checked';
      } else {
        throw err;
      }
    }
  }
  const code = row.status !== 'ok' ? 1 : keyserverVerdict === 'not_checked' ? SHOW_NOT_CHECKED : 0;
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ ...row, keyserver, keyserverVerdict }, null, 2)}\n`);
    return code;
  }
  const ok = keyserverVerdict === 'not_checked' ? 'ok by every rule checked here; its key not checked (see keyserver)' : 'ok';
  const lines = [
    `certificate '${name}' (${store.dir}/${name}.pem)`,
    `  status:    ${row.status === 'ok' ? ok : `refused (${row.status}): ${row.error ?? ''}`}`,
    `  keyserver: ${keyserver}`,
  ];
  if (row.serial !== undefined) {
    lines.push(
      `  names:     ${row.names?.join(', ')}`,
      `  key id:    ${row.keyId}${row.pinned ? ' (pinned)' : ''}`,
      `  serial:    ${row.serial}`,
      `  issuer:    ${row.issuer}`,
      `  notBefore: ${row.notBefore}`,
      `  notAfter:  ${row.notAfter}`,
      ...(row.addedAt === undefined ? [] : [`  added:     ${row.addedAt}`]),
      ...(row.replacedAt === undefined ? [] : [`  replaced:  ${row.replacedAt}`]),
      '  chain:',
      ...(row.chain ?? []).map((c, i) => `    ${i}  ${c.subject}  (issuer ${c.issuer}, notAfter ${c.notAfter})`),
    );
  }
  for (const warning of row.warnings) lines.push(`warning: ${warning}`);
  process.stdout.write(`${lines.join('\n')}\n`);
  return code;
}

interface EntryRow {
  name: string;
  /** 'ok' or the refusal reason (without the key server, for list). */
  status: string;
  error?: string;
  serial?: string;
  issuer?: string;
  notBefore?: string;
  notAfter?: string;
  keyId?: string;
  pinned?: boolean;
  names?: readonly string[];
  addedAt?: string;
  replacedAt?: string;
  chain?: { subject: string; issuer: string; notAfter: string }[];
  warnings: readonly string[];
}

/** What list and show print about one entry: its facts even when it is refused (an expired entry must still be listed). */
async function describeEntry(store: CertificateStore, name: string, now: Date, issuers: IssuerPool): Promise<EntryRow> {
  let entry: StoreEntry;
  try {
    entry = store.read(name);
  } catch (err) {
    if (err instanceof CertificateError) return { name, status: err.reason, error: err.message, warnings: [] };
    throw err;
  }
  const candidate = entryCandidate(entry);
  const row: EntryRow = { name, status: 'ok', warnings: [], addedAt: entry.meta.addedAt, replacedAt: entry.meta.replacedAt };
  try {
    const { chain } = await parseChain(candidate);
    const leaf = chain[0]!;
    Object.assign(row, {
      serial: leaf.serialNumber,
      issuer: leaf.issuer,
      notBefore: leaf.notBefore.toISOString(),
      notAfter: leaf.notAfter.toISOString(),
      keyId: keyIdOf(Buffer.from(leaf.publicKey.rawData)),
      pinned: entry.meta.keyId !== undefined,
      names: entry.meta.names,
      chain: chain.map((c) => ({ subject: c.subject, issuer: c.issuer, notAfter: c.notAfter.toISOString() })),
    });
  } catch (err) {
    if (err instanceof CertificateError) return { ...row, status: err.reason, error: err.message };
    throw err;
  }
  let inspected: ValidatedCertificate;
  try {
    inspected = await inspectCertificate(candidate, now, issuers);
  } catch (err) {
    if (err instanceof CertificateError) return { ...row, status: err.reason, error: err.message };
    throw err;
  }
  return { ...row, names: inspected.certificate.names, warnings: inspected.warnings };
}
