/**
 * The fields an origin's trailer section may not carry on: RFC 9110 §6.5.1
 * has no place in trailers for fields needed before the content is
 * processed, those of message framing, routing, authentication, request
 * modifiers, response controls or the content's format, nor (§7.6.1) for
 * connection-specific ones. A sender MUST NOT generate them there, and a
 * recipient MUST NOT merge a trailer into the head unless the field's
 * definition allows it (§6.5.2): relayed, they would tell a client
 * something about framing or the content after the fact, and an HTTP/2 one
 * may refuse the stream for them. They are dropped from the trailers passed
 * on (HTTP/2 clients; HTTP/1.1 clients get no trailers from keyedge); the
 * rest, what trailers are for (Server-Timing, Content-Digest, RFC 9530, an
 * application's own), goes on.
 *
 * The table names the fields of each of §6.5.1's kinds that an answer can
 * carry, after the list of RFC 7230 §4.1.2 that §6.5.1 generalised. Pure.
 */

/** Lower-case field names never relayed from a trailer section. */
const NOT_IN_TRAILERS: ReadonlySet<string> = new Set([
  // Message framing (RFC 9110 §8.6, §6.6.2; RFC 9112 §6): the message's length and codings, and the trailers' own list.
  'content-length',
  'transfer-encoding',
  'trailer',
  // Connection-specific (§7.6.1; RFC 9113 §8.2.2 forbids them in HTTP/2).
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'upgrade',
  // Routing (§7.2).
  'host',
  // Authentication (§11) and the cookie state RFC 7230 §4.1.2 counted with it (RFC 6265).
  'authorization',
  'proxy-authorization',
  'www-authenticate',
  'proxy-authenticate',
  'cookie',
  'set-cookie',
  // Response controls (RFC 7231 §7.1; now RFC 9110 §6.6.1, §10.2, §12.5.5 and RFC 9111 §5).
  'age',
  'cache-control',
  'date',
  'expires',
  'location',
  'pragma',
  'retry-after',
  'vary',
  // The content's format (§8.3–§8.7, §14.4).
  'content-encoding',
  'content-language',
  'content-location',
  'content-range',
  'content-type',
]);

/** Whether a trailer field named `name` (any case) may be passed on. */
export function trailerFieldAllowed(name: string): boolean {
  return !NOT_IN_TRAILERS.has(name.toLowerCase());
}

/** An origin's raw trailer list ([name, value, …], bytes as latin1) without the fields above. */
export function allowedTrailers(raw: readonly (Buffer | string)[]): (Buffer | string)[] {
  const out: (Buffer | string)[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    if (trailerFieldAllowed(typeof name === 'string' ? name : name.toString('latin1'))) out.push(name, raw[i + 1]!);
  }
  return out;
}
