/**
 * OCSP stapling (RFC 6066 §8, RFC 6960), entirely off the handshake path.
 *
 * For each served certificate whose leaf names an OCSP responder (Authority
 * Information Access, RFC 5280 §4.2.2.1) and whose chain holds its issuer, a
 * background loop fetches a response, checks it is for this certificate,
 * "good" and current, and caches its DER, asking again halfway to nextUpdate
 * (at least every 12 hours, and an hour before it at the latest). The
 * handshake only reads the cache (`stapleFor`): no staple yet, or a responder
 * that is down, means a handshake without a staple, never a slower one.
 *
 * The responder's signature is checked here too (ocsp-signer.ts), as nginx
 * does with ssl_stapling_verify on, and the answer's DER framing
 * (ocsp-der.ts): the responder is usually reached over plain HTTP, so anyone
 * on the path may answer, and a staple a client cannot verify or read is one
 * a strict client (Firefox) fails the handshake on, for as long as the
 * answer's own nextUpdate says. Only the issuer or a responder it certified
 * for OCSP signing may sign (RFC 6960 §4.2.2.2). Answers are taken in
 * thisUpdate order, and a signed "revoked" withdraws the staple.
 *
 * The log tells a start in one line per worker: once every certificate
 * tracked has had its first fetch, how many were stapled (and how many not,
 * their failures warned about as below); each staple, the first and every
 * refresh, is a debug line.
 */
import { createHash, X509Certificate as NodeCertificate } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { AlgorithmIdentifier, Certificate } from '@peculiar/asn1-x509';
import {
  BasicOCSPResponse,
  CertID,
  OCSPRequest,
  OCSPResponse,
  OCSPResponseStatus,
  Request as OcspSingleRequest,
  TBSRequest,
  id_pkix_ocsp_basic,
} from '@peculiar/asn1-ocsp';
import { request } from 'undici';
import type { Logger } from '../../keyserver/shared/log.js';
import * as x509 from '../../keyserver/shared/x509.js';
import type { ServedCertificate } from '../certs/certificate.js';
import { checkOcspFraming } from './ocsp-der.js';
import { checkOcspSigner } from './ocsp-signer.js';

const SHA1 = '1.3.14.3.2.26';
/**
 * Fetches in flight at once to one responder (its URL's origin): a start with thousands of stapled certificates
 * began every fetch in one moment, a socket each in a worker that needs its descriptors for clients, and thousands of
 * requests at once at the CA. Per origin, so one responder that never answers holds up no other's certificates.
 */
const FETCHES_PER_RESPONDER = 8;
/** Refresh at least this long before nextUpdate, and this often when a response has no nextUpdate. */
const REFRESH_MARGIN_MS = 60 * 60 * 1000;
const MIN_REFRESH_MS = 60 * 1000;
/** Refresh at least this often, whatever nextUpdate says. */
const MAX_REFRESH_MS = 12 * 60 * 60 * 1000;
const RETRY_MS = [5_000, 30_000, 120_000, 600_000];

/**
 * While a leaf's fetches keep failing, how long after its last warning another is logged (the failures between are
 * logged at debug level). Warned at each retry, an outage of one responder made a line per certificate every 10 minutes
 * in each worker, the first four within 3 minutes: with many certificates, thousands of lines an hour that said nothing
 * new. Said when stapling starts failing, then hourly while it goes on, and once when a staple is fetched again.
 */
const WARN_AGAIN_MS = 60 * 60 * 1000;

/** When a leaf's responder is asked again: after a good answer with this nextUpdate, and after the nth failure in a row. */
export interface StaplerTiming {
  readonly refreshIn: (nextUpdate: Date | undefined, now: number) => number;
  readonly retryMs: readonly number[];
  /** WARN_AGAIN_MS unless given. */
  readonly warnAgainMs?: number;
}

/**
 * The delay before the next fetch after a good answer with `nextUpdate`: half the time it has left, at most
 * MAX_REFRESH_MS, and at least REFRESH_MARGIN_MS before it ends. An answer is renewed by its CA long before it ends
 * (the Baseline Requirements' §4.9.10 has one within four days of the last, good for ten at most), so
 * asking early leaves a responder outage days to pass before the staple ends; asked only an hour before, an outage of
 * that hour left the certificate unstapled (a Must-Staple one failing every handshake). nginx asks every hour.
 */
export function refreshDelay(nextUpdate: Date | undefined, now = Date.now()): number {
  if (nextUpdate === undefined) return MIN_REFRESH_MS * 60;
  const left = nextUpdate.getTime() - now;
  return Math.max(MIN_REFRESH_MS, Math.min(left / 2, left - REFRESH_MARGIN_MS, MAX_REFRESH_MS));
}

const TIMING: StaplerTiming = { refreshIn: refreshDelay, retryMs: RETRY_MS };
const FETCH_TIMEOUT_MS = 5_000;
/** The largest response stapled; a larger one is not read past this. */
const MAX_RESPONSE_BYTES = 64 * 1024;

/** A leaf's refresh loop: its next run, and the entry name its log lines give (the latest certificate tracked on it). */
interface Loop {
  timer: NodeJS.Timeout | undefined;
  name: string;
  /**
   * Every entry name the leaf is tracked under: one chain may serve under two (an entry renamed by adding the new
   * name, then removing the old). The loop and its staple end with the last of them, not with the first removed.
   */
  readonly names: Set<string>;
  /** Its responder's URL. */
  readonly url: string;
}

interface Staple {
  readonly der: Buffer;
  /** Until when it is stapled (OcspAnswer). */
  readonly until: Date;
}

/** The responder URL of a leaf, if it names one over http(s). */
export function ocspResponderUrl(leaf: x509.X509Certificate): string | undefined {
  const aia = leaf.getExtension(x509.AuthorityInfoAccessExtension);
  return aia?.ocsp.find((name) => name.type === 'url' && /^https?:\/\//i.test(name.value))?.value;
}

/** The DER OCSPRequest for `leaf` issued by `issuer` (RFC 6960 §4.1.1; SHA-1 CertID, as every responder accepts). */
export function buildOcspRequest(leaf: x509.X509Certificate, issuer: x509.X509Certificate): { der: Buffer; certId: CertID } {
  const issuerAsn = AsnConvert.parse(issuer.rawData, Certificate);
  const leafAsn = AsnConvert.parse(leaf.rawData, Certificate);
  const sha1 = (data: ArrayBuffer): OctetString => new OctetString(createHash('sha1').update(Buffer.from(data)).digest());
  const certId = new CertID({
    hashAlgorithm: new AlgorithmIdentifier({ algorithm: SHA1 }),
    issuerNameHash: sha1(AsnConvert.serialize(issuerAsn.tbsCertificate.subject)),
    issuerKeyHash: sha1(issuerAsn.tbsCertificate.subjectPublicKeyInfo.subjectPublicKey),
    serialNumber: leafAsn.tbsCertificate.serialNumber,
  });
  const request = new OCSPRequest({ tbsRequest: new TBSRequest({ requestList: [new OcspSingleRequest({ reqCert: certId })] }) });
  return { der: Buffer.from(AsnConvert.serialize(request)), certId };
}

/**
 * Whether two CertIDs name the same certificate: the hash algorithm by its OID, not its parameters, which a SHA-1
 * identifier may carry as NULL or leave out (RFC 5754 §2: a reader accepts both). Go's x/crypto/ocsp, which many
 * CAs' responders are built on, writes NULL whatever the request had: compared byte for byte, no answer of theirs
 * covered a certificate. The fields OpenSSL's OCSP_id_cmp compares.
 */
function sameCertId(a: CertID, b: CertID): boolean {
  const bytes = (value: ArrayBuffer | OctetString): Buffer => Buffer.from(value instanceof OctetString ? value.buffer : value);
  return (
    a.hashAlgorithm.algorithm === b.hashAlgorithm.algorithm &&
    bytes(a.issuerNameHash).equals(bytes(b.issuerNameHash)) &&
    bytes(a.issuerKeyHash).equals(bytes(b.issuerKeyHash)) &&
    bytes(a.serialNumber).equals(bytes(b.serialNumber))
  );
}

/**
 * A signed answer that says something of this certificate alone (not covered, status unknown, revoked, older than one
 * taken): the responder is up and answering. Any other failure (no connection, a timeout, an HTTP error, an answer
 * unreadable, unsigned or "tryLater") is the responder's, and fails every certificate it serves alike.
 */
export class OcspCertificateError extends Error {}

/** A response for this certificate that says it is revoked (RFC 6960 §2.2), as of `thisUpdate`. */
export class OcspRevokedError extends OcspCertificateError {
  constructor(readonly thisUpdate: Date) {
    super('the certificate is revoked');
  }
}

/** A "good" answer's times: its own, and until when it is stapled. */
export interface OcspAnswer {
  readonly thisUpdate: Date;
  /** As the answer says: none means newer information is always available (RFC 6960 §4.2.2.1). */
  readonly nextUpdate: Date | undefined;
  readonly until: Date;
}

/** How long after its thisUpdate an answer without a nextUpdate is stapled, and any answer at most. */
const NO_NEXT_UPDATE_MS = 24 * 60 * 60 * 1000;
const LONGEST_ANSWER_MS = 10 * NO_NEXT_UPDATE_MS;

/**
 * Checks a DER OCSPResponse; returns until when it may be stapled (its nextUpdate, or earlier: checkOcspAnswer), or
 * throws saying why it is unfit to staple.
 */
export function checkOcspResponse(der: Buffer, certId: CertID, now = new Date()): Date | undefined {
  return checkOcspAnswer(der, certId, now).until;
}

/**
 * As checkOcspResponse, with the answer's thisUpdate, refusing one older than `newest` (the thisUpdate of the newest
 * answer already taken): there is no nonce (most responders ignore one, and answers come from caches), so what keeps
 * an answer from being sent again later, by anyone on the responder's path or by a stale cache, is its time alone.
 */
export function checkOcspAnswer(der: Buffer, certId: CertID, now = new Date(), newest?: Date): OcspAnswer {
  checkOcspFraming(der);
  const response = AsnConvert.parse(der, OCSPResponse);
  if (response.responseStatus !== OCSPResponseStatus.successful) throw new Error(`responder status ${OCSPResponseStatus[response.responseStatus]}`);
  if (response.responseBytes?.responseType !== id_pkix_ocsp_basic) throw new Error('not a basic OCSP response');
  const basic = AsnConvert.parse(response.responseBytes.response.buffer, BasicOCSPResponse);
  // The whole CertID must match (RFC 6960 §4.1.1): a serial alone could be another CA's certificate.
  const single = basic.tbsResponseData.responses.find((r) => sameCertId(r.certID, certId));
  if (single === undefined) throw new OcspCertificateError('the response does not cover this certificate');
  if (newest !== undefined && single.thisUpdate.getTime() < newest.getTime())
    throw new OcspCertificateError(`the response (thisUpdate ${single.thisUpdate.toISOString()}) is older than one already taken`);
  if (single.certStatus.revoked !== undefined) throw new OcspRevokedError(single.thisUpdate);
  if (single.certStatus.good === undefined) throw new OcspCertificateError('certificate status unknown');
  const thisUpdate = single.thisUpdate.getTime();
  if (thisUpdate > now.getTime() + 5 * 60_000) throw new Error('thisUpdate is in the future');
  if (single.nextUpdate !== undefined && single.nextUpdate.getTime() < thisUpdate) throw new Error('nextUpdate is before thisUpdate');
  // Until when a strict client takes it as current: its nextUpdate, a day after thisUpdate without one, and never
  // more than ten days after it (mozilla::pkix, pkixocsp.cpp; the Baseline Requirements' §4.9.10 longest validity).
  const until = Math.min(single.nextUpdate?.getTime() ?? thisUpdate + NO_NEXT_UPDATE_MS, thisUpdate + LONGEST_ANSWER_MS);
  if (until <= now.getTime()) throw new Error('the response has expired');
  return { thisUpdate: single.thisUpdate, nextUpdate: single.nextUpdate, until: new Date(until) };
}

/**
 * Keeps staples fresh for a set of certificates. Contract: `track` and
 * `untrack` are called when certificates are loaded or replaced; `stapleOf`
 * is called in the handshake and never blocks; `stop` ends all timers and
 * the fetches under way.
 */
export class OcspStapler {
  readonly #staples = new Map<string, Staple>();
  /** One refresh loop per tracked leaf; the loop stops when its entry is gone or replaced. */
  readonly #loops = new Map<string, Loop>();
  /** Each tracked certificate's cache key, so a handshake that knows its certificate hashes nothing. */
  readonly #keys = new WeakMap<ServedCertificate, string>();
  readonly #log: Logger;
  readonly #timing: StaplerTiming;
  /** Aborted by `stop`: a fetch under way would hold its connection, and the worker's exit, until its deadline. */
  readonly #stopped = new AbortController();
  /** By responder origin: fetches running, and the ones waiting for a turn, first come first served. */
  readonly #responders = new Map<string, { running: number; readonly waiting: (() => void)[] }>();
  /** By responder URL: the leaves tracked on it (their cache keys), for the count its warnings give. */
  readonly #served = new Map<string, Set<string>>();
  /**
   * By responder URL, while its fetches fail: since when, its last warning, and the leaves that have failed on it. One
   * responder down made a first warning per certificate in each worker: 1,000 certificates, 1,000 lines per worker.
   */
  readonly #outages = new Map<string, { readonly since: number; warned: number; readonly failed: Set<string> }>();
  /**
   * The leaves tracked since the last summary whose first fetch is still to come, and how those done went: told in one
   * line once none is left (#firstFetched). Each staple was an info line of its own: 1,000 certificates made 1,000 lines
   * per worker at every start, and again at every refresh, all saying the same thing.
   */
  readonly #firstRound = { pending: new Set<string>(), stapled: 0, failed: 0 };

  /** `timing` for tests only. */
  constructor(log: Logger, timing: StaplerTiming = TIMING) {
    this.#log = log;
    this.#timing = timing;
  }

  /** The staple for a tracked certificate, if one is current: a map lookup, for the handshake path. */
  stapleOf(certificate: ServedCertificate): Buffer | undefined {
    const key = this.#keys.get(certificate);
    return key === undefined ? undefined : this.#current(key);
  }

  #current(key: string): Buffer | undefined {
    const staple = this.#staples.get(key);
    if (staple === undefined) return undefined;
    if (staple.until.getTime() <= Date.now()) return undefined;
    return staple.der;
  }

  track(certificate: ServedCertificate): void {
    const url = ocspResponderUrl(certificate.leaf);
    const issuer = certificate.chain[1];
    if (url === undefined || issuer === undefined) return;
    const key = leafKey(Buffer.from(certificate.leaf.rawData));
    this.#keys.set(certificate, key);
    const running = this.#loops.get(key);
    if (running !== undefined) {
      running.name = certificate.name;
      running.names.add(certificate.name);
      return;
    }
    const { der: request, certId } = buildOcspRequest(certificate.leaf, issuer);
    // A copy of the issuer's bytes, so the loop holds nothing of the certificate object (see #loop).
    const signer = new NodeCertificate(Buffer.from(issuer.rawData));
    let served = this.#served.get(url);
    if (served === undefined) this.#served.set(url, (served = new Set()));
    served.add(key);
    this.#firstRound.pending.add(key);
    this.#loop(key, { timer: undefined, name: certificate.name, names: new Set([certificate.name]), url }, url, request, certId, signer);
  }

  /**
   * The refresh loop of one leaf, from what it needs only: never the
   * certificate object. A loop outlives the object it was started for (a
   * reload that keeps the leaf tracks the new object on the running loop),
   * and a certificate read from a pack holds the pack's descriptor
   * (serving/pack.ts): a loop that kept its first certificate kept that
   * pack open, its file unlinked but its disk space held, for the worker's life.
   */
  #loop(key: string, loop: Loop, url: string, request: Buffer, certId: CertID, issuer: NodeCertificate): void {
    this.#loops.set(key, loop);
    const current = (): boolean => this.#loops.get(key) === loop;
    let failures = 0;
    /**
     * While fetches fail: since when, and when the last warning naming this certificate was logged (none while its
     * failures were only its responder's, told once for all the responder's certificates: #responderFailed).
     */
    let failing: { readonly since: number; warned: number | undefined; revoked: boolean } | undefined;
    /** The thisUpdate of the newest answer taken for this leaf, "good" or "revoked": an older one is refused. */
    let newest: Date | undefined;
    const refresh = async (): Promise<void> => {
      let delay: number;
      try {
        const der = await this.#inTurn(url, () => (current() ? fetchOcsp(url, request, this.#stopped.signal) : undefined));
        // Untracked while it waited for its turn: nobody's to fetch.
        if (der === undefined) return;
        let answer: OcspAnswer;
        try {
          answer = checkOcspAnswer(der, certId, new Date(), newest);
        } catch (err) {
          // The issuer's own word that the certificate is revoked withdraws the "good" answer cached before: it is
          // superseded, and stapling it on would tell clients "good" for days after the CA said otherwise. A revoked
          // certificate is stapled nothing, as one that was never "good". Only once signed: anyone may say "revoked".
          // A word on this certificate alone is the responder's only once signed: until then, anyone's.
          if (err instanceof OcspCertificateError) checkOcspSigner(der, issuer);
          if (err instanceof OcspRevokedError) {
            newest = err.thisUpdate;
            if (current()) this.#staples.delete(key);
          }
          throw err;
        }
        checkOcspSigner(der, issuer);
        this.#responderAnswered(url);
        const { nextUpdate, until } = answer;
        newest = answer.thisUpdate;
        // Untracked (or tracked anew) while the fetch ran: this answer is nobody's.
        if (!current()) return;
        this.#staples.set(key, { der, until });
        if (failing !== undefined) {
          // At info level for a certificate warned about by name; the rest of an outage's are told by its end.
          this.#log[failing.warned === undefined ? 'debug' : 'info'](
            { certificate: loop.name, responder: url, failures, failingForMs: Date.now() - failing.since },
            'OCSP staple fetched again after failures',
          );
        }
        failing = undefined;
        failures = 0;
        // Asked again by what the answer says: hourly without a nextUpdate, as before a day is out.
        delay = this.#timing.refreshIn(nextUpdate === undefined ? undefined : until, Date.now());
        this.#log.debug({ certificate: loop.name, nextUpdate: until }, 'OCSP staple updated');
        this.#firstFetched(key, true);
      } catch (err) {
        // Stopped or untracked meanwhile (its fetch aborted by `stop`): nothing to tell, nothing to try again.
        if (!current()) return;
        const { retryMs } = this.#timing;
        delay = retryMs[Math.min(failures, retryMs.length - 1)]!;
        failures++;
        const now = Date.now();
        const revoked = err instanceof OcspRevokedError;
        const fields = { certificate: loop.name, responder: url, retryInMs: delay, failures, reason: (err as Error).message };
        failing ??= { since: now, warned: undefined, revoked: false };
        if (!(err instanceof OcspCertificateError)) {
          // The responder's failure, the same for each certificate it serves: told once for them all, not once each.
          if (this.#responderFailed(url, key, fields, now)) failing.warned = now;
        } else {
          this.#responderAnswered(url);
          // Said when stapling starts failing, then at most once per warnAgainMs while it goes on; a revocation (the
          // CA's signed word, not an outage) when first seen. The failures between are for debugging.
          const again = this.#timing.warnAgainMs ?? WARN_AGAIN_MS;
          if (failing.warned === undefined || (revoked && !failing.revoked) || now - failing.warned >= again) {
            failing.warned = now;
            failing.revoked ||= revoked;
            this.#log.warn({ ...fields, failingForMs: now - failing.since }, 'OCSP fetch failed; serving without a fresh staple');
          } else this.#log.debug(fields, 'OCSP fetch failed again');
        }
        // After its warning: the round's line, if this ends it, counts a failure already told.
        this.#firstFetched(key, false);
      }
      if (current()) loop.timer = setTimeout(() => void refresh(), delay).unref();
    };
    loop.timer = setTimeout(() => void refresh(), 0).unref();
  }

  /**
   * A fetch from `url` failed for the responder's sake (`fields`: the certificate's). Warned when the responder starts
   * failing, with how many tracked certificates it serves, then at most once per warnAgainMs while it goes on, naming
   * how many have failed; the rest at debug level. True when this failure was warned, naming its certificate.
   */
  #responderFailed(url: string, key: string, fields: Record<string, unknown>, now: number): boolean {
    const served = this.#served.get(url)?.size ?? 1;
    let outage = this.#outages.get(url);
    if (outage === undefined) {
      outage = { since: now, warned: now, failed: new Set([key]) };
      this.#outages.set(url, outage);
      this.#log.warn({ ...fields, certificates: served, failingForMs: 0 }, 'OCSP fetch failed; serving without a fresh staple');
      return true;
    }
    outage.failed.add(key);
    if (now - outage.warned >= (this.#timing.warnAgainMs ?? WARN_AGAIN_MS)) {
      outage.warned = now;
      this.#log.warn(
        { ...fields, certificates: served, failed: outage.failed.size, failingForMs: now - outage.since },
        'OCSP fetch failed; serving without a fresh staple',
      );
      return true;
    }
    this.#log.debug(fields, 'OCSP fetch failed again');
    return false;
  }

  /**
   * A leaf's fetch is done (`stapled` or not); its first one counts in the round. The round's last tells the round in
   * one info line: how many certificates were stapled, and how many were not (each failure told as above).
   */
  #firstFetched(key: string, stapled: boolean): void {
    const round = this.#firstRound;
    if (!round.pending.delete(key)) return;
    if (stapled) round.stapled++;
    else round.failed++;
    this.#endRound();
  }

  #endRound(): void {
    const round = this.#firstRound;
    if (round.pending.size > 0 || round.stapled + round.failed === 0) return;
    this.#log.info({ certificates: round.stapled, ...(round.failed === 0 ? {} : { failed: round.failed }) }, 'OCSP staples fetched');
    round.stapled = 0;
    round.failed = 0;
  }

  /** `url` gave a signed answer: an outage of it, if one was told, is over, and said so once. */
  #responderAnswered(url: string): void {
    const outage = this.#outages.get(url);
    if (outage === undefined) return;
    this.#outages.delete(url);
    this.#log.info({ responder: url, failed: outage.failed.size, failingForMs: Date.now() - outage.since }, 'OCSP responder answering again');
  }

  /** Runs `fetch` once fewer than FETCHES_PER_RESPONDER fetches to `url`'s origin run. */
  async #inTurn<T>(url: string, fetch: () => Promise<T> | undefined): Promise<T | undefined> {
    const origin = new URL(url).origin;
    let responder = this.#responders.get(origin);
    if (responder === undefined) {
      responder = { running: 0, waiting: [] };
      this.#responders.set(origin, responder);
    }
    // A fetch that ends hands its turn to the first waiting, still counted in `running`: none can slip in between.
    if (responder.running >= FETCHES_PER_RESPONDER) await new Promise<void>((resolve) => responder.waiting.push(resolve));
    else responder.running++;
    try {
      return await fetch();
    } finally {
      const next = responder.waiting.shift();
      if (next !== undefined) next();
      else if (--responder.running === 0) this.#responders.delete(origin);
    }
  }

  untrack(certificate: ServedCertificate): void {
    const key = leafKey(Buffer.from(certificate.leaf.rawData));
    const loop = this.#loops.get(key);
    loop?.names.delete(certificate.name);
    const [other] = loop?.names ?? [];
    if (loop !== undefined && other !== undefined) {
      loop.name = other;
      return;
    }
    clearTimeout(loop?.timer);
    this.#loops.delete(key);
    this.#staples.delete(key);
    if (loop === undefined) return;
    // Untracked before its first fetch was done: not in the round, which may be over without it.
    if (this.#firstRound.pending.delete(key)) this.#endRound();
    const served = this.#served.get(loop.url);
    served?.delete(key);
    this.#outages.get(loop.url)?.failed.delete(key);
    if (served?.size === 0) {
      this.#served.delete(loop.url);
      this.#outages.delete(loop.url);
    }
  }

  stop(): void {
    this.#stopped.abort();
    for (const loop of this.#loops.values()) clearTimeout(loop.timer);
    this.#loops.clear();
    this.#served.clear();
    this.#outages.clear();
    this.#firstRound.pending.clear();
  }
}

function leafKey(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex');
}

async function fetchOcsp(url: string, body: Buffer, stopped: AbortSignal): Promise<Buffer> {
  // One deadline for the whole fetch: undici's body timeout is between chunks, and a trickle would hold the loop.
  const signal = AbortSignal.any([AbortSignal.timeout(FETCH_TIMEOUT_MS * 2), stopped]);
  const response = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/ocsp-request', accept: 'application/ocsp-response' },
    body,
    headersTimeout: FETCH_TIMEOUT_MS,
    bodyTimeout: FETCH_TIMEOUT_MS,
    signal,
  });
  // Read up to the cap and no further: the responder is any peer on a plain-HTTP path, and a body read whole
  // before its size is looked at could be as large as it likes (the worker's memory).
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of response.body as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length > MAX_RESPONSE_BYTES) {
      response.body.destroy();
      throw new Error(`responder sent more than ${MAX_RESPONSE_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  const answer = Buffer.concat(chunks);
  if (response.statusCode !== 200) throw new Error(`responder answered HTTP ${response.statusCode}`);
  if (answer.length === 0) throw new Error('responder sent 0 bytes');
  return answer;
}
