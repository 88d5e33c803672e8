/**
 * Answers written on a raw socket, where no ServerResponse exists: an
 * Upgrade's 101 or the origin's refusal relayed (upgrade-switch.ts,
 * upgrade-relay.ts), and our own refusals there and on the plain-HTTP port's
 * CONNECT and body-carrying Upgrade (redirect.ts). Header values come from
 * node's parser or from us (no CR/LF). Pure.
 */
import http, { type IncomingMessage } from 'node:http';
import { answerHeaderList } from './forward-headers.js';
import type { Refusal } from './handler.js';

/**
 * The origin's HSTS never reaches the client: ours (tls.hstsMaxAgeSeconds, the domain's `hsts`) replaces it, as on
 * every answer to a request. Kept, an origin's max-age=0 made the browser forget the host's HSTS (RFC 6797 §6.1.1),
 * and its includeSubDomains, which the operator did not set, held every subdomain to HTTPS.
 */
const HSTS = 'strict-transport-security';
const WITH_HSTS: ReadonlySet<string> = new Set([HSTS]);

/**
 * The fields of the origin's answer the client gets, a 101's or a relayed refusal's: its end-to-end ones, line by line
 * as it sent them, as on every answer (forward-headers.ts answerHeaderList): its hop-by-hop ones and those its
 * Connection names are for this hop (RFC 9110 §7.6.1), and the operator's HSTS replaces its own. From the raw head, not
 * node's parsed view, which keeps one line of a field such as Server repeated and lower-cases every name.
 */
export function relayedFields(res: IncomingMessage, hsts: string): [string, string][] {
  const fields = answerHeaderList(res.rawHeaders, { list: [HSTS, hsts], names: WITH_HSTS });
  const pairs: [string, string][] = [];
  for (let i = 0; i + 1 < fields.length; i += 2) pairs.push([fields[i]!, fields[i + 1]!]);
  return pairs;
}

/** An answer's head as we write it on the client's raw socket; header values come from node's parser (no CR/LF). */
export function responseHead(status: number, reason: string | undefined, headers: readonly (readonly [string, string])[]): string {
  let text = `HTTP/1.1 ${status} ${reason || (http.STATUS_CODES[status] ?? '')}\r\n`;
  for (const [name, value] of headers) text += `${name}: ${value}\r\n`;
  return `${text}\r\n`;
}

/** Our refusal as written on a raw socket, closing it; with HSTS over TLS (none on the plain-HTTP port: RFC 6797 §7.2). */
export function refusalText({ status, code, body, headers: own }: Refusal, hsts: string | undefined): string {
  const headers: [string, string][] = [
    ...(hsts === undefined ? [] : [['strict-transport-security', hsts] as [string, string]]),
    // Retry-After of a busy origin's 503; the connection closes whatever the refusal says.
    ...Object.entries(own ?? {}).filter(([name]) => name !== 'connection'),
    ['content-type', 'text/plain; charset=utf-8'],
    ['content-length', String(Buffer.byteLength(body))],
    ['x-keyedge-error', code],
    ['connection', 'close'],
  ];
  return responseHead(status, undefined, headers) + body;
}
