// The handshake benchmark's own parts that decide what its figures mean: the
// resuming client's counts against a real TLS 1.3 server, the parsers of
// `openssl speed` and nginx's stub_status, and scenario selection.
import { randomBytes } from 'node:crypto';
import type http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseOpensslSpeed } from '../bench/handshake/limits.js';
import { parseStubStatus, variantSkipReason } from '../bench/lab/nginx.js';
import { ResumeLoad } from '../bench/handshake/alpn.js';
import { allScenarios, selectScenarios } from '../bench/handshake/scenarios.js';
import { createCa, issue } from './helpers/pki.js';

const servers: http.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

/** A TLS 1.3 server answering 1 KiB; `forgetTickets`: new ticket keys on every connection, so (one client at a time) no ticket it issued is accepted. */
async function tlsServer(forgetTickets: boolean): Promise<{ port: number; ca: string; fullHandshakes: () => number }> {
  const ca = await createCa('bench test CA');
  const leaf = await issue(ca, { commonName: 'ec.bench.localhost', dnsNames: ['ec.bench.localhost'], keyAlgorithm: 'ec-p256' });
  let full = 0;
  const server = https.createServer({ cert: leaf.certPem, key: leaf.keyPem, minVersion: 'TLSv1.3' }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('x'.repeat(1024));
  });
  server.on('secureConnection', (socket) => {
    if (!socket.isSessionReused()) full++;
  });
  // Before the handshake: the ticket offered was made with the previous keys.
  if (forgetTickets) server.on('connection', () => server.setTicketKeys(randomBytes(48)));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as AddressInfo).port, ca: ca.certPem, fullHandshakes: () => full };
}

async function runUntil(load: ResumeLoad, completed: number): Promise<void> {
  load.start();
  while (load.completed < completed && load.errors === 0) await new Promise((resolve) => setTimeout(resolve, 20));
  await load.stop();
}

describe('ResumeLoad', () => {
  it("offers each ticket once, only the one its previous connection got: Node's server sends none on a resumed connection", async () => {
    const server = await tlsServer(false);
    const load = new ResumeLoad({ port: server.port, serverName: 'ec.bench.localhost', ca: server.ca, loops: 2 });
    await runUntil(load, 20);
    expect(load.errors).toBe(0);
    expect(load.completed).toBeGreaterThanOrEqual(20);
    // Every ticket offered was accepted, and every connection that resumed was followed by a full one (no new ticket).
    expect(load.resumed).toBe(load.offered);
    expect(load.offeredNotResumed).toBe(0);
    expect(server.fullHandshakes()).toBe(load.completed - load.resumed);
    expect(Math.abs(load.completed - 2 * load.resumed)).toBeLessThanOrEqual(2 * 2);
  });

  it('counts an offered ticket the server did not accept as not resumed', async () => {
    const server = await tlsServer(true);
    const load = new ResumeLoad({ port: server.port, serverName: 'ec.bench.localhost', ca: server.ca, loops: 1 });
    await runUntil(load, 8);
    expect(load.errors).toBe(0);
    expect(load.offered).toBe(load.completed - 1);
    expect(load.resumed).toBe(0);
    expect(load.offeredNotResumed).toBe(load.offered);
    expect(server.fullHandshakes()).toBe(load.completed);
  });

  it('counts a connection refused as an error with its reason', async () => {
    const server = await tlsServer(false);
    const port = server.port;
    await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
    const load = new ResumeLoad({ port, serverName: 'ec.bench.localhost', ca: server.ca, loops: 1 });
    load.start();
    while (load.errors === 0) await new Promise((resolve) => setTimeout(resolve, 20));
    await load.stop();
    expect(load.completed).toBe(0);
    expect(load.firstError).toMatch(/ECONNREFUSED/);
  });
});

describe('parsers', () => {
  it('reads the sign/s column of openssl speed (OpenSSL 3.0)', () => {
    const text = [
      'version: 3.0.19',
      '                  sign    verify    sign/s verify/s',
      'rsa 2048 bits 0.000347s 0.000023s   2880.6  43427.8',
      '                              sign    verify    sign/s verify/s',
      ' 256 bits ecdsa (nistp256)   0.0000s   0.0001s  39409.8  14628.6',
      '',
    ].join('\n');
    expect(parseOpensslSpeed(text)).toEqual({ ecdsaP256: 39409.8, rsa2048: 2880.6 });
  });

  it('names the algorithm openssl speed printed no line for', () => {
    expect(() => parseOpensslSpeed('rsa 2048 bits 0.000347s 0.000023s   2880.6  43427.8\n')).toThrow(/ecdsa nistp256/);
  });

  it('reads nginx stub_status counters', () => {
    const text = 'Active connections: 3 \nserver accepts handled requests\n 1203 1203 1250 \nReading: 0 Writing: 1 Waiting: 2 \n';
    expect(parseStubStatus(text)).toEqual({ accepts: 1203, handled: 1203, requests: 1250 });
    expect(() => parseStubStatus('<html>404</html>')).toThrow(/not a stub_status answer/);
  });
});

describe('nginx variants', () => {
  it('says which package a variant is missing', () => {
    expect(variantSkipReason(undefined, 'file')).toMatch(/apt-get install -y nginx/);
    const nginxOnly = { nginx: '/usr/sbin/nginx', version: '1.22.1', engine: undefined, p11kit: undefined, p11kitClient: undefined };
    expect(variantSkipReason(nginxOnly, 'file')).toBeUndefined();
    expect(variantSkipReason(nginxOnly, 'engine')).toMatch(/libengine-pkcs11-openssl/);
    const withEngine = { ...nginxOnly, engine: '/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so' };
    expect(variantSkipReason(withEngine, 'engine')).toBeUndefined();
    expect(variantSkipReason(withEngine, 'p11kit')).toMatch(/p11-kit p11-kit-modules/);
    expect(
      variantSkipReason({ ...withEngine, p11kit: '/usr/bin/p11-kit', p11kitClient: '/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so' }, 'p11kit'),
    ).toBeUndefined();
  });
});

describe('scenario selection', () => {
  it('has unique ids of the form kind/setup/key', () => {
    const ids = allScenarios().map((s) => s.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toContain('full-tls13/keyless-unix/ecdsa');
    expect(ids).toContain('full-tls13/nginx-p11kit/rsa');
    expect(ids).toContain('resumed-tls13/nginx-file/ecdsa');
    expect(ids).toContain('full-tls12/keyless-unix/ecdsa');
    for (const id of ids) expect(id).toMatch(/^(full-tls13|resumed-tls13|full-tls12|alpn-h2|alpn-h1)\/[a-z0-9-]+\/(ecdsa|rsa)$/);
  });

  it('selects by exact id and by * within one part', () => {
    expect(selectScenarios('full-tls13/keyless-unix/ecdsa').map((s) => s.id)).toEqual(['full-tls13/keyless-unix/ecdsa']);
    const nginxEc = selectScenarios('full-tls13/nginx-*/ecdsa').map((s) => s.id);
    expect(nginxEc.sort()).toEqual(['full-tls13/nginx-engine/ecdsa', 'full-tls13/nginx-file/ecdsa', 'full-tls13/nginx-p11kit/ecdsa']);
    // * does not cross a '/'.
    expect(selectScenarios('*/keyless-unix/rsa').map((s) => s.id)).toEqual(['full-tls13/keyless-unix/rsa']);
  });

  it('names a pattern that matches nothing', () => {
    expect(() => selectScenarios('full-tls13/keyless-unix/ecdsa,full-tls13/apache/ecdsa')).toThrow(/'full-tls13\/apache\/ecdsa' matches no scenario/);
  });
});
