/**
 * The files of a mutual-TLS key server (keyserver.tcp: `ca`, `cert`, `key`) as
 * a worker's signing connections use them, and their renewal.
 *
 * Each worker reads them as it starts (readTcpMaterial) and then checks them
 * every TCP_FILES_CHECK_MS (TcpFilesWatch): by stat identity (device, inode,
 * size, mtime, ctime of what each path leads to, so a Kubernetes secret
 * mount's link swap counts), reading only on a change, through the same
 * door as at start (config/setting-file.ts: no FIFO, no device, 1 MiB cap)
 * and the same client-key check. Short-lived client certificates from an
 * internal CA are renewed daily: a worker that kept the one it started with
 * presented an expired certificate on every reconnect, and every handshake
 * of the edge failed until the workers were restarted.
 *
 * A change that validates goes to the native bridge (native.setTls): its
 * signing connection is closed, and the next sign connects with the new
 * identity (a key server that still takes the old certificate but no longer
 * authorises it would otherwise refuse every sign on the kept one). One
 * that does not (unreadable, a key not the certificate's, no PEM) is said
 * once, as a warning naming the key server, the file and the reason (never
 * the content), and the previous files keep being used. A pair written one
 * file at a time (the certificate first) is refused at one check and taken
 * at the next, once the key has followed: the files are read again whenever
 * their identity changes.
 */
import { statSync } from 'node:fs';
import type { KeyserverEndpoint } from '../../config/proxy-schema.js';
import { readSettingFile } from '../../config/setting-file.js';
import { assertClientKeyMatches } from '../../keyserver/client/client-key.js';
import { KeyedgeError } from '../../keyserver/shared/errors.js';
import type { Logger } from '../../keyserver/shared/log.js';
import type { KeylessTlsMaterial } from '../native/index.js';

type TcpSettings = NonNullable<KeyserverEndpoint['tcp']>;

/** How often a worker looks at the files: a renewal is in use within seconds, for three stat(2) calls each time. */
export const TCP_FILES_CHECK_MS = 5_000;

/** Far past a certificate, a key or a CA bundle. */
const MAX_TLS_FILE_BYTES = 1024 * 1024;

/**
 * A TLS file of key server `name`, read through config/setting-file.ts, so a FIFO there fails naming it instead of
 * holding the worker in open(2).
 */
function readTcpFile(name: string, file: string, which: 'ca' | 'cert' | 'key'): string {
  try {
    return readSettingFile(file, MAX_TLS_FILE_BYTES).toString('utf8');
  } catch (err) {
    throw new KeyedgeError('KEYEDGE_ERR_CONFIG', `key server ${name}: cannot read ${file} (tcp.${which}): ${(err as Error).message}`, { cause: err });
  }
}

/** The three files' PEM text; KEYEDGE_ERR_CONFIG naming the key server and the file when one is unreadable or the key is not the certificate's. */
export function readTcpMaterial(name: string, tcp: TcpSettings): KeylessTlsMaterial {
  const certPem = readTcpFile(name, tcp.cert, 'cert');
  const keyPem = readTcpFile(name, tcp.key, 'key');
  // Judged here, where the key server and the files can be named: the native bridge refused such a key naming neither.
  assertClientKeyMatches({ name, certFile: tcp.cert, keyFile: tcp.key, certPem, keyPem });
  return { caPem: readTcpFile(name, tcp.ca, 'ca'), certPem, keyPem };
}

/** What stat says of the three files, as one string: equal strings, same files (an error is part of it). */
export function tcpFilesIdentity(tcp: TcpSettings): string {
  return [tcp.ca, tcp.cert, tcp.key]
    .map((file) => {
      try {
        const s = statSync(file, { bigint: true });
        return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
      } catch (err) {
        return `error:${(err as NodeJS.ErrnoException).code ?? 'unknown'}`;
      }
    })
    .join('|');
}

/** The native bridge's words for the three (tls.caPem...) as the settings and files they came from. */
function nameFiles(message: string, tcp: TcpSettings): string {
  return message
    .replaceAll('tls.caPem', `${tcp.ca} (tcp.ca)`)
    .replaceAll('tls.certPem', `${tcp.cert} (tcp.cert)`)
    .replaceAll('tls.keyPem', `${tcp.key} (tcp.key)`);
}

/**
 * Checks one key server's files every intervalMs and hands a validated change to `apply` (false: the configuration
 * it was for is gone, and the watch stops). `seen`: their identity taken before the worker's start read them, so a
 * change made while they were read is read again at the first check.
 */
export class TcpFilesWatch {
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  #seen: string;

  constructor(
    private readonly name: string,
    private readonly tcp: TcpSettings,
    seen: string,
    private readonly apply: (material: KeylessTlsMaterial) => boolean,
    private readonly log: Logger | undefined,
    private readonly intervalMs = TCP_FILES_CHECK_MS,
  ) {
    this.#seen = seen;
    this.#schedule();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => this.#check(), this.intervalMs);
    // Never keeps a worker alive on its own.
    this.#timer.unref();
  }

  #check(): void {
    if (this.#stopped) return;
    // Taken before the read: a change made during it shows at the next check and is read then.
    const now = tcpFilesIdentity(this.tcp);
    if (now === this.#seen) return this.#schedule();
    // Whatever comes of this read, these files are judged: a refusal is said once, and retried when they change again.
    this.#seen = now;
    let applied: boolean;
    try {
      applied = this.apply(readTcpMaterial(this.name, this.tcp));
    } catch (err) {
      const message = (err as Error).message.replace(/^keyless bridge setTls: /, '');
      this.log?.warn(
        { keyserver: this.name, err: nameFiles(message.startsWith(`key server ${this.name}:`) ? message : `key server ${this.name}: ${message}`, this.tcp) },
        'key server TLS files changed but were refused: its next connections keep using the previous ones',
      );
      return this.#schedule();
    }
    if (!applied) return this.stop();
    this.log?.info(
      // Not `key`: the logger redacts that field, whatever it holds.
      { keyserver: this.name, caFile: this.tcp.ca, certFile: this.tcp.cert, keyFile: this.tcp.key },
      'key server TLS files changed: its signing connections use the new ones from the next sign',
    );
    this.#schedule();
  }
}
