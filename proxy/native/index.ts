/**
 * The keyless bridge, seen from TypeScript.
 *
 * The native addon (src/, built by node-gyp into build/Release/) registers an
 * OpenSSL 3 provider in node's own OpenSSL. A key handed to
 * `tls.createSecureContext({ key: keylessKeyPem(keyId, spki), cert })` is then
 * a key whose private half is at the key server: each handshake signature is
 * one synchronous RPC (on the main thread, bounded by `timeoutMs`).
 *
 *   init({ socketPath: '/run/keyedge/keyserver.sock' });
 *   const ctx = tls.createSecureContext({ key: keylessKeyPem(keyId, spki), cert });
 *
 * Such a key must never reach node:crypto's KeyObject APIs: node (20, 22; 24 for EC) aborts the
 * process on `createPrivateKey(pem).asymmetricKeyDetails` (and JWK export) of
 * a key it cannot read as a legacy RSA/EC structure. Anything that turns
 * configured key material into a KeyObject goes through `loadPrivateKey` or
 * calls `assertNotKeyless` first.
 */
import { createPrivateKey, type KeyObject, type PrivateKeyInput } from 'node:crypto';
import { createRequire } from 'node:module';
import { KeyedgeError } from '../../keyserver/shared/errors.js';
import { keyIdOf } from '../../keyserver/shared/key-id.js';
import { builtAddon } from '../../keyserver/shared/addon-path.js';
import { isKeylessPem, KEYLESS_PEM_LABEL } from '../../keyserver/shared/keyless-pem.js';

export { isKeylessPem, KEYLESS_PEM_LABEL };
const PEM_VERSION = 0x01;

export interface KeylessTlsEndpoint {
  readonly host: string;
  readonly port: number;
  /** PEM text (not paths): the CA of the key server's certificate, our client certificate (+ chain) and key. */
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
  /** Name checked in the key server's certificate; default: host (an IP host is matched against IP SANs). */
  readonly servername?: string;
}

export interface KeylessServer {
  /** Its label in metrics: 1-32 of a-z 0-9 _ - (default: its index). */
  readonly name?: string;
  /** The key server's unix socket. Exactly one of socketPath and tls. */
  readonly socketPath?: string;
  /** TCP + mutual TLS 1.3. The host name is resolved once, here; a connect tries each of its addresses in turn. */
  readonly tls?: KeylessTlsEndpoint;
}

export interface KeylessInitOptions {
  /** One key server: its unix socket (exactly one of socketPath, tls and servers). */
  readonly socketPath?: string;
  /** One key server over TCP + mutual TLS 1.3. */
  readonly tls?: KeylessTlsEndpoint;
  /** A pool of 1 to 16 key servers: failover within the deadline, a breaker each (src/rpc.h). */
  readonly servers?: readonly KeylessServer[];
  /** Deadline of one signature, connects and failovers included (default 250 ms, 1..60000). */
  readonly timeoutMs?: number;
  /** After a connect failure, timeout, draining answer or (in a pool) any failed sign but an ERROR about the request or the key (SIGN_FAILED counts as the key's), a key server is skipped this long (default 200 ms, 0 = off). */
  readonly breakerMs?: number;
  /** A key server marked down stays out of the choice until `setHealth(…, true)` (health checks run). */
  readonly healthChecked?: boolean;
}

/** One key server of the pool, as the bridge sees it. */
export interface KeyserverPoolStats {
  /** Its configured name, or its index. */
  readonly name: string;
  /** up; cooling: breaker open after a failure; down: out until a health check answers. */
  readonly state: 'up' | 'cooling' | 'down';
  /** Signatures it returned. */
  readonly signs: number;
  /** Failed attempts on it that were retried on another key server. */
  readonly failovers: number;
  /** Times a health check brought it back. */
  readonly rejoins: number;
  /** Failed attempts on it, by cause. */
  readonly failures: { readonly connect: number; readonly timeout: number; readonly remote: number; readonly protocol: number };
  /** Time spent in its successful signs. */
  readonly signSeconds: number;
  /** EWMA of its sign latency, what the choice compares (0 until measured). */
  readonly latencyEwmaMs: number;
}

export interface KeylessStats {
  /** Signatures returned (each one a handshake that got its signature). */
  readonly signs: number;
  readonly failures: {
    /** Could not connect, or the connection broke mid-request. */
    readonly connect: number;
    readonly timeout: number;
    /** The key server answered ERROR (unknown key, not authorised, ...). */
    readonly remote: number;
    /** A malformed answer. */
    readonly protocol: number;
    /** Failed at once because every key server's circuit breaker was open. */
    readonly breaker: number;
  };
  /** The last failure, for humans (never key material; key ids are shortened). */
  readonly lastError: string;
  /** Attempts that failed on one key server and were retried on another. Absent from a source with no key server. */
  readonly failovers?: number;
  /** Per key server, in configured order. Absent from a source with no key server. */
  readonly servers?: readonly KeyserverPoolStats[];
}

/** The native stats, with the configuration generation setHealth needs. */
interface NativeStats extends KeylessStats {
  readonly generation: number;
}

/** The name proxy/keyless/bridge.ts uses. */
export type BridgeStats = KeylessStats;

interface NativeBinding {
  init(options: KeylessInitOptions): void;
  stats(): NativeStats;
  setHealth(generation: number, index: number, up: boolean): boolean;
  setTls(generation: number, index: number, material: KeylessTlsMaterial): boolean;
  readonly providerName: string;
}

let binding: NativeBinding | undefined;

/** The built addon's path; KEYEDGE_ERR_SETUP when it was never built. */
export function addonPath(): string {
  return builtAddon('keyless_bridge.node', 'the keyless bridge');
}

function loadBinding(): NativeBinding {
  binding ??= createRequire(import.meta.url)(addonPath()) as NativeBinding;
  return binding;
}

function wrapNative<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    throw new KeyedgeError(code === 'KEYEDGE_ERR_SETUP' ? 'KEYEDGE_ERR_SETUP' : 'KEYEDGE_ERR_CONFIG', `keyless bridge ${what}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * Registers the provider in node's OpenSSL (once per process) and points it at
 * the key servers (every call; open connections are replaced). Returns the
 * configuration's generation, for `setHealth`.
 */
export function init(options: KeylessInitOptions): number {
  const native = loadBinding();
  wrapNative('init', () => native.init(options));
  return native.stats().generation;
}

export function stats(): KeylessStats {
  return loadBinding().stats();
}

/**
 * A health check's verdict on key server `index` of the configuration `generation`
 * (from init): up brings a down server back into the choice, down keeps it out.
 * False when a later init() replaced that configuration (nothing changed).
 */
export function setHealth(generation: number, index: number, up: boolean): boolean {
  return loadBinding().setHealth(generation, index, up);
}

/** A TLS key server's CA, our client certificate (+ chain) and key, as PEM text. */
export type KeylessTlsMaterial = Pick<KeylessTlsEndpoint, 'caPem' | 'certPem' | 'keyPem'>;

/**
 * New CA, client certificate and key for TLS key server `index` of the configuration `generation` (from init), for
 * its next connects (a renewed client certificate): its open connection is closed, so the next sign connects with
 * them. Checked as init()
 * checks them: a refusal throws KEYEDGE_ERR_CONFIG and changes nothing. False when a later init() replaced that
 * configuration or the server is not a TLS one (nothing changed).
 */
export function setTls(generation: number, index: number, material: KeylessTlsMaterial): boolean {
  const native = loadBinding();
  return wrapNative('setTls', () => native.setTls(generation, index, { caPem: material.caPem, certPem: material.certPem, keyPem: material.keyPem }));
}

/**
 * The PEM block that stands for a keyless key in `tls.createSecureContext({ key })`:
 * label KEYEDGE KEYLESS KEY, body = 0x01 | key id (32 bytes) | SPKI DER.
 * Throws KEYEDGE_ERR_KEY_INPUT when keyId is not the SHA-256 of spki.
 */
export function keylessKeyPem(keyId: Buffer | string, spki: Buffer): string {
  const id = typeof keyId === 'string' ? Buffer.from(keyId, 'hex') : keyId;
  if (id.length !== 32 || !id.equals(Buffer.from(keyIdOf(spki), 'hex'))) {
    throw new KeyedgeError('KEYEDGE_ERR_KEY_INPUT', `key id ${id.toString('hex')} is not the SHA-256 of the given public key`);
  }
  const body = Buffer.concat([Buffer.from([PEM_VERSION]), id, spki]).toString('base64');
  const lines = body.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${KEYLESS_PEM_LABEL}-----\n${lines.join('\n')}\n-----END ${KEYLESS_PEM_LABEL}-----\n`;
}

/**
 * Throws KEYEDGE_ERR_KEY_UNSUPPORTED for a keyless key: node:crypto's KeyObject
 * APIs abort the process on one (asymmetricKeyDetails, JWK export).
 */
export function assertNotKeyless(key: string | Buffer, where = 'this key'): void {
  if (isKeylessPem(key)) {
    throw new KeyedgeError(
      'KEYEDGE_ERR_KEY_UNSUPPORTED',
      `${where} is a keyless key (${KEYLESS_PEM_LABEL}): it can only be used as tls.createSecureContext({ key }), never as a node:crypto KeyObject`,
    );
  }
}

/** createPrivateKey, refusing keyless keys first. */
export function loadPrivateKey(key: string | Buffer | PrivateKeyInput, where?: string): KeyObject {
  const material = typeof key === 'string' || Buffer.isBuffer(key) ? key : key.key;
  if (typeof material === 'string' || Buffer.isBuffer(material)) assertNotKeyless(material, where);
  return createPrivateKey(key);
}
