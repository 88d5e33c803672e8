/**
 * Session-ticket keys: made in memory by the cluster primary, handed to every
 * worker over IPC, rotated on a schedule, never written anywhere (no file, no
 * log, no metric). Sharing the keys lets a ticket issued by one worker resume
 * on another, so a returning client skips the key server (RFC 8446 §2.2, RFC 5077).
 *
 * A ring holds a few keys, newest first: the newest encrypts every ticket,
 * the previous ones still decrypt, so a rotation costs no full handshake for a
 * ticket issued shortly before it. A ticket under a key that left the ring is
 * not recognised and that client does one full handshake.
 *
 * Every ticket presented under a key of the ring is renewed: the server sends a
 * fresh ticket (under the newest key) on the resumed connection too. Node's own
 * ticket handling never renews, so a TLS 1.3 client that uses each ticket once
 * (RFC 8446 §C.4; BoringSSL/Chrome, OpenSSL's session cache) would get no new
 * ticket and do a full handshake, a key-server sign, every second visit.
 * openssl s_server and nginx renew as we do.
 *
 * The hook is not public Node API: a secure context's native `context` has
 * `enableTicketKeyCallback()`, which installs OpenSSL's ticket-key callback
 * (SSL_CTX_set_tlsext_ticket_key_cb(3)) calling `onticketkeycallback(name, iv,
 * encrypt)` (node src/crypto/crypto_context.cc, TicketKeyCallback; used by
 * Node's test-https-resume-after-renew). Its contract: return an array
 * [result, hmacKey, aesKey] to decrypt, [1, hmacKey, aesKey, name, iv] to
 * encrypt; result 0: unknown key (full handshake), 1: valid, 2: valid, renew;
 * below 0: the handshake fails. The AES key must be 16 bytes (AES-128-CBC,
 * HMAC-SHA256) and, even for 0, both keys must be buffers, or the process
 * aborts. test/proxy-tickets.test.ts pins it on the Node in use.
 *
 * Concurrency: one ring per process; the callback runs synchronously in a handshake.
 */
import { randomBytes, randomFillSync } from 'node:crypto';
import type tls from 'node:tls';

/** Name (16 bytes), HMAC key (16) and AES-128 key (16): the layout of Node's `ticketKeys`. */
export const TICKET_KEY_BYTES = 48;
const PART = 16;
/**
 * Keys a ring holds: the newest and two previous. A ticket lives 2 h
 * (OpenSSL's default session timeout, sent as its lifetime, RFC 8446 §4.6.1),
 * less than one rotation period by default (12 h), so one previous key covers
 * every live ticket; two give room for keys rotated in quick succession (the
 * admin endpoint, or several nodes later). With a rotation period under 1 h,
 * a ticket stays resumable for about three periods, no longer.
 */
export const TICKET_KEYS_KEPT = 3;
/** Bound on the keys a worker accepts in one message. */
const MAX_TICKET_KEYS = 16;

/** OpenSSL's ticket-key callback results (SSL_CTX_set_tlsext_ticket_key_cb(3)). */
const TICKET_UNKNOWN = 0;
const TICKET_ENCRYPTED = 1;
const TICKET_RENEW = 2;
const TICKET_FAILED = -1;
/** Handed back with TICKET_UNKNOWN, where Node still requires two 16-byte buffers; OpenSSL never uses them. */
const UNUSED = Buffer.alloc(PART);

/**
 * Ticket IVs (RFC 5077 §4: AES-CBC, a fresh random IV per ticket) are cut from
 * a pool filled by the CSPRNG IV_POOL_BYTES at a time: one call into OpenSSL
 * per 256 tickets instead of one per ticket (a TLS 1.3 full handshake sends
 * two). Each IV is handed out once; OpenSSL copies it before the callback returns.
 */
const IV_POOL_BYTES = 4096;
let ivPool = Buffer.alloc(0);
let ivOffset = 0;

function nextIv(): Buffer {
  if (ivOffset + PART > ivPool.length) {
    ivPool = randomFillSync(Buffer.allocUnsafe(IV_POOL_BYTES));
    ivOffset = 0;
  }
  ivOffset += PART;
  return ivPool.subarray(ivOffset - PART, ivOffset);
}

export function newTicketKey(): Buffer {
  return randomBytes(TICKET_KEY_BYTES);
}

interface TicketKey {
  readonly name: Buffer;
  readonly hmac: Buffer;
  readonly aes: Buffer;
}

/** Which key of the ring a presented ticket names. */
export type TicketKeyLookup = 'newest' | 'previous' | 'unknown';

export type TicketKeyAnswer = readonly [number, Buffer, Buffer] | readonly [number, Buffer, Buffer, Buffer, Buffer];

export class TicketKeyRing {
  #keys: readonly TicketKey[];
  readonly #kept: number;

  /** `keys` newest first (a fresh one by default); `kept` bounds what `rotate` keeps. */
  constructor(keys: readonly Buffer[] = [newTicketKey()], kept = TICKET_KEYS_KEPT) {
    if (!Number.isInteger(kept) || kept < 1 || kept > MAX_TICKET_KEYS)
      throw new RangeError(`a ticket key ring keeps 1 to ${MAX_TICKET_KEYS} keys, not ${kept}`);
    this.#kept = kept;
    this.#keys = parseKeys(keys);
  }

  get size(): number {
    return this.#keys.length;
  }

  /** Copies of the keys, newest first: for the IPC message only. */
  keys(): Buffer[] {
    return this.#keys.map((k) => Buffer.concat([k.name, k.hmac, k.aes]));
  }

  /** Replaces every key (newest first); throws a RangeError and keeps the current keys when one is malformed. */
  replace(keys: readonly Buffer[]): void {
    this.#keys = parseKeys(keys);
  }

  /** A new newest key; the oldest beyond `kept` is dropped and its tickets no longer resume. */
  rotate(key: Buffer = newTicketKey()): void {
    this.#keys = parseKeys([key, ...this.keys()].slice(0, this.#kept));
  }

  lookup(name: Buffer): TicketKeyLookup {
    const index = this.#indexOf(name);
    return index < 0 ? 'unknown' : index === 0 ? 'newest' : 'previous';
  }

  /** The callback's answer for a new ticket: the newest key, a fresh IV. */
  encrypt(): TicketKeyAnswer {
    const newest = this.#keys[0]!;
    return [TICKET_ENCRYPTED, newest.hmac, newest.aes, newest.name, nextIv()];
  }

  /** The callback's answer for a presented ticket: renew under a key of the ring, unknown otherwise (full handshake). */
  decrypt(name: Buffer): TicketKeyAnswer {
    const index = this.#indexOf(name);
    if (index < 0) return [TICKET_UNKNOWN, UNUSED, UNUSED];
    const key = this.#keys[index]!;
    return [TICKET_RENEW, key.hmac, key.aes];
  }

  #indexOf(name: Buffer): number {
    if (!Buffer.isBuffer(name) || name.length !== PART) return -1;
    return this.#keys.findIndex((k) => k.name.equals(name));
  }
}

function parseKeys(keys: readonly Buffer[]): TicketKey[] {
  if (keys.length === 0 || keys.length > MAX_TICKET_KEYS) throw new RangeError(`a ticket key ring holds 1 to ${MAX_TICKET_KEYS} keys, got ${keys.length}`);
  return keys.map((key) => {
    if (!Buffer.isBuffer(key) || key.length !== TICKET_KEY_BYTES) throw new RangeError(`a ticket key is ${TICKET_KEY_BYTES} bytes`);
    // Copies: the ring owns its keys, whatever the caller does with its buffers.
    const own = Buffer.from(key);
    return { name: own.subarray(0, PART), hmac: own.subarray(PART, 2 * PART), aes: own.subarray(2 * PART) };
  });
}

interface NativeContext {
  enableTicketKeyCallback?: () => void;
  onticketkeycallback?: (name: Buffer, iv: Buffer, encrypt: boolean) => TicketKeyAnswer | readonly [number];
}

/**
 * Makes `context` encrypt and decrypt tickets with `ring` (and renew every
 * ticket it accepts). Throws when this Node lacks the hook, so a Node upgrade
 * that drops it fails at start, not silently at the first returning client.
 * `onLookup` is told which key each presented ticket named (for a metric).
 */
export function useTicketKeyRing(context: tls.SecureContext, ring: TicketKeyRing, onLookup?: (lookup: TicketKeyLookup) => void): void {
  const native = (context as unknown as { context?: NativeContext }).context;
  if (typeof native?.enableTicketKeyCallback !== 'function') {
    throw new Error(`Node ${process.version} has no ticket-key callback on its secure contexts: session tickets cannot be shared or renewed`);
  }
  native.onticketkeycallback = (name, _iv, encrypt) => {
    // A throw here would escape into the handshake as an uncaught error: fail that handshake instead.
    try {
      if (encrypt) return ring.encrypt();
      onLookup?.(ring.lookup(name));
      return ring.decrypt(name);
    } catch {
      return [TICKET_FAILED];
    }
  };
  native.enableTicketKeyCallback();
}

/**
 * The same for a server's own context, the one OpenSSL asks about tickets
 * whatever context the SNI callback picks (Node's SNI contexts lend their
 * certificate and key to the connection, not their SSL_CTX). Node keeps it
 * as `_sharedCreds` (not public API); call again after `setSecureContext()`.
 */
export function useTicketKeyRingOnServer(server: tls.Server, ring: TicketKeyRing, onLookup?: (lookup: TicketKeyLookup) => void): void {
  const shared = (server as unknown as { _sharedCreds?: tls.SecureContext })._sharedCreds;
  if (shared === undefined) throw new Error(`Node ${process.version} keeps no _sharedCreds on a TLS server: session tickets cannot be shared or renewed`);
  useTicketKeyRing(shared, ring, onLookup);
}

/**
 * Message from the primary to a worker: the ring, newest first, base64 over
 * a local IPC channel only. `generation` numbers rotations so the worker can
 * acknowledge one.
 */
export interface TicketKeyMessage {
  readonly type: 'keyedge:ticket-key';
  readonly key: string;
  readonly previous?: readonly string[];
  readonly generation?: number;
}

/** One key (a ring of one); `previous` and `generation` for a primary's ring. */
export function ticketKeyMessage(key: Buffer, previous: readonly Buffer[] = [], generation?: number): TicketKeyMessage {
  return {
    type: 'keyedge:ticket-key',
    key: key.toString('base64'),
    previous: previous.map((k) => k.toString('base64')),
    ...(generation === undefined ? {} : { generation }),
  };
}

export function ticketRingMessage(ring: TicketKeyRing, generation: number): TicketKeyMessage {
  const [newest, ...previous] = ring.keys();
  return ticketKeyMessage(newest!, previous, generation);
}

export function isTicketKeyMessage(message: unknown): message is TicketKeyMessage {
  if (typeof message !== 'object' || message === null) return false;
  const m = message as { type?: unknown; key?: unknown; previous?: unknown };
  return (
    m.type === 'keyedge:ticket-key' &&
    typeof m.key === 'string' &&
    (m.previous === undefined || (Array.isArray(m.previous) && m.previous.every((p) => typeof p === 'string')))
  );
}

/** Every key of the message, newest first; throws a RangeError on a malformed one. */
export function decodeTicketKeys(message: TicketKeyMessage): Buffer[] {
  const keys = [message.key, ...(message.previous ?? [])].map((k) => Buffer.from(k, 'base64'));
  parseKeys(keys);
  return keys;
}

/** The newest key of the message. */
export function decodeTicketKey(message: TicketKeyMessage): Buffer {
  return decodeTicketKeys(message)[0]!;
}
