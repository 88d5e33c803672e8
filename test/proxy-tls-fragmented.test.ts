import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { createLogger } from '../keyserver/shared/log.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { nodeGet } from './helpers/clients.js';
import { ecAndRsaServing, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// A ClientHello fragmented over several TLS records (legal: RFC 8446 §5.1) is read by OpenSSL, not by the
// listener's peek: the rare path must choose the certificate as the common one does.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
const relays: net.Server[] = [];
const log = createLogger('proxy-test', 'silent');

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const config: ProxyConfig = lab.proxyConfig({
    ...(await ecAndRsaServing(lab)),
    listen: [{ host: '127.0.0.1', port: 0, profile: 'intermediate' }],
  });
  proxy = await startProxyWorker(config, { log });
});
afterAll(async () => {
  for (const relay of relays) relay.close();
  await proxy?.close();
  await lab?.close();
});

/** A TCP relay to `port` that cuts the client's first record (its ClientHello) into records of `size` bytes. */
async function fragmentingRelay(port: number, size: number): Promise<number> {
  const relay = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    upstream.pipe(client);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      if (head.length < 5 || head.length < 5 + head.readUInt16BE(3)) return;
      client.off('data', onData);
      const end = 5 + head.readUInt16BE(3);
      const body = head.subarray(5, end);
      for (let at = 0; at < body.length; at += size) {
        const part = body.subarray(at, at + size);
        upstream.write(Buffer.concat([Buffer.from([22, head[1]!, head[2]!, part.length >> 8, part.length & 0xff]), part]));
      }
      upstream.write(head.subarray(end));
      client.pipe(upstream);
    };
    client.on('data', onData);
  });
  relays.push(relay);
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  return (relay.address() as net.AddressInfo).port;
}

describe('a ClientHello fragmented over several records', () => {
  it.each([
    ['ec.lab.test', 'DNS:ec.lab.test, DNS:*.wild.lab.test'],
    ['a.wild.lab.test', 'DNS:ec.lab.test, DNS:*.wild.lab.test'],
    ['RSA.lab.test.', 'DNS:rsa.lab.test'],
  ])('%s gets the certificate covering it', async (name, san) => {
    const result = await nodeGet(await fragmentingRelay(proxy.ports[0]!, 64), name, ca, { checkServerIdentity: () => undefined });
    expect(result).toMatchObject({ ok: true, subjectAltName: san });
  });

  it('a client without SNI gets the default certificate, as with a hello in one record', async () => {
    const relay = await fragmentingRelay(proxy.ports[0]!, 64);
    const result = await nodeGet(relay, undefined, ca, { checkServerIdentity: () => undefined });
    expect(result).toMatchObject({ ok: true, subjectAltName: 'DNS:ec.lab.test, DNS:*.wild.lab.test' });
  });

  it('an unknown name is refused before any certificate', async () => {
    const result = await nodeGet(await fragmentingRelay(proxy.ports[0]!, 64), 'unknown.example', ca);
    expect(result.ok).toBe(false);
  });

  // RFC 6066 §3: a session made with one certificate never resumes for a name another certificate serves.
  it.each(['TLSv1.2', 'TLSv1.3'] as const)('over %s, a session resumes for its own certificate only', async (version) => {
    const relay = await fragmentingRelay(proxy.ports[0]!, 64);
    const first = await nodeGet(relay, 'ec.lab.test', ca, { maxVersion: version });
    expect(first).toMatchObject({ ok: true, resumed: false });
    const other = await nodeGet(relay, 'rsa.lab.test', ca, { maxVersion: version, session: first.session! });
    expect(other).toMatchObject({ ok: true, resumed: false, subjectAltName: 'DNS:rsa.lab.test' });
  });

  it('hands an h2 connection to HTTP/2, which checks the Host against its certificate', async () => {
    const relay = await fragmentingRelay(proxy.ports[0]!, 64);
    const session = http2.connect(`https://127.0.0.1:${relay}`, { servername: 'rsa.lab.test', ca });
    session.on('error', () => {});
    const status = (authority: string): Promise<number | undefined> =>
      new Promise((resolve) => {
        const stream = session.request({ ':path': '/', ':authority': authority });
        stream.on('response', (headers) => resolve(headers[':status']));
        stream.on('error', () => resolve(undefined));
        stream.resume();
      });
    try {
      expect(await status('rsa.lab.test')).toBe(200);
      expect(await status('ec.lab.test')).toBe(421);
    } finally {
      session.close();
    }
  });
});
