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
 * Concurrency: first runs started together (`npm run up` and a `keyedge key`,
 * several `keyedge key` at once) each made a token with the label, one PIN
 * file kept, and every later run refused for good (CKR_PIN_INCORRECT). The
 * first-run set-up runs under an exclusive lock file (init.lock, O_EXCL, its
 * holder's pid); the PINs are written beside their files before C_InitToken
 * and renamed over them once the token has its user PIN, so a run interrupted
 * half-way is finished by the next, never answered with a second token. A
 * token with the label and no PIN for it at all is refused, naming the
 * objects directory.
 *
 * Must run before the process's first C_Initialize: SoftHSM2 reads
 * SOFTHSM2_CONF only then.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
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
  const made = { modulePath, label, pinFile: paths.pinFile, confFile: paths.confFile };
  // Every run after the first: no lock, no PKCS#11 call.
  if (existsSync(paths.confFile) && existsSync(paths.pinFile)) {
    process.env.SOFTHSM2_CONF = paths.confFile;
    return made;
  }
  withInitLock(join(paths.dir, 'init.lock'), () => {
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
    // Made by the run that held the lock before this one.
    if (!existsSync(paths.pinFile)) initialiseToken(modulePath, label, paths, objectsDir);
  });
  return made;
}

/** How long a first run waits for another's set-up: C_InitToken takes well under a second. */
const INIT_LOCK_WAIT_MS = 60_000;
const INIT_LOCK_POLL_MS = 25;

/**
 * Runs `work` holding the lock file at `path` (holding this process's pid), waiting while another live process holds
 * it. A lock whose holder is gone (a run killed half-way) is taken over: its set-up is finished. So is one holding
 * this process's own pid: left by an earlier life of the pid, as a container's restarted process (pid 1) has it,
 * never by this process (the set-up is synchronous). The lock is made whole or not at all: its pid is written to a
 * file of our own, then linked to `path` (EEXIST while held), so no lock is ever left empty (a full disk, a kill
 * between a create and its write), which no later run could tell from one being written.
 */
function withInitLock(path: string, work: () => void): void {
  const deadline = Date.now() + INIT_LOCK_WAIT_MS;
  const mine = `${path}.${process.pid}`;
  try {
    writeFileSync(mine, `${process.pid}\n`, { mode: 0o600 });
  } catch (err) {
    rmSync(mine, { force: true });
    throw new SetupError(`cannot create the embedded token's lock ${path}: ${(err as { code?: string }).code ?? 'failed'}`, { cause: err });
  }
  for (;;) {
    try {
      linkSync(mine, path);
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== 'EEXIST') {
        rmSync(mine, { force: true });
        throw new SetupError(`cannot create the embedded token's lock ${path}: ${(err as { code?: string }).code ?? 'failed'}`, { cause: err });
      }
    }
    const holder = lockHolder(path);
    if (holder !== undefined && (holder === process.pid || !alive(holder))) {
      rmSync(path, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      rmSync(mine, { force: true });
      throw new SetupError(
        `the embedded token is being set up by process ${holder ?? '?'} (lock ${path}) for over ${INIT_LOCK_WAIT_MS / 1000} s; if no such process runs, remove the lock`,
      );
    }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, INIT_LOCK_POLL_MS);
  }
  rmSync(mine, { force: true });
  try {
    work();
  } finally {
    rmSync(path, { force: true });
  }
}

/** The pid in a lock file; undefined while its holder has not written it yet, or when it is gone. */
function lockHolder(path: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(path, 'utf8'), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: alive, another user's.
    return (err as { code?: string }).code !== 'ESRCH';
  }
}

/**
 * Initialises the token, under the lock. The PINs go to `<file>.new` first and are renamed over their files once the
 * token has its user PIN: user.pin there means set-up finished. A token with the label already there was made by a run
 * interrupted after C_InitToken: finished with the pending PINs it left; without them, refused (its keys would be
 * stranded behind a second token, which the next run then opened).
 */
function initialiseToken(modulePath: string, label: string, paths: ReturnType<typeof embeddedTokenPaths>, objectsDir: string): void {
  const pendingUser = `${paths.pinFile}.new`;
  const pendingSo = `${paths.soPinFile}.new`;
  const pkcs11 = new pkcs11js.PKCS11();
  pkcs11.load(modulePath);
  pkcs11.C_Initialize();
  try {
    const labelled = (s: pkcs11js.Handle): boolean => {
      const info = pkcs11.C_GetTokenInfo(s);
      return (info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) !== 0 && fixedString(info.label) === label;
    };
    let slot = pkcs11.C_GetSlotList(true).find(labelled);
    let userPin: string;
    let soPin: string;
    if (slot !== undefined) {
      // Killed between the two renames at the end: so.pin is in place, its pending file gone.
      const soFile = existsSync(pendingSo) ? pendingSo : paths.soPinFile;
      if (!existsSync(pendingUser) || !existsSync(soFile)) {
        throw new TokenError(
          'KEYEDGE_ERR_TOKEN_PIN',
          `the embedded token's directory ${objectsDir} holds a token '${label}' but there is no PIN file ${paths.pinFile} for it ` +
            '(a first run interrupted, or the file removed): restore the PIN file, or move the directory aside to start a new, empty token',
        );
      }
      userPin = readPinFile(pendingUser);
      soPin = readPinFile(soFile);
    } else {
      userPin = randomBytes(16).toString('hex');
      soPin = randomBytes(16).toString('hex');
      writeFresh(pendingSo, `${soPin}\n`);
      writeFresh(pendingUser, `${userPin}\n`);
      const free = pkcs11.C_GetSlotList(true).find((s) => !(pkcs11.C_GetTokenInfo(s).flags & pkcs11js.CKF_TOKEN_INITIALIZED));
      if (free === undefined) throw new TokenError('KEYEDGE_ERR_TOKEN_NOT_FOUND', 'SoftHSM2 offers no free slot');
      // Blank-padded to the field's 32 bytes (PKCS#11 v2.40 §5.6): pkcs11js pads with NULs otherwise.
      pkcs11.C_InitToken(free, soPin, label.padEnd(32, ' '));
      // SoftHSM2 renumbers slots after C_InitToken: find the new token by label.
      slot = pkcs11.C_GetSlotList(true).find(labelled);
      if (slot === undefined) throw new TokenError('KEYEDGE_ERR_TOKEN_NOT_FOUND', `token '${label}' vanished after C_InitToken`);
    }
    const session = pkcs11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    if (!(pkcs11.C_GetTokenInfo(slot).flags & pkcs11js.CKF_USER_PIN_INITIALIZED)) {
      pkcs11.C_Login(session, pkcs11js.CKU_SO, soPin);
      pkcs11.C_InitPIN(session, userPin);
      pkcs11.C_Logout(session);
    }
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
  // The SO PIN first: user.pin there is what says the token is ready.
  if (existsSync(pendingSo)) renameSync(pendingSo, paths.soPinFile);
  renameSync(pendingUser, paths.pinFile);
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
