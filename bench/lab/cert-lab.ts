/**
 * The certificate benches' set-up (cert-reload, cert-scale) in one temp dir: a key server with keys from `keyedge key
 * generate`, a throwaway CA issuing leaves for them, the demo origin, and `keyedge proxy --config <file>` run as an
 * operator runs it (cluster, admin port with a bearer token file, a certificate store), its JSON log read as it grows;
 * and the client side: one verified GET that reports the served serial, and a probe until a new serial is served.
 *
 * The CA signs with `crypto.sign` over DER encoded here: ~0.1 ms a leaf (openssl would take minutes for 100,000).
 * Leaves are ordinary RFC 5280 TLS server certificates: v3, positive 16-byte serial, UTCTime validity, critical
 * basicConstraints CA:FALSE and keyUsage digitalSignature, EKU serverAuth, subjectAltName dNSNames (RFC 6125 §6.4.4),
 * subject/authority key identifiers (§4.2.1.1-2) so chain building never falls back to name matching.
 */
import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { basename, dirname, join } from 'node:path';
import type tls from 'node:tls';
import { processTree } from '../harness/proc-cpu.js';
import { sleep } from '../harness/rounds.js';
import { exitOnInterrupt, type Log } from '../harness/runner.js';
import { freePort, httpGet, spawnManaged, waitFor } from '../harness/spawn.js';
import { KEYEDGE_CLI, KeyserverLab, LabBase } from './keyserver.js';

/** DER (X.690 §8.1.3): tag, length (short form below 128, else long form), content. */
function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : n < 0x10000 ? [0x82, n >> 8, n & 0xff] : [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), content]);
}
const seq = (...parts: Buffer[]): Buffer => tlv(0x30, Buffer.concat(parts));
const hex = (text: string): Buffer => Buffer.from(text.replaceAll(' ', ''), 'hex');

/** Extension 2.5.29.`id` (subjectKeyIdentifier 14, keyUsage 15, subjectAltName 17, basicConstraints 19, authorityKeyIdentifier 35, extKeyUsage 37). */
const extension = (id: number, critical: boolean, value: Buffer): Buffer =>
  seq(hex(`06 03 55 1d ${id.toString(16).padStart(2, '0')}`), ...(critical ? [hex('01 01 ff')] : []), tlv(0x04, value));
const ECDSA_SHA256 = seq(hex('06 08 2a 86 48 ce 3d 04 03 02')); // 1.2.840.10045.4.3.2, no parameters (RFC 5758 §3.2)
const commonName = (text: string): Buffer => seq(tlv(0x31, seq(hex('06 03 55 04 03'), tlv(0x0c, Buffer.from(text, 'utf8')))));
/** UTCTime YYMMDDHHMMSSZ: RFC 5280 §4.1.2.5 requires it for years before 2050. */
const utcTime = (date: Date): Buffer => tlv(0x17, Buffer.from(`${date.toISOString().slice(2, 19).replace(/[-T:]/g, '')}Z`, 'ascii'));
/** SHA-1 of the SPKI (RFC 5280 §4.2.1.2, method 1 in spirit). */
const keyIdentifier = (spkiDer: Buffer): Buffer => createHash('sha1').update(spkiDer).digest();

/** 16 random bytes, positive and first byte ≥ 0x10, so every serial prints as 32 hex digits. */
function newSerial(): Buffer {
  const serial = randomBytes(16);
  serial[0] = 0x10 + (serial[0]! % 0x70);
  return serial;
}

type Fields = { serial: Buffer; issuer: Buffer; subject: Buffer; validity: readonly Date[]; spkiDer: Buffer; extensions: Buffer[] };

/** A v3 certificate, PEM, signed by `key` (ECDSA P-256 with SHA-256: node's DER Ecdsa-Sig-Value, as X.509 carries it). */
function certificate(f: Fields, key: KeyObject): string {
  const validity = seq(...f.validity.map(utcTime));
  const tbs = seq(hex('a0 03 02 01 02'), tlv(0x02, f.serial), ECDSA_SHA256, f.issuer, validity, f.subject, f.spkiDer, tlv(0xa3, seq(...f.extensions)));
  const der = seq(tbs, ECDSA_SHA256, tlv(0x03, Buffer.concat([Buffer.from([0]), sign('sha256', tbs, key)])));
  return `-----BEGIN CERTIFICATE-----\n${der
    .toString('base64')
    .match(/.{1,64}/g)!
    .join('\n')}\n-----END CERTIFICATE-----\n`;
}

/**
 * A throwaway ECDSA P-256 CA valid from a minute back (clock skew) for 90 days, so that a start logs no expiry warning
 * per entry (100,000 lines at the largest store); `issue` is synchronous.
 */
class BenchCa {
  readonly #key: KeyObject;
  readonly #subject = commonName('keyedge certificate bench CA');
  readonly #keyId: Buffer;
  readonly #validity: readonly [Date, Date];
  readonly pem: string;

  constructor() {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spkiDer = publicKey.export({ type: 'spki', format: 'der' });
    [this.#key, this.#keyId] = [privateKey, keyIdentifier(spkiDer)];
    const notBefore = new Date(Date.now() - 60_000);
    this.#validity = [notBefore, new Date(notBefore.getTime() + 90 * 86_400_000)];
    const extensions = [
      extension(0x13, true, seq(hex('01 01 ff'))), // basicConstraints cA TRUE
      extension(0x0f, true, hex('03 02 01 06')), // keyUsage keyCertSign, cRLSign
      extension(0x0e, false, tlv(0x04, this.#keyId)),
    ];
    this.pem = certificate({ serial: newSerial(), issuer: this.#subject, subject: this.#subject, validity: this.#validity, spkiDer, extensions }, privateKey);
  }

  /**
   * A TLS server leaf for `spkiDer` (the key server's public key) covering `dnsNames`, valid as long as the CA less a
   * day: `chain`, the leaf then this CA, is what a store entry or a config chain file holds (RFC 8446 §4.4.2);
   * `serial` in upper-case hex, as node:tls reports a peer certificate's serialNumber.
   */
  issue(spkiDer: Buffer, dnsNames: readonly string[]): { readonly chain: string; readonly serial: string } {
    const serial = newSerial();
    const extensions = [
      extension(0x13, true, seq()), // basicConstraints, cA FALSE
      extension(0x0f, true, hex('03 02 07 80')), // keyUsage digitalSignature
      extension(0x25, false, seq(hex('06 08 2b 06 01 05 05 07 03 01'))), // extKeyUsage serverAuth
      extension(0x11, false, seq(...dnsNames.map((n) => tlv(0x82, Buffer.from(n, 'ascii'))))),
      extension(0x0e, false, tlv(0x04, keyIdentifier(spkiDer))),
      extension(0x23, false, seq(tlv(0x80, this.#keyId))),
    ];
    const validity = [this.#validity[0], new Date(this.#validity[1].getTime() - 86_400_000)];
    const pem = certificate({ serial, issuer: this.#subject, subject: commonName(dnsNames[0] ?? 'leaf'), validity, spkiDer, extensions }, this.#key);
    return { chain: `${pem}${this.pem}`, serial: serial.toString('hex').toUpperCase() };
  }
}

const KEYS = { ec: { title: 'ECDSA P-256', type: 'ec-p256' }, rsa: { title: 'RSA-2048', type: 'rsa-2048' } } as const;

/** A token key; `spki` (DER) as `keyedge key generate --json` printed it. */
export type LabKey = { readonly id: keyof typeof KEYS; readonly title: string; readonly spki: Buffer };

/** One JSON log line of the proxy (pino): `time` is ISO 8601, `msg` the message. */
type LogLine = Record<string, unknown> & { readonly msg?: string; readonly time?: string };

/** Reads a proxy's log file as it grows; a line that is not JSON (a crash trace) is kept as `{ msg: text }`. */
class ProxyLog {
  readonly lines: LogLine[] = [];
  #offset = 0;
  #pending = '';

  constructor(readonly file: string) {}

  /** Every line so far (reads what was appended since the last call). */
  read(): LogLine[] {
    const text = readFileSync(this.file);
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

export class CertLab extends LabBase {
  readonly ca = new BenchCa();
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
    const lab = new CertLab(new KeyserverLab({ prefix: 'keyedge-certs-', tokenLabel: 'keyedge-certs' }), await freePort());
    exitOnInterrupt(() => lab.cleanup(keepTemp));
    try {
      for (const id of keyIds) {
        const generated = JSON.parse(await lab.keyserverLab.key('generate', '--type', KEYS[id].type, '--label', `bench-${id}`, '--json'));
        lab.keys.set(id, { id, title: KEYS[id].title, spki: Buffer.from(generated.spki, 'base64') });
        say(`${KEYS[id].title}: token key ${generated.keyId.slice(0, 16)}… (keyedge key generate)`);
      }
      lab.keyserver = await lab.keyserverLab.startServer();
      await lab.startDemoOrigin(lab.originPort, undefined);
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
   * Writes `<dir>/<name>.json` (`config` over the shared sections: key server, one listener, admin port with the token,
   * 2 workers), starts `keyedge proxy` (`nodeArgs`, e.g. --cpu-prof, reach the workers through node:cluster) and
   * resolves once /readyz answers 200; not ready in time rejects, or with `allowNotReady` resolves with readyMs
   * undefined. A port taken between freePort() and the bind (EADDRINUSE in the log): started again, up to three times.
   */
  async startProxy(options: { name: string; config: object; nodeArgs?: readonly string[]; readyTimeoutMs?: number; allowNotReady?: boolean }) {
    const { name, readyTimeoutMs = 120_000 } = options;
    const [configFile, logFile] = [join(this.dir, `${name}.json`), join(this.dir, `${name}.log`)];
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
      const proc = spawnManaged(
        name,
        [process.execPath, ...(options.nodeArgs ?? []), KEYEDGE_CLI, 'proxy', '--config', configFile],
        logFile,
        undefined,
        this.dir,
      );
      this.servers.set(name, proc);
      const stop = async () => {
        await proc.stop(30_000);
        this.servers.delete(name);
      };
      let outcome: 'ready' | 'port taken' | 'timed out' = 'ready';
      const ready = async (): Promise<boolean> => {
        if (readFileSync(logFile, 'utf8').includes('EADDRINUSE')) outcome = 'port taken';
        else if (performance.now() - started > readyTimeoutMs) outcome = 'timed out';
        else return (await httpGet(`http://127.0.0.1:${adminPort}/readyz`, 2000)).status === 200;
        return true;
      };
      await waitFor(`keyedge proxy ${name} (/readyz)`, ready, readyTimeoutMs + 5_000, proc, 20);
      if (outcome !== 'ready' && (outcome === 'port taken' || options.allowNotReady !== true)) {
        await stop();
        if (outcome === 'port taken' && attempt < 3) continue;
        throw new Error(`keyedge proxy ${name}: ${outcome === 'port taken' ? `its ports were taken ${attempt} times` : 'not ready'}\n${proc.tail()}`);
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

/**
 * `failed`: in the TLS handshake (certificate verification included) or in the HTTP request after it (absent: 200);
 * `serial`: the served leaf's, upper-case hex; `startedAt`, `handshakeAt`: performance.now() at the start and at the
 * end of the handshake (none on a reused connection).
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
 * longer, until it is served `serial`, at most `limitMs` after `writtenAt`: ms from `writtenAt` until the new serial
 * was first seen; undefined: never.
 */
export async function untilServed(serial: string, writtenAt: number, intervalMs: number, limitMs: number, connect: () => Promise<GetResult>) {
  while (performance.now() - writtenAt < limitMs) {
    const started = performance.now();
    const r = await connect();
    if (r.serial === serial && r.handshakeAt !== undefined) return r.handshakeAt - writtenAt;
    await sleep(Math.max(0, intervalMs - (performance.now() - started)));
  }
  return undefined;
}
