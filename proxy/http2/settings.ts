/**
 * The HTTP/2 server's settings and limits, from the proxy's configuration.
 * Pure. What each bounds:
 *
 * - SETTINGS_MAX_CONCURRENT_STREAMS (`limits.http2MaxConcurrentStreams`):
 *   Node's default is unlimited; a stream over it is refused (RST_STREAM
 *   REFUSED_STREAM), and `maxSessionRejectedStreams` of those end the
 *   connection with GOAWAY ENHANCE_YOUR_CALM.
 * - SETTINGS_MAX_HEADER_LIST_SIZE: `limits.maxHeaderBytes`, as HTTP/1.1's 431
 *   bound (RFC 9113 §6.5.2; HPACK-decoded size, §6.5.2's octet count), and
 *   as many fields as a list that size can hold (`maxHeaderFields`). Node
 *   enforces the size only once the client has acknowledged our SETTINGS, so
 *   stream.ts checks it again (431).
 * - SETTINGS_INITIAL_WINDOW_SIZE: 64 KiB, the protocol's default (§6.9.2):
 *   what a client may send on a stream before the proxy reads it, so unread
 *   request bodies hold at most streams × 64 KiB per connection (in bytes;
 *   the objects Node makes of tiny DATA frames are unread-chunks.ts's).
 * - `maxSessionMemory` (MB): nghttp2's buffers per connection, past which new
 *   streams are refused; bounds header and frame floods.
 * - `maxSessionInvalidFrames`: invalid frames (and the empty DATA frames of
 *   CVE-2019-9518) before GOAWAY ENHANCE_YOUR_CALM.
 * - `maxOutstandingPings`, `maxSettings`: PING and SETTINGS floods (the
 *   acknowledgements nghttp2 must queue, CVE-2019-9512/9515) are capped by
 *   nghttp2's outbound queue limit, which ends the connection; these keep our
 *   own and the client's within bounds too.
 * - Server push and extended CONNECT (RFC 8441) are off: no WebSocket over
 *   HTTP/2; browsers use HTTP/1.1 for WebSockets when it is not offered.
 */
import type { ServerOptions } from 'node:http2';
import type { ProxyConfig } from '../../config/proxy-schema.js';

/** RFC 9113 §6.5.2: each field of a header list counts its name, its value and 32 octets. */
export const FIELD_OVERHEAD = 32;

/**
 * The field count under which `maxHeaderBytes` is the bound that holds: the most fields a list of that size can
 * have. Node's own count (128 fields) is not a count browsers stay under: Chromium and Firefox send each cookie as a
 * field of its own over HTTP/2 (RFC 9113 §8.2.3 lets them), so a site that set some 110 cookies, 1 or 2 KB in all, had
 * every request reset ENHANCE_YOUR_CALM, unanswered and unlogged, which HTTP/1.1 served. nginx bounds the size only.
 */
function maxHeaderFields(maxHeaderBytes: number): number {
  return Math.max(128, Math.floor(maxHeaderBytes / FIELD_OVERHEAD));
}

/** RFC 9113 §6.9.2: the initial flow-control window (64 KiB - 1), kept. */
const INITIAL_WINDOW = 65_535;

export function http2ServerOptions(limits: ProxyConfig['limits']): ServerOptions {
  return {
    settings: {
      maxConcurrentStreams: limits.http2MaxConcurrentStreams,
      maxHeaderListSize: limits.maxHeaderBytes,
      initialWindowSize: INITIAL_WINDOW,
      enablePush: false,
      enableConnectProtocol: false,
    },
    maxHeaderListPairs: maxHeaderFields(limits.maxHeaderBytes),
    // Node's default, stated: 10 MB of nghttp2 state per connection.
    maxSessionMemory: 10,
    // Node allows 1000; a correct client sends none.
    maxSessionInvalidFrames: 100,
    // Node's default: streams refused for going over the concurrency limit.
    maxSessionRejectedStreams: 100,
    maxOutstandingPings: 10,
    maxSettings: 32,
  };
}
