/**
 * Session-ticket keys: made in memory by the cluster primary, handed to every
 * worker over IPC, rotated on a schedule, never written anywhere. Sharing the
 * key lets a ticket issued by one worker resume on another, so a returning
 * client skips the key server entirely (RFC 8446 §2.2, RFC 5077).
 *
 * Node holds one ticket key per server (48 bytes: name, HMAC and AES keys);
 * a ticket made under the previous key is not accepted after a rotation and
 * that client does one full handshake.
 */
import { randomBytes } from 'node:crypto';

export const TICKET_KEY_BYTES = 48;

export function newTicketKey(): Buffer {
  return randomBytes(TICKET_KEY_BYTES);
}

/** Message from the primary to a worker; `key` is base64 over a local IPC channel only. */
export interface TicketKeyMessage {
  readonly type: 'keyedge:ticket-key';
  readonly key: string;
}

export function ticketKeyMessage(key: Buffer): TicketKeyMessage {
  return { type: 'keyedge:ticket-key', key: key.toString('base64') };
}

export function isTicketKeyMessage(message: unknown): message is TicketKeyMessage {
  return (
    typeof message === 'object' &&
    message !== null &&
    (message as { type?: unknown }).type === 'keyedge:ticket-key' &&
    typeof (message as { key?: unknown }).key === 'string'
  );
}

export function decodeTicketKey(message: TicketKeyMessage): Buffer {
  const key = Buffer.from(message.key, 'base64');
  if (key.length !== TICKET_KEY_BYTES) throw new RangeError(`a ticket key is ${TICKET_KEY_BYTES} bytes, got ${key.length}`);
  return key;
}
