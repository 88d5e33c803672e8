/**
 * The HTTP side of one worker: what its TLS listeners hand secured
 * connections to, and its plain-HTTP port. One request handler and one
 * upgrade handler (http/handler.ts, http/upgrade.ts) behind an HTTP/1.1
 * server per listener (http/server.ts); the HTTP/2 sessions of every
 * listener (http2/sessions.ts); the redirect port (http/redirect.ts). All of
 * them route by the serving state's domains, to the same origin pools, and
 * keep forwarding headers from the same trusted peers.
 *
 * Why one place: HTTP/1.1, HTTP/2 and the redirect port must agree on
 * routing, HSTS and who is trusted; building them from one set of options
 * keeps them so. The worker (worker.ts) only plugs them into listeners and
 * hands `servers` to its stop (shutdown.ts).
 *
 * Cost: one node:http server per listener (never listening: its listener
 * feeds it), one HTTP/2 server per worker, one listening redirect server
 * when configured.
 */
import type http from 'node:http';
import type { ProxyConfig } from '../config/proxy-schema.js';
import type { Logger } from '../keyserver/shared/log.js';
import type { ChallengeAnswers } from './acme/challenges.js';
import type { ExpectingHandler } from './http/expect.js';
import { createRequestHandler, type Domain } from './http/handler.js';
import type { OriginPools } from './http/origins.js';
import { createHttp1Server, type RedirectPort, startRedirectServer } from './http/server.js';
import { TrustedPeers } from './http/trusted-peers.js';
import { Http1Connections } from './http/retire.js';
import { createUpgradeHandler } from './http/upgrade.js';
import { http2Connection, type Http2Options, Http2Sessions } from './http2/sessions.js';
import type { ProxyMetrics } from './metrics.js';
import type { WorkerConnectionCaps } from './tls/connection-limits.js';
import type { SecureConnectionHandler } from './tls/connection.js';
import type { NameIndex } from './tls/names.js';

export interface HttpFrontOptions {
  /** The serving state's domains now: read per request, so a reload applies to the next one. */
  readonly domains: () => NameIndex<Domain>;
  readonly pools: OriginPools;
  readonly log: Logger;
  readonly metrics: ProxyMetrics;
  /**
   * Whether what serves now still covers every name of the certificate a connection was served for `serverName`
   * (tls/connection.ts `stillCovers`): HTTP/2 connections it no longer covers get GOAWAY (http2/sessions.ts), HTTP/1.1
   * ones are closed (http/retire.ts).
   */
  readonly stillCovers: (serverName: string | undefined, certificateNames: readonly string[]) => boolean;
}

export class HttpFront {
  /** Peers whose forwarding headers are kept (config `forwarding.trustedProxies`). */
  readonly trustedPeers: TrustedPeers;
  /** Every listener's HTTP/2 connections: `retire` after a reload, `close` (GOAWAY) at stop. */
  readonly http2: Http2Sessions;
  /** Every listener's HTTP/1.1 connections: `retire` after a reload, `closeAll` at stop. */
  readonly http1Connections: Http1Connections;
  /** The listener's handler of connections that chose `h2` (RFC 9113 §3.2). */
  readonly h2: SecureConnectionHandler;
  readonly #config: ProxyConfig;
  readonly #options: HttpFrontOptions;
  readonly #handler: ExpectingHandler;
  readonly #upgrade: ReturnType<typeof createUpgradeHandler>;
  readonly #servers: http.Server[] = [];
  readonly #redirectPorts: RedirectPort[] = [];

  constructor(config: ProxyConfig, options: HttpFrontOptions) {
    const { limits } = config;
    this.#config = config;
    this.#options = options;
    this.trustedPeers = new TrustedPeers(config.forwarding.trustedProxies);
    const routing = { ...options, hstsMaxAgeSeconds: config.tls.hstsMaxAgeSeconds, trustedPeers: this.trustedPeers };
    this.#handler = createRequestHandler({ ...routing, maxBodyBytes: limits.maxBodyBytes });
    this.#upgrade = createUpgradeHandler({ ...routing, tunnelIdleTimeoutMs: limits.tunnelIdleTimeoutMs });
    const { stillCovers } = options;
    this.http1Connections = new Http1Connections((c) => stillCovers(c.serverName, c.certificateNames), options.metrics);
    const stillCovered: Http2Options['stillCovered'] = (c) => stillCovers(c.servername, c.certificateNames);
    const http2 = new Http2Sessions({ ...routing, maxBodyBytes: limits.maxBodyBytes, limits, stillCovered });
    this.http2 = http2;
    this.h2 = (socket, connection) => http2.handle(socket, http2Connection(socket, connection));
  }

  /**
   * After a serving-state change: every connection whose certificate no longer covers a name it was served is ended,
   * HTTP/2 ones with GOAWAY, HTTP/1.1 ones closed (at once when idle, after the answer in progress otherwise).
   */
  retire(): void {
    this.http2.retire();
    this.http1Connections.retire();
  }

  /**
   * The worker's graceful stop begins: HTTP/2 connections get GOAWAY NO_ERROR, HTTP/1.1 ones, the plain-HTTP port's
   * included, are closed (at once when idle, after the answers to the requests they already took otherwise, the last
   * with `Connection: close`); those that come later as their first answer ends, or at once without a request.
   */
  stop(): void {
    this.http2.close();
    this.http1Connections.closeAll();
  }

  /** A new listener's HTTP/1.1 server: its handler of connections that chose http/1.1 or no ALPN protocol. */
  http1(): SecureConnectionHandler {
    const http1 = createHttp1Server(this.#config.limits, this.#handler, this.#upgrade, this.http1Connections);
    this.#servers.push(http1.server);
    return http1.take;
  }

  /**
   * Starts the plain-HTTP port (redirects to `httpsPort`, ACME HTTP-01 answers) under the worker's connection `caps`,
   * shared with its TLS listeners; resolves with its bound port.
   */
  async startRedirect(
    address: { readonly host: string; readonly port: number },
    httpsPort: number,
    caps: WorkerConnectionCaps,
    challenges?: ChallengeAnswers,
  ): Promise<number> {
    const redirect = await startRedirectServer(
      address,
      {
        ...this.#options,
        trustedPeers: this.trustedPeers,
        maxBodyBytes: this.#config.limits.maxBodyBytes,
        httpsPort,
        ...(challenges === undefined ? {} : { challenges }),
      },
      this.#config.limits,
      caps,
      this.http1Connections,
    );
    this.#servers.push(redirect.server);
    this.#redirectPorts.push(redirect);
    return redirect.port;
  }

  /** The plain-HTTP port, if started: the stop waits for its connections as for the TLS listeners' (shutdown.ts). */
  get redirectPorts(): readonly RedirectPort[] {
    return this.#redirectPorts;
  }

  /** Every HTTP server made here, for the worker's stop. */
  get servers(): readonly http.Server[] {
    return this.#servers;
  }
}
