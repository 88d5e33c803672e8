/**
 * What one core signs with the key in memory (what nginx with a key file and the in-memory server pay per handshake),
 * measured while the servers are idle so their figures can be read against it.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fmt } from '../harness/report.js';

/** Parses the `sign/s` column of `openssl speed ecdsap256 rsa2048` (OpenSSL 3). */
export function parseOpensslSpeed(text: string): { ecdsaP256: number; rsa2048: number } {
  // "rsa 2048 bits 0.000347s 0.000023s   2880.6  43427.8"
  const rsa = /^rsa 2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+[\d.]+\s*$/m.exec(text);
  // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  39409.8  14628.6"
  const ec = /^\s*256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+[\d.]+\s*$/m.exec(text);
  if (rsa === null || ec === null) throw new Error(`openssl speed printed no sign/s line for ${rsa === null ? 'rsa 2048' : 'ecdsa nistp256'}`);
  return { ecdsaP256: Number(ec[1]), rsa2048: Number(rsa[1]) };
}

/** `openssl speed` on `cpus` (a taskset list): signs per second (or why it failed; the run goes on) and the report's line. */
export async function measureLimits(cpus: string | undefined, signal: AbortSignal) {
  const command = [...(cpus === undefined ? [] : ['taskset', '-c', cpus]), 'openssl', 'speed', '-seconds', '1', 'ecdsap256', 'rsa2048'];
  const openssl = await promisify(execFile)(command[0]!, command.slice(1), { timeout: 60_000, signal })
    .then(({ stdout }) => parseOpensslSpeed(stdout))
    .catch((err: Error) => ({ error: err.message.split('\n')[0]! }));
  const rate = (n: number) => `${fmt(n)} signs/s (${fmt(1e6 / n, 0)} µs each)`;
  const figures = 'error' in openssl ? `failed (${openssl.error})` : `ECDSA P-256 ${rate(openssl.ecdsaP256)}, RSA-2048 ${rate(openssl.rsa2048)}`;
  return { command: command.join(' '), cpus, openssl, line: `What one core signs, key in memory (\`${command.join(' ')}\`, servers idle): ${figures}.` };
}
export type Limits = Awaited<ReturnType<typeof measureLimits>>;
