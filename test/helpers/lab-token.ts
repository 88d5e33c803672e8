/**
 * The keyless lab's token (proxy-lab.ts): an embedded SoftHSM2 token holding an
 * ECDSA P-256 key 'lab-ec' and an RSA-2048 key 'lab-rsa', made by the real
 * `keyedge key generate` CLI.
 *
 * Two CLI runs (two node starts, a token initialisation, an RSA key generation)
 * cost each lab seconds of the machine's two cores, and some fifty test files
 * start one. So the token is made once per vitest run, in the directory the
 * global set-up provides (global-setup.ts), and each lab gets a copy of it:
 * the same keys and PINs, in files of its own, so what a test does to its
 * lab's token reaches no other lab. The copy leaves out softhsm2.conf, which
 * names the token's directory: the key server writes one for the copy at its
 * start (keyserver/token/embedded.ts). Outside such a run, each lab makes its
 * token.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inject } from 'vitest';
// The type of the run's provided directory (`inject`).
import './global-setup.js';
import { removeDir, runCli } from './basics.js';

export interface LabKeyIds {
  readonly ec: string;
  readonly rsa: string;
}

/** Writes the key server config of a lab in `dir` (its state in `dir`/state) and returns its path. */
export function writeLabConfig(dir: string, adminPort: number): string {
  const file = join(dir, 'keyserver.json');
  writeFileSync(file, JSON.stringify({ stateDir: './state', admin: { host: '127.0.0.1', port: adminPort }, log: { level: 'warn' } }));
  return file;
}

/** Generates the lab's two keys in the token of the key server config `configFile`. */
async function generateKeys(configFile: string): Promise<LabKeyIds> {
  const generate = async (type: string, label: string): Promise<string> => {
    const result = await runCli(['key', 'generate', '--config', configFile, '--type', type, '--label', label]);
    const match = /key id: ([0-9a-f]{64})/.exec(result.stdout);
    if (result.code !== 0 || match === null) throw new Error(`key generate failed: ${result.stderr}`);
    return match[1]!;
  };
  return { ec: await generate('ec-p256', 'lab-ec'), rsa: await generate('rsa-2048', 'lab-rsa') };
}

/** The run's token, made by the first lab that needs it; two test files racing to make it each make one, and one wins. */
async function template(root: string): Promise<string> {
  const done = join(root, 'lab');
  if (existsSync(join(done, 'keys.json'))) return done;
  const building = mkdtempSync(join(root, 'building-'));
  try {
    const keys = await generateKeys(writeLabConfig(building, 0));
    writeFileSync(join(building, 'keys.json'), JSON.stringify(keys));
    renameSync(building, done);
  } catch (err) {
    removeDir(building);
    // Another test file's worker made it meanwhile (the rename onto a full directory fails): that one serves.
    if (!existsSync(join(done, 'keys.json'))) throw err;
  }
  return done;
}

/** Gives the lab in `dir` (config `configFile`, state in `dir`/state) its token with the two keys; their key ids. */
export async function labToken(dir: string, configFile: string): Promise<LabKeyIds> {
  const root = inject('keylessLabTemplate');
  if (root === undefined) return generateKeys(configFile);
  const from = await template(root);
  const to = join(dir, 'state', 'token');
  mkdirSync(join(dir, 'state'), { recursive: true, mode: 0o700 });
  cpSync(join(from, 'state', 'token'), to, { recursive: true, filter: (src) => !src.endsWith('softhsm2.conf') });
  rmSync(join(to, 'softhsm2.conf'), { force: true });
  return JSON.parse(readFileSync(join(from, 'keys.json'), 'utf8')) as LabKeyIds;
}
