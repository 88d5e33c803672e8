/**
 * One HTTP/2 stream forwarded to one of its domain's HTTP/1.1 origins, over
 * the same pools, admission gates, body reading and stall timeout as
 * HTTP/1.1 requests (proxy/http/). From forward.ts it takes only its pure,
 * exported parts (the origin's request head, failure classes, the retry
 * rule), so that module can change inside without this one.
 *
 * Flow control is the backpressure: a request body is read as the origin
 * takes it, and nghttp2 grants the client more window only as it is read
 * (Node consumes the window on read); an answer body is read from the origin
 * only as the client's window and the socket take it (pipe pauses the origin
 * body), so a large download is never held whole, and a client that stops
 * reading is cut after `sendTimeoutMs` (send-stall.ts) with RST_STREAM.
 *
 * Answers: `:status` and the origin's end-to-end fields (headers.ts); trailers
 * when the origin declared them (RFC 9110 §6.6.2 Trailer field). An answer
 * sent before the request body was all read is followed by RST_STREAM
 * NO_ERROR (RFC 9113 §8.1): the client stops sending, the connection lives on.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { constants, type ServerHttp2Stream } from 'node:http2';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import type { RequestBody } from '../http/body.js';
import { ClientGone, HttpFailure } from '../http/errors.js';
import { mayRetry, originFailure, originRequestHeaders } from '../http/forward.js';
import type { OriginGate } from '../http/origin-gate.js';
import { type OriginPools, type OriginTarget, requestServername } from '../http/origins.js';
import { stalledSend, watchSendStall } from '../http/send-stall.js';
import type { TrustedPeers } from '../http/trusted-peers.js';
import { http2Answer, type Http1Request } from './headers.js';

export interface StreamForwardOptions {
  /** Set on the answer after the origin's fields (HSTS). */
  readonly extraHeaders: Record<string, string>;
  readonly maxBodyBytes: number;
  readonly trusted?: TrustedPeers;
  /** The client's address, for X-Forwarded-For. */
  readonly peer: string | undefined;
  /** Told each origin tried, before the attempt (for the access log). */
  readonly onOrigin?: (origin: string) => void;
  /** Told the status once the answer's head is sent. */
  readonly onStatus: (status: number) => void;
}

/** undici's abort signal (any emitter of 'abort'), fired when the client left before the answer was whole. */
class ClientGoneSignal extends EventEmitter {
  gone = false;
}

const ignore = (): void => undefined;

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
 * answer back. Resolves when the answer is sent or the client has gone;
 * rejects with the failure when no origin could be reached or one failed
 * before answering (the caller answers 502/504), when the answer broke off,
 * or with our own failure (body too large or slow, origin busy, send stall).
 */
export async function forwardStream(
  pools: OriginPools,
  domain: ProxyDomain,
  stream: ServerHttp2Stream,
  request: Http1Request,
  options: StreamForwardOptions,
): Promise<void> {
  const clientGone = new ClientGoneSignal();
  const onGone = (): void => {
    if (clientGone.gone) return;
    clientGone.gone = true;
    clientGone.emit('abort');
  };
  // 'aborted': reset while the answer was unfinished (Node then ends the writable side itself, so 'finish' cannot tell).
  stream.once('aborted', onGone);
  stream.once('close', () => {
    if (!answeredWhole(stream)) onGone();
  });
  const hasBody = !stream.endAfterHeaders;
  // RFC 9110 §10.1.1: the client waits for 100 before its body; the body is read at once below, so say so now.
  if (hasBody && request.headers.expect?.toLowerCase() === '100-continue') stream.additionalHeaders({ ':status': 100 });
  const body = hasBody ? await pools.bodies.read(bodySource(stream), options.maxBodyBytes) : null;
  try {
    await send(pools, pools.targets(domain), stream, request, body, clientGone, options);
  } finally {
    pools.bodies.release(body);
  }
}

async function send(
  pools: OriginPools,
  targets: readonly OriginTarget[],
  stream: ServerHttp2Stream,
  request: Http1Request,
  body: RequestBody | null,
  clientGone: ClientGoneSignal,
  options: StreamForwardOptions,
): Promise<void> {
  const upload = body !== null && !Buffer.isBuffer(body);
  for (let attempt = 0; ; attempt++) {
    const target = targets[attempt];
    if (target === undefined) throw new Error('no origin configured');
    options.onOrigin?.(target.url.origin);
    const gate = pools.gate(target);
    const entered = gate.enter(upload, clientGone);
    if (entered !== true) {
      try {
        await waitAdmitted(entered, gate, upload, stream, body);
      } catch (err) {
        if (attempt === 0 && targets.length > 1 && (err as { code?: string }).code === 'KEYEDGE_HTTP_ORIGIN_BUSY') continue;
        throw err;
      }
    }
    const originRequest: Dispatcher.RequestOptions & { servername?: string } = {
      path: request.path,
      method: request.method as Dispatcher.HttpMethod,
      headers: originRequestHeaders(request.headers, options.peer, 'https', target, options.trusted),
      body,
      signal: clientGone,
      ...(target.tls === undefined ? {} : { servername: requestServername(target) }),
    };
    let answer: Dispatcher.ResponseData;
    try {
      // Gone while the body was read or a place awaited: undici would never hear of it (its signal listener comes with the request).
      if (clientGone.gone || stream.destroyed) throw new ClientGone('the client left before its request was sent');
      answer = await pools.pool(target).request(originRequest);
    } catch (err) {
      gate.leave(upload);
      // A client that left is not the origin's failure.
      const failure = clientGone.gone || stream.destroyed ? 'not-origin' : originFailure(err);
      if (failure !== 'not-origin') pools.failed(target);
      if (attempt === 0 && targets.length > 1 && mayRetry(request.method, body !== null, failure)) continue;
      throw err;
    }
    try {
      pools.succeeded(target);
      answer.body.on('error', ignore);
      if (clientGone.gone || stream.destroyed) return void answer.body.destroy();
      const declaresTrailers = answer.headers.trailer !== undefined;
      try {
        stream.respond(http2Answer(answer.statusCode, answer.headers, options.extraHeaders), { waitForTrailers: declaresTrailers });
      } catch (err) {
        // A head Node refuses to send (a value with bytes RFC 9110 §5.5 forbids): let go of the origin's body.
        answer.body.destroy();
        throw err;
      }
      options.onStatus(answer.statusCode);
      // HEAD, 204, 304: Node ended the stream with the head (RFC 9110 §6.4.1); nothing of the body is sent.
      if (stream.writableEnded) return void answer.body.resume();
      if (declaresTrailers) stream.once('wantTrailers', () => sendTrailers(stream, answer.trailers));
      watchSendStall(answer.body, stream as unknown as ServerResponse, pools.sendTimeoutMs);
      await relay(answer.body, stream, clientGone);
    } finally {
      gate.leave(upload);
    }
    if (stalledSend(stream as unknown as ServerResponse))
      throw new HttpFailure('KEYEDGE_HTTP_SEND_TIMEOUT', `the client took nothing of the answer for ${pools.sendTimeoutMs} ms`);
    // Answered before the client finished its body: it may stop sending (RFC 9113 §8.1).
    if (bodyPending(stream)) stream.close(constants.NGHTTP2_NO_ERROR);
    return;
  }
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

/** The client may still be sending a body this side will not read. */
export function bodyPending(stream: ServerHttp2Stream): boolean {
  return !stream.endAfterHeaders && !stream.readableEnded && !stream.destroyed;
}

/** The origin's trailers with what HTTP/2 forbids dropped; a trailer section Node refuses ends the stream with a reset instead. */
function sendTrailers(stream: ServerHttp2Stream, trailers: Record<string, string | string[] | undefined>): void {
  const fields = http2Answer(0, trailers, {});
  delete fields[':status'];
  try {
    stream.sendTrailers(fields);
  } catch {
    stream.close(constants.NGHTTP2_INTERNAL_ERROR);
  }
}

/** As forward.ts: once admitted, a request whose client left or whose streamed body failed gives its place back. */
async function waitAdmitted(entered: Promise<void>, gate: OriginGate, upload: boolean, stream: ServerHttp2Stream, body: RequestBody | null): Promise<void> {
  await entered;
  const failed = upload ? (body as Readable).errored : null;
  if (failed === null && !stream.destroyed) return;
  gate.leave(upload);
  throw failed ?? new ClientGone('the client left while its request waited for an origin connection');
}

/**
 * Streams the origin's body into the stream; resolves once it is all handed
 * to nghttp2 ('finish') or the client has gone, rejects when the origin's
 * body fails mid-way. As forward.ts's relay, without stream.pipeline's cost.
 */
function relay(body: Readable, stream: ServerHttp2Stream, clientGone: EventEmitter): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (err?: Error): void => {
      body.off('error', settle);
      stream.off('finish', done);
      stream.off('close', onClose);
      clientGone.off('abort', onClose);
      if (err === undefined) resolve();
      else reject(err);
    };
    const done = (): void => settle();
    const onClose = (): void => {
      // Whatever Node did to the writable side, an origin body not read to its end is let go of (its connection closes).
      if (!body.readableEnded) body.destroy();
      settle();
    };
    body.once('error', settle);
    stream.once('finish', done);
    stream.once('close', onClose);
    clientGone.once('abort', onClose);
    body.pipe(stream);
  });
}
