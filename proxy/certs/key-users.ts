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
 * host usually has no proxy at all. A fleet's store lives in etcd, which this
 * does not reach: said in a warning.
 *
 * Leaves are found with node:crypto (OpenSSL), without loading the X.509
 * code the validation uses: `keyedge key` runs load none (proxy-start-modules).
 */
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { loadProxyConfig } from '../../config/load.js';
import type { FindKeyUsers, KeyUsers } from '../../keyserver/cli/key-users.js';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import { CertificateError, CertificateStoreError } from './errors.js';
import { CertificateStore } from './store.js';
import { directoryId } from './store-dir.js';

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** The proxy config `npm run up` starts the proxy with (config/setup.sh), from the directory the command runs in. */
const SETUP_CONFIG = 'config/proxy.json';

export const findKeyUsers: FindKeyUsers = async (key, named) => {
  const proxyConfig = named ?? (existsSync(SETUP_CONFIG) ? SETUP_CONFIG : undefined);
  const config = loadProxyConfig(proxyConfig);
  const users: string[] = [];
  const warnings: string[] = [];
  for (const certificate of config.certificates) {
    let text: string;
    try {
      text = readFileSync(certificate.chain, 'utf8');
    } catch {
      // Unreadable: the proxy cannot start with it either, so it serves nothing with this key.
      continue;
    }
    if (leafKeyId(text) === key.keyId) users.push(`'${certificate.name}' (${certificate.chain}, in certificates)`);
  }
  const checked = config.certificates.length === 0 ? [] : [`the config ${config.source}`];
  if (config.etcd !== null) {
    warnings.push(`the fleet's certificate store (etcd, prefix ${config.etcd.prefix}) was not checked for a certificate using key '${key.label}'`);
    return { checked: checked.join(''), users, warnings };
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
    return { checked: checked.join(''), users, warnings };
  }
  checked.push(`the certificate store ${dir}`);
  const store = new CertificateStore(dir);
  for (const ref of store.list()) {
    let entry: ReturnType<CertificateStore['read']>;
    try {
      entry = store.read(ref.name);
    } catch (err) {
      if (err instanceof CertificateStoreError && err.code === 'KEYEDGE_ERR_CERT_NOT_FOUND') continue;
      if (!(err instanceof CertificateError)) throw err;
      warnings.push(`store entry '${ref.name}' could not be read, so was not checked for key '${key.label}': ${err.message}`);
      continue;
    }
    if (leafKeyId(entry.chainText) === key.keyId) users.push(`'${ref.name}' (${ref.chainPath})`);
    else if (entry.meta.keyId === key.keyId) users.push(`'${ref.name}' (${ref.metaPath}: pinned)`);
  }
  return { checked: checked.join(' and '), users, warnings } satisfies KeyUsers;
};

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
