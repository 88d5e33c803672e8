/**
 * A raw TCP origin for the origin fuzz (test/abuse-fuzz-origin.test.ts):
 * it splits what the proxy sends into requests (recording-origin.ts's
 * RFC 9112 §6.3 framing) and answers each with the answer the test
 * registered under the request's marker (the last path segment), written in
 * that answer's pieces and delays, cut or closed as it says
 * (helpers/fuzz-origin.ts); a path it has no answer for gets a plain 200
 * naming the path. It notes each request that arrives on a connection after
 * an answer that forbade it (bad framing, or a close the answer announced):
 * a proxy that sent it there reads the rest of the bad answer as the next
 * one's.
 */
import net from 'node:net';
import type { OriginAnswer } from './fuzz-origin.js';
import { requestLength } from './recording-origin.js';

export interface HostileOrigin {
  readonly url: string;
  /** Answers by marker, registered before the request is sent. */
  readonly answers: Map<string, OriginAnswer>;
  /** Requests that reached a connection they must not have, each with its marker and why. */
  readonly reused: string[];
  /** Markers of the requests read, in order. */
  readonly seen: string[];
  close(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function startHostileOrigin(): Promise<HostileOrigin> {
  const answers = new Map<string, OriginAnswer>();
  const reused: string[] = [];
  const seen: string[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;

  /** Writes `answer` on `socket`; returns once it was written (and cut or ended as it says). */
  async function write(socket: net.Socket, answer: OriginAnswer): Promise<void> {
    const limit = answer.cut?.at ?? answer.bytes.length;
    let at = 0;
    for (const end of [...answer.splits.filter((s) => s < limit), limit]) {
      if (socket.destroyed) return;
      if (end > at) socket.write(Buffer.from(answer.bytes.slice(at, end), 'latin1'));
      at = end;
      if (end < limit && answer.delayMs > 0) await sleep(answer.delayMs);
    }
    if (answer.cut?.how === 'rst') socket.resetAndDestroy();
    else if (answer.cut !== undefined || answer.closes) socket.end();
  }

  const server = net.createServer((socket) => {
    const id = connections++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let pending = '';
    let forbidden: string | undefined;
    let busy = Promise.resolve();
    socket.on('data', (chunk: Buffer) => {
      pending += chunk.toString('latin1');
      for (let r = requestLength(pending); r !== undefined; r = requestLength(pending)) {
        pending = pending.slice(r.length);
        const path = r.head.slice(0, r.head.indexOf('\r\n')).split(' ')[1] ?? '/';
        const marker = path.slice(path.lastIndexOf('/') + 1);
        seen.push(marker);
        if (forbidden !== undefined) reused.push(`${marker} on origin connection ${id} after ${forbidden}`);
        const answer = answers.get(marker);
        busy = busy.then(async () => {
          if (answer === undefined) {
            const text = `plain ${path}`;
            socket.write(`HTTP/1.1 200 OK\r\nx-marker: ${marker}\r\ncontent-length: ${text.length}\r\n\r\n${text}`);
            return;
          }
          // Set as the last byte goes: the proxy may send its next request only once it has read the answer whole.
          const written = write(socket, answer);
          forbidden = answer.poison ?? (answer.closes || answer.cut !== undefined ? 'an answer that closed the connection' : undefined);
          await written;
        });
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    answers,
    reused,
    seen,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
