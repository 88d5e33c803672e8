/**
 * A real OCSP responder for tests: `openssl ocsp` in server mode, answering
 * for a test CA from an index.txt (the `openssl ca` database format), signed
 * by the CA itself. Also the same responder run once, offline, on a request
 * file (`-reqin`), for unit checks of our OCSP request and response code.
 *
 *   const responder = await startOcspResponder(dir, ca, [{ leaf, status: 'good' }], port);
 *   ...; await responder.stop();
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run, type Run } from './clients.js';
import { sleep } from './basics.js';
import { type Issued, type TestCa, writePem } from './pki.js';

export interface IndexEntry {
  readonly leaf: Issued;
  readonly status: 'good' | 'revoked';
  /** Revocation time for 'revoked' (default: an hour ago). */
  readonly revokedAt?: Date;
}

/** YYMMDDHHMMSSZ (UTC), as index.txt writes times. */
export function indexTime(date: Date): string {
  return date.toISOString().replace(/[-:T]/g, '').slice(2, 14) + 'Z';
}

/** The leaf's serial as index.txt writes it: upper-case hex. */
export function indexSerial(leaf: Issued): string {
  return leaf.cert.serialNumber.toUpperCase();
}

/** Writes index.txt, the CA certificate and key into `dir`; returns their paths. */
export function writeResponderFiles(dir: string, ca: TestCa, entries: readonly IndexEntry[]): { index: string; caCert: string; caKey: string } {
  const lines = entries.map(({ leaf, status, revokedAt }) => {
    const revoked = status === 'revoked' ? indexTime(revokedAt ?? new Date(Date.now() - 3_600_000)) : '';
    return [
      status === 'good' ? 'V' : 'R',
      indexTime(leaf.cert.notAfter),
      revoked,
      indexSerial(leaf),
      'unknown',
      `/${leaf.cert.subject.replace(/, */g, '/')}`,
    ].join('\t');
  });
  const index = join(dir, 'index.txt');
  writeFileSync(index, lines.map((l) => `${l}\n`).join(''));
  return { index, caCert: writePem(dir, 'ocsp-ca', ca.certPem), caKey: writePem(dir, 'ocsp-ca-key', ca.keyPem) };
}

function responderArgs(files: { index: string; caCert: string; caKey: string }): string[] {
  return ['-index', files.index, '-rsigner', files.caCert, '-rkey', files.caKey, '-CA', files.caCert, '-ndays', '1'];
}

/** The responder run offline on one DER request: its DER response (at `respOut`) and what openssl printed. */
export function respondOffline(files: { index: string; caCert: string; caKey: string }, reqIn: string, respOut: string): Promise<Run> {
  return run('openssl', ['ocsp', ...responderArgs(files), '-reqin', reqIn, '-respout', respOut]);
}

export interface OcspResponder {
  readonly child: ChildProcess;
  /** Requests the responder has received so far (its "Received request" lines). */
  requests(): number;
  /** stderr so far. */
  output(): string;
  stop(): Promise<void>;
}

/** `openssl ocsp -port PORT` (OpenSSL 3.0 binds all addresses), resolved once it listens. */
export async function startOcspResponder(dir: string, ca: TestCa, entries: readonly IndexEntry[], port: number): Promise<OcspResponder> {
  const files = writeResponderFiles(dir, ca, entries);
  const child = spawn('openssl', ['ocsp', ...responderArgs(files), '-port', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => void (stderr += chunk.toString('utf8')));
  // Should the test process die before its afterAll, the responder goes with it.
  const onExit = (): void => void child.kill('SIGKILL');
  process.once('exit', onExit);
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      process.off('exit', onExit);
      resolve();
    }),
  );
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
  // Not probed with a TCP connect: OpenSSL 3.0's responder hangs on a connection closed without a request.
  // It prints this line once it listens (http_server_init_bio binds before the accept loop starts).
  for (let i = 0; i < 200 && child.exitCode === null; i++) {
    if (stderr.includes('waiting for OCSP client connections')) {
      return { child, requests: () => (stderr.match(/Received request/g) ?? []).length, output: () => stderr, stop };
    }
    await sleep(25);
  }
  await stop();
  throw new Error(`openssl ocsp did not start:\n${stderr}`);
}
