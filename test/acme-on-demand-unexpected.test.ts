import { Writable } from 'node:stream';
import type { Worker } from 'node:cluster';
import { afterEach, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { createLogger } from '../keyserver/shared/log.js';
import { OnDemandGate } from '../proxy/acme/on-demand.js';
import { wantedMessage } from '../proxy/acme/on-demand-names.js';
import type { RunningAcme } from '../proxy/acme/service.js';
import { onWorkerMessage } from '../proxy/cluster-on-worker-message.js';

// An on-demand name whose check fails unexpectedly (a part of the gate throws: a bug, not an answer about the name).
// The primary hands each name a worker reports to the gate without waiting (cluster-on-worker-message.ts): a rejection
// there was an unhandled rejection in the cluster primary, which stops the whole proxy (uncaught.ts). Now the gate
// refuses the name this time (counted `refused`, not remembered: its next report is checked again) and logs it once
// per interval without the error's URLs' credentials, and the primary catches whatever still rejects.
// Unit level: every part the gate calls catches its own failures (the ask endpoint, DNS, the fleet's store, the
// order and its state file), so no real request makes one throw today; the failing part here is a stand-in.

const SECRET = 's3cr3t-token';
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
process.on('unhandledRejection', onUnhandled);
afterEach(() => void unhandled.splice(0));

function capturedLog(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
  let text = '';
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      text += chunk.toString();
      done();
    },
  });
  return {
    log: createLogger('on-demand-unexpected-test', 'info', sink as never),
    lines: () =>
      text
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

/** A gate whose `isManaged` throws an error quoting the ask URL with its token, as a careless part might. */
function failingGate(log: ReturnType<typeof createLogger>): { gate: OnDemandGate; outcomes: string[] } {
  const config = loadProxyConfig(undefined, { acme: { directory: 'https://ca.test/dir', onDemand: { publicNamesOnly: false } } }).acme!.onDemand!;
  const outcomes: string[] = [];
  const gate = new OnDemandGate({
    config,
    log,
    isManaged: () => {
      throw new TypeError(`cannot read state for https://ask.test/check?token=${SECRET} (bug)`);
    },
    order: () => undefined,
    onOutcome: (outcome, reason) => void outcomes.push(reason === undefined ? outcome : `${outcome}:${reason}`),
  });
  return { gate, outcomes };
}

describe('on-demand: an unexpected failure of the gate', () => {
  it('refuses the name this time, counted and logged without the secret, and does not reject', async () => {
    const { log, lines } = capturedLog();
    const { gate, outcomes } = failingGate(log);
    await expect(gate.wanted('a.example.test', '192.0.2.1')).resolves.toBe('refused');
    expect(outcomes).toEqual(['refused']);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const written = lines().filter((l) => l.name === 'a.example.test');
    expect(written).toHaveLength(1);
    expect(written[0]).toMatchObject({ level: 50, msg: expect.stringMatching(/on-demand certificate not checked/) });
    expect(JSON.stringify(lines())).not.toContain(SECRET);
    // Checked again at its next report (not remembered as refused, not left as `checking`).
    await expect(gate.wanted('a.example.test', '192.0.2.1')).resolves.toBe('refused');
    expect(outcomes).toEqual(['refused', 'refused']);
  });

  it("the primary's message handler leaves no rejection unhandled, whatever the gate does", async () => {
    const { log, lines } = capturedLog();
    const acme = { onDemand: { wanted: () => Promise.reject(new Error(`gate broke at https://ask.test/?token=${SECRET}`)) } } as unknown as RunningAcme;
    const parts = { supervisor: {}, serving: {}, ticketRing: {}, board: {}, acme, log } as unknown as Parameters<typeof onWorkerMessage>[2];
    onWorkerMessage({ id: 3 } as Worker, wantedMessage('b.example.test', '192.0.2.2'), parts);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(unhandled).toEqual([]);
    const written = lines().filter((l) => l.name === 'b.example.test');
    expect(written).toHaveLength(1);
    expect(JSON.stringify(lines())).not.toContain(SECRET);
  });
});
