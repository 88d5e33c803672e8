/**
 * The certificates of the handshake and keep-alive labs, with openssl in a temp dir: a throwaway CA; for a token key,
 * a certificate from a CSR signed inside the token (`keyedge key csr`, as config/setup.sh's demo certificate); for the
 * servers that hold a key file (in memory, floor, nginx, caddy), an ordinary key file (`openssl genpkey`) and its
 * certificate for the same name. Each certificate is written as `<name>.pem` and `<name>-chain.pem` (leaf + CA).
 */
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { childEnv } from '../harness/spawn.js';
import { KEYEDGE_CLI, type KeyserverLab } from './keyserver.js';

const execFileAsync = promisify(execFile);

export type KeyType = 'ec-p256' | 'rsa-2048';

export class LabPki {
  readonly caFile: string;

  /** Makes the CA (ca.key, ca.pem) in `dir`. */
  constructor(
    readonly dir: string,
    commonName: string,
  ) {
    this.caFile = join(dir, 'ca.pem');
    const ca =
      '-x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign';
    this.#openssl('req', ...ca.split(' '), '-subj', `/CN=${commonName}`, '-keyout', this.#f('ca.key'), '-out', this.caFile);
    writeFileSync(this.#f('leaf.ext'), 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
  }

  #f(name: string): string {
    return join(this.dir, name);
  }

  #openssl(...args: string[]): void {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
  }

  /** `<name>.pem` and `<name>-chain.pem` from `<name>.csr`, the CSR's subjectAltName copied. */
  #issue(name: string): void {
    const f = (x: string) => this.#f(x);
    const args = `x509 -req -CAcreateserial -days 2 -copy_extensions copy -in ${f(`${name}.csr`)} -CA ${this.caFile} -CAkey ${f('ca.key')}`;
    this.#openssl(...args.split(' '), '-extfile', f('leaf.ext'), '-out', f(`${name}.pem`));
    writeFileSync(f(`${name}-chain.pem`), readFileSync(f(`${name}.pem`), 'utf8') + readFileSync(this.caFile, 'utf8'));
  }

  /** A certificate for the token key `label` (its CSR signed inside the token). */
  async tokenCert(keyserverLab: KeyserverLab, label: string, serverName: string, name: string): Promise<void> {
    const args = [KEYEDGE_CLI, 'key', 'csr', '--config', keyserverLab.configPath, '--key', label, '--domain', serverName, '--out', this.#f(`${name}.csr`)];
    await execFileAsync(process.execPath, args, { env: childEnv(), timeout: 60_000 });
    this.#issue(name);
  }

  /** A key file `<name>.key` and its certificate. */
  fileCert(type: KeyType, serverName: string, name: string): void {
    const key = this.#f(`${name}.key`);
    this.#openssl(
      'genpkey',
      ...(type === 'ec-p256' ? '-algorithm EC -pkeyopt ec_paramgen_curve:P-256' : '-algorithm RSA -pkeyopt rsa_keygen_bits:2048').split(' '),
      '-out',
      key,
    );
    this.#openssl('req', '-new', '-key', key, '-subj', `/CN=${serverName}`, '-addext', `subjectAltName=DNS:${serverName}`, '-out', this.#f(`${name}.csr`));
    this.#issue(name);
  }
}
