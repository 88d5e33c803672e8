/**
 * The load of the cert-reload bench (cert-reload/main.ts), running through the
 * whole run: loops of new connections (node:tls connect, certificate verified
 * against the CA, GET with Connection: close, 200 expected, close) and
 * keep-alive loops (an https.Agent with one connection each), spread over the
 * certificates' names, plus the probe that looks for a new serial after each
 * replacement. Every completed handshake is kept as an observation (name,
 * serial, when), from which the bench reads when a new certificate was first
 * served and the old one last. A handshake error is a failed handshake; an
 * error or a non-200 after it, a failed request.
 */
import https from 'node:https';
import { agentGet, type ConnectResult, connectOnce } from '../lab/cert-lab.js';

export interface Target {
  readonly entry: string;
  readonly serverName: string;
}

export interface Observation {
  readonly serverName: string;
  readonly serial: string;
  /** When the handshake completed (performance.now()). */
  readonly at: number;
  /** Connect to handshake completed, ms. */
  readonly handshakeMs: number;
}

export interface LoadCounters {
  handshakes: number;
  newConnectionRequests: number;
  keepAliveRequests: number;
  keepAliveReused: number;
  probeHandshakes: number;
  probeRequests: number;
  failedHandshakes: number;
  failedRequests: number;
  readonly failures: { readonly at: string; readonly what: string; readonly error: string }[];
}

export class ReloadLoad {
  readonly counts: LoadCounters = {
    handshakes: 0,
    newConnectionRequests: 0,
    keepAliveRequests: 0,
    keepAliveReused: 0,
    probeHandshakes: 0,
    probeRequests: 0,
    failedHandshakes: 0,
    failedRequests: 0,
    failures: [],
  };
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
    this.#loops = [
      ...Array.from({ length: newLoops }, (_, i) => this.#newConnections(i)),
      ...Array.from({ length: keepAliveLoops }, (_, i) => this.#keepAlive(i)),
    ];
  }

  #fail(what: string, error: string): void {
    this.counts.failures.push({ at: new Date().toISOString(), what, error });
  }

  /** One new connection + GET to `target`, kept as an observation; a failed handshake is counted here. */
  async connect(target: Target, what: string): Promise<ConnectResult> {
    const r = await connectOnce(this.port, target.serverName, this.ca, true);
    if (r.serial !== undefined && r.handshakeAt !== undefined)
      this.observations.push({ serverName: target.serverName, serial: r.serial, at: r.handshakeAt, handshakeMs: r.handshakeAt - r.startedAt });
    if (r.failed === 'handshake') {
      this.counts.failedHandshakes++;
      this.#fail(`${what} ${target.serverName}: handshake`, r.error ?? '');
    } else if (!r.ok) {
      this.counts.failedRequests++;
      this.#fail(`${what} ${target.serverName}: request`, r.error ?? '');
    }
    return r;
  }

  async #newConnections(loop: number): Promise<void> {
    for (let n = 0; this.#running; n++) {
      const r = await this.connect(this.targets[(loop + n) % this.targets.length]!, 'new connection');
      if (r.failed === 'handshake') continue;
      this.counts.handshakes++;
      if (r.ok) this.counts.newConnectionRequests++;
    }
  }

  async #keepAlive(loop: number): Promise<void> {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    this.#agents.push(agent);
    const target = this.targets[loop % this.targets.length]!;
    while (this.#running) {
      const r = await agentGet(agent, this.port, target.serverName, this.ca);
      if (r.ok) {
        this.counts.keepAliveRequests++;
        if (r.reused) this.counts.keepAliveReused++;
      } else {
        this.counts.failedRequests++;
        this.#fail(`keep-alive ${target.serverName}`, r.error ?? '');
      }
    }
  }

  /**
   * A new connection every `probeMs` (or back to back when one takes longer) until `serial` shows, at most 15 s
   * after `writtenAt`. Probes are whole requests (connect + GET + close) like the load's, so the server sees no
   * aborted connection. Resolves with when the probe saw it (from writtenAt) and how many probes it took.
   */
  async probe(target: Target, serial: string, writtenAt: number, probeMs: number): Promise<{ seenMs: number | undefined; probes: number }> {
    let probes = 0;
    while (performance.now() - writtenAt < 15_000) {
      const started = performance.now();
      const r = await this.connect(target, 'probe');
      probes++;
      if (r.failed !== 'handshake') {
        this.counts.probeHandshakes++;
        if (r.ok) this.counts.probeRequests++;
        if (r.serial === serial) return { seenMs: r.handshakeAt! - writtenAt, probes };
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, probeMs - (performance.now() - started))));
    }
    return { seenMs: undefined, probes };
  }

  /** Stops the loops; resolves with the seconds the load ran. */
  async stop(): Promise<number> {
    this.#running = false;
    await Promise.all(this.#loops);
    const seconds = (performance.now() - this.startedAt) / 1000;
    for (const agent of this.#agents) agent.destroy();
    return seconds;
  }
}
