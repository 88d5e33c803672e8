/**
 * The cert-reload bench's load, running through the whole run: loops of new connections (certificate verified against
 * the CA, one GET with Connection: close, 200 expected) and keep-alive loops (an https.Agent with one connection each)
 * over the certificates' names, and the probe that looks for a new serial after each replacement. Every completed
 * handshake is kept (name, serial, when): the report reads from them when a new certificate was first served and the
 * old one last. An error in the handshake is a failed handshake; after it (or on a keep-alive loop), a failed request.
 */
import https from 'node:https';
import { type GetResult, get, untilServed } from '../lab/cert-lab.js';

type Target = { readonly serverName: string };

/** A completed handshake: `at` is performance.now() at its end, `handshakeMs` connect → handshake done. */
type Observation = { readonly serverName: string; readonly serial: string; readonly at: number; readonly handshakeMs: number };

export class ReloadLoad {
  /** New-connection requests: the load's and the probe's. */
  readonly counts = {
    loadHandshakes: 0,
    probeHandshakes: 0,
    newConnectionRequests: 0,
    keepAliveRequests: 0,
    keepAliveReused: 0,
    failedHandshakes: 0,
    failedRequests: 0,
  };
  readonly failures: { at: string; what: string; error: string }[] = [];
  readonly observations: Observation[] = [];
  readonly startedAt = performance.now();
  #running = true;
  readonly #agents: https.Agent[] = [];
  readonly #loops: Promise<void>[];

  constructor(
    readonly port: number,
    readonly ca: string,
    readonly targets: readonly Target[],
    newLoops: number,
    keepAliveLoops: number,
  ) {
    const loops = (n: number, loop: (i: number) => Promise<void>) => Array.from({ length: n }, (_, i) => loop(i));
    this.#loops = [...loops(newLoops, (i) => this.#newConnections(i)), ...loops(keepAliveLoops, (i) => this.#keepAlive(i))];
  }

  #fail(counter: 'failedHandshakes' | 'failedRequests', what: string, error = ''): void {
    this.counts[counter]++;
    this.failures.push({ at: new Date().toISOString(), what, error });
  }

  /** One new connection + GET to `target`, counted and kept as an observation. */
  async #connect(target: Target, what: 'new connection' | 'probe'): Promise<GetResult> {
    const r = await get(this.port, target.serverName, this.ca);
    if (r.serial !== undefined && r.handshakeAt !== undefined)
      this.observations.push({ serverName: target.serverName, serial: r.serial, at: r.handshakeAt, handshakeMs: r.handshakeAt - r.startedAt });
    if (r.failed === 'handshake') this.#fail('failedHandshakes', `${what} ${target.serverName}: handshake`, r.error);
    else {
      this.counts[what === 'probe' ? 'probeHandshakes' : 'loadHandshakes']++;
      if (r.failed === undefined) this.counts.newConnectionRequests++;
      else this.#fail('failedRequests', `${what} ${target.serverName}: request`, r.error);
    }
    return r;
  }

  async #newConnections(loop: number): Promise<void> {
    for (let n = 0; this.#running; n++) await this.#connect(this.targets[(loop + n) % this.targets.length]!, 'new connection');
  }

  async #keepAlive(loop: number): Promise<void> {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    this.#agents.push(agent);
    const target = this.targets[loop % this.targets.length]!;
    while (this.#running) {
      const r = await get(this.port, target.serverName, this.ca, agent);
      if (r.failed !== undefined) this.#fail('failedRequests', `keep-alive ${target.serverName}`, r.error);
      else {
        this.counts.keepAliveRequests++;
        if (r.reused) this.counts.keepAliveReused++;
      }
    }
  }

  /** Probes for `serial` every `probeMs` (lab/cert-lab.ts untilServed), whole requests like the load's, at most 15 s. */
  probe(target: Target, serial: string, writtenAt: number, probeMs: number): Promise<{ seenMs: number | undefined; probes: number }> {
    return untilServed(serial, writtenAt, probeMs, 15_000, () => this.#connect(target, 'probe'));
  }

  /** Stops the loops; resolves with the seconds the load ran. */
  async stop(): Promise<number> {
    this.#running = false;
    await Promise.all(this.#loops);
    for (const agent of this.#agents) agent.destroy();
    return (performance.now() - this.startedAt) / 1000;
  }
}
