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
 * codes of one are read by the other. The base class and ConfigError live
 * below, in config/errors.ts (the config loader raises them); every code is
 * listed with its meaning in config/codes.ts. The proxy's certificate errors
 * are in proxy/certs/errors.ts.
 */

import { ConfigError, KeyedgeError } from '../../config/errors.js';

export { ConfigError, KeyedgeError };
export type { KeyedgeErrorCode } from '../../config/codes.js';

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
