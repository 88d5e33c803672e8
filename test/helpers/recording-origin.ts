/**
 * A raw HTTP/1.1 origin that records every byte the proxy sends it and
 * splits them into requests as an HTTP/1.1 origin would (RFC 9112 §6.3:
 * Content-Length or chunked; a body of neither is none), answering each with
 * a short 200 (`ok\n`). The HTTP/2 downgrade tests read from it what reached
 * the origin: each request as its framing delimits it, each connection's
 * bytes, what is left over on it (a request split or unfinished), and its end.
 */
import net from 'node:net';

export interface RecordedRequest {
  readonly conn: number;
  readonly head: string;
  readonly body: string;
}

export interface OriginConnection {
  bytes: string;
  pending: string;
  closed: boolean;
}

export interface RecordingOrigin {
  readonly url: string;
  readonly requests: RecordedRequest[];
  readonly connections: OriginConnection[];
  close(): Promise<void>;
}

/** The first request in `buf` and its length, by RFC 9112 §6.3 (Content-Length or chunked; a body of neither is none); undefined while incomplete. */
export function requestLength(buf: string): { length: number; head: string; body: string } | undefined {
  const end = buf.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const head = buf.slice(0, end + 4);
  const field = (name: string): string | undefined =>
    head
      .split('\r\n')
      .find((l) => l.toLowerCase().startsWith(`${name}:`))
      ?.slice(name.length + 1)
      .trim();
  let at = end + 4;
  if (field('transfer-encoding') === undefined) {
    const length = Number(field('content-length') ?? 0);
    return buf.length < at + length ? undefined : { length: at + length, head, body: buf.slice(at, at + length) };
  }
  let body = '';
  for (;;) {
    const eol = buf.indexOf('\r\n', at);
    if (eol === -1) return undefined;
    const size = Number.parseInt(buf.slice(at, eol), 16);
    if (size === 0) return buf.startsWith('\r\n', eol + 2) ? { length: eol + 4, head, body } : undefined;
    if (buf.length < eol + 2 + size + 2) return undefined;
    body += buf.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

export async function startRecordingOrigin(): Promise<RecordingOrigin> {
  const requests: RecordedRequest[] = [];
  const connections: OriginConnection[] = [];
  const server = net.createServer((socket) => {
    const conn = connections.push({ bytes: '', pending: '', closed: false }) - 1;
    const c = connections[conn]!;
    socket.on('data', (chunk: Buffer) => {
      c.bytes += chunk.toString('latin1');
      c.pending += chunk.toString('latin1');
      for (let r = requestLength(c.pending); r !== undefined; r = requestLength(c.pending)) {
        requests.push({ conn, head: r.head, body: r.body });
        c.pending = c.pending.slice(r.length);
        socket.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n');
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => (c.closed = true));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    requests,
    connections,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
