/**
 * One certificate from the CA, end to end, without a private key leaving the
 * token: the account key signs every request through the key server (jws.ts),
 * the certificate key is generated in the token (token-keys.ts), the CSR is
 * signed through the key server (shared/csr.ts), the HTTP-01 answers or the
 * TLS-ALPN-01 certificates (signed through the key server with the order's
 * certificate key, shared/alpn-cert.ts) are published to every worker
 * (challenges.ts), and the chain goes into the
 * certificate store through the same validation and swap as any replacement
 * (the `store` function the cluster passes: ServingSource.putCertificate and
 * a reload).
 *
 * Runs in the proxy's cluster primary, which owns the store and the reload
 * path. In a fleet the account is the fleet's (shared-state.ts), registered
 * once under its lock; an order's chain is written under the name's
 * issuance lock, its fence checked in the write (issuance-locks.ts); an
 * order whose lock was lost meanwhile is abandoned before it is finalized,
 * and before its chain is stored (store/lock.ts, `lost`). An order that
 * fails before its authorizations are done deactivates those it left
 * pending (deactivatePending). An order the CA answers already valid (an
 * earlier one reused) is taken only for the key it certifies (reusedOrder).
 * Each order's connections to the CA close when it ends.
 *
 * Costs per certificate: one key generation (a child process), about ten
 * signed requests (one key-server sign each) and the CA's validation. The
 * new key is generated when the order first needs it (the CSR, once every
 * authorization is valid, or a TLS-ALPN-01 challenge certificate), not
 * before the order is placed: an order refused or failing HTTP-01
 * validation (a name not yet pointed here, the CA's rate limits) makes and
 * deletes no key in the token.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import type { AcmeConfig } from '../../config/proxy-schema.js';
import { readSettingFile } from '../../config/setting-file.js';
import type { KeyserverClient } from '../../keyserver/client/client.js';
import { createAlpnChallengeCertWith } from '../../keyserver/shared/alpn-cert.js';
import { type CsrSigner, csrKeyOfSpki, createCsrWith } from '../../keyserver/shared/csr.js';
import type { Logger } from '../../keyserver/shared/log.js';
import { Algorithm } from '../../keyserver/protocol/constants.js';
import { AcmeClient, type AcmeAuthorization, type AcmeOrder } from './client.js';
import type { ChallengeEntry, ChallengePublisher } from './challenges.js';
import { AcmeError } from './errors.js';
import { type IssuanceLocks, localLocks } from './issuance-locks.js';
import { ecdsaDerToRaw, keyserverSigner, thumbprint } from './jws.js';
import type { AccountState, IssuerStateStore } from './state.js';
import type { HeldLock } from '../store/lock.js';
import { type TokenKeys, waitForKey } from './token-keys.js';

/** Far past a CA bundle: the system's whole trust store is some 200 KB. */
const MAX_CA_BUNDLE_BYTES = 4 * 1024 * 1024;
/** Far past an EAB key (a base64url HMAC key of some 64 bytes). */
const MAX_EAB_BYTES = 64 * 1024;

/**
 * The text of a file an ACME setting names, read on every order in the primary: without blocking, and only a regular
 * file within `maxBytes` (config/setting-file.ts), else an AcmeError that fails the order naming the file and the
 * setting. A FIFO there (open(2) waiting for a writer) or a link to /dev/zero held the primary's event loop, with
 * every worker's reload, admin answer and renewal. Never quotes the content: the EAB key is a secret.
 */
function readAcmeFile(file: string, setting: string, maxBytes: number): string {
  try {
    return readSettingFile(file, maxBytes).toString('utf8');
  } catch (err) {
    throw new AcmeError(`cannot read ${file} (${setting}): ${(err as Error).message}`, { cause: err });
  }
}

/** acme.caBundle's PEM, or undefined for the system's trust store. */
export function readCaBundle(config: Pick<AcmeConfig, 'caBundle'>): string | undefined {
  return config.caBundle === null ? undefined : readAcmeFile(config.caBundle, 'acme.caBundle', MAX_CA_BUNDLE_BYTES);
}

/** Stores an issued chain for entry `name` (IssuerDeps.store, AcmeDeps.store). */
export type StoreChain = (
  name: string,
  chainPem: string,
  keyId: string,
  domains: readonly string[],
  lock?: HeldLock,
  options?: { readonly newEntry?: boolean },
) => Promise<void>;

export interface IssuerDeps {
  readonly config: AcmeConfig;
  readonly state: IssuerStateStore;
  readonly keys: TokenKeys;
  /** A fresh connection to the key server (closed by the issuer). */
  readonly keyserver: () => Promise<KeyserverClient>;
  readonly challenges: ChallengePublisher;
  /**
   * Validates and swaps in the chain for store entry `name`, pinned to `keyId`, fenced by `lock` in a fleet; rejects (store
   * unchanged) when refused. `newEntry`: written only as a new entry, refused when the store has one of that name.
   */
  readonly store: StoreChain;
  /**
   * Throws when `store` would refuse entry `name` whatever its chain (another tool's link, KEYEDGE_ERR_CERT_LINKED):
   * asked before a key is made or an order placed, so a renewal the store cannot take spends none of the CA's limits.
   */
  readonly assertStorable?: (name: string) => void;
  /** The fleet's locks (the account's registration); default: one node alone. */
  readonly locks?: IssuanceLocks;
  readonly log: Logger;
  /** Counts every order sent to the CA, by outcome. */
  readonly onOrder?: (result: 'ok' | 'failed') => void;
}

export interface IssueRequest {
  readonly name: string;
  readonly domains: readonly string[];
  /** RFC 9773 §5: the ARI certID of the certificate this one replaces. */
  readonly replaces?: string | undefined;
  /** Sign with this existing key instead of making a new one. */
  readonly keyId?: string | undefined;
  /** The fleet's issuance lock for this name, held by the caller: the chain is written only while it is. */
  readonly lock?: HeldLock | undefined;
  /**
   * An on-demand entry's first certificate: stored only as a new store entry. The gate and issue() look for an entry of
   * that name before the order, but the operator (or a renewal tool) may write one while it runs: its chain replaced it.
   */
  readonly newEntry?: boolean | undefined;
}

export interface Issued {
  readonly keyId: string;
  readonly chainPem: string;
  readonly newKey: boolean;
}

export class AcmeIssuer {
  readonly #deps: IssuerDeps;

  constructor(deps: IssuerDeps) {
    this.#deps = deps;
  }

  async issue(request: IssueRequest): Promise<Issued> {
    const { config, keys, log } = this.#deps;
    // Before the key server is asked or an order counted: nothing is sent to the CA.
    this.#deps.assertStorable?.(request.name);
    const keyserver = await this.#deps.keyserver();
    let made: string | undefined;
    let storing = false;
    let acme: AcmeClient | undefined;
    try {
      acme = await this.#session(keyserver);
      let certificateKey: () => Promise<CertificateKey>;
      if (request.keyId === undefined) {
        // Made when the order first needs it (above); `made` from then on, so a failure after deletes it.
        certificateKey = once(async () => {
          const label = `acme-${request.name.slice(0, 30)}-${stamp()}`;
          const keyId = (await keys.generate(config.keyType, label)).keyId;
          made = keyId;
          const spki = await waitForKey(keyserver, keyId);
          log.info({ certificate: request.name, keyId, label }, 'certificate key generated in the token');
          return { keyId, spki };
        });
      } else {
        // A key asked for is checked before the order is placed: one the key server lacks spends none of the CA's limits.
        const given = { keyId: request.keyId, spki: await waitForKey(keyserver, request.keyId) };
        certificateKey = async () => given;
      }
      const chainPem = await this.#order(acme, keyserver, request, certificateKey);
      // Its keep-alive sockets to the CA are of no further use: left to the CA's keep-alive hint, each order kept some open.
      acme.close();
      const { keyId } = await certificateKey();
      // The name's lock lost meanwhile (its lease ended): another node may be ordering it; its result is the one to keep.
      request.lock?.lost.throwIfAborted();
      storing = true;
      await this.#deps.store(request.name, chainPem, keyId, request.domains, request.lock, request.newEntry === true ? { newEntry: true } : undefined);
      this.#deps.onOrder?.('ok');
      return { keyId, chainPem, newKey: made !== undefined };
    } catch (err) {
      this.#deps.onOrder?.('failed');
      if (made !== undefined && storing) {
        // The store may hold and serve the chain already (stored, then not applied by every worker in time): deleting its
        // key at once took it from under the certificate serving, and every handshake for the name failed. It is retired
        // instead, deleted after the grace period only if nothing serves it then (housekeeping.ts).
        const deleteAfter = new Date(Date.now() + config.renewal.keyGraceSeconds * 1000).toISOString();
        this.#deps.state.state.retiredKeys.push({ keyId: made, deleteAfter });
        // Not under the name's lock: the record is of a key this node made, kept even when the lock was lost (the store then
        // refused the chain, and nothing else would ever delete the key); the list's revision is still compared (shared-state.ts).
        await Promise.resolve()
          .then(() => this.#deps.state.save())
          .catch((e: unknown) => log.warn({ keyId: made, err: e }, 'could not record a certificate key to delete later'));
      } else if (made !== undefined) {
        // A key no certificate uses is of no use: it goes at once.
        await keys.remove(made).catch((e: unknown) => log.warn({ keyId: made, err: e }, 'could not delete an unused certificate key'));
      }
      throw err;
    } finally {
      acme?.close();
      keyserver.close();
    }
  }

  /** An ACME client on the account, registering it (key made in the token) the first time, once for the fleet. */
  async #session(keyserver: KeyserverClient): Promise<AcmeClient> {
    const { config, state, keys, log } = this.#deps;
    const existing = this.#account();
    if (existing !== undefined) return (await this.#client(keyserver, existing.keyId)).client;
    const held = await (this.#deps.locks ?? localLocks).hold('acme/account', config.timeoutMs * 6, async (lock) => {
      // Another node may have registered it while this one waited for the lock.
      const registered = this.#account();
      if (registered !== undefined) return (await this.#client(keyserver, registered.keyId)).client;
      const keyId = (await keys.generate('ec-p256', `acme-account-${stamp()}`)).keyId;
      const { client, url } = await this.#client(keyserver, keyId);
      state.state.account = { directory: config.directory, keyId, url };
      await Promise.resolve()
        .then(() => state.save(lock))
        .catch((err: unknown) => {
          client.close();
          throw err;
        });
      log.info({ keyId, account: url }, 'ACME account registered; its key is in the token');
      return client;
    });
    if (held === undefined) throw new AcmeError('another node of the fleet is still registering the ACME account', {});
    return held.value;
  }

  #account(): AccountState | undefined {
    const account = this.#deps.state.state.account;
    return account?.directory === this.#deps.config.directory ? account : undefined;
  }

  async #client(keyserver: KeyserverClient, keyId: string): Promise<{ client: AcmeClient; url: string }> {
    const { config } = this.#deps;
    const ca = readCaBundle(config);
    const spki = await waitForKey(keyserver, keyId);
    const client = new AcmeClient({
      directoryUrl: config.directory,
      signer: keyserverSigner(async () => keyserver, keyId, spki),
      timeoutMs: config.timeoutMs,
      ...(ca === undefined ? {} : { ca }),
    });
    const eab =
      config.eab === null ? undefined : { kid: config.eab.kid, hmacKey: readAcmeFile(config.eab.hmacKeyFile, 'acme.eab.hmacKeyFile', MAX_EAB_BYTES).trim() };
    // newAccount with an existing key answers 200 and the same URL (RFC 8555 §7.3.1): cheap, and it checks the account still exists.
    const url = await client.account({ contact: config.contact, eab }).catch((err: unknown) => {
      client.close();
      throw err;
    });
    return { client, url };
  }

  async #order(acme: AcmeClient, keyserver: KeyserverClient, request: IssueRequest, certificateKey: () => Promise<CertificateKey>): Promise<string> {
    const { config, challenges, log } = this.#deps;
    const deadline = Date.now() + config.orderTimeoutSeconds * 1000;
    const { url, order } = await acme.newOrder(request.domains, {
      ...(request.replaces === undefined ? {} : { replaces: request.replaces }),
      ...(config.profile === null ? {} : { profile: config.profile }),
    });
    log.info({ certificate: request.name, domains: request.domains, order: url }, 'ACME order created');
    // RFC 8555 §7.1.3: an authorization per identifier ordered. More is no order for these names: a CA's list of thousands
    // was fetched one by one (each a signature of the key server) and, the order failed, all deactivated at once.
    if (order.authorizations.length > request.domains.length) {
      throw new AcmeError(
        `the CA's order ${url} has ${order.authorizations.length} authorizations for the ${request.domains.length} names ordered (RFC 8555 §7.1.3): not an order for them`,
        {},
      );
    }
    /** The identifiers ordered, as an authorization names them (RFC 8555 §7.1.4: a wildcard's without `*.`, `wildcard` true). */
    const ordered = new Set(request.domains.map((d) => d.toLowerCase()));
    const published: string[] = [];
    // The certificate key signs the CSR and, for TLS-ALPN-01, the challenge certificates: no other key is made.
    const signer: CsrSigner = async (hash, digest) => {
      const { keyId, spki } = await certificateKey();
      const algorithm = csrKeyOfSpki(spki).kind === 'rsa' ? Algorithm.RSA_PKCS1_SHA256 : hash === 'sha384' ? Algorithm.ECDSA_SHA384 : Algorithm.ECDSA_SHA256;
      const signature = await keyserver.sign(keyId, algorithm, digest);
      return algorithm === Algorithm.RSA_PKCS1_SHA256 ? signature : ecdsaDerToRaw(signature, hash === 'sha384' ? 48 : 32);
    };
    /** The authorizations known valid or failed: the others are left pending when the order fails. */
    const settled = new Set<string>();
    try {
      for (const authzUrl of order.authorizations) {
        const authz = (await acme.authorization(authzUrl)).body;
        // Only a name ordered: for another, its challenge went on every worker's board (an HTTP-01 answer for the CA's Host,
        // a TLS-ALPN-01 certificate signed with this order's key) at a buggy or hostile CA's word.
        const identifier = `${authz.wildcard === true ? '*.' : ''}${authz.identifier.value.toLowerCase()}`;
        if (authz.identifier.type !== 'dns' || !ordered.has(identifier)) {
          throw new AcmeError(
            `the CA's authorization ${authzUrl} is for ${authz.identifier.type} ${authz.identifier.value}, not a name ordered (${request.domains.join(', ')}): no challenge answered for it`,
            {},
          );
        }
        if (authz.status === 'valid') {
          settled.add(authzUrl);
          continue;
        }
        // The first configured type the CA offers (TLS-ALPN-01 is never offered for a wildcard, RFC 8737 §3).
        const type = config.challenges.find((t) => authz.challenges.some((c) => c.type === t));
        const challenge = authz.challenges.find((c) => c.type === type);
        if (type === undefined || challenge === undefined)
          throw new AcmeError(`no ${config.challenges.join(' or ')} challenge offered for ${authz.identifier.value}`, {});
        const name = authz.identifier.value.toLowerCase();
        const keyAuthorization = `${challenge.token}.${thumbprint(acme.jwk)}`;
        let entry: ChallengeEntry;
        if (type === 'http-01') {
          entry = { kind: 'http-01', token: challenge.token, name, keyAuthorization };
        } else {
          const { keyId, spki } = await certificateKey();
          const certificate = await createAlpnChallengeCertWith(csrKeyOfSpki(spki), name, keyAuthorization, signer);
          entry = { kind: 'tls-alpn-01', token: challenge.token, name, certificatePem: certificate.toString('pem'), keyId, spki: spki.toString('base64') };
        }
        await challenges.add(entry);
        published.push(challenge.token);
        await acme.respond(challenge.url);
        const done = await poll(
          () => acme.authorization(authzUrl),
          authzUrl,
          deadline,
          (a: AcmeAuthorization) => a.status !== 'pending',
        );
        if (done.status !== 'pending') settled.add(authzUrl);
        if (done.status !== 'valid') {
          const why = done.challenges.find((c) => c.error !== undefined)?.error;
          throw new AcmeError(
            `validation of ${authz.identifier.value} failed: ${why?.type?.replace('urn:ietf:params:acme:error:', '') ?? done.status} ${why?.detail ?? ''}`.trim(),
            {
              problem: why?.type?.replace('urn:ietf:params:acme:error:', '') ?? 'unauthorized',
            },
          );
        }
      }
    } catch (err) {
      await deactivatePending(acme, order.authorizations, settled, request.name, log);
      throw err;
    } finally {
      for (const token of published) await challenges.remove(token);
    }
    const ready = await poll(
      () => acme.order(url),
      url,
      deadline,
      (o: AcmeOrder) => o.status !== 'pending',
    );
    if (ready.status === 'valid') return reusedOrder(acme, url, ready, request, certificateKey, log);
    if (ready.status !== 'ready') throw new AcmeError(`order ${url} is ${ready.status}`, {});
    const csr = await createCsrWith(csrKeyOfSpki((await certificateKey()).spki), request.domains, signer);
    // Finalizing is what makes the CA issue: under a lost lock, a second certificate for the name (and its rate limits).
    request.lock?.lost.throwIfAborted();
    const finalized = await acme.finalize(ready, Buffer.from(csr.rawData));
    const valid =
      finalized.status === 'valid'
        ? finalized
        : await poll(
            () => acme.order(url),
            url,
            deadline,
            (o: AcmeOrder) => o.status !== 'processing',
          );
    if (valid.status !== 'valid' || valid.certificate === undefined) throw new AcmeError(`order ${url} ended ${valid.status}`, {});
    return acme.certificate(valid.certificate);
  }
}

/**
 * An order the CA answered already valid: RFC 8555 §7.4 lets a CA hand back an existing order for the same identifiers,
 * finalized earlier with some CSR. Its certificate is this order's only when its public key is the one this order
 * signs with (the entry's key, `keyId` given): then it is taken, as the CA meant. Otherwise it certifies a key this
 * order does not hold (an earlier order's key, maybe deleted since): the store refused it as a key mismatch, in words
 * that did not say why. It fails here, naming the reused order, before a key is made for it (a new key could never be
 * the one in it). Nothing is finalized: a valid order cannot be (orderNotReady).
 */
async function reusedOrder(
  acme: AcmeClient,
  url: string,
  order: AcmeOrder,
  request: IssueRequest,
  certificateKey: () => Promise<CertificateKey>,
  log: Logger,
): Promise<string> {
  const refused = (why: string): AcmeError =>
    new AcmeError(
      `the CA answered order ${url} already valid (an earlier order for ${request.domains.join(', ')} reused, RFC 8555 §7.4) and ${why}: not stored; ` +
        'the CA lets a new order be placed once that one expires, or for another list of names',
      { problem: 'orderReused' },
    );
  if (request.keyId === undefined) throw refused('its certificate is for a key made earlier, not for a new key');
  if (order.certificate === undefined) throw refused('without its certificate URL');
  const chainPem = await acme.certificate(order.certificate);
  const leaf = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(chainPem)?.[0];
  let spki: Buffer | undefined;
  try {
    spki = leaf === undefined ? undefined : new X509Certificate(leaf).publicKey.export({ type: 'spki', format: 'der' });
  } catch {
    spki = undefined;
  }
  if (spki === undefined) throw refused('its certificate URL answered no certificate');
  if (!spki.equals((await certificateKey()).spki)) throw refused(`its certificate is for another key than ${request.keyId}, the one this order signs with`);
  log.info({ certificate: request.name, order: url }, 'the CA answered an earlier valid order; its certificate is for this key and is taken');
  return chainPem;
}

/**
 * RFC 8555 §7.5.2: the authorizations of a failed order not known valid or failed are deactivated, best effort, at
 * once. Left pending, each counted against the CA's pending authorizations per account (Let's Encrypt: 300) until it
 * expired (its 7 days there): an order for several names whose first validation failed left the others pending, and the
 * loop's retries of it, or an operator's, used the account's allowance up; every order was refused then.
 */
async function deactivatePending(acme: AcmeClient, authorizations: readonly string[], settled: ReadonlySet<string>, name: string, log: Logger): Promise<void> {
  const pending = authorizations.filter((url) => !settled.has(url));
  if (pending.length === 0) return;
  const results = await Promise.allSettled(pending.map((url) => acme.deactivate(url)));
  const failed = results.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
  if (failed.length > 0) log.warn({ certificate: name, failed }, 'could not deactivate the pending authorizations of a failed ACME order');
  else log.info({ certificate: name, authorizations: pending.length }, 'pending authorizations of a failed ACME order deactivated');
}

/** `get` (a POST-as-GET of `url`) until `done`, at a gentle back-off or the CA's Retry-After when longer, until the order's deadline. */
async function poll<T>(
  get: () => Promise<{ body: T; retryAfterMs: number | undefined }>,
  url: string,
  deadline: number,
  done: (body: T) => boolean,
): Promise<T> {
  for (let wait = 250; ; wait = Math.min(wait * 2, 5_000)) {
    const answer = await get();
    if (done(answer.body)) return answer.body;
    if (Date.now() > deadline) throw new AcmeError(`${url} still not done at the order's deadline`, {});
    // The CA's Retry-After may lengthen the wait, never shorten it: `Retry-After: 0` (or a past date) was a tight loop of signed polls.
    await new Promise((resolve) => setTimeout(resolve, Math.min(Math.max(answer.retryAfterMs ?? 0, wait), 10_000)));
  }
}

/** A label suffix that sorts by time and never repeats (token labels are unique). */
function stamp(): string {
  return `${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '')}-${randomBytes(3).toString('hex')}`;
}

/** The order's certificate key: its id in the token and its public key (SPKI DER). */
interface CertificateKey {
  readonly keyId: string;
  readonly spki: Buffer;
}

/** `make` run at the first call only; every call gets its promise. */
function once<T>(make: () => Promise<T>): () => Promise<T> {
  let made: Promise<T> | undefined;
  return () => (made ??= make());
}
