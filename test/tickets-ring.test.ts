import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeTicketKey,
  decodeTicketKeys,
  isTicketKeyMessage,
  newTicketKey,
  TICKET_KEY_BYTES,
  TICKET_KEYS_KEPT,
  TicketKeyRing,
  ticketKeyMessage,
  ticketRingMessage,
  useTicketKeyRing,
  useTicketKeyRingOnServer,
} from '../proxy/tls/tickets.js';
import { nodeGet } from './helpers/clients.js';
import { createCa, issue, type Issued, type TestCa } from './helpers/pki.js';

// The ticket-key ring (proxy/tls/tickets.ts) as a pure module, and the
// internal Node hook it relies on, pinned on the Node running this test.

const nameOf = (key: Buffer): Buffer => key.subarray(0, 16);

describe('the ticket-key ring', () => {
  it('encrypts with the newest key and a fresh 16-byte IV each time', () => {
    const newest = newTicketKey();
    const ring = new TicketKeyRing([newest, newTicketKey()]);
    const a = ring.encrypt();
    const b = ring.encrypt();
    expect(a[0]).toBe(1);
    expect(a[1].equals(newest.subarray(16, 32))).toBe(true);
    expect(a[2].equals(newest.subarray(32, 48))).toBe(true);
    expect(a[3]!.equals(nameOf(newest))).toBe(true);
    expect(a[4]).toHaveLength(16);
    expect(a[4]!.equals(b[4]!)).toBe(false);
  });

  it('renews a ticket under any key of the ring, with that key', () => {
    const [k0, k1, k2] = [newTicketKey(), newTicketKey(), newTicketKey()];
    const ring = new TicketKeyRing([k0!, k1!, k2!]);
    for (const key of [k0!, k1!, k2!]) {
      const [result, hmac, aes] = ring.decrypt(nameOf(key));
      expect(result).toBe(2);
      expect(hmac.equals(key.subarray(16, 32))).toBe(true);
      expect(aes.equals(key.subarray(32, 48))).toBe(true);
    }
    expect(ring.lookup(nameOf(k0!))).toBe('newest');
    expect(ring.lookup(nameOf(k2!))).toBe('previous');
  });

  it('answers unknown (0) for an unknown, short, long or empty name, still with two 16-byte buffers', () => {
    const ring = new TicketKeyRing();
    for (const name of [newTicketKey().subarray(0, 16), Buffer.alloc(0), Buffer.alloc(15), Buffer.alloc(17), Buffer.alloc(16)]) {
      const answer = ring.decrypt(name);
      expect(answer[0]).toBe(0);
      // Node aborts the process unless both are 16-byte buffers, whatever the result.
      expect(answer[1]).toHaveLength(16);
      expect(answer[2]).toHaveLength(16);
      expect(ring.lookup(name)).toBe('unknown');
    }
    expect(ring.decrypt('not a buffer' as unknown as Buffer)[0]).toBe(0);
  });

  it('keeps the newest and the previous ones up to its bound on rotation', () => {
    const first = newTicketKey();
    const ring = new TicketKeyRing([first]);
    expect(TICKET_KEYS_KEPT).toBe(3);
    ring.rotate();
    ring.rotate();
    expect(ring.size).toBe(3);
    expect(ring.lookup(nameOf(first))).toBe('previous');
    ring.rotate();
    expect(ring.size).toBe(3);
    expect(ring.lookup(nameOf(first))).toBe('unknown');
    expect(ring.keys()[0]!.equals(ring.keys()[0]!)).toBe(true);
  });

  it('refuses malformed keys and keeps the ones it has', () => {
    const key = newTicketKey();
    const ring = new TicketKeyRing([key]);
    expect(() => ring.replace([])).toThrow(RangeError);
    expect(() => ring.replace([Buffer.alloc(TICKET_KEY_BYTES - 1)])).toThrow(RangeError);
    expect(() => ring.replace([newTicketKey(), Buffer.alloc(TICKET_KEY_BYTES + 1)])).toThrow(RangeError);
    expect(() => ring.replace(Array.from({ length: 17 }, () => newTicketKey()))).toThrow(RangeError);
    expect(() => ring.replace(['x'.repeat(48) as unknown as Buffer])).toThrow(RangeError);
    expect(() => new TicketKeyRing([key], 0)).toThrow(RangeError);
    expect(ring.size).toBe(1);
    expect(ring.lookup(nameOf(key))).toBe('newest');
  });

  it('owns copies of its keys', () => {
    const key = newTicketKey();
    const name = Buffer.from(nameOf(key));
    const ring = new TicketKeyRing([key]);
    key.fill(0);
    expect(ring.lookup(name)).toBe('newest');
    ring.keys()[0]!.fill(0);
    expect(ring.lookup(name)).toBe('newest');
  });

  it('round-trips through the IPC message and refuses malformed ones', () => {
    const ring = new TicketKeyRing();
    ring.rotate();
    const message = ticketRingMessage(ring, 7);
    expect(isTicketKeyMessage(message)).toBe(true);
    expect(message.generation).toBe(7);
    const keys = decodeTicketKeys(message);
    expect(keys.map((k) => k.toString('hex'))).toEqual(ring.keys().map((k) => k.toString('hex')));
    expect(decodeTicketKey(message).equals(ring.keys()[0]!)).toBe(true);
    // A single-key message (what a primary of one key sends) is a ring of one.
    expect(decodeTicketKeys(ticketKeyMessage(keys[0]!))).toHaveLength(1);
    expect(isTicketKeyMessage({ type: 'keyedge:ticket-key', key: 'a', previous: [1] })).toBe(false);
    expect(isTicketKeyMessage({ type: 'keyedge:ticket-key' })).toBe(false);
    expect(isTicketKeyMessage(null)).toBe(false);
    expect(() => decodeTicketKeys({ type: 'keyedge:ticket-key', key: Buffer.alloc(47).toString('base64') })).toThrow(RangeError);
    expect(() => decodeTicketKeys({ type: 'keyedge:ticket-key', key: message.key, previous: ['short'] })).toThrow(RangeError);
  });
});

// Not public Node API: secureContext.context.enableTicketKeyCallback() and onticketkeycallback.
describe(`the ticket-key hook on Node ${process.version}`, () => {
  let ca: TestCa;
  let leaf: Issued;
  beforeAll(async () => {
    ca = await createCa('tickets CA');
    leaf = await issue(ca, { commonName: 'a.test', dnsNames: ['a.test'], keyAlgorithm: 'ec-p256' });
  });

  const servers: net.Server[] = [];
  afterAll(() => {
    for (const server of servers) server.close();
  });
  async function listening(server: net.Server): Promise<number> {
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return (server.address() as net.AddressInfo).port;
  }
  const answer = (socket: tls.TLSSocket): void => {
    socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'));
  };
  /** Connections each presenting only the newest ticket the one before got; how many resumed. */
  async function chain(port: number, count: number): Promise<{ resumed: number; renewed: number }> {
    let session = (await nodeGet(port, 'a.test', ca.certPem, { maxVersion: 'TLSv1.3', minVersion: 'TLSv1.3' })).session;
    let resumed = 0;
    let renewed = 0;
    for (let i = 0; i < count && session !== undefined; i++) {
      const result = await nodeGet(port, 'a.test', ca.certPem, { session, minVersion: 'TLSv1.3' });
      if (result.resumed === true) resumed++;
      if (result.session !== undefined && !result.session.equals(session)) renewed++;
      session = result.session;
    }
    return { resumed, renewed };
  }

  it('plain Node renews no ticket on a resumed TLS 1.3 connection (why the hook is used)', async () => {
    const server = tls.createServer({ cert: leaf.certPem, key: leaf.keyPem }, answer);
    const port = await listening(server);
    expect((await chain(port, 3)).resumed).toBe(1);
  });

  it('a server with the ring renews every ticket it resumes, also behind an SNI context', async () => {
    const ring = new TicketKeyRing();
    const sni = tls.createSecureContext({ cert: leaf.certPem, key: leaf.keyPem });
    const server = tls.createServer({ cert: leaf.certPem, key: leaf.keyPem, SNICallback: (_name, done) => done(null, sni) }, answer);
    useTicketKeyRingOnServer(server, ring);
    const port = await listening(server);
    expect(await chain(port, 5)).toEqual({ resumed: 5, renewed: 5 });
  });

  it("a socket secured with a context of its own uses that context's ring; a rotated-out key makes a full handshake", async () => {
    const ring = new TicketKeyRing();
    const context = tls.createSecureContext({ cert: leaf.certPem, key: leaf.keyPem });
    const lookups: string[] = [];
    useTicketKeyRing(context, ring, (lookup) => lookups.push(lookup));
    const server = net.createServer((raw) => {
      const socket = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
      socket.on('error', () => socket.destroy());
      answer(socket);
    });
    const port = await listening(server);
    expect(await chain(port, 3)).toEqual({ resumed: 3, renewed: 3 });
    const old = (await nodeGet(port, 'a.test', ca.certPem, { minVersion: 'TLSv1.3' })).session!;
    ring.rotate();
    ring.rotate();
    expect((await nodeGet(port, 'a.test', ca.certPem, { session: old })).resumed).toBe(true);
    ring.rotate();
    const after = await nodeGet(port, 'a.test', ca.certPem, { session: old });
    expect(after).toMatchObject({ ok: true, resumed: false });
    expect(lookups.slice(-2)).toEqual(['previous', 'unknown']);
  });
});
