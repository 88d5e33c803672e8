/**
 * What a key server or a `keyedge key` run opens: the embedded SoftHSM2
 * token (created on first run) or the configured module, with the PIN from
 * its variable or file. Its own module so that `keyedge key` (the proxy's
 * ACME key children run it for each certificate key) opens the token
 * without loading the daemon's server, metrics and logging.
 */
import type { KeyserverConfig } from '../../config/schema.js';
import { TokenError } from '../shared/errors.js';
import { pinVariable } from '../shared/pin-variable.js';
import { prepareEmbeddedToken, readPinFile } from './embedded.js';
import type { TokenOpenOptions } from './token.js';

/**
 * What to open: the embedded SoftHSM2 token (created on first run) or the configured module. `warn` hears of a PIN
 * file open to others (embedded.ts, readPinFile): told at start, not at each attempt to open the token again.
 */
export function tokenOptions(config: KeyserverConfig, warn?: (message: string) => void): TokenOpenOptions {
  const { pkcs11 } = config;
  let modulePath = pkcs11.module;
  if (modulePath === 'embedded') {
    const label = 'label' in pkcs11.token ? pkcs11.token.label : 'keyedge';
    modulePath = prepareEmbeddedToken(config.stateDir, label).modulePath;
  }
  if ('env' in pkcs11.pin) {
    // The variable the process started with: `keyedge keyserver` takes it out of its environment (cli/pin-guard.ts).
    const pin = pinVariable(pkcs11.pin.env);
    if (pin === undefined || pin === '') {
      throw new TokenError('KEYEDGE_ERR_TOKEN_PIN', `the PIN variable ${pkcs11.pin.env} is not set (config ${config.source}: pkcs11.pin.env)`);
    }
    return { modulePath, token: pkcs11.token, pin, pinSource: `env ${pkcs11.pin.env}` };
  }
  return { modulePath, token: pkcs11.token, pin: readPinFile(pkcs11.pin.file, warn), pinSource: `file ${pkcs11.pin.file}` };
}
