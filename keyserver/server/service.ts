/**
 * Answers one decoded request: ping, public key, sign. Transport-agnostic: the
 * connection layer decodes frames and writes answers, this decides them.
 *
 * Every request ends in exactly one Response, never a thrown error: a refusal
 * is an error Response with a wire code (SPEC.md), and its reason goes to the
 * log, so the connection (and the daemon) carry on whatever a client sends.
 * While the token is being opened again (live-token.ts), requests for keys
 * are refused SIGN_FAILED; a sign refused for a lost session or token starts
 * that.
 *
 * A sign made inline (sign-workers.ts: the usual case at handshake rates) is
 * answered synchronously, with no promise or timer. Deadline: a sign sent to
 * a signing thread that has not finished within `requestTimeoutMs` (queueing
 * included) is answered DEADLINE_EXCEEDED at once; the thread skips it if it
 * has not started it yet, else its result is dropped. A sign dropped unsigned
 * before it was sent to a thread is counted in `signs_dropped_total` by
 * reason: `closed` (its `signal` aborted: the connection closed; its answer
 * goes nowhere) or `deadline` (it waited past its deadline; answered
 * DEADLINE_EXCEEDED, usually by the timer already).
 *
 * An RSA signature that did not verify with the key's public key (checked
 * where it was made, sign-verify.ts) is never sent: the request is answered
 * SIGN_FAILED (a token fault: another key server may sign it), counted in
 * `signatures_refused_total` by algorithm, and logged at error level through
 * the limiter keyed by the key id, with the key id and the reason, never the
 * signature's bytes. Counted and logged also when the client was already
 * answered DEADLINE_EXCEEDED: the token is faulty either way.
 */
import type { Logger } from '../shared/log.js';
import { type AlgorithmInfo, ErrorCode, type ErrorCodeName, MAX_SIGNATURE_BYTES, algorithmInfo } from '../protocol/constants.js';
import type { Request, Response } from '../protocol/codec.js';
import type { TokenKey } from '../token/keys.js';
import { ecdsaRawToDer } from '../token/ecdsa-der.js';
import { droppedUnsent, skippedPastDeadline } from '../token/sign-workers.js';
import { pssFitsKey, schemeFitsKey } from '../token/sign.js';
import { isSignatureRefused } from '../token/sign-verify.js';
import { ckrName } from '../token/token.js';
import { type ClientIdentity, mayUseKey } from './authz.js';
import { type TokenParts, tokenLost } from './live-token.js';
import type { KeyserverMetrics } from './metrics.js';
import type { LogLimiter } from '../shared/log-limiter.js';

type SignRequestOf = Extract<Request, { op: 'sign' }>;

/** A waiting sign's key id and digest, once the token has them (#sign): not read again. */
const NO_BYTES: Buffer = Buffer.alloc(0);

/** The algorithm's name for metric labels. */
function algorithmName(request: SignRequestOf): string {
  return algorithmInfo(request.algorithm)?.name ?? 'unknown';
}

/** The open token (live-token.ts): its signers and keys, undefined while it is opened again. */
export interface TokenAccess {
  readonly parts: Pick<TokenParts, 'signers' | 'keys'> | undefined;
  suspect(cause: string, lost?: boolean): void;
}

export interface ServiceOptions {
  readonly token: TokenAccess;
  readonly metrics: KeyserverMetrics;
  readonly log: Logger;
  /**
   * Refusals are logged through it, keyed by refusal code and client rule
   * (authz.ts): what a client makes us refuse, it can make us refuse at its
   * own rate (a proxy whose certificate's key left the token asks for it on
   * every handshake), and that must not use up another client's lines (an
   * audit line of a refusal to another client would be dropped).
   */
  readonly limiter: LogLimiter;
  readonly requestTimeoutMs: number;
}

/**
 * A sign's place among its connection's requests in flight (connection.ts). A sign answered DEADLINE_EXCEEDED while
 * it still waits for a signing thread keeps its place until the token is done with it (signed, or dropped at its
 * connection's turn): else each such answer let the client queue one more, and a connection's queue grew past its cap
 * by every sign expired since its last turn, which with many connections and a slow token is seconds of them each.
 */
export interface SignPlace {
  /** The answer goes before the token is done: the place is kept until the function returned is called (once). */
  outlive(): () => void;
}

export class SigningService {
  readonly #options: ServiceOptions;
  /** Signs per key id since the last usage log line; bounded by the keys in the token. */
  readonly #usage = new Map<string, number>();
  #draining = false;
  readonly #requestChildren = new Map<string, { inc(): void }>();
  readonly #durationChildren = new Map<string, { observe(seconds: number): void }>();
  /** The key id asked for last, and its hex: a proxy asks for the same few keys handshake after handshake. */
  #lastKeyIdBytes = Buffer.alloc(0);
  #lastKeyId = '';

  constructor(options: ServiceOptions) {
    this.#options = options;
    options.metrics.watchToken({
      keys: () => options.token.parts?.keys.size ?? 0,
      threadsUp: () => options.token.parts?.signers.threadsUp ?? 0,
    });
  }

  /** From now on every request is answered SHUTTING_DOWN; requests already running finish. */
  drain(): void {
    this.#draining = true;
  }

  /** Returns and resets the per-key sign counts (logged periodically, never per sign). */
  takeUsage(): Map<string, number> {
    const usage = new Map(this.#usage);
    this.#usage.clear();
    return usage;
  }

  /**
   * `signal`: aborted once the answer has nowhere to go (the connection closed). `readAt`: when the request's frame was
   * read whole, where its deadline counts from (SPEC.md, "Deadlines"), for a frame held since (connection.ts); now
   * when not given. `place`: told when a sign's answer (DEADLINE_EXCEEDED) goes before the token is done with it.
   */
  handle(request: Request, client: ClientIdentity, signal?: AbortSignal, readAt?: number, place?: SignPlace): Response | Promise<Response> {
    if (this.#draining) return this.#refuse(request, client, 'SHUTTING_DOWN', 'the key server is shutting down');
    switch (request.op) {
      case 'ping':
        this.#count(request, 'ok');
        return { op: 'pong', id: request.id, payload: request.payload };
      case 'getPublicKey': {
        const found = this.#authorisedKey(request.keyId, request, client);
        if ('op' in found) return found;
        this.#count(request, 'ok');
        return { op: 'publicKey', id: request.id, spki: found.key.spki };
      }
      case 'sign':
        return this.#sign(request, client, signal, readAt, place);
    }
  }

  #sign(
    request: SignRequestOf,
    client: ClientIdentity,
    signal: AbortSignal | undefined,
    readAt: number | undefined,
    place: SignPlace | undefined,
  ): Response | Promise<Response> {
    const found = this.#authorisedKey(request.keyId, request, client);
    if ('op' in found) return found;
    const { key, parts } = found;
    const algorithm = algorithmInfo(request.algorithm);
    // The codec already refused unknown algorithms and wrong digest lengths.
    if (algorithm === undefined) return this.#refuse(request, client, 'UNKNOWN_ALGORITHM', `algorithm 0x${request.algorithm.toString(16)}`);
    if (!schemeFitsKey(algorithm.scheme, key)) {
      return this.#refuse(request, client, 'ALGORITHM_MISMATCH', `${algorithm.name} cannot sign with ${key.kind} key ${key.keyId}`);
    }
    if (algorithm.scheme === 'rsa-pss' && !pssFitsKey(algorithm.hash, key)) {
      const why = `its ${key.bits}-bit modulus is too small for a ${algorithm.digestBytes}-byte hash and salt (RFC 8017 §9.1.1)`;
      return this.#refuse(request, client, 'ALGORITHM_MISMATCH', `${algorithm.name} cannot sign with rsa key ${key.keyId}: ${why}`);
    }
    const timeoutMs = this.#options.requestTimeoutMs;
    const deadline = (readAt ?? Date.now()) + timeoutMs;
    // Held unread while the client read none of its answers (connection.ts) until its deadline passed: no token work
    // for a request whose client has given up on it (SPEC.md, "Deadlines").
    if (readAt !== undefined && deadline <= Date.now()) return this.#refuse(request, client, 'DEADLINE_EXCEEDED', `no signature within ${timeoutMs} ms`);
    const started = performance.now();
    let signed: Buffer | Promise<Buffer>;
    try {
      signed = parts.signers.sign(key, { scheme: algorithm.scheme, hash: algorithm.hash, digest: request.digest }, deadline, signal);
    } catch (err) {
      return this.#signFailed(request, client, parts, key, err, started);
    }
    // Signed inline (the usual case at handshake rates): answered at once, no deadline timer or promise needed.
    if (!(signed instanceof Promise)) return this.#signed(request, client, parts, key, algorithm, signed, started);
    // What the answer needs of a sign that waits for a thread: its key id and digest are views of the client's read (up
    // to 64 KiB, framer.ts), which these callbacks would keep until the token is done with it.
    const kept: SignRequestOf = { op: 'sign', id: request.id, algorithm: request.algorithm, keyId: NO_BYTES, digest: NO_BYTES };
    return new Promise<Response>((resolve) => {
      let answered = false;
      /** Set when the answer went before the token was done with the sign: called once it is (signed or dropped). */
      let outlived: (() => void) | undefined;
      const late = (): void => {
        answered = true;
        this.#durationChild(algorithm.name).observe((performance.now() - started) / 1000);
        resolve(this.#refuse(kept, client, 'DEADLINE_EXCEEDED', `no signature within ${timeoutMs} ms`));
      };
      const timer = setTimeout(() => {
        outlived = place?.outlive();
        late();
      }, deadline - Date.now());
      signed.then(
        (raw) => {
          if (answered) {
            outlived?.();
            // The token did sign, too late for the client: it still counts as a use of the key.
            this.#countUse(key);
            return;
          }
          clearTimeout(timer);
          resolve(this.#signed(kept, client, parts, key, algorithm, raw, started));
        },
        (err: unknown) => {
          const dropped = droppedUnsent(err);
          // Counted whether or not the timer answered first: the sign was dropped unsigned either way.
          if (dropped !== undefined) this.#options.metrics.signsDropped.inc({ reason: dropped });
          if (answered) {
            outlived?.();
            // Too late for the client, but the token gave back a bad signature all the same.
            if (isSignatureRefused(err)) this.#signatureRefused(kept, client, key, err);
            return;
          }
          clearTimeout(timer);
          if (dropped === 'closed') {
            // Nobody is left to answer: counted, not logged (a client can close at will).
            resolve({ op: 'error', id: kept.id, code: ErrorCode.SHUTTING_DOWN, detail: 'the connection closed' });
            return;
          }
          // Dropped or skipped by a signing thread with the deadline past, before this timer fired (a busy loop runs timers late): late, not failed.
          if (dropped === 'deadline' || skippedPastDeadline(err)) late();
          else resolve(this.#signFailed(kept, client, parts, key, err, started));
        },
      );
    });
  }

  #signed(
    request: SignRequestOf,
    client: ClientIdentity,
    parts: Pick<TokenParts, 'keys'>,
    key: TokenKey,
    algorithm: AlgorithmInfo,
    raw: Buffer,
    started: number,
  ): Response {
    this.#countUse(key);
    let signature: Buffer;
    try {
      // TLS carries ECDSA signatures as DER (RFC 8446 §4.2.3); PKCS#11 gives r || s.
      signature = algorithm.scheme === 'ecdsa' ? ecdsaRawToDer(raw) : raw;
      // What a token gives back is not trusted to fit the answer: one it cannot encode (empty, or past the protocol's
      // bound) thrown from the encoder ended the key server, from a socket's data handler or a thread's callback.
      if (signature.length === 0 || signature.length > MAX_SIGNATURE_BYTES) {
        throw new RangeError(`the token gave a ${signature.length}-byte signature (1 to ${MAX_SIGNATURE_BYTES} fit an answer)`);
      }
    } catch (err) {
      return this.#signFailed(request, client, parts, key, err, started);
    }
    this.#options.metrics.signed(algorithm, (performance.now() - started) / 1000);
    return { op: 'signature', id: request.id, signature };
  }

  #signFailed(request: SignRequestOf, client: ClientIdentity, parts: Pick<TokenParts, 'keys'>, key: TokenKey, err: unknown, started: number): Response {
    if (isSignatureRefused(err)) {
      this.#signatureRefused(request, client, key, err);
      this.#durationChild(algorithmName(request)).observe((performance.now() - started) / 1000);
      return this.#refuse(request, client, 'SIGN_FAILED', `the token's signature with ${key.keyId} did not verify; not sent`, undefined, true);
    }
    const reason = ckrName(err);
    // A key deleted from the token since the last scan: look again next time.
    if (/^CKR_(KEY_HANDLE_INVALID|OBJECT_HANDLE_INVALID)/.test(reason)) parts.keys.invalidate();
    // The session or the whole token is gone (removed, re-created): open it again.
    else if (tokenLost(reason)) this.#options.token.suspect(reason, true);
    this.#durationChild(algorithmName(request)).observe((performance.now() - started) / 1000);
    return this.#refuse(request, client, 'SIGN_FAILED', `token refused to sign with ${key.keyId}: ${reason}`, err);
  }

  /**
   * The token gave back an RSA signature that does not verify: counted, and logged at error level at most the
   * limiter's burst per key id (bounded by the keys in the token), since every sign with that key may do it again.
   * The error's message names the reason (length, range, mismatch), never bytes.
   */
  #signatureRefused(request: SignRequestOf, client: ClientIdentity, key: TokenKey, err: unknown): void {
    const algorithm = algorithmName(request);
    this.#options.metrics.signaturesRefused.inc({ algorithm });
    const fields = { keyId: key.keyId, algorithm, client: client.name, transport: client.transport, reason: (err as Error).message };
    this.#options.limiter.write(
      this.#options.log,
      'error',
      `signature_refused:${key.keyId}`,
      fields,
      "the token gave back a signature that does not verify with the key's public key: not sent, answered SIGN_FAILED (a faulty token or HSM: take it out of service)",
    );
  }

  #countUse(key: TokenKey): void {
    this.#usage.set(key.keyId, (this.#usage.get(key.keyId) ?? 0) + 1);
  }

  /** The key, and the token parts it belongs to, if it exists and the client may use it; else the refusal to send. */
  #authorisedKey(keyIdBytes: Buffer, request: Request, client: ClientIdentity): { key: TokenKey; parts: Pick<TokenParts, 'signers' | 'keys'> } | Response {
    const keyId = this.#keyIdHex(keyIdBytes);
    // Authorisation comes first, so an unauthorised client can neither probe
    // which keys exist nor make the key store rescan the token.
    if (!mayUseKey(client, keyId)) {
      this.#options.metrics.authzRefusals.inc({ transport: client.transport });
      const fields = { audit: 'refused', client: client.name, transport: client.transport, keyId, op: request.op };
      this.#options.limiter.warn(this.#options.log, `refused:NOT_AUTHORISED:${client.rule}`, fields, 'client may not use this key');
      return this.#refuse(request, client, 'NOT_AUTHORISED', `this client may not use key ${keyId}`, undefined, true);
    }
    const parts = this.#options.token.parts;
    if (parts === undefined) {
      // Being opened again, or could not be: this request may start the next attempt.
      this.#options.token.suspect('a request while the token is not open');
      return this.#refuse(request, client, 'SIGN_FAILED', 'the token is not open (it is being opened again); retry');
    }
    // A key and the signers of the same token: a key's handles mean nothing to a token opened again.
    const key = parts.keys.get(keyId);
    if (key === undefined) return this.#refuse(request, client, 'UNKNOWN_KEY', `no key ${keyId} in the token`);
    return { key, parts };
  }

  /**
   * The key id as hex, the form every table here is keyed by. Comparing 32
   * bytes costs less than making the string, and the same string again makes
   * the table lookups after it cheaper (its hash is kept with it).
   */
  #keyIdHex(keyIdBytes: Buffer): string {
    if (!keyIdBytes.equals(this.#lastKeyIdBytes)) {
      // A copy: the bytes given are a view of the connection's read buffer.
      this.#lastKeyIdBytes = Buffer.from(keyIdBytes);
      this.#lastKeyId = keyIdBytes.toString('hex');
    }
    return this.#lastKeyId;
  }

  #refuse(request: Request, client: ClientIdentity, code: ErrorCodeName, detail: string, cause?: unknown, logged = false): Response {
    this.#count(request, code);
    if (!logged) {
      const level = code === 'SIGN_FAILED' || code === 'DEADLINE_EXCEEDED' ? 'error' : 'warn';
      const fields = { client: client.name, transport: client.transport, op: request.op, code, err: cause };
      this.#options.limiter.write(this.#options.log, level, `refused:${code}:${client.rule}`, fields, detail);
    }
    return { op: 'error', id: request.id, code: ErrorCode[code], detail };
  }

  #count(request: Request, result: string): void {
    const algorithm = request.op === 'sign' ? (algorithmInfo(request.algorithm)?.name ?? 'unknown') : 'none';
    // Label children are looked up once: resolving labels costs more than the increment.
    // Bounded: ops × algorithms × results, all from the protocol's fixed tables.
    const key = `${request.op}\0${algorithm}\0${result}`;
    let child = this.#requestChildren.get(key);
    if (child === undefined) {
      child = this.#options.metrics.requests.labels(request.op, algorithm, result);
      this.#requestChildren.set(key, child);
    }
    child.inc();
  }

  #durationChild(algorithm: string): { observe(seconds: number): void } {
    let child = this.#durationChildren.get(algorithm);
    if (child === undefined) {
      child = this.#options.metrics.signDuration.labels(algorithm);
      this.#durationChildren.set(algorithm, child);
    }
    return child;
  }
}
