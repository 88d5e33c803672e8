/**
 * The access line and the request metrics of the HTTPS handler and of
 * HTTP/2 streams (http2/stream.ts), in one place: one `count` (or
 * `countStream`) per answer, when it went out whole or was cut.
 *
 * Costs, per request, kept off the request path: the request counter is a
 * plain number per status and code, added to prom-client's counter when it
 * is scraped (prom-client hashes and checks the label object on every `inc`,
 * even a child's); the duration histogram's children are made once per
 * status class; access lines go through a child logger
 * without redaction (their fields are fixed here and never carry a secret,
 * and the redaction pass cost about as much as the rest of the line); the
 * answer's 'finish' and 'close' listeners are module functions that find
 * their request on the answer, so a request adds no closure for them; the
 * connection's TLS version and resumption are read once per connection.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { HttpErrorCode } from '../../config/codes.js';
import type { ProxyDomain } from '../../config/proxy-schema.js';
import type { Logger } from '../../keyserver/shared/log.js';
import { type ProxyMetrics, type RequestTally, statusClass } from '../metrics.js';
import { parserRefusal } from './client-error.js';
import type { ForwardOptions } from './forward.js';
import { stalledSend } from './send-stall.js';
import type { TrustedPeers } from './trusted-peers.js';

/** Logged and counted for a request whose client left before any answer head went out (nginx's code; never sent). */
export const CLIENT_CLOSED_STATUS = 499;

type Domain = ProxyDomain;

/** How an answer ended, for its access line and counter. */
export interface AnswerEnd {
  readonly status: number;
  readonly code: HttpErrorCode | undefined;
  /** Cut before its last byte went out. */
  readonly aborted: boolean;
}

/** What an HTTP/2 stream's access line says (the fields of HTTP/1.1's line). */
export interface StreamAccess {
  readonly seconds: number;
  readonly domain: Domain | undefined;
  readonly method: string;
  /** Without its query string. */
  readonly path: string;
  readonly status: number;
  /** The answer's body bytes that went out (0 when none did). */
  readonly bytes: number;
  readonly origin: string | undefined;
  readonly code: HttpErrorCode | undefined;
  readonly tls: string | undefined;
  readonly resumed: boolean | undefined;
  readonly aborted: boolean;
}

type AccessProtocol = 'http/1.1' | 'h2';

/** The accounting of one request handler: the logger and the metric children it reuses. */
export class AccessAccounts {
  /** The access lines' fixed fields as the loggers' own bindings, serialised once rather than on every line. */
  readonly #lines: Readonly<Record<AccessProtocol, Logger>>;
  readonly #metrics: ProxyMetrics;
  readonly #requests = { 'http/1.1': new Map<string, Map<number, RequestTally>>(), h2: new Map<string, Map<number, RequestTally>>() };
  readonly #durations = new Map<number, { observe(value: number): void }>();

  constructor(log: Logger, metrics: ProxyMetrics) {
    const lines = log.child({}, { redact: { paths: [] } });
    this.#lines = { 'http/1.1': lines.child({ access: true, protocol: 'http/1.1' }), h2: lines.child({ access: true, protocol: 'h2' }) };
    this.#metrics = metrics;
  }

  /** The request counter and, for a forwarded answer, the origin duration. */
  #tally(protocol: AccessProtocol, status: number, code: HttpErrorCode | undefined, domain: Domain | undefined, seconds: number): void {
    const key = code ?? 'none';
    const byCode = this.#requests[protocol];
    let byStatus = byCode.get(key);
    if (byStatus === undefined) {
      byStatus = new Map();
      byCode.set(key, byStatus);
    }
    let requests = byStatus.get(status);
    if (requests === undefined) {
      requests = this.#metrics.requestTally(statusClass(status), key, protocol);
      byStatus.set(status, requests);
    }
    requests.count++;
    if (code === undefined && domain !== undefined) {
      let duration = this.#durations.get(status);
      if (duration === undefined) {
        duration = this.#metrics.originDuration.labels(statusClass(status));
        this.#durations.set(status, duration);
      }
      duration.observe(seconds);
    }
  }

  /** One HTTP/2 stream's counts and access line. */
  countStream(a: StreamAccess): void {
    this.#tally('h2', a.status, a.code, a.domain, a.seconds);
    this.#lines.h2.info(
      {
        domain: a.domain?.name,
        method: a.method,
        path: a.path,
        status: a.status,
        bytes: a.bytes,
        durationMs: Math.round(a.seconds * 1e4) / 10,
        origin: a.origin,
        code: a.code,
        tls: a.tls,
        resumed: a.resumed,
        // pino leaves undefined fields out: `aborted` only on a cut answer.
        aborted: a.aborted ? true : undefined,
      },
      'request',
    );
  }

  count(record: RequestRecord, end: AnswerEnd): void {
    const { status, code } = end;
    const seconds = Number(process.hrtime.bigint() - record.started) / 1e9;
    this.#tally('http/1.1', status, code, record.domain, seconds);
    const { req } = record;
    const url = req.url ?? '/';
    const query = url.indexOf('?');
    this.#lines['http/1.1'].info(
      {
        domain: record.domain?.name,
        method: req.method,
        // The query string is left out: it often carries tokens.
        path: query < 0 ? url : url.slice(0, query),
        status,
        bytes: record.bodyBytes,
        durationMs: Math.round(seconds * 1e4) / 10,
        origin: record.origin,
        code,
        tls: record.tlsVersion,
        resumed: record.resumed,
        aborted: end.aborted ? true : undefined,
      },
      'request',
    );
  }
}

/** What the handler makes of a forward's failure (handler.ts): one function per handler, told the request's record. */
export type ForwardFailed = (record: RequestRecord, err: Error) => void;

/**
 * One request as the handler follows it: what its access line says, and the
 * options of its forward (it is both, so a request makes one object here).
 */
export class RequestRecord implements ForwardOptions {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly started: bigint;
  readonly domain: Domain | undefined;
  readonly tlsVersion: string | undefined;
  readonly resumed: boolean | undefined;
  readonly accounts: AccessAccounts;
  code: HttpErrorCode | undefined = undefined;
  origin: string | undefined = undefined;
  ended = false;
  // ForwardOptions
  readonly extraHeaders: Readonly<Record<string, string>>;
  readonly proto = 'https' as const;
  maxBodyBytes = 0;
  readonly trusted: TrustedPeers | undefined;
  awaitsContinue = false;
  bodyBytes = 0;
  cancelQueued: (() => void) | undefined = undefined;
  readonly failed: ForwardFailed;

  constructor(
    req: IncomingMessage,
    res: ServerResponse,
    started: bigint,
    domain: Domain | undefined,
    extraHeaders: Readonly<Record<string, string>>,
    trusted: TrustedPeers | undefined,
    accounts: AccessAccounts,
    failed: ForwardFailed,
  ) {
    this.req = req;
    this.res = res;
    this.started = started;
    this.domain = domain;
    this.extraHeaders = extraHeaders;
    this.trusted = trusted;
    this.accounts = accounts;
    this.failed = failed;
    const facts = tlsFacts(req.socket as TLSSocket & { [TLS_FACTS]?: TlsFacts });
    this.tlsVersion = facts.version;
    this.resumed = facts.resumed;
  }

  onOrigin(origin: string): void {
    this.origin = origin;
  }

  onFailure(err: Error): void {
    this.failed(this, err);
  }

  /** Once, when the answer went out whole or was cut (onAnswerEnd's rules). */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.cancelQueued?.();
    const { res } = this;
    // Its body turned bad and the parser's refusal went out instead (client-error.ts): that is what the client got.
    const refused = parserRefusal(res);
    if (refused !== undefined) {
      this.code = refused.code;
      return this.accounts.count(this, { aborted: false, code: refused.code, status: refused.status });
    }
    // An answer ended whose last bytes the client never took is cut by the send clock: its socket's end then leaves
    // nothing unwritten, and writableFinished says true.
    const stalled = stalledSend(res);
    const aborted = !res.writableFinished || stalled;
    // A client that stopped reading is cut by the send-stall timer before forward() can say so.
    const ours = this.code ?? (stalled ? 'KEYEDGE_HTTP_SEND_TIMEOUT' : undefined);
    this.code = aborted && ours === undefined ? 'KEYEDGE_HTTP_CLIENT_CLOSED' : ours;
    this.accounts.count(this, { aborted, code: this.code, status: aborted && !res.headersSent ? CLIENT_CLOSED_STATUS : res.statusCode });
  }
}

export const RECORD = Symbol('keyedge.request');
const TLS_FACTS = Symbol('keyedge.tls-facts');

/** What the access line says of a connection's TLS, read once per connection. */
interface TlsFacts {
  readonly version: string | undefined;
  readonly resumed: boolean | undefined;
}

function tlsFacts(socket: TLSSocket & { [TLS_FACTS]?: TlsFacts }): TlsFacts {
  // Read at the first request: after the connection closes, node's TLS accessors may touch freed state.
  socket[TLS_FACTS] ??= { version: socket.getProtocol?.() ?? undefined, resumed: socket.isSessionReused?.() ?? undefined };
  return socket[TLS_FACTS];
}

/** 'finish' and 'close' of an answer: module functions, so a request adds no closure for them. */
export function onRecordedAnswerEnd(this: ServerResponse & { [RECORD]?: RequestRecord }): void {
  this[RECORD]?.end();
}
