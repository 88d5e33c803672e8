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
 * add, replace and remove are cli-write.ts's; list and show, cli-listing.ts's;
 * issue and renew, the ACME service's (proxy/acme/cli.ts). Each is loaded
 * when its action runs: this file parses the arguments only, so `--help`, a
 * usage error and `issue` load no X.509 code (0.62 s of CPU for `--help`
 * when this file loaded every action's modules).
 */
import { type Command, parseCommandArgs } from '../../keyserver/shared/command.js';
import { UsageError } from '../../keyserver/shared/errors.js';
import { CertificateError } from './errors.js';

const USAGE = `Usage: keyedge cert <action> [NAME] [options]
       (a NAME starting with '-': \`keyedge cert <action> -- NAME [options]\`)

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

/** The actions `run` knows; another is refused as unknown, whatever its options. */
const ACTIONS = ['add', 'replace', 'list', 'show', 'remove', 'issue', 'renew'];

export type CertValues = ReturnType<typeof parseCommandArgs<typeof OPTIONS>>['values'];

export const certCommand: Command = {
  name: 'cert',
  async run(argv) {
    const [action, ...rest] = argv;
    // No action is a usage error (stderr, status 2), as an unknown one is; --help alone is the help (stdout, 0).
    if (action === undefined) throw new UsageError(`missing action: keyedge cert <action>\n\n${USAGE}`);
    if (action === '--help' || action === '-h') {
      process.stdout.write(USAGE);
      return 0;
    }
    const takesName = action !== 'list';
    // `--` before NAME names an entry that starts with '-' (the store allows it: `-old`), which is otherwise a flag.
    const marked = takesName && rest[0] === '--';
    const name = marked ? rest[1] : takesName && rest[0] !== undefined && !rest[0].startsWith('-') ? rest[0] : undefined;
    const { values } = parseCommandArgs(name === undefined ? rest : rest.slice(marked ? 2 : 1), OPTIONS, USAGE);
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
          return await (await import('./cli-write.js')).addOrReplace(action, name!, values, USAGE);
        case 'list':
          return await (await import('./cli-listing.js')).listEntries(values);
        case 'show':
          return await (await import('./cli-listing.js')).showEntry(name!, values);
        case 'remove':
          return (await import('./cli-write.js')).remove(name!, values);
        case 'issue':
        case 'renew': {
          const { acmeCertCommand } = await import('../acme/cli.js');
          return await acmeCertCommand(action, name, values.domain ?? [], values.config, values['replace-domains'] === true);
        }
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
