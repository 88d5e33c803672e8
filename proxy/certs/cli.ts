/**
 * `keyedge cert add|replace|list|show|remove`: managing the certificate store
 * (proxy/certs/store.ts) of the proxy named by --config. add and replace
 * validate the chain first, against the key server the proxy uses, and write
 * nothing when it is refused. The running proxy picks changes up by itself
 * (it watches the store directory). None of them makes the store directory
 * (but `add --create-store`): a store renamed away is refused, not made again
 * holding the one entry (storeToWrite says why).
 *
 * `replace` is what a renewal tool calls (a certbot deploy hook, acme.sh's
 * --reloadcmd); it keeps the entry's names and pinned key id, so a renewal
 * that changes the key is refused unless --key says so or nothing is pinned.
 *
 * list and show are cli-listing.ts's; issue and renew, the ACME service's
 * (proxy/acme/cli.ts).
 */
import { readFileSync } from 'node:fs';
import { loadProxyConfig } from '../../config/load.js';
import { type Command, parseCommandArgs, requireOption } from '../../keyserver/shared/command.js';
import { UsageError } from '../../keyserver/shared/errors.js';
import type * as x509 from '../../keyserver/shared/x509.js';
import { acmeCertCommand } from '../acme/cli.js';
import { issuersOf, withKeyserver } from './cli-keyserver.js';
import { listEntries, showEntry } from './cli-listing.js';
import { CertificateError, CertificateStoreError } from './errors.js';
import { entryCandidate, putCertificate, type PutRequest } from './manage.js';
import { CertificateStore, type StoreEntry } from './store.js';
import { directoryId } from './store-dir.js';
import { parseChain } from './validate.js';

const USAGE = `Usage: keyedge cert <action> [NAME] [options]

Actions:
  add NAME --chain FILE [--names A,B] [--key KEYID] [--create-store]
                      validate a chain (PEM, any order) against the key server
                      and store it as a new entry
  replace NAME --chain FILE [--names A,B] [--key KEYID]
                      validate a renewed chain and swap it in atomically (what a
                      certbot deploy hook or acme.sh runs); the entry's names
                      and pinned key id are kept: a new key is accepted only
                      with --key, or when the entry pins none
  list [--json]       entries: name, status, notAfter, serial, key id, names, issuer
  show NAME [--json]  one entry: the same, its chain, warnings and the key server's verdict
  remove NAME         delete the entry (the proxy stops serving it)
  issue [NAME] --domain D [--domain D ...]
                      the running proxy obtains a certificate for these names
                      from its ACME CA (key and CSR made in the token) and
                      serves it; NAME defaults to the managed entry that
                      records any of these names (several: refused), else
                      the first domain. For a managed NAME: its names, or
                      more (a new certificate for the list); fewer only with
                      --replace-domains
  renew NAME          the running proxy renews a managed certificate now, for
                      the names it records (--domain and --replace-domains are
                      refused: cert issue NAME changes them)

Options:
  --chain FILE    the full chain, PEM (certbot: fullchain.pem)
  --names A,B     names the entry serves (default: every DNS name of the certificate)
  --key KEYID     pin the key server key id (64 hex digits, from \`keyedge key list\`)
  --create-store  add: make the store directory first if it is not there
                  (the proxy makes it when it starts; without this flag a
                  missing store is refused, KEYEDGE_ERR_CERT_STORE_GONE)
  --json          machine-readable output
  --domain D      a name for the certificate (issue; repeat for more)
  --replace-domains
                  issue: the names given replace the managed entry's, even
                  when some are left out (they stop being served); not for renew
  --config FILE   the proxy's config: its key server and certificate store
                  (default: ./var/keyserver.sock and ./var/certs)
  --help          this text

Refusals exit 1 with "keyedge: KEYEDGE_ERR_CERTIFICATE: <reason>: <message>",
reason one of parse, private_key, chain, expired, not_yet_valid, names,
weak_key, weak_signature, key_mismatch, usage, incomplete_chain, key_unknown;
nothing is written. An entry whose chain or metadata file is a symbolic link
(to certbot's live/NAME/fullchain.pem, say) is another tool's: add and
replace refuse it (KEYEDGE_ERR_CERT_LINKED) and write nothing.
show exits 1 when the entry as stored would be refused.
`;

const OPTIONS = {
  config: { type: 'string' },
  chain: { type: 'string' },
  names: { type: 'string' },
  key: { type: 'string' },
  json: { type: 'boolean' },
  domain: { type: 'string', multiple: true },
  'replace-domains': { type: 'boolean' },
  'create-store': { type: 'boolean' },
} as const;

const KEY_ID = /^[0-9a-f]{64}$/;

/** The actions `run` knows; another is refused as unknown, whatever its options. */
const ACTIONS = ['add', 'replace', 'list', 'show', 'remove', 'issue', 'renew'];

type Values = ReturnType<typeof parseCommandArgs<typeof OPTIONS>>['values'];

export const certCommand: Command = {
  name: 'cert',
  async run(argv) {
    const [action, ...rest] = argv;
    if (action === undefined || action === '--help' || action === '-h') {
      process.stdout.write(USAGE);
      return action === undefined ? 2 : 0;
    }
    const takesName = action !== 'list';
    const name = takesName && rest[0] !== undefined && !rest[0].startsWith('-') ? rest[0] : undefined;
    const { values } = parseCommandArgs(name === undefined ? rest : rest.slice(1), OPTIONS, USAGE);
    if (values.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    if (takesName && name === undefined && ['add', 'replace', 'show', 'remove'].includes(action))
      throw new UsageError(`missing NAME: keyedge cert ${action} NAME\n\n${USAGE}`);
    // Refused rather than ignored: `list --create-store` on a store renamed away would say it is gone, not make it.
    if (values['create-store'] === true && action !== 'add' && ACTIONS.includes(action)) throw new UsageError('--create-store is for `keyedge cert add` only');
    try {
      switch (action) {
        case 'add':
        case 'replace':
          return await addOrReplace(action, name!, values);
        case 'list':
          return await listEntries(values);
        case 'show':
          return await showEntry(name!, values);
        case 'remove':
          return remove(name!, values);
        case 'issue':
        case 'renew':
          return await acmeCertCommand(action, name, values.domain ?? [], values.config, values['replace-domains'] === true);
        default:
          throw new UsageError(`unknown action 'cert ${action}'\n\n${USAGE}`);
      }
    } catch (err) {
      // The reason leads, so a renewal hook's log says which rule refused.
      if (err instanceof CertificateError) {
        process.stderr.write(`keyedge: ${err.code}: ${err.reason}: ${err.message}\n`);
        return 1;
      }
      throw err;
    }
  },
};

async function addOrReplace(mode: 'add' | 'replace', name: string, values: Values): Promise<number> {
  const chainFile = requireOption(values.chain, '--chain', USAGE);
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
    chainText = readFileSync(chainFile, 'utf8');
  } catch (err) {
    throw new CertificateError(chainFile, `cannot read the chain: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, {
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

function remove(name: string, values: Values): number {
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
