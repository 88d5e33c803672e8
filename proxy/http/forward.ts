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
 * answer the client stops reading is cut. Attempts and retries:
 * origin-exchange.ts.
 *
 * A client that goes away (mid-upload, while the origin thinks, mid-answer)
 * aborts the origin request: undici closes that origin connection, so nothing
 * waits for an answer no one will read. undici reports every failure of its
 * request through the handler's onError, never as a stream 'error'; the
 * request body stream (body.ts) keeps its own error listener for its life.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { finished } from 'node:stream/promises';
import type { Dispatcher } from 'undici';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import { continueOnRead } from './expect.js';
import { answerHeaderList, type ExtraHeaders, extraHeaders, originRequestHeaderList, refuseTransferCodings } from './forward-headers.js';
import { bodyUnread, closeAfterAnswer } from './linger.js';
import { type Carrier, EXCHANGE, type ExchangeOwner, OriginExchange, onAnswerEnd, originTargets } from './origin-exchange.js';
import { refuseInvalidStatus } from './origin-status.js';
import { SendStallClock } from './send-stall.js';
import { tailUnsent, type UnsentTail } from './unsent-tails.js';
import type { OriginPools, OriginTarget } from './origins.js';
import { HttpFailure } from './errors.js';
import { inTurn, pipelined } from './pipeline-turns.js';
import { whenQueuedClientGone } from './queued.js';
import type { TrustedPeers } from './trusted-peers.js';
import { connectionOf } from '../tls/connection.js';

export { endToEndHeaders, originRequestHeaders } from './forward-headers.js';
export { mayRetry, type OriginFailure, originFailure } from './origin-failure.js';
export { OriginPools, type OriginTimeouts } from './origins.js';

export interface ForwardOptions extends ExchangeOwner {
  /** Set on the answer after the origin's headers (HSTS); keep one object per route, it is prepared once (forward-headers.ts). */
  readonly extraHeaders: Readonly<Record<string, string>>;
  /** The scheme the client used. */
  readonly proto: 'https' | 'http';
  readonly maxBodyBytes: number;
  readonly trusted?: TrustedPeers | undefined;
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
class Exchange extends OriginExchange<ForwardOptions> implements UnsentTail {
  readonly req: IncomingMessage;
  readonly res: Answer;
  readonly extra: ExtraHeaders;
  cancelQueued: (() => void) | undefined = undefined;
  /** The answer is a 204 or 304: it has no content, whatever its Content-Length says (RFC 9110 §6.4.1). */
  noContent = false;

  constructor(pools: OriginPools, req: IncomingMessage, res: Answer, options: ForwardOptions, targets: readonly OriginTarget[], method: string) {
    super(pools, options, targets, method, connectionOf(req.socket)?.client);
    this.req = req;
    this.res = res;
    this.extra = extraHeaders(options.extraHeaders);
  }

  get headersSent(): boolean {
    return this.res.headersSent;
  }

  get clientGone(): boolean {
    return this.gone || this.req.socket.destroyed;
  }

  /** The answer closed (whole, or early: the client left), or it was queued behind another on a connection that closed. */
  clientLeft(): void {
    // Whole or not, its place among the connection's queued answers (queued.ts) goes with it: kept, it would hold
    // this request, its answer and this exchange until the connection closes, one more per pipelined request.
    this.cancelQueued?.();
    if (this.gone || this.res.writableFinished) return;
    this.leftBeforeEnd();
  }

  protected originRequest(target: OriginTarget): Dispatcher.DispatchOptions {
    const { req, owner } = this;
    return {
      path: req.url ?? '/',
      method: this.method as Dispatcher.HttpMethod,
      headers: originRequestHeaderList(req.headers, req.socket.remoteAddress, owner.proto, target, owner.trusted),
      body: this.body,
    };
  }

  /**
   * The body to send on, then the first attempt: read whole when small, so a
   * slow upload holds no origin connection (body.ts), streamed past that. A
   * client waiting for 100 (Continue) sends nothing until asked: its body
   * streams, and is asked for when an origin connection takes it (expect.ts).
   */
  async readBodyThenAttempt(): Promise<void> {
    const { pools, req, res, owner } = this;
    try {
      const body =
        owner.awaitsContinue === true ? continueOnRead(pools.bodies.stream(req, owner.maxBodyBytes), res) : await pools.bodies.read(req, owner.maxBodyBytes);
      this.body = body;
      this.upload = !Buffer.isBuffer(body);
    } catch (err) {
      return this.finish(err as Error);
    }
    this.attempt();
  }

  /**
   * A GET's or HEAD's body, which is not forwarded, read and dropped before
   * the first attempt, under the same limits and timeouts as a forwarded
   * one (as nginx reads it first). Node hands the request over at its head:
   * sent then, it reached the origin even when the body turned out not to be
   * one (a bad chunk, a Transfer-Encoding whose last coding is not chunked,
   * RFC 9112 §6.3 and §7.1) and the client got our 400 for a request the
   * origin had acted on.
   */
  async dropBodyThenAttempt(): Promise<void> {
    const { pools, req, owner } = this;
    try {
      const body = await pools.bodies.read(req, owner.maxBodyBytes);
      if (Buffer.isBuffer(body)) pools.bodies.release(body);
      else await finished(body.resume());
    } catch (err) {
      return this.finish(err as Error);
    }
    this.attempt();
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[] | string[] | null, resume: () => void): boolean {
    const { req, res } = this;
    // A status outside 100–599 (an interim one too): our 502 on either protocol (origin-status.ts).
    refuseInvalidStatus(statusCode);
    // 1xx (102, 103 Early Hints): an interim answer, the final one still to come from the same parser (RFC 9110 §15.2).
    // It is dropped, as for HTTP/2 clients (http2/origin-handler.ts) and by nginx: writing it would use up the answer's
    // one head, and the final one would then throw and cut the connection with nothing sent.
    if (statusCode < 200) return true;
    refuseTransferCodings(rawHeaders ?? []);
    // The origin answered, whatever the status: a 5xx is the application's, not the connection's.
    this.pools.succeeded(this.target!);
    this.resumeOrigin = resume;
    const early = this.body !== null && !req.complete;
    const head = answerHeaderList(rawHeaders ?? [], this.extra, statusCode === 204);
    // In the list, never by setHeader: once one field is set that way, node's writeHead sets each of the list's
    // with setHeader too, and a field the origin repeated (two Set-Cookie) would keep only its last value.
    if (early) head.push('connection', 'close');
    // A head node refuses to send (a header value with bytes RFC 9110 §5.5 forbids) throws here: undici then aborts and calls onError.
    res.writeHead(statusCode, head);
    // A pipelined answer waiting its turn (no socket yet) holds what was written to it, a 100 (Continue) perhaps
    // (expect.ts). Its head is queued behind that now, as text: left to go with the first body chunk, a Buffer, Node
    // would put it in front of the 100, and the client would read `HTTP/1.1 100 Continue` as the answer's content.
    if (res.socket === null) res.flushHeaders();
    // An origin that answered before the body was all read (a 401 or 417): undici stops sending it, so its rest cannot
    // be told from a next request. The connection lingers, reading and dropping it, then closes (linger.ts).
    if (early) closeAfterAnswer(req, res);
    this.noContent = statusCode === 204 || statusCode === 304;
    return true;
  }

  /**
   * undici checks an answer's Content-Length against the body it read, except
   * for HEAD: a 304 that carries the length of the 200 it stands for (RFC 9110
   * §8.6 allows it) or a 204 with one fails with
   * UND_ERR_RES_CONTENT_LENGTH_MISMATCH once its head is in, and the client's
   * connection would be cut for a whole answer. Such an answer is complete
   * with its head (undici has closed that origin connection).
   */
  override onError(err: Error): void {
    if (this.noContent && (err as { code?: string }).code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH') return this.onComplete();
    super.onError(err);
  }

  onData(chunk: Buffer): boolean {
    const res = this.res;
    if (res.destroyed) return false;
    if (this.owner.bodyBytes !== undefined) this.owner.bodyBytes += chunk.length;
    if (res.write(chunk)) return true;
    // The client's socket is full.
    return this.waitForDrain(res);
  }

  onComplete(): void {
    const { res } = this;
    this.leaveGate();
    if (!res.destroyed) {
      res.end();
      // Ended with bytes the client has not taken (its socket's own buffer holds some, the kernel's being full), or
      // queued behind another answer: it holds the connection, and every answer pipelined behind it, until its
      // 'finish', which a client that reads nothing never brings, and no 'drain' comes for an ended answer. The send
      // clock runs until its 'close' (send-stall.ts), as nginx's send_timeout bounds its last writes; started only if
      // they are still unsent a period later (unsent-tails.ts: over TLS nearly every answer ends with bytes in flight).
      if (!res.writableFinished && (res.socket === null || res.socket.writableLength > 0)) {
        this.tailPending = true;
        tailUnsent(this);
      }
    }
    this.settle(undefined);
  }

  tailStuck(): void {
    this.tailPending = false;
    const { res } = this;
    if (res.destroyed || res.writableFinished) return;
    this.stall ??= new SendStallClock(res, this.pools.sendTimeoutMs);
    this.stall.waiting();
  }
}

/**
 * Sends `req` to one of `domain`'s origins and streams the answer into
 * `res`. `options.onFailure` hears, once, when no origin could be reached or
 * one failed before answering (the caller answers 502/504), when the answer
 * broke off mid-way, or of our own failure; nothing is said when the answer
 * was handed to the client whole or the client left.
 */
export function forward(pools: OriginPools, domain: ProxyDomain, req: IncomingMessage, res: ServerResponse, options: ForwardOptions): void {
  const method = req.method ?? 'GET';
  const hasBody = method !== 'GET' && method !== 'HEAD' && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined);
  const targets = originTargets(pools, domain, options);
  if (targets === undefined) return;
  const answer = res as Answer;
  const exchange = new Exchange(pools, req, answer, options, targets, method);
  answer[EXCHANGE] = exchange;
  answer.on('close', onAnswerEnd);
  // A pipelined answer still queued behind another gets no 'close' of its own (queued.ts).
  if (res.socket === null) exchange.cancelQueued = whenQueuedClientGone(req.socket, res, () => exchange.clientLeft());
  // A GET or HEAD body awaiting 100 (Continue) is not forwarded, so its 100 never goes: Node's server closes the connection
  // after the answer, and what it parses after the request (the body may or may not come) is not processed (linger.ts).
  if (!hasBody && options.awaitsContinue === true) closeAfterAnswer(req, res);
  // HTTP/1.0 has no chunked framing: an answer before this one whose length the origin did not give ends the
  // connection (RFC 9112 §6.3), and a request sent on meanwhile would reach its origin with its answer never sent. So
  // a pipelined HTTP/1.0 request goes only once its answer holds the connection (as nginx takes pipelined requests one
  // at a time); the connection's close, first, says the client is gone (above).
  if (res.socket === null && req.httpVersionMajor === 1 && req.httpVersionMinor === 0) res.once('socket', () => send(exchange, hasBody));
  // Pipelined HTTP/1.1 requests are forwarded a few at a time (pipeline-turns.ts): an answer queued behind another
  // holds its origin place until its turn to be sent, and one connection held every place of an origin.
  // Nothing before it on a connection that never pipelined: no turn to wait for, and no closure made (the common path).
  else if (res.socket !== null && !pipelined(req.socket)) send(exchange, hasBody);
  else if (!inTurn(req.socket, res, pools.admission.maxQueue, () => send(exchange, hasBody)))
    exchange.finish(new HttpFailure('KEYEDGE_HTTP_ORIGIN_BUSY', `${pools.admission.maxQueue} requests pipelined on the connection wait for their turn`));
}

function send(exchange: Exchange, hasBody: boolean): void {
  if (hasBody) void exchange.readBodyThenAttempt();
  // A GET or HEAD body awaiting 100 (Continue) is never asked for (above).
  else if (exchange.owner.awaitsContinue !== true && bodyUnread(exchange.req)) void exchange.dropBodyThenAttempt();
  else exchange.attempt();
}
