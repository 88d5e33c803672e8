/**
 * The proxy's certificate errors: a chain unfit to serve, and the certificate
 * store's own failures. Codes and refusal reasons with their meanings:
 * config/codes.ts; README, "Certificate store" and "Error codes".
 */

import type { CertificateRefusal } from '../../config/codes.js';
import { KeyedgeError } from '../../keyserver/shared/errors.js';

export type { CertificateRefusal };

/**
 * A certificate or chain is unreadable or unfit to serve; `source` is its file
 * or where it came from, `entry` the certificate's name when it has one.
 * Messages never quote PEM content: a private key pasted into a chain is named
 * by its block label only.
 */
export class CertificateError extends KeyedgeError {
  readonly reason: CertificateRefusal;
  readonly entry: string | undefined;

  constructor(
    readonly source: string,
    message: string,
    options?: { cause?: unknown; reason?: CertificateRefusal; entry?: string },
  ) {
    super(
      'KEYEDGE_ERR_CERTIFICATE',
      `${options?.entry === undefined ? source : `certificate '${options.entry}' (${source})`}: ${message}`,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.reason = options?.reason ?? 'parse';
    this.entry = options?.entry;
  }
}

/**
 * A certificate store entry is missing (KEYEDGE_ERR_CERT_NOT_FOUND), already
 * there (KEYEDGE_ERR_CERT_EXISTS), badly named, or the store directory cannot
 * be written (KEYEDGE_ERR_CERT_STORE); the entry's files are another tool's
 * (symbolic links, KEYEDGE_ERR_CERT_LINKED: store.ts writes no entry through
 * or over one); the store directory is away: gone, or replaced by one holding
 * no certificate (KEYEDGE_ERR_CERT_STORE_GONE, store-dir.ts).
 */
export class CertificateStoreError extends KeyedgeError {
  constructor(
    code: 'KEYEDGE_ERR_CERT_NOT_FOUND' | 'KEYEDGE_ERR_CERT_EXISTS' | 'KEYEDGE_ERR_CERT_STORE' | 'KEYEDGE_ERR_CERT_LINKED' | 'KEYEDGE_ERR_CERT_STORE_GONE',
    readonly entry: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}
