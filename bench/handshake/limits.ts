/**
 * What one core of this machine signs with the key in memory, measured in the handshake run while the servers are idle
 * so their figures can be read against it: `openssl speed -seconds 1 ecdsap256 rsa2048` on the server CPUs (what nginx
 * with a key file and the in-memory server pay per handshake). The token's raw sign rate is keyserver-sign's `raw`.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fmt } from '../harness/report.js';

export interface Limits {
  /** Signatures per second, one core; or why `openssl speed` failed (the run goes on). */
  readonly openssl: { readonly command: string; readonly ecdsaP256: number; readonly rsa2048: number } | { readonly error: string } | undefined;
  readonly cpus: string | undefined;
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

/** `openssl speed` on `cpus` (a taskset list; one core gives a one-core rate). */
export async function measureLimits(cpus: string | undefined, log: (line: string) => void, signal: AbortSignal): Promise<Limits> {
  const args = ['speed', '-seconds', '1', 'ecdsap256', 'rsa2048'];
  const command = cpus === undefined ? ['openssl', ...args] : ['taskset', '-c', cpus, 'openssl', ...args];
  try {
    const { stdout } = await promisify(execFile)(command[0]!, command.slice(1), { timeout: 60_000, signal });
    const speed = parseOpensslSpeed(stdout);
    log(`openssl speed: ECDSA P-256 ${fmt(speed.ecdsaP256)} signs/s, RSA-2048 ${fmt(speed.rsa2048)} signs/s`);
    return { openssl: { command: command.join(' '), ...speed }, cpus };
  } catch (err) {
    const error = (err as Error).message.split('\n')[0]!;
    log(`openssl speed failed: ${error}`);
    return { openssl: { error }, cpus };
  }
}

/** The report's "What one core signs" section; none when not measured. */
export function limitsMarkdown({ openssl, cpus }: Limits): string[] {
  const perSign = (rate: number) => `${fmt(rate)} signs/s (${fmt(1e6 / rate, 0)} µs each)`;
  if (openssl === undefined) return [];
  const line =
    'error' in openssl
      ? `openssl speed: failed (${openssl.error})`
      : `\`${openssl.command}\`: ECDSA P-256 ${perSign(openssl.ecdsaP256)}, RSA-2048 ${perSign(openssl.rsa2048)}`;
  return [`## What one core signs (CPU ${cpus ?? 'any'}, servers idle)`, '', `- ${line}`, ''];
}
