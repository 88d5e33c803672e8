import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { OriginBusyError, OriginGate } from '../proxy/http/origin-gate.js';

// The per-origin admission rules, on the gate itself: connections, a bounded
// queue with a bounded wait, streamed uploads held to half the connections, and
// each client to half the connections and half the queue.
describe('origin gate', () => {
  it('admits up to its connections at once, queues up to its bound, refuses the rest', async () => {
    const gate = new OriginGate(2, 1, 10_000);
    expect(gate.enter(false)).toBe(true);
    expect(gate.enter(false)).toBe(true);
    const queued = gate.enter(false);
    expect(queued).toBeInstanceOf(Promise);
    await expect(gate.enter(false)).rejects.toBeInstanceOf(OriginBusyError);
    gate.leave(false);
    await expect(queued).resolves.toBeUndefined();
    expect(gate.load).toEqual({ active: 2, uploads: 0, waiting: 0 });
  });

  it('refuses a queued request that waited too long, and forgets it', async () => {
    const gate = new OriginGate(1, 5, 50);
    expect(gate.enter(false)).toBe(true);
    const queued = gate.enter(false) as Promise<void>;
    await expect(queued).rejects.toMatchObject({ code: 'KEYEDGE_HTTP_ORIGIN_BUSY' });
    expect(gate.load.waiting).toBe(0);
    gate.leave(false);
    expect(gate.load.active).toBe(0);
  });

  it('holds streamed uploads to half the connections, so other requests still get in', async () => {
    const gate = new OriginGate(4, 10, 10_000);
    expect(gate.enter(true)).toBe(true);
    expect(gate.enter(true)).toBe(true);
    const third = gate.enter(true);
    expect(third).toBeInstanceOf(Promise);
    // Plain requests pass the waiting upload: it waits for an upload place, not a connection.
    expect(gate.enter(false)).toBe(true);
    expect(gate.enter(false)).toBe(true);
    expect(gate.load).toEqual({ active: 4, uploads: 2, waiting: 1 });
    gate.leave(false);
    expect(gate.load.waiting).toBe(1);
    gate.leave(true);
    await expect(third).resolves.toBeUndefined();
    expect(gate.load).toEqual({ active: 3, uploads: 2, waiting: 0 });
  });

  it('holds one client to half the places: its next request waits, another client still gets in', async () => {
    const gate = new OriginGate(4, 10, 10_000);
    expect(gate.tryEnter(false, 'a')).toBe(true);
    expect(gate.enter(false, undefined, 'a')).toBe(true);
    expect(gate.tryEnter(false, 'a')).toBe(false);
    const third = gate.enter(false, undefined, 'a');
    expect(third).toBeInstanceOf(Promise);
    // Another client, and a request that counts as no client (a trusted proxy's), pass the waiting one.
    expect(gate.enter(false, undefined, 'b')).toBe(true);
    expect(gate.load).toEqual({ active: 3, uploads: 0, waiting: 1 });
    expect(gate.clientLoad('a')).toEqual({ held: 2, waiting: 1 });
    // A place freed by another client is not the waiting client's: it still holds its share.
    gate.leave(false, 'b');
    expect(gate.load.waiting).toBe(1);
    expect(gate.enter(false)).toBe(true);
    // One of its own comes free: its waiting request takes it.
    gate.leave(false, 'a');
    await expect(third).resolves.toBeUndefined();
    expect(gate.clientLoad('a')).toEqual({ held: 2, waiting: 0 });
    gate.leave(false, 'a');
    gate.leave(false, 'a');
    gate.leave(false);
    expect(gate.load).toEqual({ active: 0, uploads: 0, waiting: 0 });
    expect(gate.clientLoad('a')).toEqual({ held: 0, waiting: 0 });
  });

  it("admits a client's waiting request before another's when only its place is free, in queue order otherwise", async () => {
    const gate = new OriginGate(2, 10, 10_000);
    expect(gate.enter(false, undefined, 'a')).toBe(true);
    expect(gate.enter(false, undefined, 'b')).toBe(true);
    const order: string[] = [];
    const a = (gate.enter(false, undefined, 'a') as Promise<void>).then(() => order.push('a'));
    const b = (gate.enter(false, undefined, 'b') as Promise<void>).then(() => order.push('b'));
    // b's place comes free: a, first in the queue, holds its share (1 of 2) and waits on.
    gate.leave(false, 'b');
    await b;
    expect(order).toEqual(['b']);
    gate.leave(false, 'a');
    await a;
    expect(order).toEqual(['b', 'a']);
  });

  it('lets one client have at most half the queue waiting, and forgets its waits as they end', async () => {
    const gate = new OriginGate(2, 4, 50);
    expect(gate.enter(false, undefined, 'a')).toBe(true);
    const waits = [gate.enter(false, undefined, 'a'), gate.enter(false, undefined, 'a')];
    await expect(gate.enter(false, undefined, 'a')).rejects.toBeInstanceOf(OriginBusyError);
    // Another client gets the free place: a's waits are for a share of its own.
    expect(gate.enter(false, undefined, 'b')).toBe(true);
    for (const wait of waits) await expect(wait).rejects.toMatchObject({ code: 'KEYEDGE_HTTP_ORIGIN_BUSY' });
    expect(gate.clientLoad('a')).toEqual({ held: 1, waiting: 0 });
    // A client that left while waiting gives up its wait.
    const abandon = new EventEmitter();
    const left = gate.enter(false, abandon, 'a') as Promise<void>;
    abandon.emit('abort');
    await expect(left).rejects.toMatchObject({ code: 'ECONNRESET' });
    expect(gate.clientLoad('a')).toEqual({ held: 1, waiting: 0 });
  });

  it("keeps half of a client's share from its long-held places: a client whose tunnels took their part still gets a short request in", async () => {
    const gate = new OriginGate(8, 16, 50);
    expect(gate.enter(true, undefined, 'a')).toBe(true);
    expect(gate.enter(true, undefined, 'a')).toBe(true);
    // A third tunnel of a waits (its long-held part of its share, 2 of 4, is taken), though the gate's half for them is not.
    const third = gate.enter(true, undefined, 'a') as Promise<void>;
    expect(gate.tryEnter(true, 'b')).toBe(true);
    // Before, a's tunnels took its whole share, and its every request waited and ended in 503, places free or not.
    expect(gate.tryEnter(false, 'a')).toBe(true);
    expect(gate.tryEnter(false, 'a')).toBe(true);
    await expect(third).rejects.toThrow(/origin busy: no place for a streamed upload or tunnel free within 50 ms|its share/);
    // Held back by its share alone, places free: the refusal says so.
    await expect(gate.enter(false, undefined, 'a')).rejects.toThrow('origin busy: this client held its share of the places (4 of 8) for 50 ms');
    expect(gate.clientLoad('a')).toEqual({ held: 4, waiting: 0 });
  });
});
