/**
 * The certificate benches' set-up (cert-reload, cert-scale) in one temp dir: a key server with keys from `keyedge key
 * generate` (public keys read back over the protocol), a throwaway CA (cert-factory.ts) issuing leaves for them, the
 * demo origin, and `keyedge proxy --config <file>` run as an operator runs it (cluster, admin port with a bearer token
 * file, a certificate store), as often as a bench needs; its JSON log read back as it grows; and the client side: one
 * verified GET that reports the served serial, and a probe until a new serial is served.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { basename, dirname, join } from 'node:path';
import type tls from 'node:tls';
import { KeyserverClient } from '../../keyserver/client/client.js';
import { processTree } from '../harness/proc-cpu.js';
import { sleep } from '../harness/rounds.js';
import { exitOnInterrupt, type Log } from '../harness/runner.js';
import { freePort, httpGet, spawnManaged, waitFor } from '../harness/spawn.js';
import { BenchCa } from './cert-factory.js';
import { KEYEDGE_CLI, KeyserverLab, type KeyType, LabBase } from './keyserver.js';

const KEYS = { ec: { title: 'ECDSA P-256', type: 'ec-p256' }, rsa: { title: 'RSA-2048', type: 'rsa-2048' } } as const;

/** A token key: `type` as `keyedge key generate --type` takes it, `spki` (DER) as the key server returns it. */
export type LabKey = { readonly id: keyof typeof KEYS; readonly title: string; readonly type: KeyType; readonly keyId: string; readonly spki: Buffer };

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
    [this.#offset, this.#pending] = [text.length, parts.pop() ?? ''];
    for (const part of parts.filter((p) => p.trim() !== '')) {
      try {
        this.lines.push(JSON.parse(part) as LogLine);
      } catch {
        this.lines.push({ msg: part });
      }
    }
    return this.lines;
  }

  /** Lines with message `msg`. */
  find(msg: string): LogLine[] {
    return this.read().filter((l) => l.msg === msg);
  }

  /** The first line with message `msg` (and `when`) from index `from` on, waited for up to `timeoutMs`; undefined after. */
  async next(msg: string, from: number, timeoutMs: number, when: (l: LogLine) => boolean = () => true): Promise<LogLine | undefined> {
    for (const deadline = Date.now() + timeoutMs; ; await sleep(20)) {
      const line = this.read().find((l, i) => i >= from && l.msg === msg && when(l));
      if (line !== undefined || Date.now() > deadline) return line;
    }
  }
}

/** A started proxy: its process, log, ports, pids, admin requests with the token, stop. */
export type RunningProxy = Awaited<ReturnType<CertLab['startProxy']>>;

/**
 * `name`: its config and log are `<dir>/<name>.{json,log}`; `config`: the bench's sections over the shared ones (key
 * server, one listener, admin port with the token, 2 workers); `nodeArgs`: for the primary, which node:cluster passes on
 * to the workers (--cpu-prof); `allowNotReady`: not ready in time resolves with readyMs undefined instead of rejecting.
 */
type ProxyStartOptions = { name: string; config: object; nodeArgs?: readonly string[]; readyTimeoutMs?: number; allowNotReady?: boolean };

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

  /**
   * A bench's run: the lab with `keyIds` started, `body` run, everything stopped and the temp dir removed (kept with
   * `keepTemp`), also on an error or Ctrl-C. Resolves with body's exit status.
   */
  static async run(keyIds: readonly LabKey['id'][], keepTemp: boolean, body: (lab: CertLab, say: Log) => Promise<number>): Promise<number> {
    const say = (line: string): void => void process.stderr.write(`${line}\n`);
    const originPort = await freePort();
    const lab = new CertLab(new KeyserverLab({ prefix: 'keyedge-certs-', tokenLabel: 'keyedge-certs' }), originPort);
    exitOnInterrupt(() => lab.cleanup(keepTemp));
    try {
      const generated: string[] = [];
      for (const id of keyIds) generated.push(await lab.keyserverLab.generateKey(KEYS[id].type, `bench-${id}`));
      lab.keyserver = await lab.keyserverLab.startServer();
      const client = await KeyserverClient.connect({ unixPath: join(lab.keyserverLab.stateDir, 'keyserver.sock') });
      try {
        for (const [i, id] of keyIds.entries()) {
          const keyId = generated[i]!;
          lab.keys.set(id, { id, ...KEYS[id], keyId, spki: await client.getPublicKey(keyId) });
          say(`${KEYS[id].title}: token key ${keyId.slice(0, 16)}… (keyedge key generate)`);
        }
      } finally {
        client.close();
      }
      await lab.startDemoOrigin(originPort, undefined);
      const status = await body(lab, say);
      await lab.stop();
      return status;
    } finally {
      lab.cleanup(keepTemp);
    }
  }

  key(id: string): LabKey {
    const key = this.keys.get(id);
    if (key === undefined) throw new Error(`no lab key '${id}'`);
    return key;
  }

  /**
   * Writes the config, starts `keyedge proxy` and resolves once /readyz answers 200. Another program can take a port
   * between freePort() and the bind (the workers then fail with EADDRINUSE and are restarted forever): seen in the log,
   * the proxy is started again on fresh ports, up to three times.
   */
  async startProxy(options: ProxyStartOptions) {
    const [configFile, logFile] = [join(this.dir, `${options.name}.json`), join(this.dir, `${options.name}.log`)];
    const timeoutMs = options.readyTimeoutMs ?? 120_000;
    for (let attempt = 1; ; attempt++) {
      const [port, adminPort] = [await freePort(), await freePort()];
      const config = {
        stateDir: this.keyserverLab.stateDir,
        workers: 2,
        keyserver: { socket: join(this.keyserverLab.stateDir, 'keyserver.sock') },
        listen: [{ host: '127.0.0.1', port }],
        admin: { host: '127.0.0.1', port: adminPort, tokenFile: this.tokenFile },
        log: { level: 'info' },
        ...options.config,
      };
      writeFileSync(configFile, `${JSON.stringify(config, null, 2)}\n`);
      writeFileSync(logFile, '');
      const started = performance.now();
      const command = [process.execPath, ...(options.nodeArgs ?? []), KEYEDGE_CLI, 'proxy', '--config', configFile];
      const proc = spawnManaged(options.name, command, logFile, undefined, this.dir);
      this.servers.set(options.name, proc);
      const stop = async () => {
        await proc.stop(30_000);
        this.servers.delete(options.name);
      };
      let outcome: 'ready' | 'port taken' | 'timed out' = 'ready';
      const ready = async (): Promise<boolean> => {
        if (readFileSync(logFile, 'utf8').includes('EADDRINUSE')) outcome = 'port taken';
        else if (performance.now() - started > timeoutMs) outcome = 'timed out';
        else return (await httpGet(`http://127.0.0.1:${adminPort}/readyz`, 2000)).status === 200;
        return true;
      };
      await waitFor(`keyedge proxy ${options.name} (/readyz)`, ready, timeoutMs + 5_000, proc, 20);
      if (outcome !== 'ready' && (outcome === 'port taken' || options.allowNotReady !== true)) {
        await stop();
        if (outcome === 'port taken' && attempt < 3) continue;
        throw new Error(`keyedge proxy ${options.name}: ${outcome === 'port taken' ? `its ports were taken ${attempt} times` : 'not ready'}\n${proc.tail()}`);
      }
      const admin = async (method: string, path: string, body?: string): Promise<{ status: number; text: string }> => {
        const init = { method, headers: { authorization: `Bearer ${this.token}` }, signal: AbortSignal.timeout(120_000), body };
        const response = await fetch(`http://127.0.0.1:${adminPort}${path}`, init);
        return { status: response.status, text: await response.text() };
      };
      return {
        process: proc,
        log: new ProxyLog(logFile),
        port,
        adminPort,
        /** Spawn until /readyz first answered 200, ms; undefined when not ready in time (`allowNotReady`). */
        readyMs: outcome === 'ready' ? performance.now() - started : undefined,
        pids: () => ({ primary: proc.pid, workers: processTree(proc.pid).slice(1) }),
        admin,
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

/**
 * `failed`: in the TLS handshake (certificate verification included) or in the HTTP request after it (absent: it
 * answered 200); `serial`: the served leaf's, upper-case hex (node:tls's form); `startedAt`, `handshakeAt`:
 * performance.now() at the start and at the end of the handshake (none on a reused connection).
 */
export type GetResult = { failed?: 'handshake' | 'request'; error?: string; serial?: string; startedAt: number; handshakeAt?: number; reused: boolean };

/**
 * One GET / to the proxy for `servername`, verified against `ca`, that must answer 200: on a new connection
 * (`agent` false: Connection: close) or over a keep-alive `agent`. Never rejects. The peer certificate is read while
 * the socket is open (Node must not be asked about a closed TLS socket).
 */
export function get(port: number, servername: string, ca: string, agent: https.Agent | false = false, timeoutMs = 10_000): Promise<GetResult> {
  return new Promise((resolve) => {
    const startedAt = performance.now();
    let serial: string | undefined;
    let handshakeAt: number | undefined;
    const peerSerial = (socket: unknown) => (socket as tls.TLSSocket).getPeerCertificate().serialNumber?.toUpperCase();
    const done = (error?: string) => {
      const failure = error === undefined ? {} : { error, failed: serial === undefined ? ('handshake' as const) : ('request' as const) };
      resolve({ ...failure, serial, startedAt, handshakeAt, reused: req.reusedSocket });
    };
    const options = { host: '127.0.0.1', port, path: '/', servername, headers: { host: servername }, ca, agent, timeout: timeoutMs };
    const req = https.get(options, (res) => {
      serial ??= peerSerial(res.socket);
      res.resume();
      res.once('end', () => done(res.statusCode === 200 ? undefined : `status ${res.statusCode}`));
      res.once('error', (err) => done(err.message));
    });
    req.once('socket', (socket) => {
      if (req.reusedSocket) return;
      socket.once('secureConnect', () => {
        handshakeAt = performance.now();
        serial = peerSerial(socket);
      });
    });
    req.once('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.once('error', (err) => done(err.message));
  });
}

/**
 * `connect` (a new connection to the replaced certificate's name) every `intervalMs`, back to back when one takes
 * longer, until it is served `serial`, at most `limitMs` after `writtenAt`: when the new serial was first seen (ms from
 * `writtenAt`; undefined: never) and how many connections that took.
 */
export async function untilServed(serial: string, writtenAt: number, intervalMs: number, limitMs: number, connect: () => Promise<GetResult>) {
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
