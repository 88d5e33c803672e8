/**
 * What one core of this machine can sign, measured in the same run as the handshakes (while the servers are idle) so
 * their figures can be read against it: `openssl speed -seconds 1 ecdsap256 rsa2048` (OpenSSL's sign rate with the
 * key in memory: what nginx with a key file and the in-memory server pay per handshake), and raw pkcs11js C_SignInit
 * + C_Sign on the key server's SoftHSM2 token (keyserver-sign's RawToken and measureWindow): the token's ceiling,
 * what every token-backed set-up (key server, nginx engine, p11-kit) pays.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { BENCH_KEYS } from '../keyserver-sign/keys.js';
import { measureWindow, RawToken } from '../keyserver-sign/load.js';
import { type HandshakeKey, tokenKeyLabel } from './lab.js';

const execFileAsync = promisify(execFile);

export interface OpensslSpeed {
  readonly command: string;
  /** Signatures per second, one core. */
  readonly ecdsaP256SignsPerSecond: number;
  readonly rsa2048SignsPerSecond: number;
}

/** Parses the `sign/s` column of `openssl speed ecdsap256 rsa2048` (OpenSSL 3). */
export function parseOpensslSpeed(text: string): { ecdsaP256: number; rsa2048: number } {
  // "rsa 2048 bits 0.000347s 0.000023s   2880.6  43427.8"
  const rsa = /^rsa 2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+[\d.]+\s*$/m.exec(text);
  // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  39409.8  14628.6"
  const ec = /^\s*256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+[\d.]+\s*$/m.exec(text);
  if (rsa === null || ec === null) throw new Error(`openssl speed printed no sign/s line for ${rsa === null ? 'rsa 2048' : 'ecdsa nistp256'}`);
  return { ecdsaP256: Number(ec[1]), rsa2048: Number(rsa[1]) };
}

/** `openssl speed` on `cpus` (taskset list; one core gives a one-core rate). */
export async function opensslSpeed(cpus: string | undefined, signal?: AbortSignal): Promise<OpensslSpeed> {
  const args = ['speed', '-seconds', '1', 'ecdsap256', 'rsa2048'];
  const [file, full] = cpus === undefined ? ['openssl', args] : ['taskset', ['-c', cpus, 'openssl', ...args]];
  const { stdout } = await execFileAsync(file, full, { timeout: 60_000, ...(signal ? { signal } : {}) });
  const parsed = parseOpensslSpeed(stdout);
  return { command: [file, ...full].join(' '), ecdsaP256SignsPerSecond: parsed.ecdsaP256, rsa2048SignsPerSecond: parsed.rsa2048 };
}

export interface RawTokenRate {
  readonly key: HandshakeKey['id'];
  readonly sessions: number;
  readonly signsPerSecond: number;
  /** CPU of this process per sign (the whole sign: C_SignInit on the main thread, C_Sign on libuv's pool). */
  readonly cpuUsPerSign: number;
  readonly p50Us: number;
  readonly errors: number;
}

/**
 * Raw signing on the key server's token from this process (keyserver-sign's RawToken: one PKCS#11 module per process,
 * so once per run, in a process that has not opened another). `sessions` loops, `durationMs` window after `rampMs`.
 */
export async function rawTokenRates(
  keyserverConfigPath: string,
  keys: readonly HandshakeKey[],
  sessions: number,
  durationMs: number,
  rampMs: number,
  signal?: AbortSignal,
): Promise<RawTokenRate[]> {
  const token = new RawToken(keyserverConfigPath, sessions);
  try {
    const digests = Array.from({ length: 16 }, () => randomBytes(32));
    const out: RawTokenRate[] = [];
    for (const key of keys) {
      const load = token.load((k) => k.label === tokenKeyLabel(key), BENCH_KEYS.find((k) => k.id === key.id)!, sessions, digests);
      const w = await measureWindow(load, { durationMs, rampMs, ...(signal ? { signal } : {}) });
      out.push({ key: key.id, sessions, signsPerSecond: w.signsPerSecond, cpuUsPerSign: w.clientCpuUsPerSign, p50Us: w.latency.p50Us, errors: w.errors });
    }
    return out;
  } finally {
    token.close();
  }
}
