/**
 * The seam through which `keyedge key delete` asks which certificates use a
 * key before it destroys it: a key deleted under a served certificate fails
 * every handshake for that certificate at its next sign (the key server
 * answers UNKNOWN_KEY). The certificates are the proxy's (its config file and
 * certificate store), which this layer may not import (README, "Layout"):
 * keyedge.ts, which imports every layer, hands key-commands.ts the proxy's
 * answer (proxy/certs/key-users.ts), loaded only when a delete runs.
 */

/** What the check found: the certificates that use the key, or why none could be looked at. */
export interface KeyUsers {
  /** What was looked at, for the refusal: "the certificate store DIR". */
  readonly checked: string;
  /** Each certificate that uses the key, as an operator finds it: "'NAME' (FILE)". */
  readonly users: readonly string[];
  /** What the operator should hear though nothing is refused (no store found). */
  readonly warnings: readonly string[];
  /**
   * Each store entry that could not be read, "'NAME' (why)": it may use the key, and a node may still serve the
   * version it had before the entry broke (README, "Reloads and the admin API"), with that key. Refuses, as a use does.
   */
  readonly unread: readonly string[];
  /** How they are removed or replaced, for the refusal: `keyedge cert` for a directory; a fleet's entries live in etcd, which it does not write. */
  readonly remedy: string;
}

/** `proxyConfig`: the proxy's config file (`--proxy-config`); undefined: ./config/proxy.json where there is one (`npm run up`'s), else the embedded default's. */
export type FindKeyUsers = (key: { readonly keyId: string; readonly label: string }, proxyConfig: string | undefined) => Promise<KeyUsers>;
