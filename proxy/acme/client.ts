/**
 * A small ACME client (RFC 8555) whose account key is a JwsSigner: the
 * signature comes from the key server, so the key stays in the token.
 *
 * Why not acme-client: it signs with an in-process PEM key, and keeping the
 * key in the token meant overriding private methods of its HTTP client. What
 * we need is small: the directory, nonces with one badNonce retry path
 * (§6.5, §7.2), newAccount (§7.3, with EAB §7.3.4), newOrder (§7.4, with
 * `replaces` of RFC 9773 §5 and an optional `profile`), POST-as-GET (§6.3)
 * for authorizations, orders and the certificate, challenge responses (§7.5.1),
 * authorization deactivation (§7.5.2),
 * finalize (§7.4) and the unsigned renewal-info GET (RFC 9773 §4).
 *
 * Every failure is an AcmeError carrying the problem type (§6.7) and the
 * server's Retry-After, which the maintenance loop turns into its backoff.
 * Its message names the request by its URL masked (masked-url.ts): the
 * configured directory URL may carry a token in its query, and the message
 * goes to the log, GET /certs and the admin API's answers.
 * Concurrency: any number of requests at once; each takes its own nonce.
 */
import { Agent, fetch } from 'undici';
import { maskedUrl } from '../masked-url.js';
import { checkedAuthorization, checkedDirectory, checkedOrder } from './answers.js';
import { AcmeError } from './errors.js';
import { type EcJwk, externalAccountBinding, type JwsSigner, signJws } from './jws.js';

export interface AcmeDirectory {
  readonly newNonce: string;
  readonly newAccount: string;
  readonly newOrder: string;
  readonly renewalInfo?: string;
  readonly meta?: { readonly profiles?: Record<string, string>; readonly externalAccountRequired?: boolean };
}

export interface AcmeOrder {
  readonly status: 'pending' | 'ready' | 'processing' | 'valid' | 'invalid';
  readonly identifiers: readonly { readonly type: string; readonly value: string }[];
  readonly authorizations: readonly string[];
  readonly finalize: string;
  readonly certificate?: string;
  readonly error?: unknown;
}

export interface AcmeChallenge {
  readonly type: string;
  readonly url: string;
  readonly token: string;
  readonly status: string;
  readonly error?: { readonly type?: string; readonly detail?: string };
}

export interface AcmeAuthorization {
  readonly status: 'pending' | 'valid' | 'invalid' | 'deactivated' | 'expired' | 'revoked';
  readonly identifier: { readonly type: string; readonly value: string };
  readonly challenges: readonly AcmeChallenge[];
  readonly wildcard?: boolean;
}

export interface AcmeClientOptions {
  readonly directoryUrl: string;
  readonly signer: JwsSigner;
  /** PEM CA bundle for the directory's HTTPS (a private or test CA); undefined: Node's roots. */
  readonly ca?: string;
  /** Per HTTP request. */
  readonly timeoutMs: number;
}

interface Answer<T> {
  readonly body: T;
  readonly text: string;
  readonly location: string | undefined;
  readonly retryAfterMs: number | undefined;
}

/** badNonce is retried with the nonce of the error answer (§6.5): a few times, then it is the server's failure. */
const BAD_NONCE_RETRIES = 3;
/** No ACME answer comes near this (a directory, an order, a chain of a few certificates: kilobytes). */
const MAX_ANSWER_BYTES = 1024 * 1024;

export class AcmeClient {
  readonly #options: AcmeClientOptions;
  readonly #agent: Agent;
  #directory: AcmeDirectory | undefined;
  #nonces: string[] = [];
  #kid: string | undefined;
  #closed = false;

  constructor(options: AcmeClientOptions) {
    this.#options = options;
    this.#agent = new Agent({ connect: options.ca === undefined ? {} : { ca: options.ca }, connections: 8 });
  }

  get jwk(): EcJwk {
    return this.#options.signer.jwk;
  }
  get accountUrl(): string | undefined {
    return this.#kid;
  }

  async directory(): Promise<AcmeDirectory> {
    this.#directory ??= checkedDirectory((await this.#http<unknown>('GET', this.#options.directoryUrl)).body, `GET ${maskedUrl(this.#options.directoryUrl)}`);
    return this.#directory;
  }

  /** newAccount: creates the account, or finds the existing one for this key (200). Returns the account URL (the JWS `kid`). */
  async account(options: { contact: readonly string[]; eab?: { kid: string; hmacKey: string } | undefined }): Promise<string> {
    const dir = await this.directory();
    const payload = {
      termsOfServiceAgreed: true,
      contact: options.contact,
      ...(options.eab === undefined ? {} : { externalAccountBinding: externalAccountBinding(this.jwk, options.eab.kid, options.eab.hmacKey, dir.newAccount) }),
    };
    const answer = await this.#post<unknown>(dir.newAccount, payload, 'jwk');
    if (answer.location === undefined) throw new AcmeError('newAccount answered without the account URL (Location)', {});
    this.#kid = answer.location;
    return answer.location;
  }

  async newOrder(domains: readonly string[], extra: { replaces?: string; profile?: string } = {}): Promise<{ url: string; order: AcmeOrder }> {
    const newOrder = (await this.directory()).newOrder;
    const answer = await this.#post<unknown>(newOrder, {
      identifiers: domains.map((value) => ({ type: 'dns', value })),
      ...(extra.replaces === undefined ? {} : { replaces: extra.replaces }),
      ...(extra.profile === undefined ? {} : { profile: extra.profile }),
    });
    if (answer.location === undefined) throw new AcmeError('newOrder answered without the order URL (Location)', {});
    return { url: answer.location, order: checkedOrder(answer.body, `POST ${maskedUrl(newOrder)}`) };
  }

  /** An order (POST-as-GET), checked (answers.ts), with the CA's Retry-After. */
  async order(url: string): Promise<{ body: AcmeOrder; retryAfterMs: number | undefined }> {
    const answer = await this.get<unknown>(url);
    return { body: checkedOrder(answer.body, `POST ${maskedUrl(url)}`), retryAfterMs: answer.retryAfterMs };
  }

  /** An authorization (POST-as-GET), checked (answers.ts), with the CA's Retry-After. */
  async authorization(url: string): Promise<{ body: AcmeAuthorization; retryAfterMs: number | undefined }> {
    const answer = await this.get<unknown>(url);
    return { body: checkedAuthorization(answer.body, `POST ${maskedUrl(url)}`), retryAfterMs: answer.retryAfterMs };
  }

  /** POST-as-GET (§6.3), unchecked: `order` and `authorization` check theirs. */
  async get<T>(url: string): Promise<Answer<T>> {
    return this.#post<T>(url, undefined);
  }

  /** Deactivates an authorization (§7.5.2): a pending one no longer counts against the account's pending authorizations. */
  async deactivate(authorizationUrl: string): Promise<void> {
    await this.#post(authorizationUrl, { status: 'deactivated' });
  }

  /** Tells the CA the challenge is ready (§7.5.1: the payload is an empty object). */
  async respond(challengeUrl: string): Promise<void> {
    await this.#post(challengeUrl, {});
  }

  async finalize(order: AcmeOrder, csrDer: Buffer): Promise<AcmeOrder> {
    return checkedOrder((await this.#post<unknown>(order.finalize, { csr: csrDer.toString('base64url') })).body, `POST ${maskedUrl(order.finalize)}`);
  }

  /** The issued chain, PEM, leaf first (§7.4.2). */
  async certificate(url: string): Promise<string> {
    return (await this.#post<unknown>(url, undefined, 'kid', 'application/pem-certificate-chain')).text;
  }

  /** RFC 9773 §4.2: an unsigned GET of `renewalInfo/<certID>`; undefined when the directory offers none. */
  async renewalInfo(certId: string): Promise<{ start: Date; end: Date; retryAfterMs: number | undefined } | undefined> {
    const base = (await this.directory()).renewalInfo;
    if (base === undefined) return undefined;
    const answer = await this.#http<{ suggestedWindow?: { start?: string; end?: string } }>('GET', `${base.replace(/\/$/, '')}/${certId}`);
    const window = answer.body.suggestedWindow;
    const start = new Date(window?.start ?? Number.NaN);
    const end = new Date(window?.end ?? Number.NaN);
    if (Number.isNaN(start.getTime()) || Number.isNaN(end.getTime()) || end < start)
      // An answer about this certificate (its status: 2xx), not the endpoint's failure (maintain.ts).
      throw new AcmeError('renewalInfo answered without a valid suggestedWindow', { status: 200 });
    return { start, end, retryAfterMs: answer.retryAfterMs };
  }

  /** Closes its sockets to the CA once the requests under way end; again is a no-op. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#agent.close().catch(() => undefined);
  }

  async #nonce(): Promise<string> {
    const kept = this.#nonces.pop();
    if (kept !== undefined) return kept;
    const answer = await this.#http<unknown>('HEAD', (await this.directory()).newNonce);
    const nonce = this.#nonces.pop();
    if (nonce === undefined) throw new AcmeError('newNonce answered without a Replay-Nonce', { retryAfterMs: answer.retryAfterMs });
    return nonce;
  }

  async #post<T>(url: string, payload: unknown, key: 'jwk' | 'kid' = 'kid', accept = 'application/json'): Promise<Answer<T>> {
    for (let attempt = 0; ; attempt++) {
      const identity = key === 'jwk' ? { jwk: this.jwk } : { kid: this.#kid };
      if (key === 'kid' && this.#kid === undefined) throw new AcmeError('no ACME account yet', {});
      const body = await signJws(this.#options.signer, { ...identity, nonce: await this.#nonce(), url }, payload);
      try {
        return await this.#http<T>('POST', url, body, accept);
      } catch (err) {
        if (err instanceof AcmeError && err.problem === 'badNonce' && attempt < BAD_NONCE_RETRIES) continue;
        throw err;
      }
    }
  }

  async #http<T>(method: string, url: string, body?: string, accept = 'application/json'): Promise<Answer<T>> {
    const request = `${method} ${maskedUrl(url)}`;
    let response: Awaited<ReturnType<typeof fetch>>;
    try {
      response = await fetch(url, {
        method,
        dispatcher: this.#agent,
        signal: AbortSignal.timeout(this.#options.timeoutMs),
        headers: { accept, ...(body === undefined ? {} : { 'content-type': 'application/jose+json' }), 'user-agent': 'keyedge-acme' },
        ...(body === undefined ? {} : { body }),
      });
    } catch (err) {
      throw new AcmeError(`${request}: ${(err as Error).name === 'TimeoutError' ? 'no answer in time' : (err as Error).message}`, { cause: err });
    }
    const nonce = response.headers.get('replay-nonce');
    if (nonce !== null && /^[\w-]+$/.test(nonce)) this.#nonces.push(nonce);
    const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
    const text = method === 'HEAD' ? '' : await readCapped(response, request);
    if (response.status >= 400) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Not a problem document (§6.7): the status says enough.
      }
      // Only a JSON object's string fields are a problem's: a body of `null` or a `type` of 5 threw a TypeError here, and
      // the error lost its status, problem and Retry-After (a 429 asking for an hour was retried after a minute).
      const problem = typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>) : {};
      const type = typeof problem.type === 'string' ? problem.type.replace('urn:ietf:params:acme:error:', '') : undefined;
      const detail = typeof problem.detail === 'string' ? problem.detail : '';
      throw new AcmeError(`${request}: ${response.status} ${type ?? ''} ${detail}`.trim(), {
        status: response.status,
        ...(type === undefined ? {} : { problem: type }),
        ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
      });
    }
    let parsed: unknown;
    if (accept === 'application/json' && text !== '') {
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        throw new AcmeError(`${request}: the answer is not JSON`, { cause: err });
      }
    }
    return { body: parsed as T, text, location: response.headers.get('location') ?? undefined, retryAfterMs };
  }
}

/**
 * An answer's body, refused past MAX_ANSWER_BYTES: `response.text()` took whatever the CA sent for as long as
 * `timeoutMs` allowed (a failing CA's endless certificate was held whole in the primary's memory).
 */
async function readCapped(response: Awaited<ReturnType<typeof fetch>>, what: string): Promise<string> {
  const tooBig = (): AcmeError => new AcmeError(`${what}: the answer is larger than ${MAX_ANSWER_BYTES} bytes`, { status: response.status });
  if (Number(response.headers.get('content-length') ?? 0) > MAX_ANSWER_BYTES) {
    await response.body?.cancel().catch(() => undefined);
    throw tooBig();
  }
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of response.body ?? []) {
      size += (chunk as Uint8Array).byteLength;
      if (size > MAX_ANSWER_BYTES) throw tooBig();
      chunks.push(Buffer.from(chunk as Uint8Array));
    }
  } catch (err) {
    if (err instanceof AcmeError) throw err;
    throw new AcmeError(`${what}: ${(err as Error).name === 'TimeoutError' ? 'no answer in time' : (err as Error).message}`, { cause: err });
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Retry-After (RFC 9110 §10.2.3): seconds or an HTTP date; capped at a day. */
export function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  // Seconds past what a number holds (more than 308 digits: Infinity) are capped too, not taken as no Retry-After.
  if (/^\d+$/.test(value.trim())) return Math.min(Number(value.trim()) * 1000, RETRY_AFTER_CAP_MS);
  const ms = Date.parse(value) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), RETRY_AFTER_CAP_MS) : undefined;
}

/** A CA's Retry-After is followed for a day at the most. */
const RETRY_AFTER_CAP_MS = 86_400_000;
