import { describe, expect, it } from 'vitest';
import { OriginBusyError, OriginGate } from '../proxy/http/origin-gate.js';

// The per-origin admission rules, on the gate itself: connections, a bounded
// queue with a bounded wait, and streamed uploads held to half the connections.
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
});
