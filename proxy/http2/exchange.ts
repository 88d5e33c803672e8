/**
 * One HTTP/2 stream forwarded to one of its domain's HTTP/1.1 origins, over
 * the same pools, admission gates, body reading and stall timeout as
 * HTTP/1.1 requests (proxy/http/), with undici's `dispatch()` as forward.ts
 * does; the handler that relays the answer and aborts the origin request
 * when the client leaves is origin-handler.ts. From forward.ts it takes only
 * its pure, exported parts (the origin's request head, failure classes, the
 * retry rule), so that module can change inside without this one.
 *
 * Flow control is the backpressure: a request body is read as the origin
 * takes it, and nghttp2 grants the client more window only as it is read
 * (Node consumes the window on read); the origin is read only as the
 * client's window and the socket take the answer, so a large download is
 * never held whole, and a client that stops reading is cut after
 * `sendTimeoutMs` (send-stall.ts) with RST_STREAM.
 *
 * An answer sent before the request body was all read is followed by
 * RST_STREAM NO_ERROR (RFC 9113 §8.1): the client stops sending, the
 * connection lives on.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { constants, type ServerHttp2Stream } from 'node:http2';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import { ClientGone } from '../http/errors.js';
import { mayRetry, originFailure } from '../http/forward.js';
import { originRequestHeaderList } from '../http/forward-headers.js';
import type { OriginGate } from '../http/origin-gate.js';
import { type OriginPools, type OriginTarget, requestServername } from '../http/origins.js';
import type { Http1Request } from './headers.js';
import { StreamExchange, type StreamForwardOptions, trackStream } from './origin-handler.js';

export type { StreamForwardOptions } from './origin-handler.js';

/**
 * The stream as body.ts reads a request: it needs IncomingMessage's
 * `complete` (the whole body arrived), which on a stream is its readable end.
 */
function bodySource(stream: ServerHttp2Stream): IncomingMessage {
  Object.defineProperty(stream, 'complete', { get: () => stream.readableEnded || stream.endAfterHeaders });
  return stream as unknown as IncomingMessage;
}

/**
 * Sends the stream's request to one of `domain`'s origins and streams the
 * answer back. Resolves when the answer is handed to the stream or the client
 * has gone; rejects with the failure when no origin could be reached or one
 * failed before answering (the caller answers 502/504), when the answer broke
 * off, or with our own failure (body too large or slow, origin busy, send stall).
 */
export async function forwardStream(
  pools: OriginPools,
  domain: ProxyDomain,
  stream: ServerHttp2Stream,
  request: Http1Request,
  options: StreamForwardOptions,
): Promise<void> {
  const exchange = new StreamExchange(pools, stream, options);
  trackStream(stream, exchange);
  const hasBody = !stream.endAfterHeaders;
  // RFC 9110 §10.1.1: the client waits for 100 before its body; the body is read at once below, so say so now.
  if (hasBody && request.headers.expect?.toLowerCase() === '100-continue' && !stream.closed) stream.additionalHeaders({ ':status': 100 });
  const body = hasBody ? await pools.bodies.read(bodySource(stream), options.maxBodyBytes) : null;
  exchange.body = body;
  exchange.upload = body !== null && !Buffer.isBuffer(body);
  try {
    await attempts(exchange, pools.targets(domain), request);
  } finally {
    pools.bodies.release(body);
  }
  // Answered before the client finished its body: it may stop sending (RFC 9113 §8.1), once the answer is out.
  // A request without a body (END_STREAM on its HEADERS) has nothing left to refuse: no 'finish' listener for it.
  if (!hasBody) return;
  if (stream.writableFinished) endUnreadBody(stream);
  else stream.once('finish', () => endUnreadBody(stream));
}

function endUnreadBody(stream: ServerHttp2Stream): void {
  if (bodyPending(stream)) stream.close(constants.NGHTTP2_NO_ERROR);
}

/** The attempts of `forwardStream`, on `targets` in order, once the body (if any) is at hand. */
async function attempts(exchange: StreamExchange, targets: readonly OriginTarget[], request: Http1Request): Promise<void> {
  const { pools, stream, body, upload, options } = exchange;
  for (let attempt = 0; ; attempt++) {
    const target = targets[attempt];
    if (target === undefined) throw new Error('no origin configured');
    options.onOrigin?.(target.url.origin);
    const gate = pools.gate(target);
    if (!gate.tryEnter(upload)) {
      try {
        exchange.abandon ??= new EventEmitter();
        await waitAdmitted(gate.enter(upload, exchange.abandon), gate, exchange);
      } catch (err) {
        // Nothing was sent: a busy origin's request may go to the next one whatever its method.
        if (attempt === 0 && targets.length > 1 && (err as { code?: string }).code === 'KEYEDGE_HTTP_ORIGIN_BUSY') continue;
        throw err;
      }
    }
    // Gone while the body was read or a place awaited: nothing is sent.
    if (exchange.gone) {
      gate.leave(upload);
      throw new ClientGone('the client left before its request was sent');
    }
    exchange.gate = gate;
    exchange.target = target;
    const dispatch: Dispatcher.DispatchOptions & { servername?: string } = {
      path: request.path,
      method: request.method as Dispatcher.HttpMethod,
      headers: originRequestHeaderList(request.headers, options.peer, 'https', target, options.trusted),
      body,
    };
    // undici takes `servername` per request at run time, though its types omit it.
    if (target.tls !== undefined) dispatch.servername = requestServername(target);
    try {
      await exchange.send(target, dispatch);
      return;
    } catch (err) {
      if (stream.headersSent) throw err;
      // A client that left is not the origin's failure.
      const failure = exchange.gone ? 'not-origin' : originFailure(err);
      if (failure !== 'not-origin') pools.failed(target);
      if (attempt === 0 && targets.length > 1 && mayRetry(request.method, body !== null, failure)) continue;
      throw err;
    }
  }
}

/** The client may still be sending a body this side will not read. */
export function bodyPending(stream: ServerHttp2Stream): boolean {
  return !stream.endAfterHeaders && !stream.readableEnded && !stream.destroyed;
}

/**
 * Whether a closed stream's answer went out whole: its writable side finished
 * and the stream closed without a reset. A session destroyed under it (the
 * TCP connection reset) gives its streams a reset code, though Node may have
 * ended their writable side itself.
 */
export function answeredWhole(stream: ServerHttp2Stream): boolean {
  return stream.writableFinished && (stream.rstCode ?? constants.NGHTTP2_NO_ERROR) === constants.NGHTTP2_NO_ERROR;
}

/** As forward.ts: once admitted, a request whose client left or whose streamed body failed gives its place back. */
async function waitAdmitted(entered: true | Promise<void>, gate: OriginGate, exchange: StreamExchange): Promise<void> {
  await entered;
  const failed = exchange.upload ? (exchange.body as Readable).errored : null;
  if (failed === null && !exchange.gone) return;
  gate.leave(exchange.upload);
  throw failed ?? new ClientGone('the client left while its request waited for an origin connection');
}
