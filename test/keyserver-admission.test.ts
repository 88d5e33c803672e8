/**
 * The key server's two small policies on their own: the log rate limiter
 * (with an injected clock) and connection admission (which connection makes
 * room at a cap). keyserver-abuse.test.ts runs both inside a real key server.
 * Also a connection's end of stream, and the service's deadline, with stand-ins.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeRequest } from '../keyserver/protocol/codec.js';
import { KeyserverConnection } from '../keyserver/server/connection.js';
import { createLogger } from '../keyserver/shared/log.js';
import { Admission } from '../keyserver/server/admission.js';
import { LogLimiter } from '../keyserver/shared/log-limiter.js';
import { unixIdentity } from '../keyserver/server/authz.js';
import type { KeyStore } from '../keyserver/server/keystore.js';
import { KeyserverMetrics } from '../keyserver/server/metrics.js';
import { SigningService } from '../keyserver/server/service.js';
import { Algorithm, ErrorCode } from '../keyserver/protocol/constants.js';
import { TokenError } from '../keyserver/shared/errors.js';
import type { TokenKey } from '../keyserver/token/keys.js';
import type { SigningWorkers } from '../keyserver/token/sign-workers.js';

describe('LogLimiter', () => {
  it('writes `burst` lines per interval and key, then reports how many it dropped on the next line', () => {
    let now = 1_000;
    const limiter = new LogLimiter({ intervalMs: 10_000, burst: 3, now: () => now });
    expect([1, 2, 3, 4, 5].map(() => limiter.take('a'))).toEqual([0, 0, 0, undefined, undefined]);
    // Keys are independent.
    expect(limiter.take('b')).toBe(0);
    now += 9_999;
    expect(limiter.take('a')).toBeUndefined();
    now += 1;
    expect(limiter.take('a')).toBe(3);
    expect(limiter.take('a')).toBe(0);
    expect(limiter.take('a')).toBe(0);
    expect(limiter.take('a')).toBeUndefined();
  });

  it('warn() writes through the logger with `suppressed` only when lines were dropped', () => {
    let now = 0;
    const lines: Record<string, unknown>[] = [];
    const log = createLogger('t', 'debug', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    const limiter = new LogLimiter({ intervalMs: 1_000, burst: 1, now: () => now });
    for (let i = 0; i < 100; i++) limiter.warn(log, 'k', { code: 'MALFORMED_FRAME' }, 'bad request');
    now = 1_000;
    limiter.warn(log, 'k', { code: 'MALFORMED_FRAME' }, 'bad request');
    expect(lines.map((l) => [l.msg, l.level, l.code, l.suppressed])).toEqual([
      ['bad request', 40, 'MALFORMED_FRAME', undefined],
      ['bad request', 40, 'MALFORMED_FRAME', 99],
    ]);
  });
});

describe('Admission', () => {
  it("admits up to the per-client cap, then evicts that client's longest-stalled connection, then its longest-idle one", () => {
    const admission = new Admission<string>({ maxConnections: 100, maxConnectionsPerClient: 3 });
    for (const c of ['a1', 'a2', 'a3']) expect(admission.admit(c, 'A')).toEqual({ admitted: true, evicted: [] });
    admission.update('a1', 'idle');
    admission.update('a2', 'busy');
    // a3 is the only stalled one; another client is not affected by A's cap.
    expect(admission.admit('b1', 'B')).toEqual({ admitted: true, evicted: [] });
    expect(admission.admit('a4', 'A')).toEqual({ admitted: true, evicted: [{ member: 'a3', cap: 'client_cap' }] });
    admission.update('a4', 'busy');
    expect(admission.admit('a5', 'A')).toEqual({ admitted: true, evicted: [{ member: 'a1', cap: 'client_cap' }] });
    admission.update('a5', 'busy');
    // Every connection of A is busy: the newcomer is refused, nothing is evicted.
    expect(admission.admit('a6', 'A')).toEqual({ admitted: false, cap: 'client_cap' });
    expect(admission.size).toBe(4);
  });

  it('at the overall cap evicts the longest-stalled connection of anyone, in the order they stalled', () => {
    const admission = new Admission<string>({ maxConnections: 3, maxConnectionsPerClient: 3 });
    admission.admit('a1', 'A');
    admission.admit('b1', 'B');
    admission.admit('b2', 'B');
    admission.update('a1', 'idle');
    admission.update('b1', 'idle');
    admission.update('a1', 'stalled'); // a partial frame arrives on a1: it stalled after b2 did
    expect(admission.admit('c1', 'C')).toEqual({ admitted: true, evicted: [{ member: 'b2', cap: 'connection_cap' }] });
    admission.update('c1', 'busy');
    expect(admission.admit('c2', 'C')).toEqual({ admitted: true, evicted: [{ member: 'a1', cap: 'connection_cap' }] });
    admission.update('c2', 'busy');
    expect(admission.admit('c3', 'C')).toEqual({ admitted: true, evicted: [{ member: 'b1', cap: 'connection_cap' }] });
    admission.update('c3', 'busy');
    expect(admission.admit('d1', 'D')).toEqual({ admitted: false, cap: 'connection_cap' });
    // A closed connection frees its slot at once.
    admission.remove('c1');
    expect(admission.admit('d1', 'D')).toEqual({ admitted: true, evicted: [] });
  });
});

describe('SigningService deadline', () => {
  it('answers DEADLINE_EXCEEDED, not SIGN_FAILED, to a sign a signing thread skipped past its deadline before the timer fired', async () => {
    const key = {
      keyId: 'ab'.repeat(32),
      label: 'k',
      kind: 'ec',
      bits: 256,
      curve: 'P-256',
      spki: Buffer.alloc(0),
      privateHandle: Buffer.alloc(8),
    } as unknown as TokenKey;
    const service = new SigningService({
      // A busy loop runs the deadline timer late: the thread's skip arrives first.
      token: {
        parts: {
          signers: { sign: () => Promise.reject(new TokenError('KEYEDGE_ERR_TOKEN_OPERATION', 'deadline')) } as unknown as SigningWorkers,
          keys: { get: () => key } as unknown as KeyStore,
        },
        suspect: () => {},
      },
      metrics: new KeyserverMetrics(),
      log: createLogger('service-test', 'silent'),
      limiter: new LogLimiter({ intervalMs: 60_000, burst: 10 }),
      requestTimeoutMs: 60_000,
    });
    const request = { op: 'sign', id: 7, keyId: Buffer.from(key.keyId, 'hex'), algorithm: Algorithm.ECDSA_SHA256, digest: Buffer.alloc(32) } as const;
    const answer = await service.handle(request, unixIdentity('*'));
    expect(answer).toMatchObject({ op: 'error', id: 7, code: ErrorCode.DEADLINE_EXCEEDED });
  });
});

describe('KeyserverConnection end of stream', () => {
  it("drops the client's requests not yet started once its stream ends (SPEC.md), not only once the socket closes", async () => {
    // The close waits for the answers already written: a client that has ended its side and reads no more may never take them.
    let signal: AbortSignal | undefined;
    const service = {
      handle: (_request: unknown, _client: unknown, closed: AbortSignal) => {
        signal = closed;
        return new Promise(() => {});
      },
    } as unknown as SigningService;
    const dir = mkdtempSync(join(tmpdir(), 'keyedge-end-'));
    let abortedAtEnd: (aborted: boolean) => void = () => {};
    const seen = new Promise<boolean>((resolve) => (abortedAtEnd = resolve));
    const server = net.createServer((socket) => {
      new KeyserverConnection(socket, unixIdentity('*'), {
        service,
        metrics: new KeyserverMetrics(),
        log: createLogger('connection-test', 'silent'),
        limiter: new LogLimiter({ intervalMs: 60_000, burst: 10 }),
        limits: { maxBodyBytes: 1024, maxInFlightPerConnection: 16, frameTimeoutMs: 60_000 },
        onState: () => {},
      });
      // After the connection's own listeners.
      socket.on('end', () => abortedAtEnd(signal?.aborted === true));
    });
    const path = join(dir, 'ks.sock');
    await new Promise<void>((resolve) => server.listen(path, resolve));
    const client = net.connect(path);
    client.on('error', () => {});
    try {
      await new Promise((resolve) => client.once('connect', resolve));
      const sign = { op: 'sign', id: 1, keyId: Buffer.alloc(32, 0xab), algorithm: Algorithm.ECDSA_SHA256, digest: Buffer.alloc(32) } as const;
      client.end(encodeRequest(sign));
      expect(await seen, 'the connection signal aborted at the end of stream').toBe(true);
    } finally {
      client.destroy();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
