/**
 * The key server's lifecycle: open the token, listen, serve, shut down.
 *
 * `startKeyserver()` resolves once every listener accepts; any start-up fault
 * (module path, missing token, wrong PIN, unreadable TLS files, port in use)
 * rejects with a KeyedgeError naming it, after releasing what was opened.
 *
 * `close()` is the graceful shutdown (SIGTERM): listeners stop accepting, new
 * requests on open connections are answered SHUTTING_DOWN, requests already
 * running finish (up to `limits.shutdownGraceMs`), then connections (the
 * admin listener's too, a request half-sent included), sessions and the token
 * are closed. Signs still inside the token at the end of the
 * grace (a token that stopped answering) are left there: the token is not
 * finalized under them, the stop is logged, and `close()` says how many.
 * A call into the token hung on the event loop itself (an inline sign, a key
 * scan, a session closed by this stop) stops everything, this stop included:
 * a watch on a thread of its own logs it and, past the same grace, ends the
 * process (loop-watch.ts).
 *
 * Connections are admitted by admission.ts (caps overall and per client
 * identity; a newcomer at a cap evicts a stalled or idle connection rather
 * than being refused); mutual-TLS handshakes, which have no identity yet, are
 * capped apart (handshakes.ts: past maxConnections pending, the oldest is
 * closed); what is refused, evicted or timed out is counted in
 * `connections_dropped_total` and logged within the LogLimiter's rate, per
 * client rule where the connection has one.
 *
 * The token is opened again, without a restart and without closing client
 * connections, when it is no longer the one opened (live-token.ts); a sign
 * hung in the token that holds such a reopen past limits.tokenStallExitMs
 * ends the process (SIGKILL) for its supervisor to start it again.
 */
import { mkdirSync } from 'node:fs';
import type http from 'node:http';
import type net from 'node:net';
import type tls from 'node:tls';
import type { KeyserverConfig } from '../../config/schema.js';
import { createLogger, type Logger } from '../shared/log.js';
import { LoopWatch } from '../token/loop-watch.js';
import { SigningWorkers, stuckAfterMs } from '../token/sign-workers.js';
import { Token } from '../token/token.js';
import { tokenOptions } from '../token/open-options.js';
import { startAdmin } from './admin.js';
import { exitBySignal } from './exit-by-signal.js';
import { Admission } from './admission.js';
import { isEvictedHandshake, PendingHandshakes } from './handshakes.js';
import { type ClientIdentity, tlsIdentity, unixIdentity } from './authz.js';
import { KeyserverConnection } from './connection.js';
import { fitLimits } from './fd-budget.js';
import { KeyStore } from './keystore.js';
import { LiveToken, type TokenParts } from './live-token.js';
import { RefusedPin } from './refused-pin.js';
import { listenTls, listenUnix } from './listeners.js';
import { LogLimiter } from '../shared/log-limiter.js';
import { looseSecretFile } from '../shared/secret-file.js';
import { type DropReason, KeyserverMetrics } from './metrics.js';
import { SigningService } from './service.js';

export interface RunningKeyserver {
  readonly unixPath: string | undefined;
  readonly tcpPort: number | undefined;
  readonly adminPort: number | undefined;
  readonly metrics: KeyserverMetrics;
  readonly log: Logger;
  /** Looks for keys added to or removed from the token since the last scan, and opens the token again if it was replaced. */
  rescanKeys(): void;
  /** Graceful shutdown; safe to call more than once. */
  close(): Promise<ShutdownResult>;
}

export interface ShutdownResult {
  /**
   * Signs the token had not answered by the end of the grace: their threads are still inside the module, so the
   * token was left open, and the process cannot end normally (Node joins its threads on exit): its owner ends it.
   */
  readonly signsLeftInToken: number;
  /** Signing threads still inside the module at the end of the grace (those signs', and any held in its start). */
  readonly threadsLeftInToken: number;
}

export interface StartOptions {
  readonly log?: Logger;
}

export async function startKeyserver(config: KeyserverConfig, options: StartOptions = {}): Promise<RunningKeyserver> {
  const log = options.log ?? createLogger('keyserver', config.log.level);
  mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const openOptions = tokenOptions(config, (message) => log.warn(message));
  // One for the process, watching from before the token is opened (a token that does not answer holds a start as well:
  // warned about), and outliving a token opened again. Once serving, a call held limits.tokenStallExitMs ends the process.
  const stuckAfter = stuckAfterMs(config.limits.requestTimeoutMs);
  const loopWatch = new LoopWatch(log, stuckAfter, config.limits.tokenStallExitMs);
  const stopLoopWatch = (): Promise<void> => loopWatch.stop();
  let token: Token;
  try {
    token = Token.open(openOptions);
  } catch (err) {
    await stopLoopWatch();
    throw err;
  }
  const metrics = new KeyserverMetrics();
  const closers: (() => Promise<void> | void)[] = [() => token.close(), stopLoopWatch];
  try {
    let live: LiveToken | undefined;
    const onStuck = (delta: number): void => void metrics.signThreadsStuck.inc(delta);
    const stuck = { stuckAfterMs: stuckAfter, onStuck };
    const build = (opened: Token): TokenParts => {
      // The keys gauge reads the open token's store at each scrape (service.ts): none while the token is not open.
      const keys = new KeyStore(opened, log, undefined, undefined, (cause) => live?.suspect(cause));
      return { token: opened, keys, signers: new SigningWorkers(opened, openOptions.modulePath, config.pkcs11.sessions, log, stuck) };
    };
    const parts = build(token);
    const { keys, signers } = parts;
    closers.unshift(() => signers.close());
    // Ready means ready to sign at full speed: the threads load pkcs11js first (a thread that failed is restarting).
    // Not when the token is opened again: the event loop signs meanwhile.
    await signers.ready();
    const refusedPin = new RefusedPin();
    live = new LiveToken(
      parts,
      () => reopen(config, build, refusedPin),
      log,
      (result) => metrics.tokenReopens.inc({ result }),
      // A reopen held past this by a sign the token does not answer ends the process, as a call held on the event loop does.
      { afterMs: config.limits.tokenStallExitMs, end: () => exitBySignal(log, 'SIGKILL') },
    );
    const liveToken = live;
    // From here the live token owns the token and its signers, first or reopened.
    const closeToken = (): Promise<void> => liveToken.close();
    closers.splice(0, closers.length, closeToken, stopLoopWatch);
    const limiter = new LogLimiter({ intervalMs: config.log.rateLimitIntervalSeconds * 1000, burst: config.log.rateLimitBurst });
    const service = new SigningService({ token: liveToken, metrics, log, limiter, requestTimeoutMs: config.limits.requestTimeoutMs });
    const connections = new Set<KeyserverConnection>();
    // The caps admission enforces must be below the file limit, or the kernel refuses newcomers before admission sees them.
    const limits = fitLimits(config.limits, config.listen.tcp !== null, log);
    const admission = new Admission<KeyserverConnection>(limits);
    /** `rule`: the client rule (authz.ts) of the connection dropped, when it has one: its lines are its own, so one client's flood of them does not drop another's. */
    const dropped = (reason: DropReason, fields: Record<string, unknown>, msg: string, rule?: string): void => {
      metrics.connectionDropped(reason);
      limiter.warn(log, rule === undefined ? reason : `${reason}:${rule}`, { reason, ...fields }, msg);
    };
    const accept = (socket: net.Socket, client: ClientIdentity): void => {
      const connection: KeyserverConnection = new KeyserverConnection(socket, client, {
        service,
        metrics,
        log,
        limiter,
        limits,
        onState: (state) => admission.update(connection, state),
      });
      socket.on('error', (err) => log.debug({ err, client: client.name }, 'client connection error'));
      // Identity: the client rule's name over mutual TLS (an unmatched certificate is its own identity, by
      // SPKI); one for the whole unix socket, since Node cannot read the peer's uid (SO_PEERCRED).
      const admitted = admission.admit(connection, `${client.transport}:${client.name}`);
      if (!admitted.admitted) {
        const which = admitted.cap === 'client_cap' ? `this client's ${limits.maxConnectionsPerClient}` : `all ${limits.maxConnections}`;
        dropped(
          `refused_${admitted.cap}`,
          { client: client.name, transport: client.transport },
          `connection refused: ${which} connections are busy`,
          client.rule,
        );
        socket.destroy();
        return;
      }
      for (const { member, cap } of admitted.evicted) {
        const which = cap === 'client_cap' ? 'this client is at limits.maxConnectionsPerClient' : 'the key server is at limits.maxConnections';
        dropped(
          `evicted_${cap}`,
          { client: member.client.name, transport: member.client.transport, state: member.state },
          `connection closed to admit a new one: ${which}; this one was ${member.state}`,
          member.client.rule,
        );
        member.socket.destroy();
      }
      connections.add(connection);
      metrics.connections.inc({ transport: client.transport });
      socket.on('close', () => {
        admission.remove(connection);
        connections.delete(connection);
        metrics.connections.dec({ transport: client.transport });
      });
    };

    const servers: net.Server[] = [];
    let unixPath: string | undefined;
    let tcpPort: number | undefined;
    const { unix, tcp } = config.listen;
    if (unix !== null) {
      const identity = unixIdentity(unix.keys);
      const server = await listenUnix(unix.path, unix.mode, (socket) => accept(socket, identity));
      servers.push(server);
      closers.unshift(() => void server.close());
      unixPath = unix.path;
    }
    if (tcp !== null) {
      // The listener's private key, like the PIN file: one others may read is named at start (secret-file.ts).
      const loose = looseSecretFile('the TLS key file', tcp.key);
      if (loose !== undefined) log.warn({ setting: 'listen.tcp.key' }, loose);
      const handshakes = new PendingHandshakes(limits.maxConnections, () =>
        dropped('evicted_handshake', { transport: 'tls' }, 'TLS handshake closed to admit a new connection: limits.maxConnections handshakes pending'),
      );
      const server: tls.Server = await listenTls(
        { ...tcp, handshakeTimeoutMs: config.limits.tlsHandshakeTimeoutMs, source: config.source },
        (socket) => {
          handshakes.finished(socket);
          const cert = socket.getPeerX509Certificate();
          // Verified here rather than by rejectUnauthorized, so the log says why.
          if (!socket.authorized || cert === undefined) {
            metrics.tlsHandshakeFailures.inc();
            const reason = String(socket.authorizationError ?? 'no client certificate');
            limiter.warn(log, 'tls_client_refused', { reason, subject: loggedSubject(cert?.subject) }, 'mutual TLS client refused');
            socket.destroy();
            return;
          }
          accept(socket, tlsIdentity(cert, config.clients));
        },
        (err, socket) => {
          // Node reports a handshake timeout here but leaves the socket open.
          socket.destroy();
          // Counted and logged as an eviction already.
          if (isEvictedHandshake(err)) return;
          metrics.tlsHandshakeFailures.inc();
          limiter.warn(log, 'tls_client_error', { code: (err as NodeJS.ErrnoException).code }, `mutual TLS client refused: ${err.message}`);
        },
      );
      server.on('connection', (raw: net.Socket) => handshakes.started(raw));
      // A ceiling on sockets Node accepts, a backstop: established ones are at most maxConnections (admission),
      // handshakes as many (handshakes.ts); the third share is for sockets closed but not yet counted out, as
      // when a burst of newcomers evicts handshakes within one turn of the event loop.
      server.maxConnections = 3 * limits.maxConnections;
      server.on('drop', (data?: { remoteAddress?: string }) =>
        dropped('tls_listener_full', { transport: 'tls', remoteAddress: data?.remoteAddress }, 'connection refused: the TLS listener is full'),
      );
      servers.push(server);
      closers.unshift(() => void server.close());
      const address = server.address();
      tcpPort = typeof address === 'object' && address !== null ? address.port : tcp.port;
    }

    let admin: http.Server | undefined;
    if (config.admin !== null) {
      admin = await startAdmin(config.admin.host, config.admin.port, metrics.registry, () => {
        // Not healthy while the token is being opened again, or could not be, or while every signing thread is stuck
        // in it: every sign is refused then, and a load balancer should send them to another key server.
        const parts = liveToken.parts;
        return parts !== undefined && !parts.signers.refusingSigns;
      });
      const server = admin;
      closers.unshift(
        () =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            // Reached past the grace: a request still unfinished (a stalled scraper) would hold the stop for Node's headersTimeout.
            server.closeAllConnections();
          }),
      );
    }
    const usageTimer = setInterval(() => logUsage(service, log), config.log.keyUsageIntervalSeconds * 1000).unref();

    log.info(
      { unix: unixPath, tcp: tcpPort, admin: admin?.address(), token: token.label, keys: keys.size, sessions: signers.size, threadsUp: signers.threadsUp },
      'key server ready',
    );
    // Serving: from now on a call the token holds on the event loop past limits.tokenStallExitMs ends the process.
    loopWatch.arm();

    let closing: Promise<ShutdownResult> | undefined;
    const close = (): Promise<ShutdownResult> => {
      closing ??= (async () => {
        log.info({ inFlight: [...connections].reduce((n, c) => n + c.inFlight, 0) }, 'key server shutting down');
        service.drain();
        for (const server of servers) server.close();
        clearInterval(usageTimer);
        const grace = new Promise<void>((resolve) => setTimeout(resolve, config.limits.shutdownGraceMs).unref());
        await Promise.race([Promise.all([...connections].map((c) => c.idle())), grace]);
        // The last answers are still corked until the next tick: end, don't destroy.
        await new Promise((resolve) => setImmediate(resolve));
        for (const connection of connections) connection.socket.end();
        // Signs answered DEADLINE_EXCEEDED may still be running in the token.
        await Promise.race([liveToken.drained(), grace]);
        for (const connection of connections) connection.socket.destroy();
        logUsage(service, log);
        // Past the grace, a sign still in the token is one it is not answering: closing the token would wait for it
        // for ever (no C_Finalize under a running call, PKCS#11 v2.40 §5.4), and no client is served by waiting. The
        // same for a thread held in its start (C_Initialize): stopping it would wait for it to come back from the token.
        const held = liveToken.inToken();
        if (held.threads > 0) {
          log.error(
            {
              signsInToken: held.signs,
              threadsInToken: held.threads,
              calls: held.calls,
              longestMs: held.longestMs,
              shutdownGraceMs: config.limits.shutdownGraceMs,
            },
            'key server stopping with signs still inside the token past limits.shutdownGraceMs (the token is not answering): the token is left open, not finalized',
          );
          await runClosers(closers.filter((closer) => closer !== closeToken));
          return { signsLeftInToken: held.signs, threadsLeftInToken: held.threads };
        }
        await runClosers(closers);
        log.info('key server stopped');
        return { signsLeftInToken: 0, threadsLeftInToken: 0 };
      })();
      return closing;
    };
    const adminAddress = admin?.address();
    return {
      unixPath,
      tcpPort,
      adminPort: typeof adminAddress === 'object' && adminAddress !== null ? adminAddress.port : undefined,
      metrics,
      log,
      rescanKeys: () => {
        // The operator may have set the token's PIN to the one configured: worth one login again.
        refusedPin.forget();
        liveToken.suspect('SIGHUP');
        liveToken.parts?.keys.rescan();
      },
      close,
    };
  } catch (err) {
    await runClosers(closers);
    throw err;
  }
}

/**
 * The token opened again (one attempt: the next request tries again), PIN read again, and its parts built; closed
 * again if they fail. Never with a PIN the token refused (refused-pin.ts).
 */
function reopen(config: KeyserverConfig, build: (token: Token) => TokenParts, refusedPin: RefusedPin): TokenParts {
  const attempt = refusedPin.attempt(tokenOptions(config));
  let token: Token;
  try {
    token = Token.open(attempt.options, 1);
  } catch (err) {
    attempt.failed(err);
    throw err;
  }
  refusedPin.forget();
  try {
    return build(token);
  } catch (err) {
    token.close();
    throw err;
  }
}

/** Characters of a refused client certificate's subject that reach the log. */
const LOGGED_SUBJECT_CHARS = 256;

/**
 * A refused certificate's subject, cut to LOGGED_SUBJECT_CHARS: the client chose it (any self-signed certificate is
 * refused here), and whole it made lines of tens of KB, the log's rate limit counting lines, not bytes.
 */
function loggedSubject(subject: string | undefined): string | undefined {
  if (subject === undefined || subject.length <= LOGGED_SUBJECT_CHARS) return subject;
  return `${subject.slice(0, LOGGED_SUBJECT_CHARS)}… (${subject.length} characters)`;
}

function logUsage(service: SigningService, log: Logger): void {
  const usage = service.takeUsage();
  if (usage.size > 0) log.info({ signsByKeyId: Object.fromEntries(usage) }, 'key usage since the last report');
}

async function runClosers(closers: (() => Promise<void> | void)[]): Promise<void> {
  for (const closer of closers) {
    try {
      await closer();
    } catch {
      // Shutdown continues past a part that failed to close: the rest still must.
    }
  }
}
