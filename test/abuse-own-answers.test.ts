import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab, jsonLineSink } from './helpers/proxy-lab.js';

// What a client that is not speaking to us properly gets on HTTP/1.1, over TLS and on the plain-HTTP port: our own
// answers (404, 421, 308) to a request whose body never ends close the connection after a bounded lingering, not
// after Node's whole-request timeout (minutes); a CONNECT on the plain-HTTP port is answered 400, in order; the
// HTTP/2 connection preface sent with prior knowledge gets a 400 that says so. And what must not change: keep-alive
// after our own answers to requests without a body, and requests with a body to a known origin.
const KNOWN = 'known.test';
/** Covered by the certificate, not a configured domain: 404. */
const UNKNOWN = 'unknown.test';
/** Not covered by the certificate: 421. */
const OTHER = 'other.test';
/** linger.ts's LINGER_MS is 5 s: a connection still open long after it is not lingering but held. */
const CLOSED_WITHIN_MS = 30_000;
const PREFACE = Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), Buffer.from('000000040000000000', 'hex')]);

let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
const lines: Record<string, unknown>[] = [];

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const cert = await lab.certificate('own', lab.keys.ec, [KNOWN, UNKNOWN]);
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'own', chain: cert.file }],
      httpRedirect: { host: '127.0.0.1', port: 0 },
      // A small body limit: a 413 (which closes the connection itself) for a body under the size discarded and kept.
      domains: [{ name: KNOWN, origin: `http://127.0.0.1:${lab.origin.port}`, maxBodyBytes: 100 }],
    }),
    { log: createLogger('own-answers-test', 'info', jsonLineSink(lines)) },
  );
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await lab?.close();
});

type Port = 'tls' | 'tls-no-alpn' | 'plain';

interface Talk {
  readonly received: string;
  /** The connection closed (by the proxy) before `done` said enough. */
  readonly closed: boolean;
  /** From the first byte sent to the close, or to `done`. */
  readonly ms: number;
}

/**
 * Writes `first` on a new connection, then `trickle` every 250 ms (or, with `whenAnswered`, what it writes once an answer is in)
 * came back when it closes, or once `done` says so.
 */
function talk(
  port: Port,
  first: string | Buffer,
  options: { trickle?: string; done?: (received: string) => boolean; whenAnswered?: (socket: net.Socket, received: string) => void } = {},
): Promise<Talk> {
  return new Promise((resolve) => {
    let received = '';
    let started = 0;
    // Half-open for a trickling client: it keeps sending after our end of the connection, as an abusive one would.
    const allowHalfOpen = options.trickle !== undefined || options.whenAnswered !== undefined;
    // tls.connect reads allowHalfOpen at run time; its types omit it.
    const secure: tls.ConnectionOptions & { allowHalfOpen: boolean } = {
      host: '127.0.0.1',
      port: proxy.ports[0],
      servername: KNOWN,
      ca,
      allowHalfOpen,
      ...(port === 'tls' ? { ALPNProtocols: ['http/1.1'] } : {}),
    };
    const socket = port === 'plain' ? net.connect({ port: proxy.httpPort!, host: '127.0.0.1', allowHalfOpen }) : tls.connect(secure);
    let trickle: NodeJS.Timeout | undefined;
    const end = (closed: boolean): void => {
      clearInterval(trickle);
      clearTimeout(giveUp);
      socket.destroy();
      resolve({ received, closed, ms: Date.now() - started });
    };
    const giveUp = setTimeout(() => end(false), CLOSED_WITHIN_MS + 10_000);
    socket.once(port === 'plain' ? 'connect' : 'secureConnect', () => {
      started = Date.now();
      socket.write(first);
      if (options.trickle !== undefined) trickle = setInterval(() => socket.writable && socket.write(options.trickle!), 250);
    });
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      if (options.done?.(received) === true) end(false);
      else if (options.whenAnswered !== undefined && /\r\n\r\n[\s\S]*\n$/.test(received)) options.whenAnswered(socket, received);
    });
    socket.on('error', () => undefined);
    socket.once('close', () => end(true));
  });
}

const statuses = (received: string): string[] => [...received.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]!);

// Each case waits about LINGER_MS (5 s), idle, for the lingering connection to close: they run concurrently (none of
// them reaches the origin or counts what reaches it).
describe('our own answer to a request whose body never ends', () => {
  it.concurrent.each([
    ['tls', UNKNOWN, 'chunked', '404'],
    ['tls', OTHER, 'chunked', '421'],
    ['tls', UNKNOWN, 'length', '404'],
    ['plain', UNKNOWN, 'chunked', '404'],
    ['plain', KNOWN, 'length', '308'],
  ] as const)(
    '%s, Host %s, %s body: %s with Connection: close, then the connection closes within seconds',
    async (port, host, framing, status) => {
      const head =
        framing === 'chunked'
          ? `POST /upload HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\n\r\n`
          : `POST /upload HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 1000000000000\r\n\r\n`;
      const { received, closed, ms } = await talk(port, head, { trickle: framing === 'chunked' ? '10\r\n0123456789abcdef\r\n' : 'x'.repeat(16) });
      expect(closed).toBe(true);
      expect(ms).toBeLessThan(CLOSED_WITHIN_MS);
      expect(statuses(received)).toEqual([status]);
      expect(received.toLowerCase()).toContain('\r\nconnection: close\r\n');
    },
    60_000,
  );
});

describe('what the client sends after the request our answer closes the connection on', () => {
  // RFC 9112 §9.6: a server that sends `close` must not process further requests on that connection. Node's parser
  // reads on while the connection lingers: a request after the unread body was once forwarded to the origin (its
  // side effects done) and its answer never sent. Each is sent once the 404 (Connection: close) is in.
  it.each([
    ['tls', 'a request', `GET /after-close HTTP/1.1\r\nHost: ${KNOWN}\r\n\r\n`],
    // Port 80 forwards a known domain's ACME challenge paths to its origin.
    ['plain', 'a request', `GET /.well-known/acme-challenge/after-close HTTP/1.1\r\nHost: ${KNOWN}\r\n\r\n`],
    ['tls', 'an upgrade', `GET /after-close HTTP/1.1\r\nHost: ${KNOWN}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n`],
  ] as const)(
    '%s: %s after the rest of the body reaches no origin and gets no answer',
    async (port, _what, next) => {
      const before = lab.origin.requests();
      let sent = false;
      // Chunked: a small declared length is read and the connection kept (the next test), its end being known.
      const { received, closed } = await talk(port, `POST /upload HTTP/1.1\r\nHost: ${UNKNOWN}\r\nTransfer-Encoding: chunked\r\n\r\n`, {
        // Once the 404 is in: the rest of the body, then the next request, in one write; a second later the client ends
        // its side (it sees no close of ours before that: its half of the connection is still open).
        whenAnswered: (socket) => {
          if (sent) return;
          sent = true;
          socket.write(`5\r\nhello\r\n0\r\n\r\n${next}`);
          setTimeout(() => socket.end(), 1000);
        },
      });
      expect(closed).toBe(true);
      expect(statuses(received)).toEqual(['404']);
      expect(received.toLowerCase()).toContain('\r\nconnection: close\r\n');
      // Time for a forwarded request to reach the origin.
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(lab.origin.requests() - before).toBe(0);
    },
    60_000,
  );
});

describe('a small declared body to our own answer', () => {
  // As nginx discards a refused request's body: a Content-Length up to 64 KiB is read and dropped after the answer, the
  // connection kept, and the request after it answered in order.
  it.each([['tls'], ['plain']] as const)('%s: read and dropped, the connection kept for the next request', async (port) => {
    const post = `POST /form HTTP/1.1\r\nHost: ${UNKNOWN}\r\nContent-Length: 5\r\n\r\n`;
    const get = `GET /next HTTP/1.1\r\nHost: ${UNKNOWN}\r\n\r\n`;
    let sent = false;
    const { received, closed } = await talk(port, post, {
      // The body and the next request once the 404 is in: the body was unread when the answer went out.
      whenAnswered: (socket) => {
        if (sent) return;
        sent = true;
        socket.write(`hello${get}`);
      },
      done: (r) => statuses(r).length === 2 && r.endsWith('unknown host\n'),
    });
    expect(closed).toBe(false);
    expect(statuses(received)).toEqual(['404', '404']);
    expect(received.toLowerCase()).not.toContain('connection: close');
  });

  it('a 413 (which closes the connection itself): a request pipelined after the body reaches no origin', async () => {
    const before = lab.origin.requests();
    const text = `POST /big HTTP/1.1\r\nHost: ${KNOWN}\r\nContent-Length: 200\r\n\r\n${'x'.repeat(200)}POST /second HTTP/1.1\r\nHost: ${KNOWN}\r\nContent-Length: 0\r\n\r\n`;
    const { received, closed } = await talk('tls', text);
    expect(closed).toBe(true);
    expect(statuses(received)).toEqual(['413']);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(lab.origin.requests() - before).toBe(0);
  });

  it('many on one connection: no listener gathers on its socket', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error): void => void warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const head = `POST /form HTTP/1.1\r\nHost: ${UNKNOWN}\r\nContent-Length: 1\r\n\r\n`;
      let answered = 0;
      const { received, closed } = await talk('tls', head, {
        // Each body once its 404 is in (so it was unread when the answer went out), with the next request.
        whenAnswered: (socket, sofar) => {
          const now = statuses(sofar).length;
          if (now === answered) return;
          answered = now;
          socket.write(now < 30 ? `x${head}` : 'x');
        },
        done: (r) => statuses(r).length === 30 && r.endsWith('unknown host\n'),
      });
      expect(closed).toBe(false);
      expect(statuses(received)).toHaveLength(30);
      expect(warnings).not.toContain('MaxListenersExceededWarning');
    } finally {
      process.off('warning', onWarning);
    }
  });

  it.each([
    ['a body that never comes', `Content-Length: 5\r\n`],
    ['a client awaiting 100 (Continue)', `Content-Length: 5\r\nExpect: 100-continue\r\n`],
  ])(
    '%s: the connection closes within seconds',
    async (_what, fields) => {
      const { received, closed, ms } = await talk('tls', `POST /form HTTP/1.1\r\nHost: ${UNKNOWN}\r\n${fields}\r\n`);
      expect(closed).toBe(true);
      expect(ms).toBeLessThan(CLOSED_WITHIN_MS);
      expect(statuses(received)).toEqual(['404']);
    },
    60_000,
  );
});

describe('what stays as it was', () => {
  it.each([['tls'], ['plain']] as const)('%s: keep-alive after our own answers to requests without a body', async (port) => {
    const get = `GET /a HTTP/1.1\r\nHost: ${UNKNOWN}\r\n\r\n`;
    const { received, closed } = await talk(port, get + get, { done: (r) => statuses(r).length === 2 && r.endsWith('unknown host\n') });
    expect(closed).toBe(false);
    expect(statuses(received)).toEqual(['404', '404']);
    expect(received.toLowerCase()).not.toContain('connection: close');
  });

  it('a request with a body to a known origin is forwarded, and the connection is kept for the next', async () => {
    const post = `POST /form HTTP/1.1\r\nHost: ${KNOWN}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`;
    const get = `GET /next HTTP/1.1\r\nHost: ${KNOWN}\r\n\r\n`;
    const { received, closed } = await talk('tls', post + get, { done: (r) => r.includes('"url":"/next"') });
    expect(closed).toBe(false);
    expect(statuses(received)).toEqual(['200', '200']);
    expect(received).toContain('"url":"/form"');
  });
});

describe('CONNECT on the plain-HTTP port', () => {
  it('gets 400 after the answer pipelined before it, logged; the connection closes', async () => {
    const text = `GET /first HTTP/1.1\r\nHost: ${KNOWN}\r\n\r\nCONNECT ${KNOWN}:443 HTTP/1.1\r\nHost: ${KNOWN}\r\n\r\n`;
    const { received, closed } = await talk('plain', text);
    expect(closed).toBe(true);
    expect(statuses(received)).toEqual(['308', '400']);
    expect(received).toContain('x-keyedge-error: KEYEDGE_HTTP_BAD_TARGET');
    expect(received).not.toContain('strict-transport-security');
    await waitFor('the CONNECT access line', () => lines.find((l) => l.access === true && l.scheme === 'http' && l.method === 'CONNECT' && l.status === 400));
  });
});

describe('the HTTP/2 connection preface on an HTTP/1.1 connection', () => {
  it.each([['tls'], ['tls-no-alpn'], ['plain']] as const)('%s: 400 KEYEDGE_HTTP_H2_PREFACE, then the connection closes', async (port) => {
    const { received, closed, ms } = await talk(port, PREFACE);
    expect(closed).toBe(true);
    expect(statuses(received)).toEqual(['400']);
    expect(received).toContain('x-keyedge-error: KEYEDGE_HTTP_H2_PREFACE');
    expect(ms).toBeLessThan(CLOSED_WITHIN_MS);
  });
});
