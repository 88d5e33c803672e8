import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricSum, workerPids } from './helpers/abuse.js';
import { nextAnswer, splitAll } from './helpers/fuzz-h1-parse.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// Requests Node's parser refuses (RFC 9112 framing and smuggling shapes, a
// head over the limit), against `keyedge proxy` with two workers: each gets
// its status line, whole, before the connection closes (never a bare reset),
// and nothing written after the bad request reaches the origin as a request.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;
let origin: http.Server;
const originSaw: string[] = [];

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: f.lab.test\r\n\r\n';
const CASES: readonly (readonly [string, string, number])[] = [
  ['CL.TE', 'POST / HTTP/1.1\r\nHost: f.lab.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
  ['two Content-Lengths', 'POST / HTTP/1.1\r\nHost: f.lab.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc', 400],
  ['obs-fold', 'GET / HTTP/1.1\r\nHost: f.lab.test\r\nX-A: 1\r\n folded\r\n\r\n', 400],
  ['bare LF in a header', 'GET / HTTP/1.1\r\nHost: f.lab.test\r\nX-A: 1\nX-B: 2\r\n\r\n', 400],
  ['a bad chunk size', 'POST / HTTP/1.1\r\nHost: f.lab.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n', 400],
  ['a NUL in a header', 'GET / HTTP/1.1\r\nHost: f.lab.test\r\nX-A: a\0b\r\n\r\n', 400],
  // RFC 9112 §3.2. Node's own 400 said close, but its parser read on: the smuggled request, in the same write,
  // reached the origin.
  ['no Host', `GET / HTTP/1.1\r\nX-A: 1\r\n\r\n${SMUGGLED}`, 400],
  ['no Host, with a body', `POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc${SMUGGLED}`, 400],
  // RFC 9112 §3.2: Node kept the first Host and dropped the other, and the request was served.
  ['two Hosts', `GET / HTTP/1.1\r\nHost: f.lab.test\r\nhost: g.lab.test\r\n\r\n${SMUGGLED}`, 400],
  ['a head over the limit', `GET / HTTP/1.1\r\nHost: f.lab.test\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
];

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  origin = http.createServer((req, res) => {
    originSaw.push(`${req.method} ${req.url}`);
    req.resume();
    // `/slow`: an answer still going out while the requests pipelined behind it are answered.
    req.once('end', () => setTimeout(() => res.end('ok'), req.url === '/slow' ? 300 : 0));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const originPort = (origin.address() as net.AddressInfo).port;
  // A port nothing listens on: dead.lab.test's origin is unreachable (502).
  const closed = net.createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const deadPort = (closed.address() as net.AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  const wildcard = await lab.certificate('wild', lab.keys.ec, ['*.lab.test']);
  proxy = await startClusterProxy(lab, 'framing', (p) =>
    storeProxyConfig(lab, p, {
      certificates: [{ name: 'wild', chain: wildcard.file }],
      domains: [
        { name: 'f.lab.test', origin: `http://127.0.0.1:${originPort}` },
        { name: 'dead.lab.test', origin: `http://127.0.0.1:${deadPort}` },
      ],
    }),
  );
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  origin?.close();
  await lab?.close();
});

/**
 * Writes `raw` (then a smuggled request, unless told not to) on one TLS connection, `later` after 200 ms; resolves
 * with all it read until the proxy closed it.
 */
function exchange(raw: string, smuggle = true, later = ''): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername: 'f.lab.test', ca }, () => {
      socket.write(raw);
      if (later !== '') setTimeout(() => socket.write(later), 200);
      else if (smuggle) socket.write(SMUGGLED);
    });
    let read = '';
    socket.on('data', (chunk: Buffer) => (read += chunk.toString('latin1')));
    socket.on('error', () => undefined);
    socket.once('close', () => resolve(read));
    setTimeout(() => reject(new Error(`no close within 15 s; read: ${read.slice(0, 200)}`)), 15_000).unref();
  });
}

describe('requests the parser refuses', () => {
  it.each(CASES)('%s: the status line arrives whole, the connection closes, nothing after it is forwarded', async (_name, raw, status) => {
    for (let round = 0; round < 5; round++) {
      const read = await exchange(raw);
      expect(read.startsWith(`HTTP/1.1 ${status} `)).toBe(true);
      expect(read.toLowerCase()).toContain('connection: close');
    }
    expect(originSaw.filter((line) => line.includes('/smuggled'))).toEqual([]);
  });

  it('leaves the proxy serving ordinary requests', async () => {
    const read = await exchange('GET /fine HTTP/1.1\r\nHost: f.lab.test\r\nConnection: close\r\n\r\n', false);
    expect(read.startsWith('HTTP/1.1 200 ')).toBe(true);
    expect(originSaw).toContain('GET /fine');
  });
});

describe('a GET or HEAD whose body the parser refuses', () => {
  // The body of a GET or HEAD is not forwarded, but it is still part of the request's framing (RFC 9112 §6.3, §7.1):
  // the proxy answers 400 when it is not a body, so the origin must not have acted on the request meanwhile. Before,
  // such a request went to the origin at its head, and the client got 400 for a request the origin had served.
  it.each([
    ['a bad chunk size', 'GET /refused-chunk HTTP/1.1\r\nHost: f.lab.test\r\nTransfer-Encoding: chunked\r\n\r\n', 'zz\r\nabc\r\n0\r\n\r\n'],
    ['no CRLF after chunk data', 'HEAD /refused-data HTTP/1.1\r\nHost: f.lab.test\r\nTransfer-Encoding: chunked\r\n\r\n', '3\r\nabcX\r\n0\r\n\r\n'],
    ['a last coding other than chunked', 'GET /refused-coding HTTP/1.0\r\nHost: f.lab.test\r\nTransfer-Encoding: identity\r\n\r\n', '3\r\nabc\r\n0\r\n\r\n'],
  ])('%s: 400, and the request reaches no origin', async (_name, head, body) => {
    const path = head.split(' ')[1]!;
    for (let round = 0; round < 3; round++) {
      const read = await exchange(head, false, body);
      expect(read).toMatch(/^HTTP\/1\.1 400 /);
    }
    // Time for a request sent at its head to have arrived.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(originSaw.filter((line) => line.endsWith(path))).toEqual([]);
  });
});

describe('a GET awaiting 100 (Continue) whose body comes anyway, and is not one', () => {
  // A GET's body is never asked for (expect.ts): the GET goes to its origin at once, the connection closes after its
  // answer, and what follows is read and dropped (linger.ts). Before, a bad chunk there was answered 400, and the
  // client was told its request failed while the origin had served it.
  it('gets its answer from the origin, then the connection closes', async () => {
    const raw = 'GET /expect-bad-chunk HTTP/1.1\r\nHost: f.lab.test\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n';
    // In the same write: the bad chunk is parsed before the origin has answered.
    const read = await exchange(`${raw}zz\r\nabc\r\n0\r\n\r\n`, false);
    const answers = splitAll(read, (rest) => nextAnswer(rest, () => false, true));
    expect(answers.messages.map((m) => `${m.start.slice(9, 12)} ${m.body}`)).toEqual(['200 ok']);
    expect(answers.messages[0]?.headers.get('connection')).toEqual(['close']);
    expect(answers.rest).toBe('');
    expect(originSaw).toContain('GET /expect-bad-chunk');
  });
});

describe('Expect: 100-continue on a request pipelined behind an answer still going out', () => {
  // RFC 9112 §9.3.2: answers go in request order, interim ones included. Before, the 100 went into the queued answer's
  // buffer, and Node put the final answer's head in front of it: the client read the 100 as content. Sent later, or
  // not at all, Node would close the connection after that answer, the request behind it already at its origin.
  it.each([
    ['with a body', 'POST /after-slow HTTP/1.1\r\nHost: f.lab.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi'],
    ['without one', 'GET /after-slow HTTP/1.1\r\nHost: f.lab.test\r\nExpect: 100-continue\r\n\r\n'],
  ])('%s: its 100 comes between the answers, never inside one, and the request behind it is answered', async (_name, second) => {
    const third = 'GET /third HTTP/1.1\r\nHost: f.lab.test\r\nConnection: close\r\n\r\n';
    const read = await exchange(`GET /slow HTTP/1.1\r\nHost: f.lab.test\r\n\r\n${second}${third}`, false);
    const answers = splitAll(read, (rest) => nextAnswer(rest, () => false, true));
    expect(answers.error).toBeUndefined();
    expect(answers.rest).toBe('');
    expect(answers.messages.map((m) => `${m.start.slice(9, 12)} ${m.body}`)).toEqual(['200 ok', '100 ', '200 ok', '200 ok']);
  });
});

describe('a bad chunk in a body the client was to send after 100 (Continue)', () => {
  // The body streams to the origin as it comes (expect.ts); the bad chunk closes the connection mid-body. Before, the
  // request's error (Node's "aborted") could come with no listener left and end the worker: one packet did it.
  it('gets its 400, and no worker dies', async () => {
    const raw = 'POST /continue-bad-chunk HTTP/1.1\r\nHost: f.lab.test\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n';
    for (let round = 0; round < 4; round++) expect(await exchange(raw, false)).toMatch(/^HTTP\/1\.1 400 /);
    // A worker's death reaches the primary's log a moment after its uncaught error.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(workerPids(proxy).died).toEqual([]);
    expect(await metricSum(proxy, 'keyedge_proxy_uncaught_errors_total')).toBe(0);
  });
});

describe('Expect: 100-continue whose whole body came with the head, a request pipelined behind it', () => {
  // RFC 9110 §10.1.1: a server may omit the 100 once it has the content. Node's server closes the connection after an
  // answer sent without a 100 to a request that asked for one, while its parser has already handed over the request
  // behind it: that one reached its origin and its answer was never sent. An empty chunked body (the origin connection
  // reads its end without asking for data) and an unreachable origin (nothing reads the body) both did it.
  it.each([
    [
      'an empty chunked body',
      'POST /expect-empty HTTP/1.1\r\nHost: f.lab.test\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      '200 ok',
    ],
    [
      'an unreachable origin',
      'POST /expect-dead HTTP/1.1\r\nHost: dead.lab.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi',
      '502 origin unreachable\n',
    ],
  ])('%s: both are answered, in order', async (_name, first, answer) => {
    const behind = `GET /behind-${first.split(' ')[1]!.slice(1)} HTTP/1.1\r\nHost: f.lab.test\r\nConnection: close\r\n\r\n`;
    const read = await exchange(`${first}${behind}`, false);
    const answers = splitAll(read, (rest) => nextAnswer(rest, () => false, true));
    expect(answers.error).toBeUndefined();
    expect(answers.messages.filter((m) => !m.start.startsWith('HTTP/1.1 100 ')).map((m) => `${m.start.slice(9, 12)} ${m.body}`)).toEqual([answer, '200 ok']);
    expect(originSaw).toContain(behind.split(' HTTP')[0]);
  });
});
