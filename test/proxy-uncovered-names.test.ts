import net from 'node:net';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { ProxyMetrics } from '../proxy/metrics.js';
import type { ServingState } from '../proxy/serving/state.js';
import { SecureContextCache } from '../proxy/tls/contexts.js';
import { TlsListener } from '../proxy/tls/listener.js';

// What the listener tells on-demand issuance (onUncoveredName) of a name no certificate covers: a host name, never
// whatever bytes a client put in its SNI (up to 16 KB each, kept by the worker's reporter and sent to the primary).
const told: string[] = [];
let listener: TlsListener;
let port: number;
let metrics: ProxyMetrics;

beforeAll(async () => {
  const empty = { exact: new Map(), wildcard: new Map() };
  listener = new TlsListener({
    id: '127.0.0.1:0',
    profile: 'intermediate',
    serving: () => ({ sni: empty, fallback: undefined, noSni: undefined }) as unknown as ServingState,
    contexts: new SecureContextCache(4, () => ''),
    http1: (socket) => socket.destroy(),
    handshakeTimeoutMs: 5_000,
    onUncoveredName: (name) => told.push(name),
    metrics: (metrics = new ProxyMetrics(() => ({}) as never, new Registry())),
    log: createLogger('uncovered-test', 'silent'),
  });
  port = await listener.listen('127.0.0.1', 0);
});
afterAll(() => {
  listener.stopAccepting();
  listener.destroyConnections();
});

/** A ClientHello record whose server_name extension carries `name` (latin1 bytes) as its one host_name. */
function helloNaming(name: string): Buffer {
  const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
  const host = Buffer.from(name, 'latin1');
  const sni = Buffer.concat([u16(0), u16(host.length + 5), u16(host.length + 3), Buffer.from([0]), u16(host.length), host]);
  const body = Buffer.concat([Buffer.from([3, 3]), Buffer.alloc(32), Buffer.from([0, 0, 2, 0x13, 0x01, 1, 0]), u16(sni.length), sni]);
  const handshake = Buffer.concat([Buffer.from([1, 0]), u16(body.length), body]);
  return Buffer.concat([Buffer.from([22, 3, 1]), u16(handshake.length), handshake]);
}

/** The same hello cut into two records (RFC 8446 §5.1): only OpenSSL reads it, through the SNI callback. */
function inTwoRecords(hello: Buffer): Buffer {
  const body = hello.subarray(5);
  const half = body.length >> 1;
  const record = (part: Buffer): Buffer => Buffer.concat([Buffer.from([22, 3, 1, part.length >> 8, part.length & 0xff]), part]);
  return Buffer.concat([record(body.subarray(0, half)), record(body.subarray(half))]);
}

/** Sends the hello and waits for the listener's answer (the unrecognized_name alert) and close. */
async function send(name: string, split = false): Promise<Buffer> {
  const socket = net.connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.on('error', () => {});
  socket.write(split ? inTwoRecords(helloNaming(name)) : helloNaming(name));
  socket.end();
  await new Promise((resolve) => socket.once('close', resolve));
  return Buffer.concat(chunks);
}

describe('names told to on-demand issuance', () => {
  it.each([
    ['a host name, normalised', 'New.Example.', 'new.example'],
    ['a name of 253 characters', `${'a.'.repeat(125)}abc`, `${'a.'.repeat(125)}abc`],
    ['a name of 16,000 characters', 'x'.repeat(16_000), undefined],
    ['a name with a NUL byte', 'a\0.example', undefined],
    ['a name with a space and a slash', 'a b/c.example', undefined],
  ])('%s', async (_case, name, expected) => {
    told.length = 0;
    const answer = await send(name);
    // Refused either way, with the unrecognized_name alert (RFC 6066 §3).
    expect([...answer]).toEqual([21, 3, 3, 0, 2, 2, 112]);
    expect(told).toEqual(expected === undefined ? [] : [expected]);
  });

  it('a hello split over two records: told, refused before any certificate, and counted as an unknown name', async () => {
    told.length = 0;
    const before = (await metrics.handshakes.get()).values.find((v) => v.labels.result === 'unknown_name')?.value ?? 0;
    const answer = await send('Split.Example', true);
    expect(told).toEqual(['split.example']);
    // No ServerHello (22), no certificate: only OpenSSL's alert, if any.
    expect(answer[0]).not.toBe(22);
    expect((await metrics.handshakes.get()).values.find((v) => v.labels.result === 'unknown_name')?.value).toBe(before + 1);
  });
});
