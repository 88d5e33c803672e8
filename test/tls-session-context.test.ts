import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServedCertificate } from '../proxy/certs/certificate.js';
import { SecureContextCache } from '../proxy/tls/contexts.js';
import { newTicketKey, TicketKeyRing } from '../proxy/tls/tickets.js';
import { nodeGet } from './helpers/clients.js';
import { createCa, issue, type Issued } from './helpers/pki.js';

// The session-id context each certificate's secure context gets (proxy/tls/contexts.ts): a session resumes
// wherever the same certificate name serves it — after a renewal, on another worker or node of the fleet
// (the derivation is deterministic), after a ticket-key rotation — and never under another certificate.
// A socket is secured directly with the chosen context, as the listener's ordinary (peeked) path does.
let server: net.Server;
let port: number;
let serve: tls.SecureContext;
let ca: string;
const keys = new Map<string, string>();
const served = (name: string, issued: Issued, keyId: string): ServedCertificate => {
  keys.set(keyId, issued.keyPem);
  return { name, chainPem: issued.certPem, keyId, serial: issued.cert.serialNumber } as unknown as ServedCertificate;
};
let site: ServedCertificate;
let renewed: ServedCertificate;
let other: ServedCertificate;
const ticketKeys = [newTicketKey(), newTicketKey()];
/** Node 20's OpenSSL 3.0 client offers a session to another server name; later ones do not. */
const CLIENT_OFFERS_ACROSS_NAMES = process.versions.openssl.startsWith('3.0.');
/** A worker: its own context cache, the fleet's ticket keys. */
const worker = (ring: TicketKeyRing): SecureContextCache => new SecureContextCache(8, (c) => keys.get(c.keyId)!, {}, { ring });

beforeAll(async () => {
  const authority = await createCa('session context CA');
  ca = authority.certPem;
  site = served('site', await issue(authority, { commonName: 'a.site.test', dnsNames: ['a.site.test', 'b.site.test'], keyAlgorithm: 'ec-p256' }), 'k1');
  renewed = served('site', await issue(authority, { commonName: 'a.site.test', dnsNames: ['a.site.test', 'b.site.test'], keyAlgorithm: 'ec-p256' }), 'k2');
  other = served('other', await issue(authority, { commonName: 'other.test', dnsNames: ['other.test'], keyAlgorithm: 'ec-p256' }), 'k3');
  server = net.createServer((raw) => {
    const socket = new tls.TLSSocket(raw, { isServer: true, secureContext: serve });
    socket.on('error', () => socket.destroy());
    socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as net.AddressInfo).port;
});
afterAll(() => new Promise((resolve) => server.close(resolve)));

describe('session resumption and the session-id context', () => {
  it.each(['TLSv1.2', 'TLSv1.3'] as const)(
    'over %s: resumes after a renewal, on another worker, for another name of the certificate, after a rotation; never under another certificate',
    async (version) => {
      const one = worker(new TicketKeyRing([...ticketKeys]));
      serve = one.get('intermediate', site);
      const first = await nodeGet(port, 'a.site.test', ca, { maxVersion: version });
      expect(first).toMatchObject({ ok: true, resumed: false });
      // The renewed certificate of the same name, on another worker (its own cache, the same ticket keys).
      const two = worker(new TicketKeyRing([...ticketKeys]));
      serve = two.get('intermediate', renewed);
      const again = await nodeGet(port, 'a.site.test', ca, { maxVersion: version, session: first.session! });
      expect(again).toMatchObject({ ok: true, resumed: true });
      // Another name of the certificate: the server resumes it, but Node 22 and 24's client (OpenSSL 3.5) no longer
      // offers a session for a name other than its own, so only Node 20's (OpenSSL 3.0) can show it.
      if (CLIENT_OFFERS_ACROSS_NAMES) {
        expect(await nodeGet(port, 'b.site.test', ca, { maxVersion: version, session: first.session! })).toMatchObject({ ok: true, resumed: true });
      }
      // A rotation: the key that made the ticket is now a previous one. (Over TLS 1.2 a session resumed with the newest
      // key gets no new ticket: the client offers the one it has.)
      const ticket = again.session ?? first.session!;
      const rotated = worker(new TicketKeyRing([newTicketKey(), ...ticketKeys]));
      serve = rotated.get('intermediate', renewed);
      expect(await nodeGet(port, 'a.site.test', ca, { maxVersion: version, session: ticket })).toMatchObject({ ok: true, resumed: true });
      // Another certificate: a full handshake.
      serve = rotated.get('intermediate', other);
      expect(await nodeGet(port, 'other.test', ca, { maxVersion: version, session: ticket })).toMatchObject({ ok: true, resumed: false });
    },
  );
});
