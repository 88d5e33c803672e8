/**
 * Forwarding a request to one of its domain's origins with undici's
 * `dispatch()` (one keep-alive Pool per origin, origins.ts), streaming both
 * bodies. Headers both ways: forward-headers.ts.
 *
 * Why dispatch and not `request()`/`stream()`: each request is one object
 * here (an Exchange, which is undici's handler; what it shares with an
 * HTTP/2 stream's is origin-exchange.ts), the origin's raw head goes
 * to `writeHead` as a flat list, and each body chunk to `res.write` with
 * undici's own pause/resume as backpressure. No Readable for the answer body,
 * no AbortController or signal (undici hands the abort function to the
 * handler), no pipe, no closure per request on the common path: listeners
 * are module functions that find their Exchange on the answer.
 *
 * Slow clients (body.ts, origin-gate.ts, send-stall.ts): a body is read
 * before the request waits for an origin connection (whole when small), a
 * request takes its place at the origin's gate before undici sees it, and an
 * answer the client stops reading is cut.
 *
 * Retries: a request is sent once. Only a request that cannot have reached
 * the origin and can be repeated safely (an idempotent method, RFC 9110
 * §9.2.2, without a body: nothing streamed is lost) is tried once more, on
 * the next origin, when the first could not be connected to.
 *
 * A client that goes away (mid-upload, while the origin thinks, mid-answer)
 * aborts the origin request: undici closes that origin connection, so nothing
 * waits for an answer no one will read. undici reports every failure of its
 * request through the handler's onError, never as a stream 'error'; the
 * request body stream (body.ts) keeps its own error listener for its life.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import type { RequestBody } from './body.js';
import { ClientGone } from './errors.js';
import { continueOnRead } from './expect.js';
import { answerHeaderList, type ExtraHeaders, extraHeaders, originRequestHeaderList } from './forward-headers.js';
import { mayRetry, originFailure } from './origin-failure.js';
import { type Carrier, EXCHANGE, OriginExchange, onAnswerEnd } from './origin-exchange.js';
import type { OriginGate } from './origin-gate.js';
import { type OriginPools, type OriginTarget, requestServername } from './origins.js';
import { whenQueuedClientGone } from './queued.js';
import type { TrustedPeers } from './trusted-peers.js';

export { endToEndHeaders, originRequestHeaders } from './forward-headers.js';
export { mayRetry, type OriginFailure, originFailure } from './origin-failure.js';
export { OriginPools, type OriginTimeouts } from './origins.js';

export interface ForwardOptions {
  /** Set on the answer after the origin's headers (HSTS); keep one object per route, it is prepared once (forward-headers.ts). */
  readonly extraHeaders: Readonly<Record<string, string>>;
  /** The scheme the client used. */
  readonly proto: 'https' | 'http';
  readonly maxBodyBytes: number;
  readonly trusted?: TrustedPeers | undefined;
  /** Set to each origin tried, before the attempt (for the access log). */
  origin?: string | undefined;
  /** The client awaits 100 (Continue) before sending its body (expect.ts). */
  readonly awaitsContinue?: boolean;
  /** Counts the answer's body bytes handed to the client (for the access log), when present. */
  bodyBytes?: number;
}

type Answer = ServerResponse & Carrier;

/**
 * One forwarded request: undici's handler (origin-exchange.ts holds what it
 * shares with an HTTP/2 stream's) writing the answer to `res`.
 */
class Exchange extends OriginExchange {
  readonly req: IncomingMessage;
  readonly res: Answer;
  readonly extra: ExtraHeaders;
  readonly options: ForwardOptions;
  cancelQueued: (() => void) | undefined = undefined;

  constructor(pools: OriginPools, req: IncomingMessage, res: Answer, options: ForwardOptions) {
    super(pools);
    this.req = req;
    this.res = res;
    this.options = options;
    this.extra = extraHeaders(options.extraHeaders);
  }

  get headersSent(): boolean {
    return this.res.headersSent;
  }

  /** The client left (its answer closed early, or it was queued behind another on a connection that closed). */
  clientLeft(): void {
    if (this.gone || this.res.writableFinished) return;
    this.cancelQueued?.();
    this.leftBeforeEnd();
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[] | string[] | null, resume: () => void): boolean {
    const { req, res } = this;
    // The origin answered, whatever the status: a 5xx is the application's, not the connection's.
    this.pools.succeeded(this.target!);
    this.resumeOrigin = resume;
    if (this.body !== null && !req.complete) closeAfterEarlyAnswer(req, res);
    // A head node refuses to send (a header value with bytes RFC 9110 §5.5 forbids) throws here: undici then aborts and calls onError.
    res.writeHead(statusCode, answerHeaderList(rawHeaders ?? [], this.extra));
    return true;
  }

  onData(chunk: Buffer): boolean {
    const res = this.res;
    if (res.destroyed) return false;
    if (this.options.bodyBytes !== undefined) this.options.bodyBytes += chunk.length;
    if (res.write(chunk)) return true;
    // The client's socket is full.
    return this.waitForDrain(res);
  }

  onComplete(): void {
    const { res } = this;
    this.leaveGate();
    if (!res.destroyed) res.end();
    this.settle(undefined);
  }
}

/**
 * Sends `req` to one of `domain`'s origins and streams the answer into
 * `res`. Resolves when the answer is handed to the client whole (or the
 * client left); rejects with the failure when no origin could be reached or
 * one failed before answering (the caller answers 502/504 then), or when the
 * answer broke off mid-way.
 */
export async function forward(pools: OriginPools, domain: ProxyDomain, req: IncomingMessage, res: ServerResponse, options: ForwardOptions): Promise<void> {
  const method = req.method ?? 'GET';
  const hasBody = method !== 'GET' && method !== 'HEAD' && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined);
  const targets = pools.targets(domain);
  const exchange = new Exchange(pools, req, res, options);
  const answer = res as Answer;
  answer[EXCHANGE] = exchange;
  answer.on('close', onAnswerEnd);
  // A pipelined answer still queued behind another gets no 'close' of its own (queued.ts).
  if (res.socket === null) exchange.cancelQueued = whenQueuedClientGone(req.socket, res, () => exchange.clientLeft());
  if (!hasBody) return attempts(exchange, targets, method, options);
  const body = await requestBody(pools, req, res, options);
  exchange.body = body;
  exchange.upload = !Buffer.isBuffer(body);
  try {
    await attempts(exchange, targets, method, options);
  } finally {
    pools.bodies.release(body);
  }
}

/** The attempts of `forward`, on `targets` in order, once the body (if any) is at hand. */
async function attempts(exchange: Exchange, targets: readonly OriginTarget[], method: string, options: ForwardOptions): Promise<void> {
  const { pools, req, body, upload } = exchange;
  for (let attempt = 0; ; attempt++) {
    const target = targets[attempt];
    if (target === undefined) throw new Error('no origin configured');
    options.origin = target.url.origin;
    const gate = pools.gate(target);
    if (!gate.tryEnter(upload)) {
      try {
        exchange.abandon ??= new EventEmitter();
        await waitAdmitted(gate.enter(upload, exchange.abandon), gate, upload, req, body);
      } catch (err) {
        // Nothing was sent: a busy origin's request may go to the next one whatever its method.
        if (attempt === 0 && targets.length > 1 && (err as { code?: string }).code === 'KEYEDGE_HTTP_ORIGIN_BUSY') continue;
        throw err;
      }
    }
    exchange.gate = gate;
    exchange.target = target;
    const request: Dispatcher.DispatchOptions & { servername?: string } = {
      path: req.url ?? '/',
      method: method as Dispatcher.HttpMethod,
      headers: originRequestHeaderList(req.headers, req.socket.remoteAddress, options.proto, target, options.trusted),
      body,
    };
    // undici takes `servername` per request at run time, though its types omit it.
    if (target.tls !== undefined) request.servername = requestServername(target);
    try {
      await exchange.send(target, request);
      return;
    } catch (err) {
      if (exchange.headersSent) throw err;
      // A client that went away mid-upload fails the request with its own reset: not the origin's fault.
      const failure = exchange.gone || req.socket.destroyed ? 'not-origin' : originFailure(err);
      if (failure !== 'not-origin') pools.failed(target);
      if (attempt === 0 && targets.length > 1 && mayRetry(req.method, body !== null, failure)) continue;
      throw err;
    }
  }
}

/**
 * The body to send on: read whole when small, so a slow upload holds no
 * origin connection (body.ts), streamed past that. A client waiting for 100
 * (Continue) sends nothing until asked: its body streams, and is asked for
 * when an origin connection takes it (expect.ts).
 */
function requestBody(pools: OriginPools, req: IncomingMessage, res: ServerResponse, options: ForwardOptions): Promise<RequestBody> {
  if (options.awaitsContinue === true) return Promise.resolve(continueOnRead(pools.bodies.stream(req, options.maxBodyBytes), res));
  return pools.bodies.read(req, options.maxBodyBytes);
}

/** How long a connection closed after an early answer keeps reading what the client still sends (nginx: lingering_timeout 5 s). */
const LINGER_MS = 5000;

/**
 * The origin answered before the client's body was all read (a 401 or 417
 * before reading it): undici stops sending the body, so the rest of it cannot
 * be told from a next request, and the answer says `Connection: close`.
 * Node then ends the socket and destroys it as soon as the end is flushed;
 * with the client still sending, closing on unread bytes resets the
 * connection, and the client may lose the answer. So the connection lingers
 * (RFC 9112 §9.6): half-closed, reading and dropping what still arrives, until
 * the client closes or LINGER_MS pass.
 */
function closeAfterEarlyAnswer(req: IncomingMessage, res: ServerResponse): void {
  res.setHeader('connection', 'close');
  const socket = req.socket;
  res.once('finish', () => {
    if (req.complete || socket.destroyed) return;
    // Registered by Node's destroySoon() in its own 'finish' listener, which runs before this one.
    socket.removeListener('finish', socket.destroy);
    const timer = setTimeout(() => socket.destroy(), LINGER_MS).unref();
    socket.once('close', () => clearTimeout(timer));
    socket.once('end', () => socket.destroy());
    req.resume();
  });
}

/**
 * Waits for a place at `gate` for a request that could not enter at once;
 * once there, a request whose client left or whose streamed body failed
 * while it waited gives its place back and fails.
 */
async function waitAdmitted(entered: true | Promise<void>, gate: OriginGate, upload: boolean, req: IncomingMessage, body: RequestBody | null): Promise<void> {
  await entered;
  const failed = upload ? (body as Readable).errored : null;
  if (failed === null && !req.socket.destroyed) return;
  gate.leave(upload);
  throw failed ?? new ClientGone('the client left while its request waited for an origin connection');
}
