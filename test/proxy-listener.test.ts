import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { type ConnectionInfo, connectionOf } from '../proxy/tls/connection.js';
import { checkTlsInternals, releaseControl, stapleOnSocket } from '../proxy/tls/node-internals.js';
import { type RunningWorker, startProxyWorker } from '../proxy/worker.js';
import { nodeGet } from './helpers/clients.js';
import { issue } from './helpers/pki.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// The TLS listener's ALPN seam (proxy/tls/listener.ts, protocols.ts): http/1.1 by default, exactly as
// Node's HTTPS server offered it; a registered protocol is offered and its handler takes the secured
// socket with the connection's record; a protocol with a context of its own (ACME TLS-ALPN-01,
// RFC 8737) answers a hello offering it before any name check.
let lab: KeylessLab;
let worker: RunningWorker;
let ca: string;
const log = createLogger('listener-test', 'silent');

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['ec.lab.test', '*.wild.lab.test']);
  worker = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      sni: { default: 'ec', onUnknown: 'reject' },
      // HTTP/2 off: this test registers protocols itself (proxy/http2/ registers h2 when `http2` is on, the default).
      listen: [
        { host: '127.0.0.1', port: 0, profile: 'intermediate', http2: false },
        { host: '127.0.0.1', port: 0, profile: 'modern', http2: false },
      ],
    }),
    { log },
  );
}, 60_000);
afterAll(async () => {
  await worker?.close();
  await lab?.close();
});

/** A TLS handshake offering `alpn`; resolves with the negotiated protocol and the served names, or the error. */
function handshake(port: number, servername: string, alpn: string[], caPem = ca): Promise<{ alpn?: string | false | null; names?: string; error?: string }> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: caPem, ALPNProtocols: alpn });
    socket.once('secureConnect', () => {
      resolve({ alpn: socket.alpnProtocol, names: socket.getPeerCertificate().subjectaltname });
      // A graceful end: the server reads our Finished (TLS 1.3: its handshake ends there) before the close.
      socket.end();
      socket.resume();
    });
    socket.once('error', (err) => resolve({ error: err.message }));
  });
}

describe('ALPN dispatch', () => {
  it('offers http/1.1 alone while no other protocol is registered, as Node\u2019s HTTPS server did', async () => {
    const port = worker.ports[1]!;
    expect(worker.listeners[1]!.protocols).toEqual(['http/1.1']);
    expect(await handshake(port, 'ec.lab.test', ['h2', 'http/1.1'])).toMatchObject({ alpn: 'http/1.1' });
    expect((await handshake(port, 'ec.lab.test', ['h2'])).error).toBeDefined();
    // No ALPN at all: the HTTP server answers.
    expect((await nodeGet(port, 'ec.lab.test', ca)).ok).toBe(true);
  });

  it('hands a registered protocol its secured socket with the connection record; http/1.1 still goes to HTTP', async () => {
    const listener = worker.listeners[0]!;
    const taken: ConnectionInfo[] = [];
    listener.handle('h2', (socket, connection) => {
      socket.on('error', () => {});
      expect(connectionOf(socket)).toBe(connection);
      taken.push(connection);
      socket.end();
    });
    expect(listener.protocols).toEqual(['h2', 'http/1.1']);
    expect(() => listener.handle('h2', () => {})).toThrow(/already/);
    expect(() => listener.handle('http/1.1', () => {})).toThrow(/cannot be registered/);
    const port = worker.ports[0]!;
    expect(await handshake(port, 'a.wild.lab.test', ['h2', 'http/1.1'])).toMatchObject({ alpn: 'h2' });
    await expect.poll(() => taken.length).toBe(1);
    expect(taken[0]).toMatchObject({
      listenerId: `127.0.0.1:${port}`,
      serverName: 'a.wild.lab.test',
      certificateNames: ['ec.lab.test', '*.wild.lab.test'],
      offeredProtocols: ['h2', 'http/1.1'],
      client: '127.0.0.1',
    });
    expect(taken[0]!.certificate?.name).toBe('ec');
    expect((await nodeGet(port, 'ec.lab.test', ca, { ALPNProtocols: ['http/1.1'] })).ok).toBe(true);
    // The other listener offers what it was given, nothing more.
    expect(worker.listeners[1]!.protocols).toEqual(['http/1.1']);
  });

  it('gives a protocol with its own context (ACME TLS-ALPN-01) the hello that offers it, before the unknown-name refusal', async () => {
    const challenge = await issue(lab.ca, { commonName: 'pending.lab.test', dnsNames: ['pending.lab.test'], keyAlgorithm: 'ec-p256' });
    const context = tls.createSecureContext({ cert: challenge.certPem, key: challenge.keyPem });
    const listener = worker.listeners[1]!;
    const taken: ConnectionInfo[] = [];
    listener.handle(
      'acme-tls/1',
      (socket, connection) => {
        socket.on('error', () => {});
        taken.push(connection);
        socket.end();
      },
      { selectContext: (hello) => (hello.serverName === 'pending.lab.test' ? context : undefined) },
    );
    // Negotiated on its own context only: never offered on a certificate's.
    expect(listener.protocols).toEqual(['http/1.1']);
    const port = worker.ports[1]!;
    expect(await handshake(port, 'pending.lab.test', ['acme-tls/1'])).toEqual({ alpn: 'acme-tls/1', names: 'DNS:pending.lab.test' });
    await expect.poll(() => taken.length).toBe(1);
    expect(taken[0]).toMatchObject({ serverName: 'pending.lab.test', certificate: undefined, certificateNames: [] });
    // Without acme-tls/1 the name is unknown: refused with unrecognized_name, as before.
    expect((await handshake(port, 'pending.lab.test', ['http/1.1'])).error).toMatch(/unrecognized name|alert number 112/i);
    // acme-tls/1 for a name with no challenge: the usual certificate, which does not offer acme-tls/1.
    expect((await handshake(port, 'ec.lab.test', ['acme-tls/1'])).error).toBeDefined();
  });
});

describe('the connection record', () => {
  it('keeps the served certificate names on an HTTP connection', async () => {
    const socket = tls.connect({ host: '127.0.0.1', port: worker.ports[1]!, servername: 'EC.lab.test.', ca });
    socket.on('error', () => {});
    await once(socket, 'secureConnect');
    let answer = '';
    socket.on('data', (d: Buffer) => (answer += d.toString()));
    // Another tenant's name on this connection: refused by the names kept at the handshake.
    socket.write('GET / HTTP/1.1\r\nHost: other.lab.test\r\n\r\nGET / HTTP/1.1\r\nHost: ec.lab.test\r\nConnection: close\r\n\r\n');
    await once(socket, 'close');
    expect(answer).toMatch(/^HTTP\/1\.1 421 /);
    expect(answer).toMatch(/HTTP\/1\.1 200 /);
  });
});

describe('the Node internals a TLS socket of our own needs (node-internals.ts), on the Node in use', () => {
  it('staples a response set on the socket before its handshake, over TLS 1.2 and 1.3, and negotiates ALPN', async () => {
    checkTlsInternals();
    const leaf = await issue(lab.ca, { commonName: 'staple.lab.test', dnsNames: ['staple.lab.test'], keyAlgorithm: 'ec-p256' });
    const context = tls.createSecureContext({ cert: leaf.certPem, key: leaf.keyPem });
    const staple = Buffer.from('a staple of our own');
    const server = net.createServer((raw) => {
      const socket = new tls.TLSSocket(raw, { isServer: true, secureContext: context, ALPNProtocols: ['h2', 'http/1.1'] });
      stapleOnSocket(socket, staple);
      socket.on('error', () => {});
      socket.once('secure', () => {
        releaseControl(socket);
        socket.end(String(socket.alpnProtocol));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
        const port = (server.address() as net.AddressInfo).port;
        // requestOCSP is a TLSSocket option tls.connect passes on, missing from its types.
        const options = { host: '127.0.0.1', port, servername: 'staple.lab.test', ca, maxVersion, ALPNProtocols: ['h2'], requestOCSP: true };
        const client = tls.connect(options as tls.ConnectionOptions);
        let response: Buffer | undefined;
        client.on('OCSPResponse', (r: Buffer) => (response = r));
        let body = '';
        client.on('data', (d: Buffer) => (body += d.toString()));
        await once(client, 'close');
        expect(response?.toString(), maxVersion).toBe(staple.toString());
        expect(body).toBe('h2');
      }
    } finally {
      server.close();
    }
  });
});
