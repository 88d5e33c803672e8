/**
 * The base of every error the product raises on purpose, and the first of
 * them: a config that does not validate. They sit in config/, the base layer
 * (README, "Layout"), because the config loader throws ConfigError; the rest
 * of the classes extend KeyedgeError from keyserver/shared/errors.ts and
 * proxy/. Codes and their meanings: config/codes.ts.
 *
 * Messages name what was wrong and where and never carry a secret (see
 * keyserver/shared/errors.ts).
 */

import type { KeyedgeErrorCode } from './codes.js';

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
