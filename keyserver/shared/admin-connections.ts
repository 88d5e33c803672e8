/**
 * The connections an admin HTTP listener (the key server's, the proxy's)
 * holds at once: at most `cap`. A newcomer at the cap closes the connection
 * that has waited longest with no answer in progress (nothing sent yet, a head
 * still arriving, or idle between keep-alive requests); only when every one
 * has an answer in progress is the newcomer closed instead.
 *
 * Why a cap: each connection is a file descriptor of a process every client
 * depends on. Without one, any local user opening a few hundred connections
 * to the key server's admin port (loopback, open to every user of the host,
 * unlike the 0600 unix socket) took the descriptors it needs to accept the
 * proxy's connections and to let the token open its files: the proxy's
 * connections were reset at accept (libuv closes what it cannot accept).
 *
 * Why evict rather than refuse: refusing the newcomer at the cap let a client
 * that holds `cap` connections with heads sent a byte at a time (slowloris),
 * each reopened at the head deadline, shut every scraper and readiness probe
 * out for as long as it liked. As nginx reuses its idle and not-yet-active
 * connections when worker_connections run out, the oldest one doing nothing
 * makes room: a real client sends its head within milliseconds of connecting,
 * so only a flood of `cap` newcomers within that time can push it out.
 *
 * A connection with more than MAX_ANSWERS answers in progress is closed. Node
 * answers pipelined requests concurrently, every request of a read at once:
 * 60 connections each writing 1,800 `GET /metrics` in one go and reading
 * nothing grew the proxy's primary by 320 MB of answers waiting to be sent
 * (the key server's admin, which renders each scrape anew, worse). Scrapers,
 * probes and curl send one request at a time, as nginx serves them.
 *
 * An answer the client does not take is no answer in progress: at the cap,
 * with none waiting, the connection whose answer has been left for longest
 * with some of it still unsent (the kernel's buffers for it full) is closed
 * for the newcomer, once STALLED_MS have passed since that answer began.
 * Otherwise 16 clients sending `GET /metrics` one at a time and reading
 * nothing (some 4 MB each, what loopback's buffers hold) had an answer in
 * progress for ever (no timeout runs once a request is whole), and every
 * scraper and probe after them was closed at accept. An answer still being
 * made (an upload, an ACME order) has nothing unsent: it is never closed.
 *
 * The answers left unsent across every connection are bounded too: past
 * `unsentBytes` (MAX_UNSENT_BYTES) as an answer begins, the connection holding
 * the most unsent is closed, until they are within it. MAX_ANSWERS alone let
 * 64 connections × 16 pipelined `GET /certs` of a large store, never read,
 * hold 1,024 answers of megabytes each: the proxy's primary died of an
 * out-of-memory abort (no graceful stop). A client reading what it asked for
 * holds little unsent, one that pipelines and reads nothing the most.
 *
 * Call after the server's own 'connection' listeners are in place (Node's,
 * from http.createServer). The handler marks each request with `answering`;
 * one it refuses with `hold` false, so its connection stays evictable: a
 * change without the admin token has its body read and dropped for up to 5 s
 * before its 401 (admin-body.ts), and 64 such bodies sent a byte at a time
 * held every place as surely as 64 slow heads. It still counts toward
 * MAX_ANSWERS: 1,800 such changes in one write were otherwise all answered.
 */
import type http from 'node:http';
import type net from 'node:net';

export interface AdminConnections {
  /**
   * Marks the request's connection as answering until its response closes: it is not closed for a newcomer meanwhile.
   * False when the connection is closed (by this request, past MAX_ANSWERS): the request is not to be answered. Node
   * still hands over the rest of the requests it read with it. With `hold` false (a request refused), the answer counts
   * toward MAX_ANSWERS only: its connection stays one a newcomer may close.
   */
  readonly answering: (req: http.IncomingMessage, res: http.ServerResponse, hold?: boolean) => boolean;
  /** Connections open now. */
  readonly size: () => number;
  /** Whether an answer is in progress on `socket` (admin-upgrade.ts: one more would be written into its middle). */
  readonly busy: (socket: net.Socket) => boolean;
}

/** Answers one connection may have in progress (pipelined requests); past it the connection is closed. */
export const MAX_ANSWERS = 16;
/**
 * How long an answer the client leaves unsent may hold its connection from a newcomer at the cap. A scraper reads what
 * it asked for as it comes: the kernel holds megabytes for it, so an answer still unsent after this is one nobody reads.
 */
export const STALLED_MS = 3_000;
/**
 * Bytes of answers the clients of one listener may leave unsent, across its connections. Far past what scrapers, probes
 * and an operator leave: a /certs of 100,000 entries (README's large stores, some 50 MB) read slowly by a few clients at
 * once. Counted per answer: answers sharing one rendered Buffer (admin-http.ts jsonOnce) count once each.
 */
export const MAX_UNSENT_BYTES = 256 * 1024 * 1024;

export function capAdminConnections(server: http.Server, cap: number, unsentBytes = MAX_UNSENT_BYTES): AdminConnections {
  const open = new Set<net.Socket>();
  /** Open connections with no answer in progress; insertion order is the order they began waiting, oldest first. */
  const waiting = new Set<net.Socket>();
  /** Answers in progress per connection (pipelined requests each have one), refused ones included. */
  const answers = new Map<net.Socket, Set<http.ServerResponse>>();
  /** Of those, the answers that hold their connection from a newcomer (requests served). */
  const held = new Map<net.Socket, number>();
  /** When each connection's answers began to be in progress (monotonic, ms): since it last had none. */
  const since = new Map<net.Socket, number>();

  const answering = (req: http.IncomingMessage, res: http.ServerResponse, hold = true): boolean => {
    const socket = req.socket;
    if (!open.has(socket) || socket.destroyed) return false;
    // Refused requests count too: 1,800 changes without the token in one write were all answered at once.
    const mine = answers.get(socket) ?? new Set<http.ServerResponse>();
    if (mine.size >= MAX_ANSWERS) {
      forget(socket);
      socket.destroy();
      return false;
    }
    if (!withinUnsentBytes(socket)) return false;
    mine.add(res);
    answers.set(socket, mine);
    res.once('close', () => {
      mine.delete(res);
      if (mine.size === 0 && answers.get(socket) === mine) answers.delete(socket);
    });
    if (!hold) return true;
    const holding = (held.get(socket) ?? 0) + 1;
    held.set(socket, holding);
    if (holding === 1) since.set(socket, performance.now());
    waiting.delete(socket);
    res.once('close', () => {
      const holding = (held.get(socket) ?? 1) - 1;
      if (holding > 0) return void held.set(socket, holding);
      held.delete(socket);
      since.delete(socket);
      // To the back of the order: it waits from now.
      if (open.has(socket)) waiting.add(socket);
    });
    return true;
  };

  // Node's listeners set up the HTTP parser: they run for admitted connections only.
  const serve = server.listeners('connection') as ((socket: net.Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: net.Socket) => {
    if (open.size >= cap) {
      const oldest = waiting.values().next().value ?? stalled();
      if (oldest === undefined) return void socket.destroy();
      forget(oldest);
      oldest.destroy();
    }
    open.add(socket);
    waiting.add(socket);
    socket.once('close', () => forget(socket));
    for (const listener of serve) listener.call(server, socket);
  });

  /** The connection whose answer its client has left unsent for longest, past STALLED_MS; undefined when none. */
  function stalled(): net.Socket | undefined {
    const before = performance.now() - STALLED_MS;
    // Insertion order is the order the answers began, oldest first.
    for (const [socket, began] of since) {
      if (began > before) return undefined;
      // Bytes the kernel would not take yet: the client has stopped reading (or reads slower than anyone scrapes).
      if (socket.writableLength > 0) return socket;
    }
    return undefined;
  }

  /**
   * Closes the connections holding the most unsent bytes until all of them hold no more than `unsentBytes`, before an
   * answer on `asking` begins; false when `asking` was closed. Checked as each answer begins: a total past the bound by
   * at most the one answer made after the check.
   */
  function withinUnsentBytes(asking: net.Socket): boolean {
    for (;;) {
      let total = 0;
      let most: net.Socket | undefined;
      let mostBytes = 0;
      for (const socket of open) {
        const bytes = unsent(socket);
        total += bytes;
        if (bytes > mostBytes) [most, mostBytes] = [socket, bytes];
      }
      if (total <= unsentBytes || most === undefined) return true;
      forget(most);
      most.destroy();
      if (most === asking) return false;
    }
  }

  /** What `socket`'s client has not taken yet: in the socket, and in the pipelined answers queued behind the one it sends. */
  function unsent(socket: net.Socket): number {
    let bytes = socket.writableLength;
    // An answer waiting its turn keeps its bytes until the ones before it are sent: its socket is not assigned yet.
    for (const res of answers.get(socket) ?? []) if (res.socket === null) bytes += res.writableLength;
    return bytes;
  }

  function forget(socket: net.Socket): void {
    open.delete(socket);
    waiting.delete(socket);
    answers.delete(socket);
    held.delete(socket);
    since.delete(socket);
  }
  return { answering, size: () => open.size, busy: (socket) => (answers.get(socket)?.size ?? 0) > 0 };
}
