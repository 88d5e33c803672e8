/**
 * Which of a proxy's certificates use a key: what `keyedge key delete` asks
 * before it destroys one (keyserver/cli/key-users.ts, the seam; keyedge.ts
 * wires this in). A certificate names its key by its leaf's key id, the
 * SHA-256 of the leaf's SubjectPublicKeyInfo (certificate.ts), and a store
 * entry also by the key id its metadata pins (store-meta.ts): a pinned entry
 * whose chain now holds another key is refused at the reload, and what it
 * served, for the pinned key, keeps serving. Both count.
 *
 * Looked at: the config file's `certificates` and its store directory
 * (`certStore.dir`), the proxy config named by `--proxy-config`, else
 * ./config/proxy.json where there is one (what `npm run up` and README run
 * the proxy with: its demo certificate is one of its `certificates`, which
 * the embedded default's store alone missed), else the embedded default's
 * (./var/certs, as `keyedge cert` without --config). A named config whose
 * store is not there refuses (a mistyped certStore.dir must not read as
 * "unused"); a default's missing is said in a warning, since a key server
 * host usually has no proxy at all. A store entry counts by its files, by
 * the version the proxy last served of it (its log in the state directory:
 * what serves while a replacement is refused), and, when it cannot be read,
 * as maybe using the key; so does a config certificate whose chain cannot be
 * read or holds no certificate (this user may not read what the proxy's user
 * does, and a running proxy serves what it loaded).
 *
 * A fleet's config (`etcd`) keeps its store in etcd, not in certStore.dir
 * (which a fleet node does not read): its `certs/` entries are read once,
 * with the client and the settings the node itself uses (store/fleet-entries.ts,
 * loaded only then: etcd's client costs some 0.3 s of CPU to load), and count
 * by the same rule. An etcd that does not answer refuses, nothing deleted:
 * "unused" cannot be told, and a fleet certificate's key deleted fails its
 * handshakes on every node at once.
 *
 * Leaves are found with node:crypto (OpenSSL), without loading the X.509
 * code the validation uses: `keyedge key` runs load none (proxy-start-modules).
 */
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadProxyConfig } from '../../config/load.js';
import type { EtcdSettings } from '../../config/proxy-schema.js';
import type { FindKeyUsers, KeyUsers } from '../../keyserver/cli/key-users.js';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import { keptDir, loadKept } from '../serving/kept.js';
import { LAST_SERVED_FILE, LastServed } from '../serving/last-served.js';
import type { FleetEntries } from '../store/fleet-entries.js';
import { StoreUnavailableError } from '../store/storage.js';
import { CertificateError, CertificateStoreError } from './errors.js';
import { CertificateStore } from './store.js';
import { directoryId } from './store-dir.js';
import type { StoreEntry, StoreEntryRef } from './store-meta.js';

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** What removes or replaces a certificate of the config or its store directory. */
const CERT_COMMAND = 'keyedge cert';
/** A fleet's entries: `keyedge cert` manages a local directory only; a node's admin API replaces an entry fleet-wide. */
const FLEET_REMEDY = "a fleet's entries: through a node's admin API (PUT /certs/:name) or in etcd";

/** How the store's calls begin the failure of the read (store/etcd-calls.ts): said once, by the refusal, not twice. */
const READ_FAILED = "the fleet's store (etcd) could not read certs/: ";

/** The proxy config `npm run up` starts the proxy with (config/setup.sh), from the directory the command runs in. */
const SETUP_CONFIG = 'config/proxy.json';

export const findKeyUsers: FindKeyUsers = async (key, named) => {
  const proxyConfig = named ?? (existsSync(SETUP_CONFIG) ? SETUP_CONFIG : undefined);
  const config = loadProxyConfig(proxyConfig);
  const users: string[] = [];
  const warnings: string[] = [];
  const unread: string[] = [];
  for (const certificate of config.certificates) {
    let text: string;
    try {
      text = readFileSync(certificate.chain, 'utf8');
    } catch (err) {
      const code = (err as { code?: string }).code;
      // A chain that is not there: a config whose proxy never ran here (the checkout's config/proxy.json, its demo not
      // set up, looked at when no --proxy-config is given), which no proxy serves; refused, every delete there needed
      // --force. Not "unused" otherwise: a chain this user cannot read (another user's 0700 directory) may well be read
      // by the proxy's user.
      if (code === 'ENOENT') {
        warnings.push(`certificate '${certificate.name}' of ${config.source}: its chain ${certificate.chain} is not there, so not checked`);
        continue;
      }
      unread.push(`'${certificate.name}' (${certificate.chain}, in certificates: ${code ?? 'unreadable'})`);
      continue;
    }
    const leaf = leafKeyId(text);
    if (leaf === key.keyId) users.push(`'${certificate.name}' (${certificate.chain}, in certificates)`);
    else if (leaf === undefined) unread.push(`'${certificate.name}' (no certificate could be read from ${certificate.chain}, in certificates)`);
  }
  const checked = config.certificates.length === 0 ? [] : [`the config ${config.source}`];
  if (config.etcd !== null) {
    const fleet = await fleetEntries(config.etcd, config.source, key.label);
    checked.push(`the fleet's certificate store ${fleet.dir} (etcd at ${config.etcd.endpoints.join(', ')})`);
    entryUsers(fleet, fleet.list(), key, users, unread);
    return { checked: checked.join(' and '), users, warnings, unread, remedy: FLEET_REMEDY } satisfies KeyUsers;
  }
  const dir = config.certStore.dir;
  if (directoryId(dir) === undefined) {
    if (named !== undefined) {
      throw new CertificateStoreError(
        'KEYEDGE_ERR_CERT_STORE_GONE',
        '',
        `the certificate store ${dir} (certStore.dir of ${proxyConfig}) is not there, or is not a directory: cannot tell whether a certificate ` +
          `uses key '${key.label}'. Nothing was deleted: check certStore.dir, or give --force`,
      );
    }
    const whose = proxyConfig === undefined ? "the embedded default's store" : `the store of ${proxyConfig}`;
    warnings.push(
      `no certificate store was checked for a certificate using key '${key.label}': no --proxy-config was given, and ${whose} ` +
        `${dir} is not there (give --proxy-config FILE, the proxy's config, to have its store checked)`,
    );
    return { checked: checked.join(''), users, warnings, unread, remedy: CERT_COMMAND };
  }
  checked.push(`the certificate store ${dir}`);
  const store = new CertificateStore(dir);
  const refs = store.list();
  const counted = entryUsers(store, refs, key, users, unread);
  lastServedUsers(config.stateDir, dir, refs, counted, key, users, warnings);
  return { checked: checked.join(' and '), users, warnings, unread, remedy: CERT_COMMAND } satisfies KeyUsers;
};

/**
 * The entries of a store (the directory, or the fleet's as read once) that use `key`, added to `users`; those that
 * cannot be read, to `unread`: such an entry may use the key, and what a node served of it before it broke goes on
 * serving (the last served version), so it refuses the delete as a use does. The names of those added to `users`.
 */
function entryUsers(
  store: { read(name: string): StoreEntry },
  refs: readonly StoreEntryRef[],
  key: { readonly keyId: string; readonly label: string },
  users: string[],
  unread: string[],
): Set<string> {
  const counted = new Set<string>();
  for (const ref of refs) {
    let entry: StoreEntry;
    try {
      entry = store.read(ref.name);
    } catch (err) {
      if (err instanceof CertificateStoreError && err.code === 'KEYEDGE_ERR_CERT_NOT_FOUND') continue;
      if (!(err instanceof CertificateError)) throw err;
      unread.push(`'${ref.name}' (${err.message})`);
      continue;
    }
    const leaf = leafKeyId(entry.chainText);
    const use = leaf === key.keyId ? ref.chainPath : entry.meta.keyId === key.keyId ? `${ref.metaPath}: pinned` : undefined;
    if (use !== undefined) {
      users.push(`'${ref.name}' (${use})`);
      counted.add(ref.name);
    } else if (leaf === undefined) unread.push(`'${ref.name}' (no certificate could be read from ${ref.chainPath})`);
  }
  return counted;
}

/**
 * The entries whose version last served uses `key` though their files now name another key or none (a replacement the
 * proxy refused): a running proxy goes on serving that version, and one started again falls back on it, from the log it
 * keeps in its state directory (serving/last-served.ts). A log that cannot be read or trusted is said in a warning.
 */
function lastServedUsers(
  stateDir: string,
  storeDir: string,
  refs: readonly StoreEntryRef[],
  counted: ReadonlySet<string>,
  key: { readonly keyId: string },
  users: string[],
  warnings: string[],
): void {
  const warn = (message: string): void => {
    warnings.push(`the proxy's log of the versions it last served was not used: ${message}`);
  };
  const lastServed = new LastServed(keptDir(stateDir), storeDir, warn).reader(loadKept(stateDir, warn));
  const log = join(keptDir(stateDir), LAST_SERVED_FILE);
  for (const ref of refs) {
    if (!counted.has(ref.name) && lastServed(ref.name)?.keyId === key.keyId)
      users.push(`'${ref.name}' (its version last served, in ${log}: the version the proxy serves while its files are refused)`);
  }
}

/**
 * The fleet's entries, read once from etcd. One that does not answer (away, no quorum, refusing the config's TLS or
 * password) refuses the delete: said with the endpoints and --force, and the reason as the store's calls give it,
 * which never holds the password or a key (store/etcd-calls.ts).
 */
async function fleetEntries(etcd: EtcdSettings, source: string, label: string): Promise<FleetEntries> {
  const { readFleetEntries } = await import('../store/fleet-entries.js');
  try {
    return await readFleetEntries(etcd, source);
  } catch (err) {
    if (!(err instanceof StoreUnavailableError)) throw err;
    const reason = err.message.startsWith(READ_FAILED) ? err.message.slice(READ_FAILED.length) : err.message;
    throw new StoreUnavailableError(
      `the fleet's certificate store etcd:${etcd.prefix} (etcd at ${etcd.endpoints.join(', ')}; etcd of ${source}) could not be read, ` +
        `waiting at most ${etcd.timeoutMs} ms (etcd.timeoutMs): ${reason}. Cannot tell whether a certificate uses key '${label}'. ` +
        'Nothing was deleted: bring etcd back (or correct etcd in the config), or give --force, which deletes without looking',
    );
  }
}

/**
 * The key id of the chain's leaf: the certificate that issued none of the others (a chain may be in any order, as the
 * proxy takes it); undefined when no certificate parses.
 */
function leafKeyId(text: string): string | undefined {
  const certificates: X509Certificate[] = [];
  for (const [block] of text.matchAll(PEM_CERTIFICATE)) {
    try {
      certificates.push(new X509Certificate(block));
    } catch {
      // Not served either: the validation refuses the chain.
    }
  }
  const leaf = certificates.find((c) => !certificates.some((other) => other !== c && other.checkIssued(c))) ?? certificates[0];
  return leaf === undefined ? undefined : keyIdOf(leaf.publicKey.export({ type: 'spki', format: 'der' }));
}
