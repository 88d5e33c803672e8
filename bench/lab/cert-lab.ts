/**
 * The certificate benches' set-up (cert-reload, cert-scale) in one temp dir: a key server with keys from `keyedge key
 * generate` (public keys read back over the protocol), a throwaway CA (cert-factory.ts) issuing leaves for them, the
 * demo origin, and `keyedge proxy --config <file>` run as an operator runs it (cluster, admin port with a bearer token
 * file, a certificate store), as often as a bench needs; `ProxyLog` reads its JSON log lines back.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { basename, dirname, join } from 'node:path';
import tls from 'node:tls';
import { KeyserverClient } from '../../keyserver/client/client.js';
import { processTree } from '../harness/proc-cpu.js';
import { sleep } from '../harness/rounds.js';
import { freePort, httpGet, spawnManaged, waitFor } from '../harness/spawn.js';
import { BenchCa } from './cert-factory.js';
import { KEYEDGE_CLI, KeyserverLab, type KeyType, LabBase } from './keyserver.js';

/** A token key: `type` as `keyedge key generate --type` takes it, `spki` (DER) as the key server returns it. */
export type LabKey = { readonly id: string; readonly title: string; readonly type: KeyType; readonly keyId: string; readonly spki: Buffer };

/** One JSON log line of the proxy (pino): `time` is ISO 8601, `msg` the message. */
export type LogLine = Record<string, unknown> & { readonly msg?: string; readonly time?: string };

/** Reads a proxy's log file as it grows; a line that is not JSON (a crash trace) is kept as `{ msg: text }`. */
class ProxyLog {
  readonly lines: LogLine[] = [];
  #offset = 0;
  #pending = '';

  constructor(readonly file: string) {}

  /** Every line so far (reads what was appended since the last call). */
  read(): LogLine[] {
    const text = existsSync(this.file) ? readFileSync(this.file) : Buffer.alloc(0);
    if (text.length <= this.#offset) return this.lines;
    const parts = (this.#pending + text.subarray(this.#offset).toString('utf8')).split('\n');
    this.#offset = text.length;
    this.#pending = parts.pop() ?? '';
    for (const part of parts.filter((p) => p.trim() !== '')) {
      try {
        this.lines.push(JSON.parse(part) as LogLine);
      } catch {
        this.lines.push({ msg: part });
      }
    }
    return this.lines;
  }

  /** Lines with message `msg`, from index `from` on. */
  find(msg: string, from = 0): LogLine[] {
    return this.read().filter((l, i) => i >= from && l.msg === msg);
  }

  /** The first line with message `msg` (and `when`) from index `from` on, waited for up to `timeoutMs`; undefined after. */
  async next(msg: string, from: number, timeoutMs: number, when: (l: LogLine) => boolean = () => true): Promise<LogLine | undefined> {
    for (const deadline = Date.now() + timeoutMs; ; await sleep(20)) {
      const line = this.find(msg, from).find(when);
      if (line !== undefined || Date.now() > deadline) return line;
    }
  }
}

/** A started proxy: its process, log, ports, pids, admin requests with the token, stop. */
export type RunningProxy = Awaited<ReturnType<CertLab['startProxy']>>;

/**
 * `name`: its config and log are `<dir>/<name>.{json,log}`; `nodeArgs`: Node options for the primary (node:cluster
 * passes them on to the workers), e.g. --cpu-prof; `allowNotReady`: not ready in time resolves with readyMs undefined,
 * the proxy left running, instead of rejecting.
 */
type ProxyStartOptions = {
  readonly name: string;
  readonly config: Record<string, unknown>;
  readonly nodeArgs?: readonly string[];
  readonly readyTimeoutMs?: number;
  readonly allowNotReady?: boolean;
};

export class CertLab extends LabBase {
  /** Issues 90-day certificates: a start logs no expiry warning per entry (100,000 lines at the largest store). */
  readonly ca = new BenchCa('keyedge certificate bench CA', 90);
  readonly tokenFile: string;
  readonly token = randomBytes(24).toString('hex');
  readonly keys = new Map<string, LabKey>();

  private constructor(
    keyserverLab: KeyserverLab,
    readonly originPort: number,
  ) {
    super(keyserverLab, 'certs-bench', 30_000);
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    writeFileSync(join(this.dir, 'ca.pem'), this.ca.pem);
    this.tokenFile = join(this.dir, 'admin.token');
    writeFileSync(this.tokenFile, `${this.token}\n`, { mode: 0o600 });
  }

  static async start(keys: readonly Omit<LabKey, 'keyId' | 'spki'>[], log: (line: string) => void): Promise<CertLab> {
    const keyserverLab = new KeyserverLab({ prefix: 'keyedge-certs-', tokenLabel: 'keyedge-certs' });
    let lab: CertLab | undefined;
    try {
      lab = new CertLab(keyserverLab, await freePort());
      const ids = new Map<string, string>();
      for (const key of keys) ids.set(key.id, await keyserverLab.generateKey(key.type, `bench-${key.id}`));
      lab.keyserver = await keyserverLab.startServer();
      const client = await KeyserverClient.connect({ unixPath: join(keyserverLab.stateDir, 'keyserver.sock') });
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

  key(id: string): LabKey {
    const key = this.keys.get(id);
    if (key === undefined) throw new Error(`no lab key '${id}'`);
    return key;
  }

  /** What every bench's proxy config shares: the key server, one listener, the admin port with the token. */
  async baseConfig(): Promise<{ config: Record<string, unknown>; port: number; adminPort: number }> {
    const [port, adminPort] = [await freePort(), await freePort()];
    const config = {
      stateDir: this.keyserverLab.stateDir,
      workers: 2,
      keyserver: { socket: join(this.keyserverLab.stateDir, 'keyserver.sock') },
      listen: [{ host: '127.0.0.1', port }],
      admin: { host: '127.0.0.1', port: adminPort, tokenFile: this.tokenFile },
      log: { level: 'info' },
    };
    return { config, port, adminPort };
  }

  /**
   * Writes the config, starts `keyedge proxy` and resolves once /readyz answers 200. Another program can take a port
   * between freePort() and the bind (the workers then fail with EADDRINUSE and are restarted forever): seen in the log,
   * the proxy is started again on fresh ports, up to three times; the config's listen[0] and admin ports are the ones
   * to use.
   */
  async startProxy(options: ProxyStartOptions) {
    const [configFile, logFile] = [join(this.dir, `${options.name}.json`), join(this.dir, `${options.name}.log`)];
    const timeoutMs = options.readyTimeoutMs ?? 120_000;
    let config = options.config;
    for (let attempt = 1; ; attempt++) {
      writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);
      writeFileSync(logFile, '');
      const admin = config.admin as { port: number };
      const started = performance.now();
      const command = [process.execPath, ...(options.nodeArgs ?? []), KEYEDGE_CLI, 'proxy', '--config', configFile];
      const proc = spawnManaged(options.name, command, logFile, undefined, this.dir);
      this.servers.set(options.name, proc);
      let outcome = 'ready' as 'ready' | 'port taken' | 'timed out';
      const ready = async (): Promise<boolean> => {
        if (readFileSync(logFile, 'utf8').includes('EADDRINUSE')) outcome = 'port taken';
        else if (options.allowNotReady === true && performance.now() - started > timeoutMs) outcome = 'timed out';
        else return (await httpGet(`http://127.0.0.1:${admin.port}/readyz`, 2000)).status === 200;
        return true;
      };
      await waitFor(`keyedge proxy ${options.name} (/readyz)`, ready, timeoutMs + 5_000, proc, 20);
      const readyMs = outcome === 'ready' ? performance.now() - started : undefined;
      const stop = async () => {
        await proc.stop(30_000);
        this.servers.delete(options.name);
      };
      if (outcome === 'port taken') {
        await stop();
        if (attempt >= 3) throw new Error(`keyedge proxy ${options.name}: its ports were taken ${attempt} times\n${proc.tail()}`);
        config = { ...config, listen: [{ host: '127.0.0.1', port: await freePort() }], admin: { ...admin, port: await freePort() } };
        continue;
      }
      const headers = { authorization: `Bearer ${this.token}` };
      const adminRequest = async (method: string, path: string, body?: string): Promise<{ status: number; text: string }> => {
        const init = { method, headers, signal: AbortSignal.timeout(120_000), ...(body === undefined ? {} : { body }) };
        const response = await fetch(`http://127.0.0.1:${admin.port}${path}`, init);
        return { status: response.status, text: await response.text() };
      };
      return {
        process: proc,
        log: new ProxyLog(logFile),
        port: (config.listen as { port: number }[])[0]!.port,
        adminPort: admin.port,
        configFile,
        /** Spawn until /readyz first answered 200, ms; undefined when not ready in time (`allowNotReady`). */
        readyMs,
        pids: () => ({ primary: proc.pid, workers: processTree(proc.pid).slice(1) }),
        admin: adminRequest,
        stop,
      };
    }
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
  const kib = Number(/^VmRSS:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  if (!Number.isFinite(kib)) throw new Error(`no VmRSS for pid ${pid}`);
  return kib;
}

export interface ConnectResult {
  readonly ok: boolean;
  /** Where it failed: the TLS handshake (certificate verification included) or the HTTP request after it. */
  readonly failed?: 'handshake' | 'request';
  readonly error?: string;
  /** The served leaf's serial, upper-case hex (node:tls's form). */
  readonly serial?: string;
  readonly status?: number;
  /** performance.now() at connect and at the handshake's end. */
  readonly startedAt: number;
  readonly handshakeAt?: number;
}

/**
 * One new TLS connection to the proxy, verified against `ca` for `servername`; with `request`, one GET (Connection:
 * close) that must answer 200. Never rejects. The peer certificate is read in 'secureConnect', while the socket is open
 * (Node must not be asked about a closed TLS socket).
 */
export function connectOnce(port: number, servername: string, ca: string, request: boolean, timeoutMs = 10_000): Promise<ConnectResult> {
  return new Promise((resolve) => {
    const startedAt = performance.now();
    let serial: string | undefined;
    let head = '';
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca });
    const done = (result: Omit<ConnectResult, 'startedAt'>): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...result, startedAt }); // a second call is a no-op: a promise settles once
    };
    const stage = () => (serial === undefined ? 'handshake' : 'request');
    const fail = (error: string) => done({ ok: false, failed: stage(), error, ...(serial === undefined ? {} : { serial }) });
    const timer = setTimeout(() => fail(`no ${serial === undefined ? 'handshake' : 'answer'} within ${timeoutMs} ms`), timeoutMs);
    let handshakeAt: number | undefined;
    socket.once('secureConnect', () => {
      handshakeAt = performance.now();
      serial = socket.getPeerCertificate().serialNumber?.toUpperCase();
      if (!request) return done({ ok: true, serial, handshakeAt });
      socket.write(`GET / HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', (chunk: Buffer) => {
      if (head.length < 64) head += chunk.toString('latin1');
    });
    socket.once('error', (err) => fail(err.message));
    socket.once('end', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      if (status === 200) done({ ok: true, serial, status, handshakeAt });
      else done({ ok: false, failed: 'request', error: `answer: ${head.split('\r\n')[0] ?? '(none)'}`, status, serial });
    });
    socket.once('close', () => done({ ok: false, failed: stage(), error: 'closed before an answer' }));
  });
}

/**
 * `connect` (a new connection to the replaced certificate's name) every `intervalMs`, back to back when one takes
 * longer, until it is served `serial`, at most `limitMs` after `writtenAt`: when the new serial was first seen (ms from
 * `writtenAt`; undefined: never) and how many connections that took.
 */
export async function untilServed(serial: string, writtenAt: number, intervalMs: number, limitMs: number, connect: () => Promise<ConnectResult>) {
  let probes = 0;
  while (performance.now() - writtenAt < limitMs) {
    const started = performance.now();
    const r = await connect();
    probes++;
    if (r.serial === serial && r.handshakeAt !== undefined) return { seenMs: r.handshakeAt - writtenAt, probes };
    await sleep(Math.max(0, intervalMs - (performance.now() - started)));
  }
  return { seenMs: undefined, probes };
}

/** One GET over `agent` (keep-alive): ok or the error, and whether the connection was reused. */
export function agentGet(agent: https.Agent, port: number, servername: string, ca: string, timeoutMs = 10_000) {
  return new Promise<{ ok: boolean; reused: boolean; error?: string }>((resolve) => {
    const answer = (error?: string) => resolve({ ok: error === undefined, reused: req.reusedSocket, ...(error === undefined ? {} : { error }) });
    const req = https.get({ host: '127.0.0.1', port, path: '/', servername, headers: { host: servername }, ca, agent, timeout: timeoutMs }, (res) => {
      res.resume();
      res.once('end', () => answer(res.statusCode === 200 ? undefined : `status ${res.statusCode}`));
      res.once('error', (err) => answer(err.message));
    });
    req.once('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.once('error', (err) => answer(err.message));
  });
}
