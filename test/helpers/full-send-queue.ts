/**
 * Brings the proxy to the moment an answer's last bytes wait in its own
 * buffer, with the kernel's send buffer to the client full: the case where
 * the client has taken little of an answer the proxy has read whole. Loopback
 * buffers take megabytes, and the proxy's writes go on in bursts of a third
 * of its send buffer, so a whole answer read while some of it is still
 * unsent by the proxy itself does not come by chance: a scripted origin sends
 * a chunked answer piece by piece to a client that reads nothing, and watches
 * the kernel's queues (Linux's /proc/net/tcp) to stop at the first piece the
 * kernel no longer takes whole. Pieces are under Node's 16 KiB mark, so the
 * proxy's relay never waits for a 'drain' (which would only come once the
 * kernel takes a third of its buffer again).
 */
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import { getDefaultHighWaterMark } from 'node:stream';
import { sleep } from './basics.js';

/** One piece of the answer: under the 16 KiB mark, so the relay writes each at once (its write returns true). */
export const PIECE = 12 * 1024;
/** The chunk that fills the client's receive buffer first (its window then stays shut). */
export const FIRST = 2 * 1024 * 1024;

/** The send (tx) and receive (rx) queues of loopback TCP connections, by "localPort>remotePort" (Linux's /proc/net/tcp). */
export function tcpQueues(): Map<string, { tx: number; rx: number }> {
  const queues = new Map<string, { tx: number; rx: number }>();
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (!fields[1]?.startsWith('0100007F:') || !fields[2]?.startsWith('0100007F:')) continue;
    const port = (address: string): number => Number.parseInt(address.slice(9), 16);
    const [tx, rx] = fields[4]!.split(':');
    queues.set(`${port(fields[1])}>${port(fields[2])}`, { tx: Number.parseInt(tx!, 16), rx: Number.parseInt(rx!, 16) });
  }
  return queues;
}

const chunk = (data: Buffer): Buffer => Buffer.concat([Buffer.from(`${data.length.toString(16)}\r\n`), data, Buffer.from('\r\n')]);

export interface Filled {
  /** The body bytes sent (the relayed answer has no length: its body is these bytes, then the connection's end). */
  readonly body: number;
  /** What the kernel held for the client (its send and receive queues) when the last piece stopped being taken whole. */
  readonly queued: number;
  /** Whether a piece was left (partly) in the proxy's own buffer: false, the state was not reached (the test cannot show it). */
  readonly stuck: boolean;
  /**
   * Whether the kernel has since taken more for the client than it held when `stuck` was judged. While the client
   * reads nothing, that is the proxy's close (a TLS close_notify, a FIN: some 25 bytes) when it cut the client, or
   * the rest of the answer when it had only not yet written what it read (starved of CPU for STILL_MS on a loaded
   * machine): the state was not reached after all, and the answer may end whole.
   */
  grewSince(): boolean;
}

/**
 * Sends, from the origin's side `origin` of a chunked answer whose head is out, pieces until the proxy's connection to
 * the client (`proxyPort` to `clientPort`) no longer takes one whole, then ends the answer. The client must read nothing.
 */
/** How long nothing may move for the rest of a piece to be taken as waiting in the proxy. */
const STILL_MS = 500;

export async function fillThenEnd(origin: net.Socket, proxyPort: number, clientPort: number): Promise<Filled> {
  /** What the kernel holds for the client (the proxy's send queue, the client's receive queue), and what the proxy has not read of the origin. */
  const look = (): { held: number; unread: number } => {
    const queues = tcpQueues();
    const held = (queues.get(`${proxyPort}>${clientPort}`)?.tx ?? 0) + (queues.get(`${clientPort}>${proxyPort}`)?.rx ?? 0);
    return { held, unread: queues.get(`${origin.remotePort}>${origin.localPort}`)?.rx ?? 0 };
  };
  let body = FIRST;
  origin.write(chunk(Buffer.alloc(FIRST, 'f')));
  // Until the proxy has read it all (or could not: see below), then a moment for its last writes.
  for (let waited = 0; waited < 5000 && (origin.writableLength > 0 || look().unread > 0); waited += 20) await sleep(20);
  await sleep(100);
  // All of it with the kernel but what the paused client's TLS socket read (its stream mark, 16 KiB on Node 20 and
  // 64 KiB from Node 22, and what its TLS layer holds besides: 61 KiB in all seen on Node 20, 77 KiB on Node 24):
  // with less room than that, pieces would pile up behind a write the relay waits on, and the state is out of reach.
  const notReached = (): Filled => ({ body, queued: look().held, stuck: false, grewSince: () => false });
  if (look().held < FIRST - getDefaultHighWaterMark(false) - 64 * 1024) return notReached();
  let stuck = false;
  const piece = chunk(Buffer.alloc(PIECE, 's'));
  // At most 64 MiB: far over any loopback send buffer (Linux's tcp_wmem bound is 4 MiB by default).
  for (let i = 0; i < (64 * 1024 * 1024) / PIECE && !stuck; i++) {
    const before = look().held;
    origin.write(piece);
    body += PIECE;
    let last = before;
    /** Since when nothing moved: a wall-clock span, not a count of looks, which a proxy starved of CPU for a few ms fooled. */
    let stillSince = Date.now();
    // Neither taken nor read (the relay waits for a 'drain' after all): the state is out of reach, not an endless wait.
    const deadline = Date.now() + 5000;
    for (;;) {
      if (Date.now() > deadline) return notReached();
      await sleep(1);
      const now = look();
      if (now.held - before >= PIECE) break;
      // Read by the proxy, yet not taken whole by the kernel for STILL_MS: the rest waits in the proxy. Counted in looks
      // (15, a few ms), a loaded machine's proxy that had not yet written what it read passed for one the kernel refused,
      // and the answer then ended whole where the case wanted it cut (CI: status 200, no code).
      if (now.held !== last || origin.writableLength > 0 || now.unread > 0) stillSince = Date.now();
      last = now.held;
      if (Date.now() - stillSince >= STILL_MS) {
        stuck = true;
        break;
      }
    }
  }
  const queued = look().held;
  origin.write('0\r\n\r\n');
  return { body, queued, stuck, grewSince: () => look().held > queued };
}
