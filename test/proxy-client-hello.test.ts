import net from 'node:net';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { MAX_HELLO_BYTES, peekServerName } from '../proxy/tls/client-hello.js';

/** The first bytes a real node:tls client sends, captured on a plain TCP server. */
async function capture(options: tls.ConnectionOptions): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const got = new Promise<Buffer>((resolve) => server.once('connection', (socket) => socket.once('data', (d: Buffer) => { resolve(d); socket.destroy(); })));
  const client = tls.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', ...options });
  client.on('error', () => {});
  const hello = await got;
  client.destroy();
  server.close();
  return hello;
}

describe('peekServerName', () => {
  it('reads the server name of a real ClientHello', async () => {
    const hello = await capture({ servername: 'shop.example' });
    expect(peekServerName(hello)).toEqual({ kind: 'hello', serverName: 'shop.example' });
  });

  it('sees a ClientHello without SNI', async () => {
    const hello = await capture({ servername: '' });
    expect(peekServerName(hello)).toEqual({ kind: 'hello', serverName: undefined });
  });

  it('asks for more bytes at every cut of a ClientHello', async () => {
    const hello = await capture({ servername: 'a.example' });
    for (let cut = 1; cut < hello.length; cut++) expect(peekServerName(hello.subarray(0, cut)).kind).toBe('incomplete');
  });

  it.each([
    ['plain HTTP', Buffer.from('GET / HTTP/1.1\r\n\r\n')],
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
    const random = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    for (let i = 0; i < 5000; i++) {
      const bytes = Buffer.from(hello);
      for (let j = 0; j < 4; j++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
      const verdict = peekServerName(bytes.subarray(0, 1 + Math.floor(random() * bytes.length)));
      expect(['incomplete', 'opaque', 'hello']).toContain(verdict.kind);
    }
    expect(MAX_HELLO_BYTES).toBe(16_389);
  });
});
