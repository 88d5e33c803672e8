/**
 * The worker's TLS listeners, one per configured address (config `listen`),
 * each a TlsListener (tls/listener.ts) with the same shared parts and the
 * protocols it hands over after the handshake: HTTP/1.1 always, `h2` when
 * the address has `http2`, and ACME's TLS-ALPN-01 protocol while the issuer
 * has challenges to answer.
 *
 * Why apart from the worker: which protocols a listener offers, and in what
 * order, is a decision of its own (RFC 9113 §3.2, RFC 8737); the worker only
 * wires the parts it is given.
 *
 * Cost: one listening socket per address; listening resolves with the bound
 * ports in config order.
 */
import type { ProxyConfig } from '../config/proxy-schema.js';
import { ACME_TLS_PROTOCOL, type AlpnChallengeContexts, closeAfterHandshake } from './acme/tls-alpn.js';
import type { HttpFront } from './http-front.js';
import { TlsListener, type TlsListenerOptions } from './tls/listener.js';

/** What every listener of the worker shares: everything but its address, profile and HTTP/1.1 server. */
export type SharedListenerOptions = Omit<TlsListenerOptions, 'id' | 'profile' | 'http1'>;

export interface OpenListeners {
  readonly listeners: readonly TlsListener[];
  /** The bound port of each listener, in config order (useful with port 0). */
  readonly ports: readonly number[];
}

export async function openListeners(
  listen: ProxyConfig['listen'],
  shared: SharedListenerOptions,
  front: HttpFront,
  alpnChallenges: AlpnChallengeContexts | undefined,
): Promise<OpenListeners> {
  const listeners: TlsListener[] = [];
  const ports: number[] = [];
  for (const { host, port, profile, http2 } of listen) {
    const listener = new TlsListener({ ...shared, id: `${host}:${port}`, profile, http1: front.http1() });
    // RFC 9113 §3.2: h2 is offered before http/1.1 once registered.
    if (http2) listener.handle('h2', front.h2);
    // RFC 8737: answered only for a name with a pending challenge, on the challenge's own context.
    if (alpnChallenges !== undefined) listener.handle(ACME_TLS_PROTOCOL, closeAfterHandshake, { selectContext: alpnChallenges.selector(profile) });
    ports.push(await listener.listen(host, port));
    listeners.push(listener);
  }
  return { listeners, ports };
}
