/**
 * A raw HTTP/1.1 origin that answers each request head by its path from a
 * script: the bytes to write, or a function given the socket (to delay, cut
 * or misbehave). Unknown paths get a 404. It keeps its open sockets in
 * `record.sockets` (for the tests to destroy, or to see an origin connection
 * close), and each request line and head in `record.saw` / `record.heads`
 * when given. Request bodies are not framed: the tests that use it send none.
 */
import net from 'node:net';

export type ScriptedAnswer = string | ((socket: net.Socket) => void);

export interface ScriptRecord {
  readonly sockets: Set<net.Socket>;
  readonly saw?: string[];
  readonly heads?: string[];
}

export function scriptedOrigin(answers: Readonly<Record<string, ScriptedAnswer>>, record: ScriptRecord): net.Server {
  return net.createServer((socket) => {
    record.sockets.add(socket);
    socket.once('close', () => record.sockets.delete(socket));
    socket.on('error', () => undefined);
    let buffered = '';
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('latin1');
      for (let end = buffered.indexOf('\r\n\r\n'); end >= 0; end = buffered.indexOf('\r\n\r\n')) {
        record.saw?.push(buffered.slice(0, buffered.indexOf('\r\n')));
        record.heads?.push(buffered.slice(0, end));
        const path = buffered.slice(0, end).split(' ')[1] ?? '/';
        buffered = buffered.slice(end + 4);
        const answer = answers[path] ?? 'HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n';
        if (typeof answer === 'string') socket.write(answer);
        else answer(socket);
      }
    });
  });
}

/** Destroys what is still open on `origin` (`sockets`, its record's) and closes it; nothing when it never started. */
export async function closeScriptedOrigin(origin: net.Server | undefined, sockets: Set<net.Socket>): Promise<void> {
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => (origin === undefined ? resolve(undefined) : origin.close(resolve)));
}
