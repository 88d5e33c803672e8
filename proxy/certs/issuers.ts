/**
 * The CA certificates validation knows besides the chain itself: the
 * operator's intermediates and private roots (`certStore.intermediates`, a
 * PEM file or a directory of .pem/.crt files) and Node's bundled root store
 * (`tls.rootCertificates`, Mozilla's list). chain-completion.ts asks it for the
 * issuer of a chain's last certificate, to complete a chain given as its
 * leaf alone or to tell that the leaf's issuer is a root every client holds.
 *
 * A certificate is the issuer of another when OpenSSL's X509_check_issued
 * agrees (issuer name, authority/subject key ids, keyCertSign) and its key
 * verifies the signature: node:crypto does both, nothing is parsed by hand.
 * Read once per reload (the file may change with the chains it completes);
 * the bundled roots are parsed once per process.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { rootCertificates } from 'node:tls';
import { ConfigError } from '../../keyserver/shared/errors.js';
import { readCheckedFile } from './store-files.js';

export interface KnownIssuer {
  /** The certificate as PEM, to append to a chain. */
  readonly pem: string;
  /** A root (subject = issuer): clients hold their own copy, so it is never appended (RFC 8446 §4.4.2). */
  readonly root: boolean;
  /** Where it was found, for messages: the configured path or "system roots". */
  readonly from: string;
}

interface Entry {
  readonly cert: X509Certificate;
  readonly known: KnownIssuer;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;
const CERTIFICATE_FILE = /\.(pem|crt|cer)$/i;
/**
 * The largest intermediates file read, at every reload: a whole system CA
 * bundle is some 220 KB. A file (or a link) to a log or /dev/zero is refused
 * by its size or type, unread.
 */
const MAX_ISSUERS_BYTES = 16 * 1024 * 1024;

export class IssuerPool {
  /** By subject name as node:crypto prints it, which is how it prints an issuer name too. */
  readonly #bySubject = new Map<string, Entry[]>();
  readonly #entries: readonly Entry[];
  #fingerprint: string | undefined;

  constructor(entries: readonly Entry[]) {
    this.#entries = entries;
    for (const entry of entries) {
      const list = this.#bySubject.get(entry.cert.subject);
      if (list === undefined) this.#bySubject.set(entry.cert.subject, [entry]);
      else list.push(entry);
    }
  }

  /**
   * A hash of every certificate in the pool, in order: a verdict reached with
   * another pool (other intermediates, another Node's roots) is not reused
   * (verdicts.ts).
   */
  get fingerprint(): string {
    if (this.#fingerprint === undefined) {
      const hash = createHash('sha256');
      for (const { known } of this.#entries) hash.update(`${known.root ? 'root' : 'ca'}\0${known.from}\0${known.pem}\0`);
      this.#fingerprint = hash.digest('hex');
    }
    return this.#fingerprint;
  }

  /** The known certificate that issued `der` (name, key ids and signature checked), or undefined. */
  issuerOf(der: Uint8Array): KnownIssuer | undefined {
    let child: X509Certificate;
    try {
      child = new X509Certificate(der);
    } catch {
      return undefined;
    }
    for (const { cert, known } of this.#bySubject.get(child.issuer) ?? []) {
      try {
        if (child.checkIssued(cert) && child.verify(cert.publicKey)) return known;
      } catch {
        // A key type node cannot verify with is no issuer.
      }
    }
    return undefined;
  }
}

let systemRoots: Entry[] | undefined;

/** Node's bundled roots, parsed on first use. */
function bundledRoots(): Entry[] {
  systemRoots ??= rootCertificates.flatMap((pem) => entriesOf(pem, 'system roots'));
  return systemRoots;
}

/**
 * The pool for a config: the certificates of `configured` (null: none) and
 * the bundled roots. Throws ConfigError naming `configFile` and the key when
 * the path cannot be read or holds no certificate: a reload is then refused
 * whole and what serves keeps serving.
 */
export function loadIssuerPool(configured: string | null, configFile: string): IssuerPool {
  if (configured === null) return new IssuerPool(bundledRoots());
  const fail = (message: string, cause?: unknown): ConfigError =>
    new ConfigError(configFile, 'certStore.intermediates', message, cause === undefined ? undefined : { cause });
  let files: string[];
  try {
    files = statSync(configured).isDirectory()
      ? readdirSync(configured)
          .filter((f) => CERTIFICATE_FILE.test(f) && !f.startsWith('.'))
          .sort()
          .map((f) => path.join(configured, f))
      : [configured];
  } catch (err) {
    throw fail(`cannot read ${configured}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, err);
  }
  const entries: Entry[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = readIssuerFile(file, fail);
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      throw fail(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, err);
    }
    try {
      entries.push(...entriesOf(text, file));
    } catch (err) {
      throw fail(`${file}: a CERTIFICATE block does not decode as X.509`, err);
    }
  }
  if (entries.length === 0) throw fail(`no PEM certificate in ${configured}`);
  return new IssuerPool([...entries, ...bundledRoots()]);
}

/**
 * Opened without blocking (a FIFO, which open(2) would hold until a writer
 * came, would stall this reload and every one after it) and checked before
 * it is read.
 */
function readIssuerFile(file: string, fail: (message: string) => ConfigError): string {
  return readCheckedFile(file, (stat) => {
    if (!stat.isFile()) throw fail(`${file} is not a file but ${stat.isDirectory() ? 'a directory' : 'a special file'}; expected PEM certificates`);
    if (stat.size > MAX_ISSUERS_BYTES) throw fail(`${file} is ${stat.size} bytes; an intermediates file holds at most ${MAX_ISSUERS_BYTES}`);
  }).text;
}

function entriesOf(text: string, from: string): Entry[] {
  return [...text.matchAll(PEM_CERTIFICATE)].map((m) => {
    const cert = new X509Certificate(m[0]);
    return { cert, known: { pem: cert.toString(), root: cert.subject === cert.issuer, from } };
  });
}
