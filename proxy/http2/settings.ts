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
 *   `maxHeaderListPairs` fields at most. Node enforces the size only once the
 *   client has acknowledged our SETTINGS, so stream.ts checks it again (431).
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
    // Node's default (128) is a header count no browser approaches.
    maxHeaderListPairs: 128,
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
