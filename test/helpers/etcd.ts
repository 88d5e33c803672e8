/**
 * A real etcd cluster on loopback for fleet tests: `members` etcd 3.4
 * processes (Debian's etcd-server), each with its own data directory under
 * `dir` and free client and peer ports, joined by --initial-cluster. A
 * member can be killed (the leader, say) and started again on the same data
 * directory, which rejoins the cluster. Short heartbeat and election
 * timeouts so a lost leader is replaced within about a second.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './proxy-cluster.js';

const PAUSE = new Int32Array(new SharedArrayBuffer(4));

/** The process's state letter from /proc/<pid>/stat ('T': stopped), or undefined once it is gone. */
function processState(pid: number): string | undefined {
  try {
    return /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}
import { freePort } from './proxy-lab.js';

export const ETCD = '/usr/bin/etcd';

export interface EtcdMember {
  readonly name: string;
  readonly clientUrl: string;
  running(): boolean;
  /** SIGKILL: a crash, no goodbye to the peers. */
  kill(): Promise<void>;
  /** SIGSTOP, then SIGCONT: a member that stalls (a long GC pause, a stalled disk) and then answers what was sent meanwhile. */
  stall(): void;
  resume(): void;
  start(): void;
}

export interface EtcdCluster {
  readonly endpoints: readonly string[];
  readonly members: readonly EtcdMember[];
  /** The index of the member that leads now; waits for one to be elected. */
  leader(): Promise<number>;
  /** Resolves once a quorum answers a linearizable read. */
  healthy(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export async function startEtcdCluster(dir: string, count = 3): Promise<EtcdCluster> {
  const ports = await Promise.all(Array.from({ length: count }, async () => ({ client: await freePort(), peer: await freePort() })));
  const names = ports.map((_, i) => `m${i}`);
  const initialCluster = ports.map((p, i) => `${names[i]}=http://127.0.0.1:${p.peer}`).join(',');
  const members = ports.map((p, i) => {
    const name = names[i]!;
    const dataDir = join(dir, `etcd-${name}`);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const clientUrl = `http://127.0.0.1:${p.client}`;
    const args = [
      '--name',
      name,
      '--data-dir',
      dataDir,
      '--listen-client-urls',
      clientUrl,
      '--advertise-client-urls',
      clientUrl,
      '--listen-peer-urls',
      `http://127.0.0.1:${p.peer}`,
      '--initial-advertise-peer-urls',
      `http://127.0.0.1:${p.peer}`,
      '--initial-cluster',
      initialCluster,
      '--initial-cluster-state',
      'new',
      '--initial-cluster-token',
      'keyedge-test',
      '--heartbeat-interval',
      '100',
      '--election-timeout',
      '1000',
      '--logger',
      'zap',
      '--log-level',
      'error',
    ];
    let child: ChildProcess | undefined;
    let exited: Promise<void> = Promise.resolve();
    const member: EtcdMember = {
      name,
      clientUrl,
      running: () => child !== undefined && child.exitCode === null && child.signalCode === null,
      start() {
        const started = spawn(ETCD, args, { stdio: ['ignore', 'ignore', 'ignore'] });
        child = started;
        exited = new Promise((resolve) => started.once('exit', () => resolve()));
      },
      async kill() {
        if (member.running()) child?.kill('SIGKILL');
        await exited;
      },
      stall: () => {
        if (child?.pid === undefined || !child.kill('SIGSTOP')) return;
        // Returns once the kernel shows it stopped: the signal takes effect asynchronously (a loaded machine, a sandbox's
        // kernel), and a request sent meanwhile was answered as if etcd had not stalled.
        for (let i = 0; i < 200 && processState(child.pid) !== 'T'; i++) Atomics.wait(PAUSE, 0, 0, 5);
      },
      resume: () => void child?.kill('SIGCONT'),
    };
    return member;
  });
  for (const member of members) member.start();
  const status = async (url: string): Promise<{ member: string; leader: string } | undefined> => {
    try {
      const response = await fetch(`${url}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(1_000) });
      const body = (await response.json()) as { header?: { member_id?: string }; leader?: string };
      return body.header?.member_id === undefined || body.leader === undefined || body.leader === '0'
        ? undefined
        : { member: body.header.member_id, leader: body.leader };
    } catch {
      return undefined;
    }
  };
  const cluster: EtcdCluster = {
    endpoints: members.map((m) => m.clientUrl),
    members,
    async leader() {
      return waitFor('an etcd leader', async () => {
        for (const [i, member] of members.entries()) {
          if (!member.running()) continue;
          const s = await status(member.clientUrl);
          if (s !== undefined && s.member === s.leader) return i;
        }
        return undefined;
      });
    },
    async healthy(timeoutMs = 20_000) {
      await waitFor(
        'an etcd quorum',
        async () => {
          for (const member of members) {
            if (!member.running()) continue;
            try {
              // A range through the gRPC gateway is linearizable: it answers only with a quorum.
              const response = await fetch(`${member.clientUrl}/v3/kv/range`, { method: 'POST', body: '{"key":"AA=="}', signal: AbortSignal.timeout(1_000) });
              if (response.ok) return true;
            } catch {
              // Not yet.
            }
          }
          return undefined;
        },
        timeoutMs,
      );
    },
    async close() {
      await Promise.all(members.map((m) => m.kill()));
    },
  };
  try {
    await cluster.healthy();
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}
