/**
 * The reload path's connection to the key server (source.ts, upload.ts):
 * every certificate is checked against the key holding its key before it
 * serves, off the handshake path. At start the proxy may go ahead without
 * it (certificates load unverified, the keyless bridge checks each key when
 * it reaches the key server); a reload waits for it instead.
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import { KeyedgeError, RemoteError } from '../../keyserver/shared/errors.js';
import type { ValidationContext } from '../certs/candidate.js';
import { connectAnyKeyserver, keyserverSpkiLookup } from '../certs/keyserver-lookup.js';

/**
 * The warning of a start that goes ahead without the key server, worded by its cause: its connection settings refused
 * here (a client key that is no key or not its certificate's, KEYEDGE_ERR_CONFIG; a TLS file that cannot be read,
 * KEYEDGE_ERR_SETUP), a config error that no wait mends, or the key server not reached (down, hung, refusing).
 */
export function unverifiedStartWarning(err: unknown): string {
  const code = err instanceof KeyedgeError ? err.code : undefined;
  return code === 'KEYEDGE_ERR_CONFIG' || code === 'KEYEDGE_ERR_SETUP'
    ? 'key server not contacted at start, its connection settings refused (a config error, not an outage): certificates load unverified'
    : 'key server unreachable at start: certificates load unverified, handshakes wait for it';
}

export function connectKeyserver(config: ProxyConfig): Promise<KeyserverClient> {
  // Validation is off the handshake path: a key server busy signing may take longer than a handshake's deadline.
  return connectAnyKeyserver(config.keyserver, Math.max(config.keyserver.timeoutMs * 4, 2_000));
}

/**
 * A pass's client of the key server. A reload waits for the key server: swapping in a certificate whose key nobody
 * checked could fail every handshake for it (KEYEDGE_ERR_CLOSED, nothing changes). At start (`starting`) there is
 * nothing to keep serving, and the keyless bridge checks each key against its chain when it reaches the key server,
 * so the proxy comes up (`onUnverified` told) and reports not ready until then: undefined.
 */
export async function connectForPass(
  config: ProxyConfig,
  starting: boolean,
  onUnverified: ((reason: string, warning: string) => void) | undefined,
): Promise<KeyserverClient | undefined> {
  try {
    return await connectKeyserver(config);
  } catch (err) {
    if (!starting) throw new KeyedgeError('KEYEDGE_ERR_CLOSED', `cannot validate against the key server: ${(err as Error).message}`, { cause: err });
    onUnverified?.((err as Error).message, unverifiedStartWarning(err));
    return undefined;
  }
}

/**
 * A pass's lookup of the key server's public key for a key id (certs/keyserver-lookup.ts) through `client`. At start
 * (`starting`), a key server hung or gone is the same as one unreachable: `onUnverified` is told once, and every
 * certificate after loads unverified (its own key's SPKI answered). Undefined `client`: already unreachable.
 */
export function passLookup(
  client: KeyserverClient | undefined,
  starting: boolean,
  onUnverified: ((reason: string, warning: string) => void) | undefined,
): ValidationContext['keyserverSpki'] {
  let lookup = client;
  return async (keyId, leafSpki) => {
    if (lookup === undefined) return leafSpki;
    try {
      return await keyserverSpkiLookup(lookup)(keyId, leafSpki);
    } catch (err) {
      if (!starting || err instanceof RemoteError) throw err;
      // Hung or gone at start: the same as unreachable, once for all the rest.
      if (lookup !== undefined) onUnverified?.((err as Error).message, unverifiedStartWarning(err));
      lookup = undefined;
      return leafSpki;
    }
  };
}
