/**
 * ACME challenge state, visible to every worker: HTTP-01 (RFC 8555 §8.3) and
 * TLS-ALPN-01 (RFC 8737) on one board.
 *
 * The primary runs the orders and holds the board: token → (name, key
 * authorization) for HTTP-01, token → (name, challenge certificate, the id
 * and public key of its key in the token) for TLS-ALPN-01. Each change sends the whole board to every worker over the
 * cluster IPC channel (a handful of entries: one per authorization in
 * flight), and the issuer tells the CA to validate only once every worker
 * has acknowledged it, so whichever worker the CA's connection lands on
 * answers. A key authorization is public by design (token + account key
 * thumbprint), never a secret.
 *
 * The worker answers `GET /.well-known/acme-challenge/<token>` on port 80
 * with it when the Host is the name the token was made for; anything else
 * under that path goes on to the domain's origin as before. For TLS-ALPN-01
 * the worker's listeners answer a ClientHello offering "acme-tls/1" for the
 * name with the challenge certificate (tls-alpn.ts); its private key stays in
 * the token, signed for through the keyless bridge like any certificate's.
 *
 * In a fleet (`etcd` configured) the board holds the fleet's challenges, as
 * etcd holds them, whichever node ordered them (fleet-challenges.ts): every
 * node answers every challenge.
 */

export const ACME_CHALLENGE_PATH = '/.well-known/acme-challenge/';
const BOARD = 'keyedge:acme-challenges';
const BOARD_APPLIED = 'keyedge:acme-challenges-applied';

export interface HttpChallengeEntry {
  readonly kind: 'http-01';
  readonly token: string;
  readonly name: string;
  readonly keyAuthorization: string;
}

export interface AlpnChallengeEntry {
  readonly kind: 'tls-alpn-01';
  readonly token: string;
  readonly name: string;
  /** The self-signed acmeIdentifier certificate (RFC 8737 §3), PEM. */
  readonly certificatePem: string;
  /** Its key in the token: id (hex) and SubjectPublicKeyInfo (base64; IPC carries JSON). */
  readonly keyId: string;
  readonly spki: string;
}

export type ChallengeEntry = HttpChallengeEntry | AlpnChallengeEntry;

export interface BoardMessage {
  readonly type: typeof BOARD;
  readonly generation: number;
  readonly entries: readonly ChallengeEntry[];
}

/** What the issuer needs: publish and withdraw, each resolving once the workers serve it. */
export interface ChallengePublisher {
  add(entry: ChallengeEntry): Promise<void>;
  remove(token: string): Promise<void>;
}

/**
 * The primary's board. `broadcast(message)` sends to every serving worker and
 * resolves when each acknowledged the generation (or after its own wait).
 */
export class ChallengeBoard implements ChallengePublisher {
  readonly #entries = new Map<string, ChallengeEntry>();
  #generation = 0;
  readonly #broadcast: (message: BoardMessage) => Promise<void>;

  constructor(broadcast: (message: BoardMessage) => Promise<void>) {
    this.#broadcast = broadcast;
  }

  /** The current board, for a worker that starts now. */
  message(): BoardMessage {
    return { type: BOARD, generation: this.#generation, entries: [...this.#entries.values()] };
  }

  add(entry: ChallengeEntry): Promise<void> {
    this.#entries.set(entry.token, entry);
    this.#generation++;
    return this.#broadcast(this.message());
  }

  remove(token: string): Promise<void> {
    if (!this.#entries.delete(token)) return Promise.resolve();
    this.#generation++;
    return this.#broadcast(this.message());
  }

  /** Exactly `entries` on the board: the fleet's challenges, as etcd holds them (fleet-challenges.ts). */
  replace(entries: readonly ChallengeEntry[]): Promise<void> {
    this.#entries.clear();
    for (const entry of entries) this.#entries.set(entry.token, entry);
    this.#generation++;
    return this.#broadcast(this.message());
  }
}

export function isBoardMessage(message: unknown): message is BoardMessage {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === BOARD && Array.isArray((message as BoardMessage).entries);
}

export function boardAppliedMessage(generation: number): { type: typeof BOARD_APPLIED; generation: number } {
  return { type: BOARD_APPLIED, generation };
}

/** The generation a worker acknowledged, or undefined for another message. */
export function boardAppliedGeneration(message: unknown): number | undefined {
  if (typeof message !== 'object' || message === null || (message as { type?: unknown }).type !== BOARD_APPLIED) return undefined;
  const generation = (message as { generation?: unknown }).generation;
  return typeof generation === 'number' ? generation : undefined;
}

/** The worker's copy of the board. */
export class ChallengeAnswers {
  #byToken: ReadonlyMap<string, ChallengeEntry> = new Map();
  #alpnByName: ReadonlyMap<string, AlpnChallengeEntry> = new Map();
  #generation = -1;

  apply(message: BoardMessage): void {
    // IPC keeps order, but a starting worker may see the snapshot after a newer broadcast.
    if (message.generation < this.#generation) return;
    this.#generation = message.generation;
    this.#byToken = new Map(message.entries.map((e) => [e.token, e]));
    // Of two TLS-ALPN-01 challenges for one name the last wins: the board lists them oldest first (fleet-challenges.ts).
    this.#alpnByName = new Map(message.entries.flatMap((e) => (e.kind === 'tls-alpn-01' ? [[e.name, e] as const] : [])));
  }

  /** The pending TLS-ALPN-01 challenge for `serverName` (normalised), if any. */
  alpnChallenge(serverName: string | undefined): AlpnChallengeEntry | undefined {
    return serverName === undefined ? undefined : this.#alpnByName.get(serverName);
  }

  /** The key authorization for `path` on `host`, when the path is a token we published for that name. */
  answer(host: string | undefined, path: string): string | undefined {
    if (host === undefined || !path.startsWith(ACME_CHALLENGE_PATH)) return undefined;
    const entry = this.#byToken.get(path.slice(ACME_CHALLENGE_PATH.length));
    return entry?.kind === 'http-01' && entry.name === host.toLowerCase() ? entry.keyAuthorization : undefined;
  }
}
