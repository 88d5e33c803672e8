/**
 * Moves an etcd client's watch stream off the member carrying it. etcd3
 * (1.1.2, pinned) runs every watch of a client over one gRPC stream to one
 * member and offers no way to leave it: the cancel of a watch is sent on that
 * stream and a stalled member never answers it, so the stream is never torn
 * down, and the next watch is attached to the same stream. A member cut off
 * from its quorum answers nothing either, with its connection up.
 *
 * This reaches into etcd3's watch manager and connection pool (the only
 * module that does) to have the member carrying the stream skipped by the
 * client's member breaker (member-breaker.ts) for a while, and then to close
 * the stream as etcd3 does on a stream error: each watcher of the client is
 * told 'disconnected', and the next watch attached (or etcd3's retry, after
 * watch-backoff.ts's wait) opens a new stream on a member the pool picks
 * among the others. The member is found by its address as the stream's peer
 * names it (an endpoint given as an IP address and port); one given by a host
 * name is not found, and the new stream goes to a member picked at random
 * (the same one, perhaps: the link then moves it again).
 */
import type { Etcd3 } from 'etcd3';

/** etcd3's WatchManager state while it has a stream. */
const CONNECTED = 2;

interface WatchManagerInternals {
  readonly state: number;
  readonly stream?: { getPeer(): string; removeAllListeners(event: string): unknown; on(event: string, listener: () => void): unknown };
  handleError(err: Error): void;
}

interface PoolInternals {
  readonly hosts: readonly { readonly host: string; readonly faultHandling: { skip?: () => void } }[];
}

/** Closes `client`'s watch stream, its member skipped for the next one; resolves the member's address, or undefined when there was no stream. */
export function moveWatchStream(client: Etcd3): string | undefined {
  const internals = client as unknown as { readonly watchManager?: WatchManagerInternals; readonly pool?: PoolInternals };
  const manager = internals.watchManager;
  if (manager === undefined || manager.state !== CONNECTED || manager.stream === undefined) return undefined;
  let peer: string;
  try {
    peer = manager.stream.getPeer();
  } catch {
    peer = 'unknown';
  }
  internals.pool?.hosts.find((h) => peer === h.host || peer.endsWith(`:${h.host}`))?.faultHandling.skip?.();
  // Its cancellation ends it with an error and an 'end' later on, each of which etcd3 would take for a failure of the
  // client's stream then (the new one, carrying the watch started meanwhile), closing that one too.
  const stream = manager.stream;
  stream.removeAllListeners('error');
  stream.removeAllListeners('end');
  stream.removeAllListeners('data');
  stream.on('error', () => undefined);
  manager.handleError(new Error(`watch stream moved off etcd member ${peer}: it showed no change etcd had made`));
  return peer;
}
