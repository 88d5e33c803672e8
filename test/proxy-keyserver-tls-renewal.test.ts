/**
 * A renewed mutual-TLS client certificate toward the key server (keyserver.tcp's cert and key), taken by the running
 * workers: each worker read the files once at its start and reconnected with that identity for ever, so once the
 * key server accepted only the renewed certificate (the old one expired, or revoked) every handshake of the edge
 * failed until the workers were restarted, while their health checks, which read the files at each connection, said
 * the key server was up. Now the workers check the files every few seconds (proxy/keyless/tcp-files.ts): a pair that
 * validates is used from the next connect on; one that does not is warned about once and the old one stays in use.
 *
 * Real parts: a key server over mutual TLS 1.3 (the lab's token, its client rules by common name), `keyedge proxy`
 * with one worker, real handshakes whose signatures go through the native bridge.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { copyFileSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { CLI, sleep } from './helpers/basics.js';
import { type ClusterProxy, clusterWorkerPids, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { createTestPki, type TestPkiFiles } from './helpers/pki.js';
import { freePort, type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';
import { TCP_FILES_CHECK_MS } from '../proxy/keyless/tcp-files.js';

let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;
let pki: TestPkiFiles;
let port: number;
let adminPort: number;
let configFile: string;
let server: ChildProcess | undefined;
/** The proxy's client identity, as the operator's renewal job rewrites it. */
let certFile: string;
let keyFile: string;

/** The key server over mutual TLS, accepting the client whose certificate has common name `allowed` and no other. */
async function startKeyserver(allowed: string): Promise<void> {
  writeFileSync(
    configFile,
    JSON.stringify({
      stateDir: './state',
      listen: { unix: null, tcp: { host: '127.0.0.1', port, cert: pki.server.cert, key: pki.server.key, clientCa: pki.caFile } },
      clients: [{ name: 'edge', match: { commonName: allowed }, keys: '*' }],
      admin: { host: '127.0.0.1', port: adminPort },
      log: { level: 'warn' },
    }),
  );
  const child = spawn(process.execPath, [CLI, 'keyserver', '--config', configFile], { stdio: ['ignore', 'ignore', 'inherit'] });
  server = child;
  const files = pki.clients[allowed]!;
  // A node start and a token login take seconds on a loaded 2-core machine.
  await waitFor(
    'the key server',
    async () => {
      if (child.exitCode !== null) throw new Error(`the key server exited (${child.exitCode})`);
      try {
        const client = await KeyserverClient.connect({
          tcp: { host: '127.0.0.1', port, servername: 'localhost', ca: pki.caFile, cert: files.cert, key: files.key },
        });
        await client.ping();
        client.close();
        return true;
      } catch {
        return undefined;
      }
    },
    60_000,
  );
}

async function stopKeyserver(): Promise<void> {
  const running = server;
  server = undefined;
  if (running === undefined || running.exitCode !== null || running.signalCode !== null) return;
  const exited = new Promise((resolve) => running.once('exit', resolve));
  running.kill('SIGTERM');
  await exited;
}

/** One new TLS connection to the proxy: a full handshake, so one signature by the key server. */
function handshake(): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername: 'ec.lab.test', ca, timeout: 15_000 });
    socket.once('secureConnect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('timeout', () => socket.destroy(new Error('no handshake within 15 s')));
    socket.once('error', () => resolve(false));
  });
}

/** As a renewal tool replaces a file: written aside, then renamed onto it, so no check reads it half written. */
function replaceFile(file: string, content: Buffer): void {
  writeFileSync(`${file}.new`, content, { mode: 0o600 });
  renameSync(`${file}.new`, file);
}

const linesWith = (msg: string): Record<string, unknown>[] => proxy.lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith(msg));
const REFUSED = 'key server TLS files changed but were refused';
const TAKEN = 'key server TLS files changed: its signing connections use the new ones from the next sign';

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  // Two identities from the key server's client CA: the one the proxy starts with, and its renewal.
  pki = await createTestPki(lab.dir, [{ commonName: 'edge-old' }, { commonName: 'edge-new' }]);
  certFile = join(lab.dir, 'edge-client.pem');
  keyFile = join(lab.dir, 'edge-client.key');
  copyFileSync(pki.clients['edge-old']!.cert, certFile);
  copyFileSync(pki.clients['edge-old']!.key, keyFile);
  port = await freePort();
  adminPort = await freePort();
  configFile = join(lab.dir, 'keyserver-tcp.json');
  await startKeyserver('edge-old');
  const ec = await lab.certificate('ec', lab.keys.ec, ['ec.lab.test']);
  proxy = await startClusterProxy(
    lab,
    'renewal',
    (ports) =>
      storeProxyConfig(lab, ports, {
        workers: 1,
        keyserver: {
          tcp: { host: '127.0.0.1', port, servername: 'localhost', ca: pki.caFile, cert: certFile, key: keyFile },
          // Real margins for a loaded 2-core machine.
          timeoutMs: 2_000,
        },
        certificates: [{ name: 'ec', chain: ec.file }],
        log: { level: 'info' },
      }),
    {},
    // A proxy start takes a minute when the machine is loaded many times over.
    90_000,
  );
  expect(await handshake(), 'a handshake with the first identity').toBe(true);
}, 240_000);

afterAll(async () => {
  await proxy?.stop();
  await stopKeyserver();
  await lab?.close();
});

describe("the proxy's renewed client certificate toward a mutual-TLS key server", () => {
  it("a replacement whose key is not the certificate's is refused once, with a warning naming the file; signing goes on with the old pair", async () => {
    const workers = clusterWorkerPids(proxy.pid);
    // The renewal job wrote the new key first; the certificate is still the old one.
    replaceFile(keyFile, readFileSync(pki.clients['edge-new']!.key));
    const [warning] = await waitFor('the refusal warning', () => (linesWith(REFUSED).length > 0 ? linesWith(REFUSED) : undefined), 60_000);
    expect(warning).toMatchObject({
      level: 40,
      keyserver: '0',
      err: `key server 0: its client key ${keyFile} (tcp.key) is not an unencrypted PEM private key matching its certificate ${certFile} (tcp.cert)`,
    });
    // The old identity still signs, on a new connection too (the key server restarted, still accepting only it).
    await stopKeyserver();
    await startKeyserver('edge-old');
    await waitFor('a handshake on the old identity after the key server restarted', async () => ((await handshake()) ? true : undefined), 60_000);
    // Said once for that change, not at every check.
    await sleep(TCP_FILES_CHECK_MS * 3);
    expect(linesWith(REFUSED)).toHaveLength(1);
    expect(linesWith(TAKEN)).toHaveLength(0);
    expect(JSON.stringify(proxy.lines)).not.toContain('PRIVATE KEY');
    expect(clusterWorkerPids(proxy.pid), 'no worker restarted').toEqual(workers);
  }, 240_000);

  it('once the certificate follows the key, the renewed pair is used on the next connect, with no worker restart', async () => {
    const workers = clusterWorkerPids(proxy.pid);
    replaceFile(certFile, readFileSync(pki.clients['edge-new']!.cert));
    // The key server now accepts the renewed identity only (the old certificate expired, or was revoked), and its
    // restart closes the workers' signing connections: they reconnect.
    await stopKeyserver();
    await startKeyserver('edge-new');
    await waitFor('a handshake signed over the renewed identity', async () => ((await handshake()) ? true : undefined), 60_000);
    expect(await handshake()).toBe(true);
    // Its log line may reach us after the handshake it made possible.
    await waitFor('the line saying the renewed files are in use', () => (linesWith(TAKEN).length > 0 ? true : undefined), 30_000);
    expect(linesWith(TAKEN)).toHaveLength(1);
    expect(linesWith(TAKEN)[0]).toMatchObject({ keyserver: '0', certFile, keyFile, caFile: pki.caFile });
    expect(linesWith(REFUSED), 'no new refusal').toHaveLength(1);
    expect(JSON.stringify(proxy.lines)).not.toContain('PRIVATE KEY');
    expect(clusterWorkerPids(proxy.pid), 'no worker restarted').toEqual(workers);
  }, 240_000);
});
