/**
 * Clients that pipeline many requests in one write and read no answer, for
 * tests of what a server holds for them: `pipelineUnread` opens them,
 * `stillOpen` reads them and says how many the server left open.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** `connections` connections to `port` on loopback, each writing `request` `count` times in one go, paused. */
export function pipelineUnread(port: number, request: string, count: number, connections: number): net.Socket[] {
  return Array.from({ length: connections }, () => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.pause();
    socket.write(request.repeat(count));
    return socket;
  });
}

/** Reads every socket (a paused one sees no end) and resolves with how many are still open after `waitMs`. */
export async function stillOpen(sockets: readonly net.Socket[], waitMs = 3_000): Promise<number> {
  const closed = sockets.map((socket) => new Promise<void>((resolve) => socket.once('close', () => resolve())));
  for (const socket of sockets) socket.resume();
  const open = await Promise.all(closed.map((c) => Promise.race([c.then(() => false), sleep(waitMs).then(() => true)])));
  return open.filter(Boolean).length;
}

/**
 * Writes `first` to `port` on loopback, then `second` in a write of its own 200 ms later, and reads until the server
 * closes or `waitMs` pass: what came back, and whether the server closed the connection.
 */
export async function twoWrites(port: number, first: string, second: string, waitMs = 8_000): Promise<{ text: string; closed: boolean }> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  let text = '';
  socket.on('data', (chunk: Buffer) => {
    text += chunk.toString('latin1');
  });
  const closed = new Promise<boolean>((resolve) => socket.once('close', () => resolve(true)));
  socket.write(first);
  await sleep(200);
  if (!socket.destroyed) socket.write(second);
  const result = await Promise.race([closed, sleep(waitMs).then(() => false)]);
  socket.destroy();
  return { text, closed: result };
}

/** A raw TCP client of `port` on loopback, connected: what came back so far, and when the server closed it (FIN or reset). */
export async function plainClient(port: number): Promise<{ socket: net.Socket; text: () => string; closed: Promise<void> }> {
  const socket = net.connect(port, '127.0.0.1');
  let received = '';
  socket.on('data', (chunk: Buffer) => void (received += chunk.toString('latin1')));
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise((resolve) => socket.once('connect', resolve));
  return { socket, text: () => received, closed };
}

/** Resolves with true once `closed` resolves, with false after `ms`. */
export const within = (closed: Promise<unknown>, ms: number): Promise<boolean> => Promise.race([closed.then(() => true), sleep(ms).then(() => false)]);
