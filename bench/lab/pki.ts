/**
 * The openssl-made certificates of the labs, in a temp dir: a throwaway CA; for a token key, a certificate from a CSR
 * signed inside the token (`keyedge key csr`, as config/setup.sh's demo certificate); for the servers that hold a key
 * file (in memory, floor, nginx, caddy, and the key server's mutual-TLS listener and its client), an ordinary key file
 * (`openssl genpkey`) and its certificate. Each certificate is written as `<name>.pem` and `<name>-chain.pem` (leaf +
 * CA).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KeyserverLab } from './keyserver.js';

export type KeyType = 'ec-p256' | 'rsa-2048';

export class LabPki {
  readonly caFile: string;

  /** Makes the CA (ca.key, ca.pem) in `dir` (made, 0700, when missing). */
  constructor(
    readonly dir: string,
    commonName: string,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.caFile = join(dir, 'ca.pem');
    const ca =
      '-x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign';
    this.#openssl('req', ...ca.split(' '), '-subj', `/CN=${commonName}`, '-keyout', this.#f('ca.key'), '-out', this.caFile);
  }

  #f(name: string): string {
    return join(this.dir, name);
  }

  #openssl(...args: string[]): void {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
  }

  /** `<name>.pem` and `<name>-chain.pem` from `<name>.csr`, the CSR's subjectAltName copied; `usage`: its extendedKeyUsage. */
  #issue(name: string, usage = 'serverAuth'): void {
    const f = (x: string) => this.#f(x);
    writeFileSync(f(`${usage}.ext`), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=${usage}\n`);
    const args = `x509 -req -CAcreateserial -days 2 -copy_extensions copy -in ${f(`${name}.csr`)} -CA ${this.caFile} -CAkey ${f('ca.key')}`;
    this.#openssl(...args.split(' '), '-extfile', f(`${usage}.ext`), '-out', f(`${name}.pem`));
    writeFileSync(f(`${name}-chain.pem`), readFileSync(f(`${name}.pem`), 'utf8') + readFileSync(this.caFile, 'utf8'));
  }

  /** A certificate for the token key `label` (its CSR signed inside the token). */
  async tokenCert(keyserverLab: KeyserverLab, label: string, serverName: string, name: string): Promise<void> {
    await keyserverLab.key('csr', '--key', label, '--domain', serverName, '--out', this.#f(`${name}.csr`));
    this.#issue(name);
  }

  /** A key file `<name>.key` and its certificate for CN `subject`, subjectAltName `san` ('' for none). */
  fileCert(type: KeyType, subject: string, name: string, san = `DNS:${subject}`, usage = 'serverAuth'): void {
    const key = this.#f(`${name}.key`);
    this.#openssl(
      'genpkey',
      ...(type === 'ec-p256' ? '-algorithm EC -pkeyopt ec_paramgen_curve:P-256' : '-algorithm RSA -pkeyopt rsa_keygen_bits:2048').split(' '),
      '-out',
      key,
    );
    const sanArgs = san === '' ? [] : ['-addext', `subjectAltName=${san}`];
    this.#openssl('req', '-new', '-key', key, '-subj', `/CN=${subject}`, ...sanArgs, '-out', this.#f(`${name}.csr`));
    this.#issue(name, usage);
  }
}
