/**
 * The cert-reload bench's load, running through the whole run: loops of new connections (certificate verified against
 * the CA, one GET with Connection: close, 200 expected) and keep-alive loops (an https.Agent with one connection each)
 * over the certificates' names, and the probe that looks for a new serial after each replacement. Every completed
 * handshake is kept (name, serial, when): the report reads from them when a new certificate was first served and the
 * old one last. An error in the handshake is a failed handshake; after it, a failed request.
 */
import https from 'node:https';
import { type GetResult, get, untilServed } from '../lab/cert-lab.js';

type Target = { readonly serverName: string };

export class ReloadLoad {
  /** `newConnectionRequests` counts the probe's too. */
  readonly counts = { newConnectionRequests: 0, keepAliveRequests: 0, keepAliveReused: 0, failedHandshakes: 0, failedRequests: 0 };
  readonly failures: { at: string; what: string; error: string }[] = [];
  /** Completed handshakes: `at` is performance.now() at their end, `handshakeMs` connect → handshake done. */
  readonly observations: { serverName: string; serial: string; at: number; handshakeMs: number }[] = [];
  readonly startedAt = performance.now();
  #running = true;
  readonly #loops: Promise<void>[];

  constructor(
    readonly port: number,
    readonly ca: string,
    readonly targets: readonly Target[],
    newLoops: number,
    keepAliveLoops: number,
  ) {
    const keepAlive = Array.from({ length: keepAliveLoops }, () => new https.Agent({ keepAlive: true, maxSockets: 1 }));
    this.#loops = [...Array.from({ length: newLoops }, () => false as const), ...keepAlive].map((agent, i) => this.#loop(i, agent));
  }

  /** One GET to `target` (`agent` false: on a new connection), counted; its handshake kept as an observation. */
  async #request(target: Target, agent: https.Agent | false, what: string): Promise<GetResult> {
    const r = await get(this.port, target.serverName, this.ca, agent);
    if (r.serial !== undefined && r.handshakeAt !== undefined)
      this.observations.push({ serverName: target.serverName, serial: r.serial, at: r.handshakeAt, handshakeMs: r.handshakeAt - r.startedAt });
    if (r.failed !== undefined) {
      this.counts[r.failed === 'handshake' ? 'failedHandshakes' : 'failedRequests']++;
      this.failures.push({ at: new Date().toISOString(), what: `${what} ${target.serverName}: ${r.failed}`, error: r.error ?? '' });
    } else if (agent === false) this.counts.newConnectionRequests++;
    else {
      this.counts.keepAliveRequests++;
      if (r.reused) this.counts.keepAliveReused++;
    }
    return r;
  }

  /** Loop `i`: new connections round the targets, or one keep-alive connection to a target. */
  async #loop(i: number, agent: https.Agent | false): Promise<void> {
    for (let n = 0; this.#running; n++) {
      const target = this.targets[(i + (agent === false ? n : 0)) % this.targets.length]!;
      await this.#request(target, agent, agent === false ? 'new connection' : 'keep-alive');
    }
    if (agent !== false) agent.destroy();
  }

  /** Probes for `serial` every `probeMs` (lab/cert-lab.ts untilServed), whole requests like the load's, at most 15 s. */
  probe(target: Target, serial: string, writtenAt: number, probeMs: number): Promise<number | undefined> {
    return untilServed(serial, writtenAt, probeMs, 15_000, () => this.#request(target, false, 'probe'));
  }

  /** Stops the loops; resolves with the seconds the load ran. */
  async stop(): Promise<number> {
    this.#running = false;
    await Promise.all(this.#loops);
    return (performance.now() - this.startedAt) / 1000;
  }
}
