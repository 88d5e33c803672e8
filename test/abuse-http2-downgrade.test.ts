import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { data, headerFrames, hpackLiteral, RawH2, rstStream } from './helpers/h2.js';
import type { ClusterProxy } from './helpers/proxy-cluster.js';
import { waitFor } from './helpers/proxy-cluster.js';
import type { RecordingOrigin } from './helpers/recording-origin.js';
import { type RecordingProxy, startRecordingProxy } from './helpers/recording-proxy.js';

// The HTTP/2 → HTTP/1.1 downgrade under hostile requests (request smuggling's
// H2.CL, H2.TE and header-injection shapes; RFC 9113 §8.1.1, §8.2, §8.3),
// sent as raw frames on one connection to `keyedge proxy` with one worker,
// whose origin is a raw TCP server that records its bytes and splits them
// into requests as an HTTP/1.1 origin would (RFC 9112 §6.3). Each case is
// refused (nghttp2's RST_STREAM PROTOCOL_ERROR, or our 400) and reaches
// nothing, or reaches the origin as exactly the bytes listed: never with a
// second request inside, a split header, or framing that leaves the pooled
// origin connection out of step for the next client's request.
const HOST = 'downgrade.lab.test';
const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n';
const PROTOCOL_ERROR = 1;

let setup: RecordingProxy;
let proxy: ClusterProxy;
let ca: string;
let requests: RecordingOrigin['requests'];
let connections: RecordingOrigin['connections'];

beforeAll(async () => {
  setup = await startRecordingProxy('downgrade', HOST);
  ({ proxy, ca } = setup);
  ({ requests, connections } = setup.origin);
}, 60_000);

afterAll(async () => {
  await setup?.close();
});

type Field = readonly [string, string];
/** A header block of literals (RFC 7541 §6.2.2), so that any name, value and order can be sent. */
const block = (fields: readonly Field[]): Buffer => Buffer.concat(fields.map(([n, v]) => hpackLiteral(n, v)));
const pseudo = (method: string, path: string): Field[] => [
  [':method', method],
  [':scheme', 'https'],
  [':path', path],
  [':authority', HOST],
];
/** A request's HEADERS (END_STREAM without a body), then its DATA with END_STREAM. */
const req =
  (method: string, fields: readonly Field[] = [], body?: string, path = '') =>
  (id: number, tag: string): Buffer => {
    const head = headerFrames(id, block([...pseudo(method, `/${tag}${path}`), ...fields]), body === undefined);
    return body === undefined ? head : Buffer.concat([head, data(id, Buffer.from(body, 'latin1'), true)]);
  };
/** A header block as given, `TAG` replaced by the case's tag. */
const raw =
  (fields: readonly Field[]) =>
  (id: number, tag: string): Buffer =>
    headerFrames(id, block(fields.map(([n, v]) => [n, v.replace('TAG', tag)])), true);
/** A POST with a body of `abc` and then trailers. */
const trailed =
  (trailers: readonly Field[]) =>
  (id: number, tag: string): Buffer =>
    Buffer.concat([headerFrames(id, block(pseudo('POST', `/${tag}`)), false), data(id, Buffer.from('abc'), false), headerFrames(id, block(trailers), true)]);

/** The head keyedge sends for a request of `method` on /tag without fields of its own (undici's order; HEAD asks for close). */
const originHead = (method: string, tag: string, more = '', connection = 'keep-alive'): string =>
  `${method} /${tag} HTTP/1.1\r\nhost: ${HOST}\r\nconnection: ${connection}\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: https\r\n` +
  `x-forwarded-host: ${HOST}\r\nforwarded: for=127.0.0.1;proto=https;host="${HOST}"\r\n${more}\r\n`;

/**
 * 'reset': RST_STREAM PROTOCOL_ERROR (nghttp2, RFC 9113 §8.1.1); a number: our answer with that status; a function:
 * forwarded as exactly those bytes; `resetOr`: either, as the Node version's nghttp2 decides (both keep it from the origin).
 */
type Forwarded = (tag: string) => string;
type Expected = 'reset' | number | Forwarded | { readonly resetOr: Forwarded };
const forwardedAs = (expected: Expected): Forwarded | undefined =>
  typeof expected === 'function' ? expected : typeof expected === 'object' ? expected.resetOr : undefined;
const CASES: readonly (readonly [string, (id: number, tag: string) => Buffer, Expected])[] = [
  // H2.CL: a Content-Length the DATA disagrees with (RFC 9113 §8.1.1).
  ['content-length shorter than DATA', req('POST', [['content-length', '3']], `abc${SMUGGLED}`), 'reset'],
  ['content-length longer than DATA', req('POST', [['content-length', '100']], 'abc'), 'reset'],
  ['content-length on a GET ended with its HEADERS', req('GET', [['content-length', '5']]), 'reset'],
  ['content-length on a HEAD ended with its HEADERS', req('HEAD', [['content-length', '5']]), 'reset'],
  [
    'two content-length fields',
    req(
      'POST',
      [
        ['content-length', '3'],
        ['content-length', '3'],
      ],
      'abc',
    ),
    'reset',
  ],
  [
    'two content-length fields that differ',
    req(
      'POST',
      [
        ['content-length', '3'],
        ['content-length', '4'],
      ],
      'abc',
    ),
    'reset',
  ],
  ['content-length not digits', req('POST', [['content-length', '3x']], 'abc'), 'reset'],
  ['content-length a list', req('POST', [['content-length', '3, 3']], 'abc'), 'reset'],
  ['content-length signed', req('POST', [['content-length', '+3']], 'abc'), 'reset'],
  // H2.TE and the other connection-specific fields (§8.2.2).
  ['transfer-encoding chunked', req('POST', [['transfer-encoding', 'chunked']], `0\r\n\r\n${SMUGGLED}`), 'reset'],
  ['transfer-encoding identity', req('GET', [['transfer-encoding', 'identity']]), 'reset'],
  ['connection', req('GET', [['connection', 'close']]), 'reset'],
  ['keep-alive', req('GET', [['keep-alive', 'timeout=5']]), 'reset'],
  ['proxy-connection', req('GET', [['proxy-connection', 'keep-alive']]), 'reset'],
  ['upgrade', req('GET', [['upgrade', 'websocket']]), 'reset'],
  ['te other than trailers', req('GET', [['te', 'gzip']]), 'reset'],
  ['te: trailers (allowed, hop-by-hop: not forwarded)', req('GET', [['te', 'trailers']]), (t) => originHead('GET', t)],
  // Field names and values (§8.2.1): nghttp2 resets on what it must, and drops (never forwards) the rest.
  // Reset by nghttp2 1.61 (Node 20), dropped by 1.67+ (Node 22, 24).
  ['a name with CR LF', req('GET', [[`x-a: b\r\n${SMUGGLED}x-c`, 'd']]), { resetOr: (t) => originHead('GET', t) }],
  ['an upper-case name', req('GET', [['X-A', 'b']]), 'reset'],
  ['a value with CR LF (dropped)', req('GET', [['x-a', `b\r\n${SMUGGLED}`]]), (t) => originHead('GET', t)],
  ['a value with LF (dropped)', req('GET', [['x-a', 'b\nx-b: c']]), (t) => originHead('GET', t)],
  ['a value with CR (dropped)', req('GET', [['x-a', 'b\rx-b: c']]), (t) => originHead('GET', t)],
  ['a value with NUL (dropped)', req('GET', [['x-a', 'b\0c']]), (t) => originHead('GET', t)],
  ['a value with leading space (dropped)', req('GET', [['x-a', ' b']]), (t) => originHead('GET', t)],
  ['a value with trailing tab (dropped)', req('GET', [['x-a', 'b\t']]), (t) => originHead('GET', t)],
  ['a name with a space (dropped)', req('GET', [['x-a b', 'c']]), (t) => originHead('GET', t)],
  ['a name with a colon (dropped)', req('GET', [['x-a:b', 'c']]), (t) => originHead('GET', t)],
  ['an empty name (dropped)', req('GET', [['', 'c']]), (t) => originHead('GET', t)],
  ['a name with NUL (dropped)', req('GET', [['x\0a', 'c']]), (t) => originHead('GET', t)],
  // Bytes past ASCII travel as the same bytes (latin1 both ways), never as a character whose low byte is LF.
  [
    'a value with the UTF-8 bytes of U+010A',
    req('GET', [['x-a', 'b\xc4\x8ac']]),
    (t) => originHead('GET', t).replace('x-forwarded-for', 'x-a: b\xc4\x8ac\r\nx-forwarded-for'),
  ],
  [':path with the UTF-8 bytes of U+010A', raw(pseudo('GET', '/TAG\xc4\x8a')), (t) => originHead('GET', `${t}\xc4\x8a`)],
  // Pseudo-headers (§8.3).
  [
    'a pseudo-header after a regular one',
    raw([
      [':method', 'GET'],
      [':scheme', 'https'],
      [':authority', HOST],
      ['x-a', 'b'],
      [':path', '/TAG'],
    ]),
    'reset',
  ],
  ['two :path', raw([...pseudo('GET', '/TAG'), [':path', '/other']]), 'reset'],
  ['two :method', raw([[':method', 'GET'], ...pseudo('POST', '/TAG')]), 'reset'],
  ['two :authority', raw([...pseudo('GET', '/TAG'), [':authority', 'other.test']]), 'reset'],
  ['an unknown pseudo-header', raw([...pseudo('GET', '/TAG'), [':foo', 'bar']]), 'reset'],
  [':protocol (extended CONNECT is not offered)', raw([...pseudo('GET', '/TAG'), [':protocol', 'websocket']]), 'reset'],
  [':status in a request', raw([...pseudo('GET', '/TAG'), [':status', '200']]), 'reset'],
  ['no :method', raw(pseudo('GET', '/TAG').slice(1)), 'reset'],
  ['no :scheme', raw(pseudo('GET', '/TAG').filter(([n]) => n !== ':scheme')), 'reset'],
  ['no :path', raw([...pseudo('GET', '/').filter(([n]) => n !== ':path'), ['x-tag', 'TAG']]), 'reset'],
  ['no :authority and no host', raw(pseudo('GET', '/TAG').filter(([n]) => n !== ':authority')), 'reset'],
  ['an empty :path', raw([...pseudo('GET', ''), ['x-tag', 'TAG']]), 'reset'],
  [':path not starting with /', raw(pseudo('GET', 'TAG')), 'reset'],
  [':path in absolute form', raw(pseudo('GET', `https://${HOST}/TAG`)), 'reset'],
  [':path * for GET', raw([...pseudo('GET', '*'), ['x-tag', 'TAG']]), 'reset'],
  [':path with a space and CR LF', raw(pseudo('GET', `/TAG HTTP/1.1\r\n${SMUGGLED}`)), 'reset'],
  [':path with a space', raw(pseudo('GET', '/TAG x')), 'reset'],
  [':path with a tab', raw(pseudo('GET', '/TAG\tx')), 'reset'],
  [':path with DEL', raw(pseudo('GET', '/TAG\x7f')), 'reset'],
  [':path with a fragment', raw(pseudo('GET', '/TAG#/../admin')), 400],
  [':method with a space', raw([[':method', 'GET /x'], ...pseudo('GET', '/TAG').slice(1)]), 'reset'],
  [':scheme with a space', raw([[':method', 'GET'], [':scheme', 'a b'], ...pseudo('GET', '/TAG').slice(2)]), 'reset'],
  ['host differing from :authority', req('GET', [['host', 'evil.test']]), 400],
  ['host in another case than :authority', req('GET', [['host', HOST.toUpperCase()]]), (t) => originHead('GET', t)],
  ['two host fields', raw([...pseudo('GET', '/TAG').filter(([n]) => n !== ':authority'), ['host', HOST], ['host', 'evil.test']]), 'reset'],
  [
    'CONNECT',
    raw([
      [':method', 'CONNECT'],
      [':authority', `${HOST}:443`],
      ['x-tag', 'TAG'],
    ]),
    400,
  ],
  ['CONNECT with :path and :scheme', raw(pseudo('CONNECT', '/TAG')), 'reset'],
  ['extended CONNECT', raw([...pseudo('CONNECT', '/TAG'), [':protocol', 'websocket']]), 'reset'],
  // Trailers (§8.1): request trailers are never forwarded; what nghttp2 refuses in them resets the stream.
  ['trailers with transfer-encoding', trailed([['transfer-encoding', 'chunked']]), 'reset'],
  ['trailers with a pseudo-header', trailed([[':path', '/x']]), 'reset'],
  ['trailers with content-length', trailed([['content-length', '3']]), (t) => `${originHead('POST', t, 'content-length: 3\r\n')}abc`],
  ['trailers with host', trailed([['host', 'evil.test']]), (t) => `${originHead('POST', t, 'content-length: 3\r\n')}abc`],
  ['trailers with CR LF in a value', trailed([['x-t', `a\r\n\r\n${SMUGGLED}`]]), (t) => `${originHead('POST', t, 'content-length: 3\r\n')}abc`],
  // Bodies without a length: delimited by the Content-Length of what was read (RFC 9112 §6.3), never by the client's word.
  ['a GET with a body and no content-length', req('GET', [], SMUGGLED), (t) => `${originHead('GET', t, `content-length: ${SMUGGLED.length}\r\n`)}${SMUGGLED}`],
  ['a HEAD with a body', req('HEAD', [], SMUGGLED), (t) => `${originHead('HEAD', t, `content-length: ${SMUGGLED.length}\r\n`, 'close')}${SMUGGLED}`],
  ['a POST with an empty DATA', req('POST', [], ''), (t) => originHead('POST', t, 'content-length: 0\r\n')],
  ['a POST ended with its HEADERS', req('POST'), (t) => originHead('POST', t, 'content-length: 0\r\n')],
];

/** The access line naming `tag` (by path, or a CONNECT's, which has none). */
const accessLine = (tag: string, connect: boolean): Record<string, unknown> | undefined =>
  proxy.lines.find((l) => l.msg === 'request' && (connect ? l.method === 'CONNECT' : typeof l.path === 'string' && l.path.includes(tag)));

describe('HTTP/2 to HTTP/1.1 downgrade, hostile requests', () => {
  it('each case is reset, refused 400, or reaches the origin as exactly its listed bytes; the pooled origin connection stays in step', async () => {
    let client: RawH2 | undefined;
    let id = -1;
    const outcomes: string[] = [];
    /** What the origin must have read, in order: the forwarded cases' bytes. */
    const wanted: string[] = [];
    for (const [i, [name, make, expected]] of CASES.entries()) {
      // A connection ended by the proxy (none is expected) would be replaced, not end the run.
      if (client === undefined || client.tls.destroyed || client.goaways.length > 0) {
        client?.tls.destroy();
        client = new RawH2(proxy.port, ca, HOST);
        await client.secure;
        client.preface();
        id = -1;
      }
      id += 2;
      const tag = `case-${i}`;
      const stream = id;
      const raw = client;
      raw.write(make(stream, tag));
      const connect = name === 'CONNECT';
      const outcome = await waitFor(`${name}: an answer or a reset`, () => {
        const reset = raw.streamResets.get(stream);
        if (reset !== undefined) return reset === PROTOCOL_ERROR ? 'reset' : `reset ${reset}`;
        // Refused for the whole connection instead: nghttp2 1.67+ (Node 22, 24) ends it with GOAWAY for a
        // content-length the DATA overruns. The origin check below still holds: nothing of it may arrive there.
        if (raw.goaways.length > 0) return 'reset';
        // A stream nghttp2 resets after Node handed it over (bad trailers) is logged 499 too, maybe before its reset arrives.
        const line = accessLine(tag, connect);
        if (line === undefined || line.status === 499) return undefined;
        // A forwarded answer went out whole, and its line says so.
        if (forwardedAs(expected) !== undefined) return line.aborted === undefined && line.code === undefined ? 'forwarded' : `forwarded, logged ${line.code}`;
        return String(line.status);
      });
      const forwarded = forwardedAs(expected);
      if (forwarded !== undefined && outcome.startsWith('forwarded')) wanted.push(forwarded(tag));
      outcomes.push(`${name}: ${typeof expected === 'object' && (outcome === 'reset' || outcome === 'forwarded') ? 'reset or forwarded' : outcome}`);
    }
    client?.tls.destroy();
    const shown = (expected: Expected): string =>
      typeof expected === 'object' ? 'reset or forwarded' : typeof expected === 'function' ? 'forwarded' : String(expected);
    expect(outcomes).toEqual(CASES.map(([name, , expected]) => `${name}: ${shown(expected)}`));
    // Every request that reached the origin is one listed, byte for byte, and nothing else came: no smuggled request,
    // no split field, nothing left over on any connection.
    const seen = (): string[] => requests.map((r) => r.head + r.body);
    await waitFor('the forwarded cases at the origin', () => (requests.length >= wanted.length ? true : undefined));
    expect(seen()).toEqual(wanted);
    // The next client's request goes on the same pooled origin connection and is read as itself.
    const next = new RawH2(proxy.port, ca, HOST);
    await next.secure;
    next.preface();
    next.write(req('GET')(1, 'next'));
    await waitFor('the next request at the origin', () => (requests.length > wanted.length ? true : undefined));
    expect(seen()).toEqual([...wanted, originHead('GET', 'next')]);
    expect(requests.at(-1)!.conn).toBe(requests.at(-2)!.conn);
    expect(connections.map((c) => c.pending)).toEqual(connections.map(() => ''));
    // A GET or HEAD with content is framed right, but an origin that ignores such content (RFC 9110 §9.3.1) would
    // read it as a request of its own: the connection that carried one carries nothing after it.
    for (const name of ['a GET with a body and no content-length', 'a HEAD with a body']) {
      const tag = `case-${CASES.findIndex(([n]) => n === name)}`;
      const { conn } = requests.find((r) => r.head.includes(`/${tag} `))!;
      expect(requests.filter((r) => r.conn === conn).at(-1)!.head, name).toContain(`/${tag} `);
      await waitFor(`${name}: its origin connection closed`, () => (connections[conn]!.closed ? true : undefined));
    }
    next.tls.destroy();
  }, 30_000);

  it('over HTTP/1.1 too, a request target with a fragment is refused 400 and reaches nothing', async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername: HOST, ca, ALPNProtocols: ['http/1.1'] }, () =>
        socket.write(`GET /h1-fragment#/../smuggled HTTP/1.1\r\nhost: ${HOST}\r\nconnection: close\r\n\r\n`),
      );
      let received = '';
      socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
      socket.on('error', reject);
      socket.on('close', () => resolve(received));
    });
    expect(answer.split('\r\n')[0]).toBe('HTTP/1.1 400 Bad Request');
    expect(answer).toContain('x-keyedge-error: KEYEDGE_HTTP_BAD_TARGET');
    expect(requests.filter((r) => r.head.includes('h1-fragment'))).toEqual([]);
  });

  it('a streamed body (chunked, or with a content-length) cut by RST_STREAM mid-way never ends at the origin as a whole request: its connection closes', async () => {
    for (const [i, fields] of [[], [['content-length', '400000']] as Field[]].entries()) {
      const tag = `streamed-${i}`;
      const client = new RawH2(proxy.port, ca, HOST);
      await client.secure;
      client.preface();
      client.write(headerFrames(1, block([...pseudo('POST', `/${tag}`), ...fields]), false));
      // 96,000 bytes: past what is read whole (64 KiB), so the body streams to the origin; in two halves, each
      // within the window that the proxy opens again as it reads.
      const half = Buffer.concat([0, 1, 2].map(() => data(1, Buffer.alloc(16_000, 0x61), false)));
      client.write(half);
      await new Promise((resolve) => setTimeout(resolve, 300));
      client.write(half);
      const conn = await waitFor(`${tag} streaming at the origin`, () => {
        const at = connections.findIndex((c) => c.bytes.includes(`/${tag} `));
        return at !== -1 && connections[at]!.bytes.length > 96_000 ? at : undefined;
      });
      client.write(rstStream(1, 8));
      await waitFor(`${tag}'s origin connection closed`, () => (connections[conn]!.closed ? true : undefined));
      const bytes = connections[conn]!.bytes;
      expect(bytes.slice(bytes.indexOf(`POST /${tag} `))).toContain(i === 0 ? 'transfer-encoding: chunked\r\n' : 'content-length: 400000\r\n');
      // No last chunk (RFC 9112 §7.1), no request the origin would take as whole.
      expect(bytes.endsWith('0\r\n\r\n')).toBe(false);
      expect(requests.filter((r) => r.head.includes(tag))).toEqual([]);
      client.tls.destroy();
    }
  }, 30_000);
});
