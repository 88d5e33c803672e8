/**
 * Every error the product raises on purpose is a KeyedgeError with a stable
 * `code` (documented in README, "Error codes"). Codes never change meaning;
 * messages may be reworded. The original failure, when there is one, is kept
 * as `cause` so logs show the whole chain.
 *
 * Messages name what was wrong and where (file, key path, key id, peer) and
 * never carry a PIN, key bytes or other secret: callers pass only public facts.
 *
 * Both daemons share this file: the proxy is the key server's client, so the
 * codes of one are read by the other.
 */

export type KeyedgeErrorCode =
  | 'KEYEDGE_ERR_CONFIG'
  | 'KEYEDGE_ERR_USAGE'
  | 'KEYEDGE_ERR_TOKEN_MODULE'
  | 'KEYEDGE_ERR_TOKEN_NOT_FOUND'
  | 'KEYEDGE_ERR_TOKEN_LOGIN'
  | 'KEYEDGE_ERR_TOKEN_PIN'
  | 'KEYEDGE_ERR_TOKEN_OPERATION'
  | 'KEYEDGE_ERR_KEY_NOT_FOUND'
  | 'KEYEDGE_ERR_KEY_EXISTS'
  | 'KEYEDGE_ERR_KEY_UNSUPPORTED'
  | 'KEYEDGE_ERR_KEY_INPUT'
  | 'KEYEDGE_ERR_PROTOCOL'
  | 'KEYEDGE_ERR_REMOTE'
  | 'KEYEDGE_ERR_TIMEOUT'
  | 'KEYEDGE_ERR_CLOSED'
  | 'KEYEDGE_ERR_OVERLOADED'
  | 'KEYEDGE_ERR_SETUP'
  | 'KEYEDGE_ERR_CERTIFICATE'
  | 'KEYEDGE_ERR_CERT_NOT_FOUND'
  | 'KEYEDGE_ERR_CERT_EXISTS'
  | 'KEYEDGE_ERR_CERT_STORE';

export class KeyedgeError extends Error {
  readonly code: KeyedgeErrorCode;

  constructor(code: KeyedgeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A configuration file or value is invalid; `path` is the key path (e.g. `listen.tcp.port`). */
export class ConfigError extends KeyedgeError {
  constructor(
    readonly file: string,
    readonly path: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('KEYEDGE_ERR_CONFIG', `${file}: ${path ? `${path}: ` : ''}${message}`, options);
  }
}

/** The command line was wrong: unknown subcommand or flag, missing value. */
export class UsageError extends KeyedgeError {
  constructor(message: string) {
    super('KEYEDGE_ERR_USAGE', message);
  }
}

/** The PKCS#11 module, token, login or an operation on the token failed. */
export class TokenError extends KeyedgeError {}

/** A key is missing, already present, of an unsupported kind, or the input holding it is unreadable. */
export class KeyError extends KeyedgeError {}

/**
 * A frame or item broke the key-server protocol. `wireCode` is the error code
 * sent back on the wire (keyserver/protocol/SPEC.md); `requestId` is set when
 * the frame header was readable, so the answer can be matched by the client.
 * `fatal` means the byte stream can no longer be trusted and the connection
 * must close after the answer.
 */
export class ProtocolError extends KeyedgeError {
  constructor(
    readonly wireCode: number,
    message: string,
    readonly requestId: number | undefined = undefined,
    readonly fatal = false,
  ) {
    super('KEYEDGE_ERR_PROTOCOL', message);
  }
}

/** The key server answered a request with an error code. */
export class RemoteError extends KeyedgeError {
  constructor(
    readonly wireCode: number,
    readonly wireName: string,
    detail: string,
  ) {
    super('KEYEDGE_ERR_REMOTE', `key server refused the request: ${wireName}${detail ? ` (${detail})` : ''}`);
  }
}

/** Installing or preparing the embedded default failed (apt, SoftHSM2 set-up). */
export class SetupError extends KeyedgeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KEYEDGE_ERR_SETUP', message, options);
  }
}

/**
 * Why a certificate was refused, one stable word per rule (README,
 * "Certificate store"): callers branch and count on it, messages explain it.
 */
export type CertificateRefusal =
  | 'parse'
  | 'private_key'
  | 'chain'
  | 'expired'
  | 'not_yet_valid'
  | 'names'
  | 'weak_key'
  | 'weak_signature'
  | 'key_mismatch'
  | 'incomplete_chain'
  | 'key_unknown';

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
 * be written (KEYEDGE_ERR_CERT_STORE).
 */
export class CertificateStoreError extends KeyedgeError {
  constructor(
    code: 'KEYEDGE_ERR_CERT_NOT_FOUND' | 'KEYEDGE_ERR_CERT_EXISTS' | 'KEYEDGE_ERR_CERT_STORE',
    readonly entry: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}
