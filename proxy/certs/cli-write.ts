/**
 * `keyedge cert add|replace|remove` (cli.ts parses their arguments): writing
 * the certificate store (proxy/certs/store.ts) of the proxy named by
 * --config. add and replace validate the chain first, against the key server
 * the proxy uses, and write nothing when it is refused. None of them makes the
 * store directory (but `add --create-store`): a store renamed away is
 * refused, not made again holding the one entry (storeToWrite says why).
 */
import { loadProxyConfig } from '../../config/load.js';
import { requireOption } from '../../keyserver/shared/command.js';
import { UsageError } from '../../keyserver/shared/errors.js';
import { operatorFileFailure, readOperatorFile } from '../../keyserver/shared/operator-file.js';
import type * as x509 from '../../keyserver/shared/x509.js';
import type { CertValues } from './cli.js';
import { issuersOf, withKeyserver } from './cli-keyserver.js';
import { CertificateError, CertificateStoreError } from './errors.js';
import { entryCandidate, putCertificate, type PutRequest } from './manage.js';
import { CertificateStore, type StoreEntry } from './store.js';
import { directoryId } from './store-dir.js';
import { MAX_CHAIN_BYTES } from './store-files.js';
import { parseChain } from './validate.js';

const KEY_ID = /^[0-9a-f]{64}$/;

export async function addOrReplace(mode: 'add' | 'replace', name: string, values: CertValues, usage: string): Promise<number> {
  const chainFile = requireOption(values.chain, '--chain', usage);
  const pin = values.key?.toLowerCase();
  if (pin !== undefined && !KEY_ID.test(pin)) throw new UsageError('--key must be a key id: 64 hex digits, as `keyedge key list` prints');
  const names = values.names === undefined ? undefined : parseNames(values.names);
  const config = loadProxyConfig(values.config);
  if (values['create-store'] === true) new CertificateStore(config.certStore.dir).create();
  const store = storeToWrite(config.certStore.dir);
  // Checked before the key server is asked: a typo'd name fails fast, and a link to another tool's file (a dangling
  // one too, which has() does not see) is refused as that rather than as a missing or existing entry.
  store.assertOwned(name);
  if (mode === 'add' ? store.has(name) : !store.has(name)) {
    if (mode === 'add')
      throw new CertificateStoreError(
        'KEYEDGE_ERR_CERT_EXISTS',
        name,
        `certificate '${name}' is already in the store ${store.dir}; use \`keyedge cert replace\``,
      );
    throw new CertificateStoreError('KEYEDGE_ERR_CERT_NOT_FOUND', name, `no certificate '${name}' in the store ${store.dir}; use \`keyedge cert add\``);
  }
  let chainText: string;
  try {
    // Capped at what the store keeps: /dev/zero was read until memory ran out; a pipe (`<(…)`) is still read.
    chainText = readOperatorFile(chainFile, MAX_CHAIN_BYTES).toString('utf8');
  } catch (err) {
    throw new CertificateError(chainFile, `cannot read the chain: ${operatorFileFailure(err)}`, {
      reason: 'parse',
      entry: name,
      cause: err,
    });
  }
  const request: PutRequest = {
    mode,
    name,
    chainText,
    source: chainFile,
    ...(names === undefined ? {} : { names }),
    ...(pin === undefined ? {} : { keyId: pin }),
  };
  // What this entry's earlier writes, killed midway (a renewal hook past its timeout), left: swept here, by the writer
  // that leaves them, rather than by every write in the proxy, where listing a large store costs a quarter second.
  store.removeLeftovers(name);
  const { validated, meta, previous } = await withKeyserver(config, (lookup) =>
    putCertificate(store, request, { now: new Date(), keyserverSpki: lookup, issuers: issuersOf(config), reserved: config.certificates.map((c) => c.name) }),
  );
  const { certificate } = validated;
  const lines = [
    `${mode === 'add' ? 'added' : 'replaced'} certificate '${name}': wrote ${store.dir}/${name}.pem and ${name}.json`,
    ...(previous === undefined ? [] : await previousLine(previous)),
    ...describeRows(certificate.names, certificate.keyId, meta.keyId !== undefined, certificate.leaf),
    ...validated.warnings.map((w) => `warning: ${w}`),
    'The running proxy picks the change up from the store directory.',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

async function previousLine(previous: StoreEntry): Promise<string[]> {
  // Best effort: the entry being replaced may be exactly what was broken.
  try {
    const leaf = (await parseChain(entryCandidate(previous))).chain[0]!;
    return [`  was:       serial ${leaf.serialNumber}, notAfter ${leaf.notAfter.toISOString()}`];
  } catch {
    return [];
  }
}

export function remove(name: string, values: CertValues): number {
  const config = loadProxyConfig(values.config);
  const store = storeToWrite(config.certStore.dir);
  store.remove(name);
  process.stdout.write(
    `removed certificate '${name}': deleted ${store.dir}/${name}.pem and ${name}.json\nThe running proxy stops serving it once it sees the change.\n`,
  );
  return 0;
}

/**
 * The store at `dir`, bound to the directory there now (written into that one
 * or none: certs/store-write.ts). Throws KEYEDGE_ERR_CERT_STORE_GONE when
 * there is none: this command never makes it, as a store renamed away (by an
 * operator, a deploy tool) and made again holding one entry would be taken by
 * the running proxy for the whole store, every other certificate no longer
 * served.
 */
function storeToWrite(dir: string): CertificateStore {
  const id = directoryId(dir);
  if (id === undefined) {
    throw new CertificateStoreError(
      'KEYEDGE_ERR_CERT_STORE_GONE',
      '',
      `the certificate store ${dir} is not there (or is not a directory); keyedge cert does not make it, so that a store renamed ` +
        'away is not made again holding one entry, which the running proxy would serve alone. Put the directory back; ' +
        'for a new store, start the proxy once (it makes it) or add --create-store to `keyedge cert add`',
    );
  }
  return new CertificateStore(dir, { dirId: id });
}

function describeRows(names: readonly string[], keyId: string, pinned: boolean, leaf: x509.X509Certificate): string[] {
  return [
    `  names:     ${names.join(', ')}`,
    `  key id:    ${keyId}${pinned ? ' (pinned)' : ''}`,
    `  serial:    ${leaf.serialNumber}`,
    `  issuer:    ${leaf.issuer}`,
    `  notAfter:  ${leaf.notAfter.toISOString()}`,
  ];
}

function parseNames(value: string): string[] {
  const names = value
    .split(',')
    .map((n) => n.trim())
    .filter((n) => n !== '');
  if (names.length === 0) throw new UsageError('--names needs at least one name, comma-separated');
  return names;
}
