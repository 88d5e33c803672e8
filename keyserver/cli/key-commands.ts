/**
 * `keyedge key generate|import|csr|list|delete`: managing the keys inside the token.
 * Each opens the token named by the key server's config (the embedded SoftHSM2
 * default without --config) and closes it before returning; they may run while
 * the key server is up, which picks new keys up on first use. `delete`
 * refuses a key a certificate of the proxy uses, unless --force (key-users.ts).
 */
import { loadKeyserverConfig } from '../../config/load.js';
import { KeyError, SetupError, TokenError, UsageError } from '../shared/errors.js';
import { tokenOptions } from '../token/open-options.js';
import { generateKey, KEY_TYPES, type KeyType } from '../token/key-generate.js';
import { importKey } from '../token/key-import.js';
import { deleteKey, describeKeyType, findKey, findKeyById, listKeys, type TokenKey } from '../token/keys.js';
import { Token } from '../token/token.js';
import { type Command, formatTable, noteDone, parseCommandArgs, requireOption } from '../shared/command.js';
import { operatorFileFailure, operatorFileName, readOperatorFile, STANDARD_INPUT } from '../shared/operator-file.js';
import { OutputFileIsLink, writeOutputFile } from '../shared/output-file.js';
import { shellWord } from '../shared/shell-word.js';
import type { FindKeyUsers } from './key-users.js';
import { guardKeyCommand } from './pin-guard.js';

const USAGE = `Usage: keyedge key <action> [options]

Actions:
  generate --type TYPE --label NAME [--json]
                                      make a key inside the token (non-extractable)
                                      TYPE: ${KEY_TYPES.join(' | ')}
  import --in FILE --label NAME       store a PEM private key (PKCS#8, PKCS#1 or SEC1)
                                      in the token as non-extractable; FILE - is stdin
  csr --key NAME|KEYID --domain D [--domain D ...] [--out FILE]
                                      a PKCS#10 request with these names as SANs,
                                      signed inside the token
  list [--json]                       keys in the token: key id, label, type, SKI
  delete --key NAME|KEYID [--proxy-config FILE] [--force]
                                      destroy a key (private and public objects);
                                      refused while a certificate of the proxy's
                                      store uses it, unless --force

Options:
  --config FILE   the key server's config (default: the embedded SoftHSM2 token under ./var)
  --proxy-config FILE
                  delete: the proxy's config, whose certificates and store
                  (certStore.dir; a fleet's: its etcd, read with the
                  config's etcd settings) are checked for the key (default:
                  ./config/proxy.json, what \`npm run up\` runs, where there
                  is one; else the embedded default's ./var/certs)
  --force         delete: even a key a certificate uses (its handshakes fail)
  --pin-stdin     the value of the config's PIN variable (pkcs11.pin.env) is read from stdin
                  instead (the proxy's ACME key children: /proc/<pid>/environ shows a
                  variable to every process of the same user); a usage error with a
                  config (or the embedded default) that reads the PIN from a file
  --help          this text

Every action makes the process non-dumpable before it reads a PIN or a key (Linux):
its memory is out of reach of the user's other processes; no core dump. SIGUSR1
opens no inspector (a warning says it was ignored).
`;

const OPTIONS = {
  config: { type: 'string' },
  type: { type: 'string' },
  label: { type: 'string' },
  in: { type: 'string' },
  key: { type: 'string' },
  domain: { type: 'string', multiple: true },
  out: { type: 'string' },
  json: { type: 'boolean' },
  'pin-stdin': { type: 'boolean' },
  'proxy-config': { type: 'string' },
  force: { type: 'boolean' },
} as const;

/** Errors of a `--out FILE` that names no place a file can be: a usage error; any other write failure is the host's. */
const WRONG_PATH: ReadonlySet<string> = new Set(['ENOENT', 'ENOTDIR', 'EISDIR', 'ENAMETOOLONG']);

/** What `key import --in` reads at most. */
const MAX_KEY_FILE_BYTES = 1024 * 1024;

/** RFC 1035 §2.3.1 labels, with one leading wildcard label allowed (RFC 6125 §6.4.3). */
const DOMAIN = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;

/** `keyedge key`; `findKeyUsers`: the proxy's certificates that use a key (keyedge.ts hands it in, key-users.ts). */
export const keyCommand = (findKeyUsers: FindKeyUsers): Command => ({
  name: 'key',
  async run(argv) {
    const [action, ...rest] = argv;
    // No action is a usage error (stderr, status 2), as an unknown one is; --help alone is the help (stdout, 0).
    if (action === undefined) throw new UsageError(`missing action: keyedge key <action>\n\n${USAGE}`);
    if (action === '--help' || action === '-h') {
      process.stdout.write(USAGE);
      return 0;
    }
    const { values } = parseCommandArgs(rest, OPTIONS, USAGE);
    if (values.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    // Taken by another action they were ignored, and `key generate … --force` read as if it had done something.
    if (action !== 'delete' && (values.force === true || values['proxy-config'] !== undefined)) {
      throw new UsageError(`${values.force === true ? '--force' : '--proxy-config'} is for \`keyedge key delete\` only`);
    }
    // Before any PIN (variable, file, stdin) or key to import is read: from here this process's memory holds them, and a
    // process of its user could read it (/proc/<pid>/mem) as the proxy's ACME key children run (pin-guard.ts).
    guardKeyCommand(warn);
    switch (action) {
      case 'generate':
        return withToken(
          values,
          (token) => {
            const type = requireOption(values.type, '--type', USAGE);
            if (!(KEY_TYPES as readonly string[]).includes(type)) throw new UsageError(`--type must be one of ${KEY_TYPES.join(', ')}, got '${type}'`);
            return generateKey(token, type as KeyType, requireOption(values.label, '--label', USAGE));
          },
          (token, key) => {
            confirmStored(token, key, 'nothing usable was made');
            noteDone(`key '${key.label}' (key id ${key.keyId}) was generated in token '${token.label}'`);
            if (values.json) {
              process.stdout.write(`${JSON.stringify({ ...describe(key), spki: key.spki.toString('base64') })}\n`);
              return 0;
            }
            process.stdout.write(`generated ${describeKeyType(key)} key '${key.label}' inside token '${token.label}'\nkey id: ${key.keyId}\n`);
            return 0;
          },
        );
      case 'import': {
        const file = requireOption(values.in, '--in', USAGE);
        const label = requireOption(values.label, '--label', USAGE);
        if (file === STANDARD_INPUT && values['pin-stdin'] === true) {
          throw new UsageError('--in - and --pin-stdin both read standard input: give the key as a file (or a pipe: --in <(…)), or the PIN in its variable');
        }
        const source = operatorFileName(file);
        let pem: Buffer;
        try {
          // Capped: a PEM private key is a few KB (RSA-8192: 6.5 KB); /dev/zero was read until memory ran out.
          pem = readOperatorFile(file, MAX_KEY_FILE_BYTES);
        } catch (err) {
          throw new KeyError('KEYEDGE_ERR_KEY_INPUT', `cannot read ${source}: ${operatorFileFailure(err)}`, { cause: err });
        }
        try {
          return await withToken(
            values,
            (token) => importKey(token, pem, label, source),
            (token, key) => {
              confirmStored(token, key, `${source} is still the only copy of the key: keep it`);
              process.stdout.write(`imported ${describeKeyType(key)} key '${key.label}' into token '${token.label}' (non-extractable)\nkey id: ${key.keyId}\n`);
              // Standard input left no file of ours behind to remind of.
              if (file !== STANDARD_INPUT) {
                process.stdout.write(
                  `NOTE: ${file} still exists and holds the private key in the clear.\n` +
                    // One shell word after --: pasted as printed, a name with a space or a ';' shredded other files, or ran what followed.
                    `      Remove it (e.g. shred -u -- ${shellWord(file)}) once your backup policy is satisfied.\n`,
                );
              }
              return 0;
            },
          );
        } finally {
          pem.fill(0);
        }
      }
      case 'csr':
        return withToken(values, async (token) => {
          const key = findKey(token, requireOption(values.key, '--key', USAGE));
          const domains = values.domain ?? [];
          if (domains.length === 0) throw new UsageError(`give at least one --domain\n\n${USAGE}`);
          const bad = domains.find((d) => !DOMAIN.test(d) || d.length > 253);
          if (bad !== undefined) throw new UsageError(`--domain '${bad}' is not a DNS name`);
          const { createCsr } = await import('../token/csr.js');
          const csr = await createCsr(token, key, domains);
          const pem = `${csr.toString('pem')}\n`;
          if (values.out !== undefined) {
            try {
              writeOutputFile(values.out, pem, 0o644);
            } catch (err) {
              if (err instanceof OutputFileIsLink) throw new UsageError(`--out ${err.message}: nothing was written; name the file itself`);
              // Not the stack trace of an open(2) naming the temp file: FILE, and why. A FILE that names no place to
              // write (its directory not there) is the command line's mistake; a disk full, an I/O error, a read-only
              // or forbidden directory are the host's, as the certificate store's write failures are (status 1): a
              // usage error (status 2) sent the operator to the command line for a fault of the disk.
              const errno = operatorFileFailure(err);
              if (WRONG_PATH.has(errno)) throw new UsageError(`cannot write --out ${values.out}: ${errno}`);
              throw new SetupError(`cannot write --out ${values.out}: ${errno}; nothing was written`);
            }
            process.stdout.write(`wrote a CSR for ${domains.join(', ')} with key ${key.keyId} to ${values.out}\n`);
          } else {
            noteDone(`the CSR for key '${key.label}' (key id ${key.keyId}) was not written whole`);
            process.stdout.write(pem);
          }
          return 0;
        });
      case 'list':
        return withToken(values, async (token) => {
          const keys = listKeys(token, warn);
          const rows = await Promise.all(keys.map(async (key) => ({ ...describe(key), ski: await subjectKeyIdentifier(key) })));
          if (values.json) {
            process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
          } else if (rows.length === 0) {
            process.stdout.write(`no keys in token '${token.label}'\n`);
          } else {
            const header = ['KEY ID (SPKI SHA-256)', 'LABEL', 'TYPE', 'NON-EXTRACTABLE', 'SKI (SHA-1)'];
            const lines = rows.map((r) => [r.keyId, r.label, r.type, String(!r.extractable && r.sensitive), r.ski]);
            process.stdout.write(formatTable(header, lines));
          }
          return 0;
        });
      case 'delete':
        return withToken(values, async (token) => {
          const found = findKey(token, requireOption(values.key, '--key', USAGE));
          // Deleted under a certificate that uses it, the key failed every handshake for it at the next sign (the key
          // server answers UNKNOWN_KEY). --force: the operator's call (and the ACME issuer's, which checked what its
          // proxy serves, the fleet's store included); nothing is looked at.
          if (values.force !== true) {
            const { checked, users, warnings, unread, remedy } = await findKeyUsers(found, values['proxy-config']);
            for (const warning of warnings) warn(warning);
            const which = `key '${found.label}' (key id ${found.keyId})`;
            // An entry that could not be read may use the key, and a node may serve what it was before it broke.
            const alsoUnread = unread.length === 0 ? '' : ` Not read, so not known: ${unread.join(', ')}.`;
            if (users.length > 0) {
              throw new KeyError(
                'KEYEDGE_ERR_KEY_IN_USE',
                `${which} is used by ${users.length} certificate${users.length === 1 ? '' : 's'} of ${checked}: ` +
                  `${users.join(', ')}; deleting it fails every handshake for them at their next sign.${alsoUnread} ` +
                  `Nothing was deleted: remove or replace them first (${remedy}), or give --force`,
              );
            }
            if (unread.length > 0) {
              throw new KeyError(
                'KEYEDGE_ERR_KEY_IN_USE',
                `${which} may be used by ${unread.length === 1 ? 'a store entry' : `${unread.length} store entries`} of ${checked} that could not be read: ` +
                  `${unread.join(', ')}; a node may still serve the version it had before, with this key. ` +
                  `Nothing was deleted: repair or remove ${unread.length === 1 ? 'it' : 'them'} first (${remedy}), or give --force`,
              );
            }
          }
          const key = deleteKey(token, found.keyId);
          process.stdout.write(`deleted ${describeKeyType(key)} key '${key.label}' from token '${token.label}'\nkey id: ${key.keyId}\n`);
          return 0;
        });
      default:
        throw new UsageError(`unknown action 'key ${action}'\n\n${USAGE}`);
    }
  },
});

function describe(key: TokenKey): { keyId: string; label: string; type: string; bits: number; sensitive: boolean; extractable: boolean } {
  return { keyId: key.keyId, label: key.label, type: describeKeyType(key), bits: key.bits, sensitive: key.sensitive, extractable: key.extractable };
}

/** RFC 5280 §4.2.1.2 method (1), as most CAs put it in the certificate. */
async function subjectKeyIdentifier(key: TokenKey): Promise<string> {
  const x509 = await import('../shared/x509.js');
  const id = await new x509.PublicKey(new Uint8Array(key.spki)).getKeyIdentifier();
  return Buffer.from(id).toString('hex');
}

/** Not "keyedge:": the proxy's key children report the first such line of their stderr as their failure (acme/token-keys.ts). */
function warn(message: string): void {
  process.stderr.write(`keyedge warning: ${message}\n`);
}

/** As the PIN file (embedded.ts): far past any PIN, a larger input is not one. */
const MAX_PIN_BYTES = 64 * 1024;

/**
 * --pin-stdin's PIN, read to MAX_PIN_BYTES at most: read whole, a mistaken `< /dev/zero` grew the process until memory
 * ran out. The bytes read are wiped once the string is made.
 */
function readPinFromStdin(): string {
  let bytes: Buffer;
  try {
    bytes = readOperatorFile(STANDARD_INPUT, MAX_PIN_BYTES);
  } catch (err) {
    throw new TokenError('KEYEDGE_ERR_TOKEN_PIN', `cannot read the PIN from standard input (--pin-stdin): ${operatorFileFailure(err)}`, { cause: err });
  }
  try {
    return bytes.toString('utf8').replace(/\r?\n$/, '');
  } finally {
    bytes.fill(0);
  }
}

/**
 * After `key generate|import`, in a fresh module instance (what every later run sees): the key read back from the
 * token's store. SoftHSM2 under a file-size limit (or on a full disk) wrote the object cut short and answered CKR_OK:
 * the key was reported made, and the import's NOTE said to shred the only copy, while no later run found it.
 */
function confirmStored(token: Token, key: TokenKey, consequence: string): void {
  if (findKeyById(token, key.keyId) !== undefined) return;
  throw new TokenError(
    'KEYEDGE_ERR_TOKEN_OPERATION',
    `key '${key.label}' (key id ${key.keyId}) is not in token '${token.label}' when read back: the token accepted it but did not store it whole ` +
      `(a full disk or a file-size limit?); ${consequence}`,
  );
}

/**
 * Runs `work` on the token, closes it; with `then`, opens the token again (a fresh module instance, reading what the
 * token stored) and runs `then` with `work`'s result.
 */
async function withToken<T>(
  options: { readonly config?: string | undefined; readonly 'pin-stdin'?: boolean | undefined },
  work: (token: Token) => T | Promise<T>,
): Promise<T>;
async function withToken<T, R>(
  options: { readonly config?: string | undefined; readonly 'pin-stdin'?: boolean | undefined },
  work: (token: Token) => T | Promise<T>,
  then: (token: Token, result: T) => R,
): Promise<R>;
async function withToken<T, R>(
  options: { readonly config?: string | undefined; readonly 'pin-stdin'?: boolean | undefined },
  work: (token: Token) => T | Promise<T>,
  then?: (token: Token, result: T) => R,
): Promise<T | R> {
  const config = loadKeyserverConfig(options.config);
  const { pin } = config.pkcs11;
  // Two sources for one PIN: the file was used and the flag ignored, without a word. Which was meant is not guessed
  // (as a flag given twice is not), and stdin is not read: a PIN piped in stays in the pipe.
  if (options['pin-stdin'] === true && 'file' in pin) {
    const where = options.config === undefined ? 'the embedded default' : `config ${config.source}`;
    throw new UsageError(
      `--pin-stdin gives the PIN in place of a PIN variable (pkcs11.pin.env), but ${where} takes it from the file ${pin.file} (pkcs11.pin.file): ` +
        'drop --pin-stdin, or name a PIN variable in the config',
    );
  }
  // Set here, the variable is in this process's memory only: /proc/<pid>/environ shows the block it was started with.
  // One line ending is the end of the line, as `echo "$PIN" |` sends it (docker login --password-stdin drops it too).
  if (options['pin-stdin'] === true && 'env' in pin) process.env[pin.env] = readPinFromStdin();
  const opening = tokenOptions(config, warn);
  const token = Token.open(opening);
  let result: T;
  try {
    result = await work(token);
  } finally {
    token.close();
  }
  if (then === undefined) return result;
  const fresh = Token.open(opening);
  try {
    return then(fresh, result);
  } finally {
    fresh.close();
  }
}
