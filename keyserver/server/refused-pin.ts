/**
 * A PIN the token refused is not tried again on it by the attempts to open
 * the token again (live-token.ts), until the PIN read again differs, the
 * token is another one (another serial: re-created again), or the operator
 * asks (SIGHUP).
 *
 * Why: those attempts come every second while the token cannot be opened,
 * and a token re-created with another PIN than the one configured refused
 * each login. HSMs count wrong logins and lock the user PIN after a few
 * (CKR_PIN_LOCKED; unlocking it needs the security officer), so within
 * seconds a fixable mistake became a locked token. The refused PIN is held
 * as its SHA-256 only, in memory; it is never logged.
 */
import { createHash } from 'node:crypto';
import { TokenError } from '../shared/errors.js';
import type { TokenOpenOptions } from '../token/token.js';
import { ckrName } from '../token/token.js';

/** Login refusals about the PIN itself (PKCS#11 v2.40 §5.6 C_Login): the same PIN will be refused again. */
const PIN_REFUSED = /^CKR_PIN_(INCORRECT|INVALID|LEN_RANGE|LOCKED|EXPIRED)\b/;

export interface PinAttempt {
  /** What to open the token with: the login is skipped (a KEYEDGE_ERR_TOKEN_LOGIN) where this PIN was refused. */
  readonly options: TokenOpenOptions;
  /** After the attempt failed: remembers the PIN and the token if the login was refused for the PIN. */
  failed(err: unknown): void;
}

export class RefusedPin {
  /** The PIN (its digest) the token with this serial refused, and why. */
  #refused: { readonly digest: string; readonly serial: string; readonly reason: string } | undefined;

  /** One attempt at opening the token with `options`. A token re-created since (another serial) gets one login. */
  attempt(options: TokenOpenOptions): PinAttempt {
    const pinDigest = digest(options.pin);
    let serial: string | undefined;
    const beforeLogin = (token: { label: string; serial: string }): void => {
      serial = token.serial;
      const refused = this.#refused;
      if (refused === undefined || refused.digest !== pinDigest || refused.serial !== token.serial) return;
      throw new TokenError(
        'KEYEDGE_ERR_TOKEN_LOGIN',
        `not logging in to token '${token.label}' again with the PIN it refused (${refused.reason}): a token locks a PIN after a few ` +
          `wrong logins; put the right PIN in ${options.pinSource}, or send SIGHUP to try this one again`,
      );
    };
    return {
      options: { ...options, beforeLogin },
      failed: (err) => {
        if (serial === undefined || !(err instanceof TokenError) || err.code !== 'KEYEDGE_ERR_TOKEN_LOGIN' || err.cause === undefined) return;
        const reason = ckrName(err.cause).split(/\s/)[0] ?? '';
        if (PIN_REFUSED.test(reason)) this.#refused = { digest: pinDigest, serial, reason };
      },
    };
  }

  /** The token was opened, or the operator asks to try the PIN again. */
  forget(): void {
    this.#refused = undefined;
  }
}

function digest(pin: string): string {
  return createHash('sha256').update(pin).digest('hex');
}
