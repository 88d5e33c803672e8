/**
 * What every bench lab shares (handshake, keepalive, the certificate benches): a temp dir under a KeyserverLab's and
 * the registry of what was started in it (key server, origin, the servers under test by id), with a graceful `stop()`
 * and a synchronous `cleanup()` (SIGKILL to every process group still running, temp dir removed; safe twice, also from
 * an 'exit' handler).
 */
import https from 'node:https';
import { join } from 'node:path';
import type tls from 'node:tls';
import { type ManagedProcess, spawnManaged, tcpOpen, waitFor } from '../harness/spawn.js';
import { KEYEDGE_CLI, type KeyserverLab, type KeyserverProcess } from './keyserver.js';

export abstract class LabBase<Id extends string = string> {
  readonly dir: string;
  keyserver: KeyserverProcess | undefined;
  origin: ManagedProcess | undefined;
  /** The servers under test (or proxies) that run, by id. */
  readonly servers = new Map<Id, ManagedProcess>();
  #cleaned = false;

  protected constructor(
    readonly keyserverLab: KeyserverLab,
    subdir: string,
    /** SIGTERM to SIGKILL, for the servers. */
    readonly graceMs = 15_000,
  ) {
    this.dir = join(keyserverLab.dir, subdir);
  }

  /** `keyedge demo-origin` (1 KiB page) on `port`, in this lab's dir; resolves once it accepts connections. */
  protected async startDemoOrigin(port: number, cpus: string | undefined): Promise<ManagedProcess> {
    this.origin = spawnManaged('origin', [process.execPath, KEYEDGE_CLI, 'demo-origin', '--port', String(port)], join(this.dir, 'origin.log'), cpus, this.dir);
    await waitFor('demo origin', () => tcpOpen(port), 15_000, this.origin);
    return this.origin;
  }

  /** Stops what a lab starts besides the registry (nginx). */
  protected async stopOthers(): Promise<void> {}
  protected killOthers(): void {}

  /** Graceful stop of everything started: servers, then the key server, then the origin. */
  async stop(): Promise<void> {
    await Promise.all([...[...this.servers.values()].map((p) => p.stop(this.graceMs)), this.stopOthers()]);
    await this.keyserver?.stop();
    await this.origin?.stop();
  }

  /** The end of a bench's run: graceful stop, then cleanup (the temp dir kept, and said so, with `keepTemp`). */
  async close(keepTemp: boolean, log: (line: string) => void): Promise<void> {
    await this.stop().catch(() => undefined);
    if (keepTemp) log(`kept ${this.dir}`);
    this.cleanup(keepTemp);
  }

  /** SIGKILL to everything still running, remove the temp dir (unless `keepTemp`). Synchronous; safe twice. */
  cleanup(keepTemp = false): void {
    if (this.#cleaned) return;
    this.#cleaned = true;
    for (const p of [...this.servers.values(), this.origin]) p?.kill();
    this.killOthers();
    this.keyserverLab.cleanup(keepTemp);
  }
}

/** One HTTPS GET through a server, checking the certificate against the lab CA and the answer (200, 1 KiB). */
export function probe(port: number, serverName: string, caPem: string): Promise<{ status: number; bytes: number; protocol: string | null }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        path: '/',
        servername: serverName,
        headers: { host: serverName },
        ca: caPem,
        agent: false,
        minVersion: 'TLSv1.3',
        timeout: 5000,
      },
      (res) => {
        // Read while the socket is open (node must not touch a closed TLS socket's state).
        const protocol = (res.socket as tls.TLSSocket).getProtocol();
        let bytes = 0;
        res.on('data', (chunk: Buffer) => (bytes += chunk.length));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, protocol }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('probe timed out')));
    req.on('error', reject);
    req.end();
  });
}
