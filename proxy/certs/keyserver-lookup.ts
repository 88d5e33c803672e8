/**
 * The key-server side of certificate validation: connecting with the proxy's
 * own key-server settings, and the ValidationContext lookup over
 * GET_PUBLIC_KEY. Used by `keyedge cert` and by the proxy's reload path.
 */
import assert from 'node:assert/strict';
import type { KeyserverEndpoint, ProxyConfig } from '../../config/proxy-schema.js';
import { KeyserverClient, type KeyserverClientOptions } from '../../keyserver/client/client.js';
import { RemoteError } from '../../keyserver/shared/errors.js';
import { ErrorCode } from '../../keyserver/protocol/constants.js';
import type { ValidationContext } from './validate.js';

/**
 * Client options for one of the proxy's key servers (unix socket or mutual
 * TLS). `timeoutMs` bounds each request, and a TCP connect (a lost host may
 * leave one pending for minutes; a unix socket connects or fails at once).
 */
export function keyserverClientOptions(endpoint: KeyserverEndpoint, timeoutMs: number): KeyserverClientOptions {
  const tcp = endpoint.tcp;
  if (tcp !== null) {
    return {
      tcp: { host: tcp.host, port: tcp.port, ca: tcp.ca, cert: tcp.cert, key: tcp.key, ...(tcp.servername === null ? {} : { servername: tcp.servername }) },
      name: endpoint.name,
      timeoutMs,
      connectTimeoutMs: timeoutMs,
    };
  }
  assert(endpoint.socket !== null, 'the proxy schema requires a key server socket or tcp');
  return { unixPath: endpoint.socket, timeoutMs };
}

/**
 * A connection to the first of the proxy's key servers that accepts one, in
 * configured order (they hold the same keys, so any will do for validation
 * and commands). Fails with the last server's error when none does.
 * `timeoutMs` defaults to the proxy's handshake timeout; an operator's
 * command may allow more.
 */
export async function connectAnyKeyserver(keyserver: ProxyConfig['keyserver'], timeoutMs: number = keyserver.timeoutMs): Promise<KeyserverClient> {
  let failure: unknown;
  for (const endpoint of keyserver.servers) {
    try {
      return await KeyserverClient.connect(keyserverClientOptions(endpoint, timeoutMs));
    } catch (err) {
      failure = err;
    }
  }
  throw failure;
}

/**
 * GET_PUBLIC_KEY as a ValidationContext lookup: UNKNOWN_KEY becomes
 * undefined (the key_unknown refusal); every other failure, NOT_AUTHORISED
 * included (this proxy may not use the key, which is not the certificate's
 * fault), is thrown as it is.
 */
export function keyserverSpkiLookup(client: KeyserverClient): ValidationContext['keyserverSpki'] {
  return async (keyId) => {
    try {
      return await client.getPublicKey(keyId);
    } catch (err) {
      if (err instanceof RemoteError && err.wireCode === ErrorCode.UNKNOWN_KEY) return undefined;
      throw err;
    }
  };
}
