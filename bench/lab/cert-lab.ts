/**
 * The set-up of the certificate benchmarks (cert-reload.ts, cert-scale.ts),
 * in one temporary directory:
 *   - a key server (keyserver-lab.ts: embedded SoftHSM2 token, unix socket)
 *     with keys made by `keyedge key generate`, their public keys read back
 *     over the key server protocol;
 *   - a throwaway CA (cert-factory.ts) issuing leaves for those keys;
 *   - the demo origin (`keyedge demo-origin`, 1 KiB page);
 *   - `keyedge proxy --config <file>` run as an operator runs it: cluster
 *     primary and workers, admin port with a bearer token file, a certificate
 *     store directory; started and restarted as often as a benchmark needs.
 *
 * Servers are process groups (handshake-lab.ts spawnManaged), so `cleanup()`
 * (synchronous, also from an 'exit' handler) kills a primary with its workers.
 * Proxy logs go to files; `ProxyLog` reads their JSON lines back.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { basename, dirname, join } from 'node:path';
import tls from 'node:tls';
import { KeyserverClient } from '../../keyserver/client/client.js';
import { BenchCa } from './cert-factory.js';
import { freePort, httpGet, type ManagedProcess, spawnManaged, waitFor } from '../harness/spawn.js';
import { processTree } from '../harness/procs.js';
import { LabBase } from './base.js';
import { KEYEDGE_CLI, KeyserverLab } from './keyserver.js';

export interface LabKey {
  readonly id: string;
  readonly title: string;
  /** `keyedge key generate --type` */
  readonly type: 'ec-p256' | 'rsa-2048';
  readonly keyId: string;
  /** SubjectPublicKeyInfo, DER, as the key server returns it. */
  readonly spki: Buffer;
}

/** One JSON log line of the proxy (pino): `time` is ISO 8601, `msg` the message. */
export type LogLine = Record<string, unknown> & { readonly msg?: string; readonly time?: string };

/** Reads a proxy's log file incrementally; lines that are not JSON (a crash trace) are kept as `{ msg: text }`. */
export class ProxyLog {
  readonly file: string;
  readonly lines: LogLine[] = [];
  #offset = 0;
  #pending = '';

  constructor(file: string) {
    this.file = file;
  }

  /** Reads what was appended since the last call; returns every line so far. */
  read(): LogLine[] {
    let text: Buffer;
    try {
      text = readFileSync(this.file);
    } catch {
      return this.lines;
    }
    if (text.length > this.#offset) {
      this.#pending += text.subarray(this.#offset).toString('utf8');
      this.#offset = text.length;
      const parts = this.#pending.split('\n');
      this.#pending = parts.pop() ?? '';
      for (const part of parts) {
        if (part.trim() === '') continue;
        try {
          this.lines.push(JSON.parse(part) as LogLine);
        } catch {
          this.lines.push({ msg: part });
        }
      }
    }
    return this.lines;
  }

  /** Lines with message `msg` from index `from` on. */
  find(msg: string, from = 0): LogLine[] {
    return this.read()
      .slice(from)
      .filter((l) => l.msg === msg);
  }
}

export interface RunningProxy {
  readonly process: ManagedProcess;
  readonly log: ProxyLog;
  readonly port: number;
  readonly adminPort: number;
  readonly configFile: string;
  /** From spawn until /readyz first answered 200, ms; undefined when it was not ready in time (`allowNotReady`). */
  readonly readyMs: number | undefined;
  /** The primary and its workers, now. */
  pids(): { readonly primary: number; readonly workers: readonly number[] };
  /** An admin request with the bearer token; the answer's status and body. */
  admin(method: string, path: string, body?: string): Promise<{ readonly status: number; readonly text: string }>;
  stop(): Promise<void>;
}

export interface ProxyStartOptions {
  /** Name of the run: its config, log and token files are `<dir>/<name>.*`. */
  readonly name: string;
  readonly config: Record<string, unknown>;
  /** Extra node options for the primary (node:cluster passes them on to the workers), e.g. --cpu-prof. */
  readonly nodeArgs?: readonly string[];
  readonly readyTimeoutMs?: number;
  /** Resolve with readyMs undefined, the proxy left running, instead of rejecting when it is not ready in time. */
  readonly allowNotReady?: boolean;
  /** Poll interval of /readyz while starting, ms. */
  readonly pollMs?: number;
}

export class CertLab extends LabBase {
  readonly ca: BenchCa;
  readonly caFile: string;
  readonly tokenFile: string;
  readonly token: string;
  readonly keys = new Map<string, LabKey>();
  readonly originPort: number;

  private constructor(keyserverLab: KeyserverLab, originPort: number) {
    super(keyserverLab, 'certs-bench', 30_000);
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.ca = new BenchCa('keyedge certificate bench CA', 90);
    this.caFile = join(this.dir, 'ca.pem');
    writeFileSync(this.caFile, this.ca.pem);
    this.tokenFile = join(this.dir, 'admin.token');
    this.token = randomBytes(24).toString('hex');
    writeFileSync(this.tokenFile, `${this.token}\n`, { mode: 0o600 });
    this.originPort = originPort;
  }

  /** Makes the temp dir and the keys (`keyedge key generate`), starts the key server and the origin. */
  static async start(keys: readonly Omit<LabKey, 'keyId' | 'spki'>[], log: (line: string) => void): Promise<CertLab> {
    const keyserverLab = new KeyserverLab({ prefix: 'keyedge-certs-', tokenLabel: 'keyedge-certs' });
    let lab: CertLab | undefined;
    try {
      lab = new CertLab(keyserverLab, await freePort());
      const ids = new Map<string, string>();
      for (const key of keys) ids.set(key.id, await keyserverLab.generateKey(key.type, `bench-${key.id}`));
      lab.keyserver = await keyserverLab.startServer();
      const client = await KeyserverClient.connect({ unixPath: lab.keyserverSocket });
      try {
        for (const key of keys) {
          const keyId = ids.get(key.id)!;
          lab.keys.set(key.id, { ...key, keyId, spki: await client.getPublicKey(keyId) });
          log(`${key.title}: token key ${keyId.slice(0, 16)}… (keyedge key generate)`);
        }
      } finally {
        client.close();
      }
      await lab.startDemoOrigin(lab.originPort, undefined);
      return lab;
    } catch (err) {
      lab?.cleanup();
      keyserverLab.cleanup();
      throw err;
    }
  }

  get keyserverSocket(): string {
    return join(this.keyserverLab.stateDir, 'keyserver.sock');
  }

  key(id: string): LabKey {
    const key = this.keys.get(id);
    if (key === undefined) throw new Error(`no lab key '${id}'`);
    return key;
  }

  /** The parts of a proxy config every benchmark shares: key server, one listener, the admin port with the token. */
  async baseConfig(): Promise<{ config: Record<string, unknown>; port: number; adminPort: number }> {
    const port = await freePort();
    const adminPort = await freePort();
    return {
      port,
      adminPort,
      config: {
        stateDir: this.keyserverLab.stateDir,
        workers: 2,
        keyserver: { socket: this.keyserverSocket },
        listen: [{ host: '127.0.0.1', port }],
        admin: { host: '127.0.0.1', port: adminPort, tokenFile: this.tokenFile },
        log: { level: 'info' },
      },
    };
  }

  /**
   * Writes the config, starts `keyedge proxy`, and resolves once /readyz
   * answers 200. A port taken meanwhile by another program (the proxy's
   * workers then fail with EADDRINUSE and are restarted forever) is detected
   * in the log: the proxy is stopped and started again on fresh ports, up to
   * three times. The config's listen[0] and admin ports are the ones to use.
   */
  async startProxy(options: ProxyStartOptions): Promise<RunningProxy> {
    const configFile = join(this.dir, `${options.name}.json`);
    const logFile = join(this.dir, `${options.name}.log`);
    let config = options.config;
    for (let attempt = 1; ; attempt++) {
      writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);
      writeFileSync(logFile, '');
      const adminPort = (config.admin as { port: number }).port;
      const started = performance.now();
      const proc = spawnManaged(
        options.name,
        [process.execPath, ...(options.nodeArgs ?? []), KEYEDGE_CLI, 'proxy', '--config', configFile],
        logFile,
        undefined,
        this.dir,
      );
      this.servers.set(options.name, proc);
      let portTaken = false;
      let timedOut = false;
      const timeoutMs = options.readyTimeoutMs ?? 120_000;
      const ready = async (): Promise<boolean> => {
        if (readFileSync(logFile, 'utf8').includes('EADDRINUSE')) {
          portTaken = true;
          return true;
        }
        if (options.allowNotReady === true && performance.now() - started > timeoutMs) {
          timedOut = true;
          return true;
        }
        return (await httpGet(`http://127.0.0.1:${adminPort}/readyz`, 2000).catch(() => ({ status: 0 }))).status === 200;
      };
      await waitFor(`keyedge proxy ${options.name} (/readyz)`, ready, timeoutMs + 5_000, proc, options.pollMs ?? 20);
      if (portTaken) {
        await proc.stop(10_000);
        this.servers.delete(options.name);
        if (attempt >= 3) throw new Error(`keyedge proxy ${options.name}: its ports were taken ${attempt} times\n${proc.tail()}`);
        config = { ...config, listen: [{ host: '127.0.0.1', port: await freePort() }], admin: { ...(config.admin as object), port: await freePort() } };
        continue;
      }
      return this.#running(proc, config, configFile, logFile, timedOut ? undefined : performance.now() - started);
    }
  }

  #running(proc: ManagedProcess, config: Record<string, unknown>, configFile: string, logFile: string, readyMs: number | undefined): RunningProxy {
    const listen = (config.listen as { port: number }[])[0]!;
    const admin = config.admin as { port: number };
    const token = this.token;
    return {
      process: proc,
      log: new ProxyLog(logFile),
      port: listen.port,
      adminPort: admin.port,
      configFile,
      readyMs,
      pids: () => {
        const tree = processTree(proc.pid);
        return { primary: proc.pid, workers: tree.slice(1) };
      },
      async admin(method, path, body) {
        const response = await fetch(`http://127.0.0.1:${admin.port}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}` },
          ...(body === undefined ? {} : { body }),
          signal: AbortSignal.timeout(120_000),
        });
        return { status: response.status, text: await response.text() };
      },
      stop: async () => {
        await proc.stop(30_000);
        this.servers.delete(proc.name);
      },
    };
  }
}

/** Writes `text` to `file` as certificate tooling should: a temp file in the same directory, then rename (atomic on POSIX). */
export function writeAtomically(file: string, text: string): void {
  const temp = join(dirname(file), `.${basename(file)}.${process.pid}.tmp`);
  writeFileSync(temp, text);
  renameSync(temp, file);
}

/** Resident set size of `pid` in KiB (VmRSS from /proc/<pid>/status). */
export function rssKiB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  const kib = Number(/(\d+)/.exec(line ?? '')?.[1]);
  if (!Number.isFinite(kib)) throw new Error(`no VmRSS for pid ${pid}`);
  return kib;
}

export interface ConnectResult {
  readonly ok: boolean;
  /** Where it failed: the TLS handshake (including certificate verification) or the HTTP request after it. */
  readonly failed?: 'handshake' | 'request';
  readonly error?: string;
  /** The served leaf's serial, upper-case hex (node:tls's form). */
  readonly serial?: string;
  readonly status?: number;
  /** performance.now() when the connection was started. */
  readonly startedAt: number;
  /** performance.now() when the handshake completed. */
  readonly handshakeAt?: number;
}

/**
 * One new TLS connection to the proxy, verified against `ca` for
 * `servername`; with `request`, one GET (Connection: close) whose answer must
 * be a 200. Resolves with what happened, never rejects. The peer certificate
 * is read in 'secureConnect', while the socket is open (Node must not be asked
 * about a closed TLS socket).
 */
export function connectOnce(port: number, servername: string, ca: string, request: boolean, timeoutMs = 10_000): Promise<ConnectResult> {
  return new Promise((resolve) => {
    const startedAt = performance.now();
    let serial: string | undefined;
    let handshakeAt: number | undefined;
    let head = '';
    let settled = false;
    const done = (result: Omit<ConnectResult, 'startedAt'>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...result, startedAt });
    };
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca });
    const timer = setTimeout(
      () =>
        done({
          ok: false,
          failed: serial === undefined ? 'handshake' : 'request',
          error: `no ${serial === undefined ? 'handshake' : 'answer'} within ${timeoutMs} ms`,
          ...(serial === undefined ? {} : { serial }),
        }),
      timeoutMs,
    );
    socket.once('secureConnect', () => {
      handshakeAt = performance.now();
      serial = socket.getPeerCertificate().serialNumber?.toUpperCase();
      if (!request) return done({ ok: true, serial, handshakeAt });
      socket.write(`GET / HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', (chunk: Buffer) => {
      if (head.length < 64) head += chunk.toString('latin1');
    });
    socket.once('error', (err) =>
      done({ ok: false, failed: serial === undefined ? 'handshake' : 'request', error: err.message, ...(serial === undefined ? {} : { serial }) }),
    );
    socket.once('end', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      done(
        status === 200
          ? { ok: true, serial, status, handshakeAt }
          : { ok: false, failed: 'request', error: `answer: ${head.split('\r\n')[0] ?? '(none)'}`, status, serial },
      );
    });
    socket.once('close', () => done({ ok: false, failed: serial === undefined ? 'handshake' : 'request', error: 'closed before an answer' }));
  });
}

/** One GET over `agent` (keep-alive); resolves with the status or the error, and whether the connection was reused. */
export function agentGet(
  agent: https.Agent,
  port: number,
  servername: string,
  ca: string,
  timeoutMs = 10_000,
): Promise<{ readonly ok: boolean; readonly reused: boolean; readonly error?: string }> {
  return new Promise((resolve) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/', servername, headers: { host: servername }, ca, agent, timeout: timeoutMs }, (res) => {
      res.resume();
      res.once('end', () =>
        resolve(res.statusCode === 200 ? { ok: true, reused: req.reusedSocket } : { ok: false, reused: req.reusedSocket, error: `status ${res.statusCode}` }),
      );
      res.once('error', (err) => resolve({ ok: false, reused: req.reusedSocket, error: err.message }));
    });
    req.once('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.once('error', (err) => resolve({ ok: false, reused: req.reusedSocket, error: err.message }));
  });
}
