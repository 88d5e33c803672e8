import type tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { HelloAssembler, MAX_HELLO_BYTES, peekServerName } from '../proxy/tls/client-hello.js';
import { captureClientHello as capture } from './helpers/client-hello.js';

/** The verdict on a whole hello with this name, no ALPN and no OCSP request (a node:tls client's defaults). */
const whole = (serverName: string | undefined, more: { alpn?: string[]; statusRequest?: boolean } = {}) => ({
  kind: 'hello',
  serverName,
  alpn: more.alpn,
  statusRequest: more.statusRequest ?? false,
});

describe('peekServerName', () => {
  it('reads the server name of a real ClientHello', async () => {
    const hello = await capture({ servername: 'shop.example' });
    expect(peekServerName(hello)).toEqual(whole('shop.example'));
  });

  it("reads the offered ALPN protocols in the client's order, and an OCSP status request", async () => {
    // requestOCSP is a TLSSocket option tls.connect passes on, missing from its types.
    const offered = await capture({ servername: 'h2.example', ALPNProtocols: ['h2', 'http/1.1'], requestOCSP: true } as tls.ConnectionOptions);
    expect(peekServerName(offered)).toEqual(whole('h2.example', { alpn: ['h2', 'http/1.1'], statusRequest: true }));
    const acme = await capture({ servername: 'challenge.example', ALPNProtocols: ['acme-tls/1'] });
    expect(peekServerName(acme)).toEqual(whole('challenge.example', { alpn: ['acme-tls/1'] }));
  });

  it('sees a ClientHello without SNI', async () => {
    const hello = await capture({ servername: '' });
    expect(peekServerName(hello)).toEqual(whole(undefined));
  });

  it('asks for more bytes at every cut of a ClientHello: the header first, then the whole record', async () => {
    const hello = await capture({ servername: 'a.example' });
    for (let cut = 1; cut < hello.length; cut++) {
      expect(peekServerName(hello.subarray(0, cut))).toEqual({ kind: 'incomplete', atLeast: cut < 5 ? 5 : hello.length });
    }
  });

  it.each(['GET / HTTP/1.1\r\n\r\n', 'POST /form HTTP/1.1\r\n', 'OPTIONS * HTTP/1.1\r\n', 'PROPFIND /dav HTTP/1.1\r\n', 'get / HTTP/1.0\r\n'])(
    'sees plain HTTP in %j once the method and its space are there',
    (line) => {
      const bytes = Buffer.from(line, 'latin1');
      const space = line.indexOf(' ');
      for (let cut = 1; cut <= space; cut++) expect(peekServerName(bytes.subarray(0, cut))).toEqual({ kind: 'incomplete', atLeast: cut + 1 });
      expect(peekServerName(bytes.subarray(0, space + 1))).toEqual({ kind: 'http' });
    },
  );

  it.each([
    ['a space first', ' GET /'],
    ['a digit in the method', 'G3T /'],
    ['a method of 21 letters', `${'A'.repeat(21)} /`],
  ])('does not take %s for plain HTTP', (_name, line) => {
    expect(peekServerName(Buffer.from(line, 'latin1')).kind).toBe('opaque');
  });

  it.each([
    ['an SSLv2-style hello', Buffer.from([0x80, 0x2e, 0x01, 0x00, 0x02])],
    ['a record that is not a handshake', Buffer.from([23, 3, 3, 0, 1, 0])],
    ['a handshake that is not a ClientHello', Buffer.from([22, 3, 3, 0, 4, 2, 0, 0, 0])],
    ['a hello longer than its record (fragmented)', Buffer.from([22, 3, 3, 0, 4, 1, 0, 1, 0])],
    ['an oversized record length', Buffer.from([22, 3, 3, 0xff, 0xff])],
  ])('leaves %s to OpenSSL', (_name, bytes) => {
    expect(peekServerName(bytes).kind).toBe('opaque');
  });

  it('never throws on mutated hellos', async () => {
    const hello = await capture({ servername: 'fuzz.example' });
    let seed = 7;
    const random = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    for (let i = 0; i < 5000; i++) {
      const bytes = Buffer.from(hello);
      for (let j = 0; j < 4; j++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
      const verdict = peekServerName(bytes.subarray(0, 1 + Math.floor(random() * bytes.length)));
      expect(['incomplete', 'opaque', 'hello', 'http']).toContain(verdict.kind);
    }
    expect(MAX_HELLO_BYTES).toBe(16_389);
  });
});

/** A TLS 1.2-style ClientHello record carrying exactly `extensions` (type, data), for the table below. */
function built(extensions: readonly (readonly [number, Buffer])[]): Buffer {
  const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
  const block = Buffer.concat(extensions.map(([type, data]) => Buffer.concat([u16(type), u16(data.length), data])));
  // legacy_version, random, empty session_id, one suite, null compression, extensions.
  const body = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32),
    Buffer.from([0]),
    Buffer.from([0, 2, 0x13, 0x01]),
    Buffer.from([1, 0]),
    u16(block.length),
    block,
  ]);
  const handshake = Buffer.concat([Buffer.from([1, 0, body.length >> 8, body.length & 0xff]), body]);
  return Buffer.concat([Buffer.from([22, 3, 1]), u16(handshake.length), handshake]);
}

/** RFC 6066 §3 server_name with one host_name. */
const sni = (name: string): readonly [number, Buffer] => {
  const host = Buffer.from(name, 'latin1');
  return [0, Buffer.concat([Buffer.from([0, host.length + 3, 0, 0, host.length]), host])];
};
/** RFC 7301 §3.1 ALPN from names (empty names allowed here, to build malformed lists). */
const alpn = (...names: string[]): readonly [number, Buffer] => {
  const list = Buffer.concat(names.map((n) => Buffer.concat([Buffer.from([Buffer.byteLength(n)]), Buffer.from(n)])));
  return [16, Buffer.concat([Buffer.from([list.length >> 8, list.length & 0xff]), list])];
};

describe('peekServerName on built hellos: server name, ALPN, OCSP request', () => {
  it.each([
    ['SNI alone', [sni('a.example')], whole('a.example')],
    ['ALPN before SNI', [alpn('h2', 'http/1.1'), sni('b.example')], whole('b.example', { alpn: ['h2', 'http/1.1'] })],
    ['ALPN alone (no SNI)', [alpn('acme-tls/1')], whole(undefined, { alpn: ['acme-tls/1'] })],
    ['status_request for OCSP (type 1)', [sni('c.example'), [5, Buffer.from([1, 0, 0, 0, 0])]], whole('c.example', { statusRequest: true })],
    ['status_request of another type', [sni('c.example'), [5, Buffer.from([2, 0, 0])]], whole('c.example')],
    ['an empty status_request', [sni('c.example'), [5, Buffer.alloc(0)]], whole('c.example')],
    ['two SNI extensions: the first counts', [sni('first.example'), sni('second.example')], whole('first.example')],
    ['two ALPN extensions: the first counts', [alpn('h2'), alpn('http/1.1')], whole(undefined, { alpn: ['h2'] })],
    ['an SNI list naming no host_name', [[0, Buffer.from([0, 4, 1, 0, 1, 0x61])]], whole(undefined)],
    [
      'unknown extensions around them',
      [[0xfe0d, Buffer.alloc(9)], sni('d.example'), [21, Buffer.alloc(40)], alpn('http/1.1')],
      whole('d.example', { alpn: ['http/1.1'] }),
    ],
    ['no extensions block at all', [], whole(undefined)],
  ] as const)('%s', (_name, extensions, verdict) => {
    expect(peekServerName(built(extensions))).toEqual(verdict);
  });

  it.each([
    ['an empty ALPN list', [sni('a.example'), [16, Buffer.from([0, 0])]]],
    ['an empty ALPN name', [sni('a.example'), alpn('h2', '')]],
    ['an ALPN name longer than its list', [[16, Buffer.from([0, 3, 5, 0x68, 0x32])]]],
    ['an SNI list longer than its extension', [[0, Buffer.from([0, 9, 0, 0, 1, 0x61])]]],
  ] as const)('leaves %s to OpenSSL', (_name, extensions) => {
    expect(peekServerName(built(extensions)).kind).toBe('opaque');
  });
});

/**
 * `hello` with a padding extension (RFC 7685, type 21) appended so the record
 * holds `recordBytes`: record, handshake and extensions lengths grow with it.
 */
function padded(hello: Buffer, recordBytes: number): Buffer {
  const grow = recordBytes - hello.readUInt16BE(3);
  const out = Buffer.concat([hello, Buffer.from([0, 21]), Buffer.alloc(2), Buffer.alloc(grow - 4)]);
  out.writeUInt16BE(grow - 4, hello.length + 2);
  out.writeUInt16BE(out.readUInt16BE(3) + grow, 3);
  out.writeUIntBE(out.readUIntBE(6, 3) + grow, 6, 3);
  // After legacy_version(2) and random(32): session_id<1>, cipher_suites<2>, compression<1>, then extensions<2>.
  let at = 9 + 2 + 32;
  at += 1 + out[at]!;
  at += 2 + out.readUInt16BE(at);
  at += 1 + out[at]!;
  out.writeUInt16BE(out.readUInt16BE(at) + grow, at);
  return out;
}

/** Feeds `bytes` in the given chunk sizes (cycled); returns the last verdict, what was kept and the work done. */
function assemble(bytes: Buffer, sizes: readonly number[]): { verdict: ReturnType<HelloAssembler['push']>; kept: Buffer; work: number } {
  const assembler = new HelloAssembler();
  let verdict = assembler.push(Buffer.alloc(0));
  for (let at = 0, i = 0; at < bytes.length && verdict.kind === 'incomplete'; i++) {
    const size = sizes[i % sizes.length]!;
    verdict = assembler.push(bytes.subarray(at, at + size));
    at += size;
  }
  return { verdict, kept: Buffer.from(assembler.bytes), work: assembler.work };
}

describe('HelloAssembler', () => {
  it('reads a 16 KB padded ClientHello sent one byte per segment with work linear in its size', async () => {
    const hello = padded(await capture({ servername: 'big.example' }), 16_000);
    expect(hello.length).toBe(16_005);
    expect(peekServerName(hello)).toEqual(whole('big.example'));
    const { verdict, kept, work } = assemble(hello, [1]);
    expect(verdict).toEqual(whole('big.example'));
    expect(kept.equals(hello)).toBe(true);
    // Each byte copied once and parsed once, plus the header twice: re-reading all bytes so far on each one would be ~1.3e8.
    expect(work).toBeLessThanOrEqual(2 * hello.length + 32);
  });

  it('copies nothing for a hello in one segment', async () => {
    const hello = await capture({ servername: 'one.example' });
    const { verdict, work } = assemble(hello, [hello.length]);
    expect(verdict).toEqual(whole('one.example'));
    expect(work).toBe(hello.length);
  });

  it('keeps every byte, in order, whatever the segmentation, also bytes sent after the hello', async () => {
    const hello = padded(await capture({ servername: 'cut.example' }), 3000);
    const early = Buffer.from('early data after the hello');
    for (const sizes of [[2], [3, 1, 7], [4, 4000], [5], [6, 1], [hello.length - 1, 50]]) {
      const { verdict, kept, work } = assemble(Buffer.concat([hello, early]), sizes);
      expect(verdict, String(sizes)).toEqual(whole('cut.example'));
      expect(Buffer.concat([hello, early]).subarray(0, kept.length).equals(kept), String(sizes)).toBe(true);
      expect(kept.length).toBeGreaterThanOrEqual(hello.length);
      expect(work).toBeLessThanOrEqual(3 * kept.length + 32);
    }
  });

  it('decides on plain HTTP sent one byte per segment', () => {
    const { verdict, kept } = assemble(Buffer.from('OPTIONS * HTTP/1.1\r\n'), [1]);
    expect(verdict).toEqual({ kind: 'http' });
    expect(kept.toString()).toBe('OPTIONS ');
  });
});
