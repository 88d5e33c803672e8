/**
 * The worker's side of ACME TLS-ALPN-01 (RFC 8737 §3): a ClientHello that
 * offers "acme-tls/1" for a name with a pending challenge on the board
 * (challenges.ts) gets the challenge certificate, on a secure context of its
 * own, and the connection is closed once the handshake is done (the
 * validation is the handshake; no application data follows).
 *
 * The certificate's private key is in the token: the context takes the
 * keyless key for it from the worker's KeySource, as a served certificate's
 * does. A hello with no pending challenge for its name gets undefined, and
 * the listener carries on as if "acme-tls/1" were not offered.
 *
 * Cost: one secure context per challenge and profile, built on the first
 * hello that needs it and dropped with the board entry (a WeakMap keyed by
 * the entry, which the board replaces on every change).
 */
import tls from 'node:tls';
import type { TlsProfileName } from '../../config/proxy-schema.js';
import { TLS_PROFILES } from '../tls/profile.js';
import type { ClientHelloInfo } from '../tls/protocols.js';
import type { KeySource } from '../tls/key-source.js';
import type { AlpnChallengeEntry, ChallengeAnswers } from './challenges.js';

/** RFC 8737 §6.2: the ALPN protocol of the validation handshake. */
export const ACME_TLS_PROTOCOL = 'acme-tls/1';

export class AlpnChallengeContexts {
  readonly #answers: ChallengeAnswers;
  readonly #keys: KeySource;
  readonly #built = new WeakMap<AlpnChallengeEntry, Map<TlsProfileName, tls.SecureContext>>();

  constructor(answers: ChallengeAnswers, keys: KeySource) {
    this.#answers = answers;
    this.#keys = keys;
  }

  /** The listener's `selectContext` for "acme-tls/1" on a listener of `profile`. */
  selector(profile: TlsProfileName): (hello: ClientHelloInfo) => tls.SecureContext | undefined {
    return (hello) => {
      const entry = this.#answers.alpnChallenge(hello.serverName);
      return entry === undefined ? undefined : this.#context(entry, profile);
    };
  }

  #context(entry: AlpnChallengeEntry, profile: TlsProfileName): tls.SecureContext | undefined {
    let byProfile = this.#built.get(entry);
    if (byProfile === undefined) this.#built.set(entry, (byProfile = new Map()));
    let context = byProfile.get(profile);
    if (context === undefined) {
      try {
        const key = this.#keys.keyFor({ name: entry.name, keyId: entry.keyId, spki: Buffer.from(entry.spki, 'base64') });
        // RFC 8737 §4: TLS 1.2 or later, which both profiles require.
        context = tls.createSecureContext({ ...TLS_PROFILES[profile], cert: entry.certificatePem, key });
      } catch {
        // A challenge we cannot present fails its validation; the handshake goes on as if it were not offered.
        return undefined;
      }
      byProfile.set(profile, context);
    }
    return context;
  }
}

/** How long an acme-tls/1 connection we ended may wait for the client's end (nginx's lingering_timeout is 5 s). */
export const ACME_LINGER_MS = 5_000;

/**
 * RFC 8737 §3: once the handshake is done there is nothing to say; close.
 * The listener's handshake deadline was cleared at 'secure', so the end
 * alone left the connection to the client: one that never sent its FIN held
 * it, its descriptor and its per-client and per-worker slots until the
 * worker stopped. It is destroyed when the client ends it too (Node's
 * default, no half-open) or after ACME_LINGER_MS, whichever comes first.
 */
export function closeAfterHandshake(socket: tls.TLSSocket): void {
  socket.on('error', () => undefined);
  const timer = setTimeout(() => socket.destroy(), ACME_LINGER_MS).unref();
  socket.once('close', () => clearTimeout(timer));
  socket.end();
}
