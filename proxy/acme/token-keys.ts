/**
 * Making and deleting keys in the token for the issuer, through the
 * `keyedge key generate|delete` command run as a child process.
 *
 * Why a child: the key-server protocol can sign and give public keys, never
 * create or destroy one, and the proxy process must not load the PKCS#11
 * module or read the PIN. The child opens the token (as `keyedge key` always
 * does, next to a running key server), generates the key inside it
 * (CKA_SENSITIVE, not CKA_EXTRACTABLE) and prints the key id and public key:
 * no key material crosses. A running key server finds the new key on its
 * first use (it rescans the token for an unknown key id). Cost: one node
 * start (~0.3 s) per key, once per certificate and renewal. A PIN the child
 * reads from a variable reaches it on its stdin, not in the workers' or its
 * own environment (keyChildPin), and its bytes are wiped from the block /proc/<pid>/environ
 * shows (keyserver/shared/environ-wipe.ts); the process holding it is made non-dumpable.
 */
import { execFile } from 'node:child_process';
import { loadKeyserverConfig } from '../../config/load.js';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import { RemoteError } from '../../keyserver/shared/errors.js';
import { ErrorCode } from '../../keyserver/protocol/constants.js';
import { keepInspectorClosed } from '../../keyserver/shared/inspector-signal.js';
import { setNotDumpable } from '../../keyserver/shared/no-dump.js';
import { pinVariable as takenOrSet, takePinVariable } from '../../keyserver/shared/pin-variable.js';
import { AcmeError } from './errors.js';

export interface GeneratedKey {
  readonly keyId: string;
  readonly label: string;
  readonly spki: Buffer;
}

export interface TokenKeys {
  generate(type: string, label: string): Promise<GeneratedKey>;
  remove(keyId: string): Promise<void>;
}

/**
 * The PIN the `keyedge key` children get on their stdin, if any. When the key server config takes its PIN from a variable
 * (pkcs11.pin.env), the children need it to open the token, and nothing else in the proxy does: it is taken out of this
 * process's environment at once, before the workers are forked with a copy of it (they face the clients, and held the PIN
 * in their environment for their whole life). Its bytes are wiped from the environment block the process was started
 * with too: a worker (same user) could read them in /proc/<primary pid>/environ. And the process becomes non-dumpable
 * (keyserver/shared/no-dump.ts), as it holds the PIN from now on: a worker could read its memory; and SIGUSR1 no longer opens its
 * inspector (keyserver/shared/inspector-signal.ts), which would run a worker's code in it. The children get it on a pipe
 * (`--pin-stdin`), not in their environment: /proc/<child pid>/environ shows that to the same user while they run.
 */
function keyChildPin(keyserverConfig: string | null, warn: (message: string) => void): string | undefined {
  const name = pinVariable(keyserverConfig);
  // A second maker of children (the primary has one, startAcme) finds the variable taken by the first: it gets it too.
  const value = name === undefined ? undefined : takenOrSet(name);
  if (name === undefined || value === undefined) return undefined;
  // The inspector SIGUSR1 would open runs any code sent to it: the PIN too (keyserver/shared/inspector-signal.ts).
  keepInspectorClosed(() =>
    warn("SIGUSR1 ignored: the proxy's primary opens no inspector (it would run the code of any local process, which could read the key server PIN)"),
  );
  // In this order: a non-dumpable process's /proc/self/mem belongs to root, which the wipe writes through.
  // Either failing leaves the PIN readable by the proxy's user: the operator hears of it (never the PIN itself).
  if (!takePinVariable(name)) {
    warn(
      `the key server PIN variable ${name} could not be wiped from the environment block the proxy was started with ` +
        `(/proc/self/stat or /proc/self/mem not usable): processes of its user, its workers among them, may read the PIN in /proc/${process.pid}/environ`,
    );
  }
  if (!setNotDumpable()) warn(`the proxy's primary could not be made non-dumpable: processes of its user may read the key server PIN in its memory`);
  return value;
}

/** The variable the key server config takes its PIN from, if it does. */
function pinVariable(keyserverConfig: string | null): string | undefined {
  try {
    const pin = loadKeyserverConfig(keyserverConfig ?? undefined).pkcs11.pin;
    return 'env' in pin ? pin.env : undefined;
  } catch {
    // A config the children cannot load either: each says why when it runs.
    return undefined;
  }
}

/**
 * `entry`: the keyedge CLI script (default: the one running now). `keyserverConfig`: its --config; null: the embedded
 * default. `warn`: told when a PIN variable stays readable by the proxy's user (keyChildPin).
 */
export function cliTokenKeys(
  keyserverConfig: string | null,
  entry: string = process.argv[1] ?? 'keyedge',
  warn: (message: string) => void = () => {},
): TokenKeys {
  const pin = keyChildPin(keyserverConfig, warn);
  const run = (args: string[]): Promise<string> =>
    new Promise((resolve, reject) => {
      const full = [entry, 'key', ...args, ...(keyserverConfig === null ? [] : ['--config', keyserverConfig]), ...(pin === undefined ? [] : ['--pin-stdin'])];
      const child = execFile(process.execPath, full, { timeout: 60_000, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
        if (err !== null) {
          // The CLI's message names the code and never a PIN or key material.
          const line = stderr.split('\n').find((l) => l.startsWith('keyedge:')) ?? err.message;
          reject(new AcmeError(`keyedge key ${args[0]}: ${line}`, { cause: err }));
        } else resolve(stdout);
      });
      // A child that ends before reading it (a bad argument) closes the pipe: its exit says why, not EPIPE.
      child.stdin?.on('error', () => {});
      child.stdin?.end(pin ?? '');
    });
  return {
    async generate(type, label) {
      const out = JSON.parse(await run(['generate', '--type', type, '--label', label, '--json'])) as { keyId: string; label: string; spki: string };
      return { keyId: out.keyId, label: out.label, spki: Buffer.from(out.spki, 'base64') };
    },
    async remove(keyId) {
      // A key already gone is deleted: another node (or this one, under a lock it then lost) deleted it before its record
      // went, and counting that as a failure kept the record, tried again every pass, for ever. Several matches still fail.
      // --force: the issuer checked what its proxy serves (housekeeping.ts), the fleet's store included, which the
      // child's own check (the embedded default's store: it is given no proxy config) would not see.
      await run(['delete', '--key', keyId, '--force']).catch((err: unknown) => {
        if (!(err instanceof AcmeError && err.message.includes('KEYEDGE_ERR_KEY_NOT_FOUND: no key with'))) throw err;
      });
    },
  };
}

/**
 * Waits until the key server knows `keyId`: it rescans the token for an
 * unknown id at most once a second, so a key made a moment after a rescan is
 * unknown for up to that long.
 */
export async function waitForKey(client: KeyserverClient, keyId: string, timeoutMs = 10_000): Promise<Buffer> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await client.getPublicKey(keyId);
    } catch (err) {
      if (!(err instanceof RemoteError && err.wireCode === ErrorCode.UNKNOWN_KEY) || Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}
