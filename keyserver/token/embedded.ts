/**
 * The embedded default token: SoftHSM2 with its own configuration and object
 * store under the state directory, never the system-wide /etc/softhsm2.conf,
 * so a keyedge checkout cannot touch (or be touched by) other SoftHSM2 users.
 *
 * `prepareEmbeddedToken()` is idempotent: the first call writes softhsm2.conf,
 * generates a user PIN and an SO PIN (random, mode 0600, inside
 * `<stateDir>/token/`) and initialises the token through PKCS#11 itself
 * (C_InitToken, C_InitPIN), so no PIN ever appears on a command line. Later
 * calls only point SOFTHSM2_CONF at the existing configuration.
 *
 * Must run before the process's first C_Initialize: SoftHSM2 reads
 * SOFTHSM2_CONF only then.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { readSettingFile } from '../../config/setting-file.js';
import { SetupError, TokenError } from '../shared/errors.js';
import { openToOthers } from '../shared/secret-file.js';
import { ckrName, fixedString } from './token.js';

/** Where Debian (softhsm2), other distributions and source builds put the module. */
const SOFTHSM2_MODULE_CANDIDATES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib64/pkcs11/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
];

export interface EmbeddedToken {
  readonly modulePath: string;
  readonly label: string;
  readonly pinFile: string;
  readonly confFile: string;
}

export function findSoftHsmModule(): string {
  const found = SOFTHSM2_MODULE_CANDIDATES.find((path) => existsSync(path));
  if (found === undefined) {
    throw new SetupError(`SoftHSM2 is not installed (looked for ${SOFTHSM2_MODULE_CANDIDATES.join(', ')}); ` + 'install it with: apt-get install -y softhsm2');
  }
  return found;
}

export function embeddedTokenPaths(stateDir: string): { dir: string; confFile: string; pinFile: string; soPinFile: string } {
  const dir = join(stateDir, 'token');
  return {
    dir,
    confFile: join(dir, 'softhsm2.conf'),
    pinFile: join(dir, 'user.pin'),
    soPinFile: join(dir, 'so.pin'),
  };
}

export function prepareEmbeddedToken(stateDir: string, label: string): EmbeddedToken {
  const modulePath = findSoftHsmModule();
  const paths = embeddedTokenPaths(stateDir);
  const objectsDir = join(paths.dir, 'objects');
  mkdirSync(objectsDir, { recursive: true, mode: 0o700 });
  if (!existsSync(paths.confFile)) {
    writeFresh(
      paths.confFile,
      [
        '# Written by keyedge: the embedded default token, private to this state directory.',
        `directories.tokendir = ${objectsDir}`,
        'objectstore.backend = file',
        'log.level = ERROR',
        'slots.removable = false',
        'slots.mechanisms = ALL',
        // The key server never forks after C_Initialize, so no reset is needed.
        'library.reset_on_fork = false',
        '',
      ].join('\n'),
    );
  }
  process.env.SOFTHSM2_CONF = paths.confFile;
  if (!existsSync(paths.pinFile)) {
    initialiseToken(modulePath, label, paths.pinFile, paths.soPinFile);
  }
  return { modulePath, label, pinFile: paths.pinFile, confFile: paths.confFile };
}

function initialiseToken(modulePath: string, label: string, pinFile: string, soPinFile: string): void {
  const userPin = randomBytes(16).toString('hex');
  const soPin = randomBytes(16).toString('hex');
  const pkcs11 = new pkcs11js.PKCS11();
  pkcs11.load(modulePath);
  pkcs11.C_Initialize();
  try {
    const free = pkcs11.C_GetSlotList(true).find((slot) => !(pkcs11.C_GetTokenInfo(slot).flags & pkcs11js.CKF_TOKEN_INITIALIZED));
    if (free === undefined) throw new TokenError('KEYEDGE_ERR_TOKEN_NOT_FOUND', 'SoftHSM2 offers no free slot');
    // Blank-padded to the field's 32 bytes (PKCS#11 v2.40 §5.6): pkcs11js pads with NULs otherwise.
    pkcs11.C_InitToken(free, soPin, label.padEnd(32, ' '));
    // SoftHSM2 renumbers slots after C_InitToken: find the new token by label.
    const slot = pkcs11.C_GetSlotList(true).find((s) => fixedString(pkcs11.C_GetTokenInfo(s).label) === label);
    if (slot === undefined) throw new TokenError('KEYEDGE_ERR_TOKEN_NOT_FOUND', `token '${label}' vanished after C_InitToken`);
    const session = pkcs11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    pkcs11.C_Login(session, pkcs11js.CKU_SO, soPin);
    pkcs11.C_InitPIN(session, userPin);
    pkcs11.C_Logout(session);
    pkcs11.C_CloseSession(session);
  } catch (err) {
    if (err instanceof TokenError) throw err;
    throw new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', `initialising the embedded token failed: ${ckrName(err)}`, {
      cause: err,
    });
  } finally {
    pkcs11.C_Finalize();
    pkcs11.close();
  }
  // The PINs are written only once the token exists, so a crash half-way leaves
  // no PIN for a token that is not there; the next run starts again.
  writeFresh(soPinFile, `${soPin}\n`);
  writeFresh(pinFile, `${userPin}\n`);
}

/**
 * A PIN file (or the token's configuration) made afresh, 0600: whatever was left at its path (an SO PIN of a run that crashed before its user PIN, a
 * link, a file of another mode) is removed first, and the file is created exclusively. Written through, a dangling
 * link there (which existsSync calls absent) put the PIN wherever it pointed, outside the state directory.
 */
function writeFresh(path: string, text: string): void {
  rmSync(path, { force: true });
  writeFileSync(path, text, { mode: 0o600, flag: 'wx' });
}

/** Far past any PIN: a larger file is not one. */
const MAX_PIN_BYTES = 64 * 1024;

/**
 * The PIN in the file at `path`; a file open to its group or others is still read, and `warn` is told (secret-file.ts).
 * Read again whenever the key server opens its token again (live-token.ts), on its event loop: so through
 * config/setting-file.ts, a FIFO or a device there refused unread (open(2) of a FIFO waited for a writer, with every
 * sign, /healthz and the admin port).
 */
export function readPinFile(path: string, warn?: (message: string) => void): string {
  let text: string;
  try {
    text = readSettingFile(path, MAX_PIN_BYTES, (stat) => {
      const loose = openToOthers('the PIN file', path, stat.mode);
      if (loose !== undefined) warn?.(loose);
    }).toString('utf8');
  } catch (err) {
    throw new TokenError('KEYEDGE_ERR_TOKEN_PIN', `cannot read the PIN file ${path} (pkcs11.pin.file): ${(err as Error).message}`, { cause: err });
  }
  const pin = text.trim();
  if (pin.length === 0) throw new TokenError('KEYEDGE_ERR_TOKEN_PIN', `the PIN file ${path} is empty`);
  return pin;
}
