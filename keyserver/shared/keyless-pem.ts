/**
 * The PEM label of a keyless key (proxy/native: a key whose private half is at
 * the key server, handed to tls.createSecureContext({ key })), and how to tell
 * PEM text that holds one. Here, at the base, so that the key-server client's
 * checks (keyserver/client/client-key.ts) can refuse one too without importing
 * the proxy; proxy/native/index.ts re-exports both.
 */

export const KEYLESS_PEM_LABEL = 'KEYEDGE KEYLESS KEY';

/** Whether PEM text (or a buffer of it) holds a keyless key block anywhere. */
export function isKeylessPem(key: string | Buffer): boolean {
  const text = typeof key === 'string' ? key : key.toString('latin1');
  return text.includes(`-----BEGIN ${KEYLESS_PEM_LABEL}-----`);
}
