/**
 * Which HTTP/1.1 connections have a request head arriving: begun, not yet
 * parsed whole. Such a connection is not idle (nor to nginx, nor to Node's
 * closeIdleConnections): a change or the stop that closed it would drop a
 * request its client cannot tell unprocessed (retire.ts).
 *
 * Node's server keeps a list of its connections' parsers (ConnectionsList,
 * behind the `http.server.connections` symbol, started on 'listening'; its
 * header and request deadlines and closeIdleConnections read it), and
 * `active()` gives those whose message has begun, the same on Node 20, 22 and
 * 24 (Node 20's parser also has `duration()`, 22's and 24's not). A connection
 * that has sent nothing counts as begun from its start, hence also
 * `bytesRead` (of HTTP, not TLS) > 0. Not public API: with another shape the
 * answer is "not arriving", and such a connection is closed as an idle one,
 * as before; test/proxy-graceful-stop.test.ts pins it on the Node in use.
 *
 * Cost: a pass (a certificate change, the stop) reads each server's list
 * once, O(connections), whatever number of connections it asks about.
 */
import type { Socket } from 'node:net';

type Parser = object;
type ConnectionsList = { active(): Parser[] };
type ServedSocket = Socket & { parser?: Parser | null; server?: object };

/** A check for one pass over a worker's connections. */
export function headsArriving(): (socket: Socket) => boolean {
  const begun = new Map<object, ReadonlySet<Parser>>();
  return (socket) => {
    const { parser, server } = socket as ServedSocket;
    if (parser == null || server === undefined || socket.bytesRead === 0) return false;
    let parsers = begun.get(server);
    if (parsers === undefined) {
      parsers = new Set(connectionsOf(server)?.active() ?? []);
      begun.set(server, parsers);
    }
    return parsers.has(parser);
  };
}

function connectionsOf(server: object): ConnectionsList | undefined {
  const key = Object.getOwnPropertySymbols(server).find((s) => s.description === 'http.server.connections');
  const list = key === undefined ? undefined : (server as Record<symbol, unknown>)[key];
  return typeof (list as ConnectionsList | undefined)?.active === 'function' ? (list as ConnectionsList) : undefined;
}
