/**
 * What a `keyedge cert` action needs of the proxy's config besides the
 * store: the CA certificates it completes chains from, and its key server
 * for the length of one action (cli.ts, cli-listing.ts).
 */
import type { ProxyConfig } from '../../config/proxy-schema.js';
import { type IssuerPool, loadIssuerPool } from './issuers.js';
import { connectAnyKeyserver, keyserverSpkiLookup } from './keyserver-lookup.js';

/** An operator's command may wait longer than a handshake (the proxy's keyserver.timeoutMs); GET_PUBLIC_KEY never takes this long on a live key server. */
const KEYSERVER_TIMEOUT_MS = 5_000;

/** The CA certificates the proxy completes chains from, as its config names them. */
export function issuersOf(config: ProxyConfig): IssuerPool {
  return loadIssuerPool(config.certStore.intermediates, config.source);
}

/** `work` with a lookup of the key server's public keys; the connection is closed after. */
export async function withKeyserver<T>(config: ProxyConfig, work: (lookup: ReturnType<typeof keyserverSpkiLookup>) => Promise<T>): Promise<T> {
  const client = await connectAnyKeyserver(config.keyserver, KEYSERVER_TIMEOUT_MS);
  try {
    return await work(keyserverSpkiLookup(client));
  } finally {
    client.close();
  }
}
