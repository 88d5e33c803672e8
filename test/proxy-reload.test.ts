import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { closeSync, constants, openSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet } from './helpers/clients.js';
import { closeSession, getHeaders, h2Connect, h2Request, RawH2 } from './helpers/h2.js';
import { runCli, sleep } from './helpers/basics.js';
import { ADMIN_TOKEN, type ClusterProxy, clusterWorkerPids, startClusterProxy, waitFor } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { createCa, issue, issueForPublicKey } from './helpers/pki.js';
import { type Message, nextAnswer, splitAll } from './helpers/fuzz-h1-parse.js';
import { rawTls } from './helpers/raw-tls.js';
import { acceptFor, encodeFrame, openWebSocket, TEXT } from './helpers/websocket.js';

const DAY_MS = 86_400_000;
/** Names served by store entries the HTTP/2 cases change, routed to origin B. */
const H2_NAMES = ['a.h2.lab.test', 'kept.h2.lab.test', 'one.h2.lab.test', 'two.h2.lab.test', 'late.h2.lab.test', 'a.cov.h2.lab.test', 'b.cov.h2.lab.test'];
/** Names served by store entries the HTTP/1.1 cases change, routed to origin B. */
const H1_NAMES = ['a.h1.lab.test', 'kept.h1.lab.test', 'late.h1.lab.test', 'pipe.h1.lab.test', 'ws.h1.lab.test', 'cont.h1.lab.test', 'wslate.h1.lab.test'];

// One reload path, four triggers (store file, SIGHUP, admin API, config
// file), against `keyedge proxy` with two workers.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;
let originB: http.Server;
let originBPort: number;
let baseConfig: (ports: { port: number; adminPort: number; storeDir: string; tokenFile: string }) => Record<string, unknown>;
let ports: { port: number; adminPort: number; storeDir: string; tokenFile: string };
let configChain: string;
/** Every path origin B was asked for; its /held answers, waiting for the test. */
const originBSaw: string[] = [];
const held: (() => void)[] = [];
/** Origin B's ends of the WebSocket tunnels opened through the proxy. */
const originTunnels: net.Socket[] = [];
const SLOW_BODY = 'h'.repeat(200_000);

async function servedSerial(name: string): Promise<string | undefined> {
  const result = await nodeGet(proxy.port, name, ca);
  // No answer is a failure of its own, said as such (the handshake's error or the bytes received), not a serial of undefined.
  expect(result.ok, `${name}: ${result.ok ? '' : (result.error ?? JSON.stringify(result.body ?? ''))}`).toBe(true);
  return result.serial?.toLowerCase();
}

function storeWrite(name: string, pem: string): void {
  // As a renewal tool should: a temp file in the same directory, then rename.
  const temp = join(proxy.storeDir, `.${name}.tmp`);
  writeFileSync(temp, pem);
  renameSync(temp, join(proxy.storeDir, `${name}.pem`));
}

function chainOf(leafPem: string): string {
  return `${leafPem}\n${lab.ca.certPem}`;
}

async function get(name: string, agent?: https.Agent): Promise<{ status: number; body: string; localPort?: number }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: proxy.port, servername: name, headers: { host: name }, ca, ...(agent === undefined ? { agent: false } : { agent }) },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, localPort: (res.socket as net.Socket | null)?.localPort }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  originB = http.createServer((req, res) => {
    originBSaw.push(req.url ?? '');
    // /held: answered (SLOW_BODY) only when the test releases it: a stream still in flight across a reload.
    if (req.url === '/held') held.push(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(SLOW_BODY));
    else res.writeHead(200, { 'content-type': 'text/plain' }).end('origin-b');
  });
  // A WebSocket: the 101, then what the test sends through `originTunnels`.
  originB.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
    const accept = acceptFor(String(req.headers['sec-websocket-key']));
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`);
    socket.on('error', () => undefined);
    originTunnels.push(socket);
  });
  await new Promise<void>((resolve) => originB.listen(0, '127.0.0.1', resolve));
  originBPort = (originB.address() as net.AddressInfo).port;
  configChain = (await lab.certificate('config-ec', lab.keys.ec, ['cfg.lab.test'])).file;
  const wildcard = await lab.certificate('wild', lab.keys.ec, ['*.lab.test']);
  baseConfig = (p) => {
    ports = p;
    return {
      stateDir: join(lab.dir, 'state'),
      workers: 2,
      keyserver: { socket: lab.socket },
      listen: [{ host: '127.0.0.1', port: p.port }],
      certificates: [
        { name: 'cfg', chain: configChain },
        { name: 'wild', chain: wildcard.file },
      ],
      domains: [
        { name: 'app.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
        { name: 'cfg.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
        { name: 'store.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
        ...[...H2_NAMES, ...H1_NAMES].map((name) => ({ name, origin: `http://127.0.0.1:${originBPort}` })),
      ],
      admin: { host: '127.0.0.1', port: p.adminPort, tokenFile: p.tokenFile },
      // Only the watch, SIGHUP and the admin API trigger reloads here: the rescan is out of the way.
      certStore: { dir: p.storeDir, rescanSeconds: 3600 },
      log: { level: 'info' },
      shutdownGraceMs: 3000,
    };
  };
  proxy = await startClusterProxy(lab, 'reload', baseConfig);
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await new Promise((resolve) => originB?.close(resolve));
  await lab?.close();
});

describe('routing changes at runtime', () => {
  it('adds a domain and moves an origin while a keep-alive client keeps sending', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const seen: { status: number; body: string; localPort?: number }[] = [];
    let running = true;
    const client = (async () => {
      while (running) {
        seen.push(await get('app.lab.test', agent));
        await sleep(10);
      }
    })();
    await waitFor('a few requests', () => (seen.length >= 5 ? true : undefined));
    expect((await get('new.lab.test')).status).toBe(404);

    const config = baseConfig(ports);
    proxy.writeConfig({
      ...config,
      domains: [
        { name: 'app.lab.test', origin: `http://127.0.0.1:${originBPort}` },
        { name: 'new.lab.test', origin: `http://127.0.0.1:${lab.origin.port}` },
        ...(config.domains as object[]).slice(1),
      ],
    });
    await waitFor('the new domain', async () => ((await get('new.lab.test')).status === 200 ? true : undefined));
    await waitFor('the moved origin', () => (seen.at(-1)?.body === 'origin-b' ? true : undefined));
    running = false;
    await client;
    agent.destroy();
    expect(seen.every((r) => r.status === 200)).toBe(true);
    // One connection throughout: the reload dropped nothing.
    expect(new Set(seen.map((r) => r.localPort)).size).toBe(1);
    expect(seen.some((r) => r.body !== 'origin-b')).toBe(true);
    proxy.writeConfig(baseConfig(ports));
    await waitFor('the original routing', async () => ((await get('new.lab.test')).status === 404 ? true : undefined));
  });

  /** Writes the config file and waits for the reload its watch makes (done in every worker): the only one, since a later reload would close what it checks. */
  const reloadedWith = async (config: Record<string, unknown>): Promise<void> => {
    const before = proxy.lines.length;
    proxy.writeConfig(config);
    await waitFor('the reload', () => (proxy.lines.slice(before).some((l) => l.msg === 'reload done' && l.trigger === 'watch') ? true : undefined));
    // Its watch's events come within its debounce (150 ms): none is left to start a second reload.
    await sleep(400);
  };

  it('closes the origin connection of a request that was on its way when a reload dropped the origin, once it is answered; those requests keep to its connection cap', async () => {
    // An origin that keeps idle connections open: what closes them is the proxy. Each answer is held a while, so that
    // requests let through together are seen together (`most`).
    const open = new Set<net.Socket>();
    let running = 0;
    let most = 0;
    const dropped = http.createServer((req, res) =>
      req.resume().on('end', () => {
        // The HTTP/2 ones only: they share one connection, so one worker, whose cap they are held to.
        const counted = req.url?.startsWith('/h2-') === true;
        if (counted) most = Math.max(most, ++running);
        setTimeout(() => {
          if (counted) running--;
          res.end(`dropped-origin ${req.url}`);
        }, 300);
      }),
    );
    dropped.keepAliveTimeout = 60_000;
    dropped.on('connection', (socket: net.Socket) => {
      open.add(socket);
      socket.once('close', () => open.delete(socket));
    });
    await new Promise<void>((resolve) => dropped.listen(0, '127.0.0.1', resolve));
    const config = baseConfig(ports);
    await reloadedWith({
      ...config,
      domains: [...(config.domains as object[]), { name: 'dropped.lab.test', origin: `http://127.0.0.1:${(dropped.address() as net.AddressInfo).port}` }],
    });
    // Its body not yet whole: routed, not yet sent to the origin (bodies are read before a request takes its place).
    const client = await rawTls(proxy.port, 'dropped.lab.test', ca);
    client.socket.write('POST /on-its-way HTTP/1.1\r\nhost: dropped.lab.test\r\ncontent-length: 4\r\n\r\nbo');
    // More than the origin's connection cap (limits.originMaxConnections, 64 by default) on their way with it, on one
    // connection (one worker): let through as they come, each with a connection of its own, they would all be there.
    const session = h2Connect(proxy.port, ca, 'dropped.lab.test');
    const onTheirWay = Array.from({ length: 70 }, (_, i) => {
      const stream = session.request({ ':method': 'POST', ':path': `/h2-on-its-way-${i}`, 'content-length': '4' });
      stream.write('bo');
      return stream;
    });
    await sleep(300);
    await reloadedWith(baseConfig(ports));
    client.socket.write('dy');
    const answered = onTheirWay.map(
      (stream) =>
        new Promise<string>((resolve) => {
          let body = '';
          stream.on('data', (chunk: Buffer) => (body += chunk.toString()));
          stream.on('error', () => resolve('error'));
          stream.on('end', () => resolve(body));
          stream.end('dy');
        }),
    );
    await waitFor('the answer', () => (client.text().includes('dropped-origin /on-its-way') ? true : undefined));
    expect(client.text()).toMatch(/^HTTP\/1\.1 200 /);
    expect(await Promise.all(answered)).toEqual(onTheirWay.map((_, i) => `dropped-origin /h2-on-its-way-${i}`));
    expect(most).toBeLessThanOrEqual(64);
    expect(most).toBeGreaterThan(0);
    await closeSession(session);
    client.socket.destroy();
    // Without a reload to come, a pool made for it would hold its connection (undici's keep-alive, 30 s).
    await waitFor('no connection left to the dropped origin', () => (open.size === 0 ? true : undefined), 5000);
    await new Promise((resolve) => dropped.close(resolve));
  });

  it('refuses a bad routing config with the reason and keeps serving the old one', async () => {
    const good = await proxy.admin('POST', '/reload');
    expect(good.status).toBe(200);
    const serving = (JSON.parse(good.text) as { generation: number }).generation;
    expect(serving).toBeGreaterThan(0);
    const before = proxy.lines.length;
    proxy.writeConfig({ ...baseConfig(ports), domains: [{ name: 'Bad Name!', origin: 'ftp://x' }] });
    const refused = await waitFor('the refusal', () =>
      proxy.lines.slice(before).find((l) => l.msg === 'reload refused; the running configuration and certificates keep serving'),
    );
    expect(refused.code).toBe('KEYEDGE_ERR_CONFIG');
    expect(JSON.stringify(refused)).toContain('domains[0]');
    expect((await get('app.lab.test')).status).toBe(200);
    const answer = await proxy.admin('POST', '/reload');
    expect(answer.status).toBe(409);
    expect(answer.text).toContain('domains[0].name');
    // The generation that keeps serving (a refused reload makes none; a watch event of the test before may have made one more).
    const kept = (JSON.parse(answer.text) as { generation: number }).generation;
    expect(kept).toBeGreaterThanOrEqual(serving);
    expect(refused.generation).toBe(kept);
    // Valid JSON and schema, but an origin CA file that cannot be read: refused in the primary, before any worker.
    const config = baseConfig(ports);
    proxy.writeConfig({
      ...config,
      domains: [
        { name: 'app.lab.test', origin: 'https://127.0.0.1:1', originTls: { ca: join(lab.dir, 'missing-ca.pem') } },
        ...(config.domains as object[]).slice(1),
      ],
    });
    await waitFor('the CA refusal', async () => {
      const reload = await proxy.admin('POST', '/reload');
      return reload.status === 409 && reload.text.includes('originTls.ca') ? true : undefined;
    });
    expect((await get('app.lab.test')).status).toBe(200);
    // The config path replaced by a FIFO (open(2) would block the primary for good) or linked to /dev/zero (read for
    // ever): refused unread, naming the file.
    for (const replace of [() => execFileSync('mkfifo', [proxy.configFile]), () => symlinkSync('/dev/zero', proxy.configFile)]) {
      rmSync(proxy.configFile);
      replace();
      const reload = await proxy.admin('POST', '/reload');
      expect(reload.status).toBe(409);
      expect(reload.text).toContain('not a regular file');
      expect(reload.text).toContain(proxy.configFile);
      expect((await get('app.lab.test')).status).toBe(200);
    }
    rmSync(proxy.configFile);
    proxy.writeConfig(baseConfig(ports));
    const back = await waitFor('the good config back', async () => {
      const reload = await proxy.admin('POST', '/reload');
      return reload.status === 200 ? (JSON.parse(reload.text) as { generation: number }) : undefined;
    });
    expect(back.generation).toBeGreaterThan(kept);
  });
  it('refuses a reload whose origin CA file is a FIFO, unread, naming it and its setting, and keeps serving the old config', async () => {
    // Read in the primary on each reload (and in each worker): open(2) of a FIFO waited for a writer, with the
    // primary's event loop: the admin port, every later reload and worker replacement.
    const fifo = join(lab.dir, 'origin-ca.fifo');
    rmSync(fifo, { force: true });
    execFileSync('mkfifo', [fifo]);
    const config = baseConfig(ports);
    try {
      proxy.writeConfig({
        ...config,
        domains: [{ name: 'app.lab.test', origin: 'https://127.0.0.1:1', originTls: { ca: fifo } }, ...(config.domains as object[]).slice(1)],
      });
      const reload = await fetch(`http://127.0.0.1:${proxy.adminPort}/reload`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        signal: AbortSignal.timeout(20_000),
      }).then(
        async (r) => ({ status: r.status, text: await r.text() }),
        (err: Error) => ({ status: 0, text: err.name }),
      );
      expect(reload.status, reload.text).toBe(409);
      expect(reload.text).toContain(`${fifo}: domains[app.lab.test].originTls.ca: cannot read the CA file (not a regular file)`);
      expect((await get('app.lab.test')).status).toBe(200);
    } finally {
      // A primary blocked in its open(2) of the FIFO is let go (a writer came and went), so the proxy can stop.
      try {
        closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        // No reader: nothing is blocked on it.
      }
      rmSync(fifo, { force: true });
      proxy.writeConfig(config);
    }
    await waitFor('the good config back', async () => ((await proxy.admin('POST', '/reload')).status === 200 ? true : undefined));
  });
});

describe('certificate reload', () => {
  it('serves a certificate dropped into the store, and its replacement, to new connections', async () => {
    const first = await lab.certificate('store-1', lab.keys.ec, ['store.lab.test']);
    storeWrite('store', chainOf(first.leaf.certPem));
    await waitFor('the store entry', async () => ((await servedSerial('store.lab.test')) === first.leaf.cert.serialNumber ? true : undefined), 5000);
    const second = await lab.certificate('store-2', lab.keys.rsa, ['store.lab.test']);
    storeWrite('store', chainOf(second.leaf.certPem));
    await waitFor('the replacement', async () => ((await servedSerial('store.lab.test')) === second.leaf.cert.serialNumber ? true : undefined), 5000);
    // The primary records a reload once every worker has applied it, a moment after the first serves it.
    const listed = await waitFor('the listing', async () => {
      const { certificates } = JSON.parse((await proxy.admin('GET', '/certs', undefined, null)).text) as {
        certificates: { name: string; serial: string; keyId: string }[];
      };
      const entry = certificates.find((c) => c.name === 'store');
      return entry?.serial === second.leaf.cert.serialNumber ? entry : undefined;
    });
    expect(listed.keyId).toBe(lab.keys.rsa.keyId);
  });

  it('serves what `keyedge cert replace` puts in the store', async () => {
    const renewed = await lab.certificate('cli-1', lab.keys.ec, ['store.lab.test']);
    const result = await runCli(['cert', 'replace', 'store', '--chain', renewed.file, '--config', proxy.configFile]);
    expect(result.code, result.stderr).toBe(0);
    await waitFor('the replaced certificate', async () => ((await servedSerial('store.lab.test')) === renewed.leaf.cert.serialNumber ? true : undefined), 5000);
  });

  it('reloads a config certificate on SIGHUP', async () => {
    const renewed = await lab.certificate('config-ec-2', lab.keys.rsa, ['cfg.lab.test']);
    expect(await servedSerial('cfg.lab.test')).not.toBe(renewed.leaf.cert.serialNumber);
    writeFileSync(configChain, readFileSync(renewed.file));
    // The config's chain files are watched too (proxy-cert-watch.test.ts): the signal's reload or the watch's serves it.
    process.kill(proxy.pid, 'SIGHUP');
    await waitFor(
      'the renewed config certificate',
      async () => ((await servedSerial('cfg.lab.test')) === renewed.leaf.cert.serialNumber ? true : undefined),
      5000,
    );
  });

  it('takes a chain through the admin API only with the token', async () => {
    const next = await lab.certificate('api-1', lab.keys.ec, ['store.lab.test']);
    const pem = chainOf(next.leaf.certPem);
    expect((await proxy.admin('PUT', '/certs/store', pem, null)).status).toBe(401);
    expect((await proxy.admin('PUT', '/certs/store', pem, 'wrong-token')).status).toBe(401);
    expect((await proxy.admin('POST', '/certs/reload', undefined, null)).status).toBe(401);
    expect(await servedSerial('store.lab.test')).not.toBe(next.leaf.cert.serialNumber);
    const answer = await proxy.admin('PUT', '/certs/store', pem);
    expect(answer.status).toBe(200);
    expect(await servedSerial('store.lab.test')).toBe(next.leaf.cert.serialNumber);
    // Stored leaf first, as validated.
    expect(new X509Certificate(readFileSync(join(proxy.storeDir, 'store.pem'))).serialNumber.toLowerCase()).toBe(next.leaf.cert.serialNumber);
    expect((await proxy.admin('POST', '/certs/reload')).status).toBe(200);
  });

  it('refuses each unfit chain through the admin API with its reason, and the old certificate keeps serving', async () => {
    // A new entry pins the names it serves: a renewal must cover them.
    const pinned = await lab.certificate('pinned-1', lab.keys.ec, ['pinned.lab.test']);
    expect((await proxy.admin('PUT', '/certs/pinned', chainOf(pinned.leaf.certPem))).status).toBe(200);
    const serving = { store: await servedSerial('store.lab.test'), pinned: await servedSerial('pinned.lab.test') };
    expect(serving.pinned).toBe(pinned.leaf.cert.serialNumber);

    const forKey = (options: Partial<Parameters<typeof issueForPublicKey>[2]>) =>
      issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'store.lab.test', dnsNames: ['store.lab.test'], ...options });
    const expired = await forKey({ notBefore: new Date(Date.now() - 2 * DAY_MS), notAfter: new Date(Date.now() - DAY_MS) });
    const notYet = await forKey({ notBefore: new Date(Date.now() + DAY_MS), notAfter: new Date(Date.now() + 2 * DAY_MS) });
    const sha1 = await forKey({ signatureHash: 'SHA-1' });
    const otherNames = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'elsewhere.lab.test', dnsNames: ['elsewhere.lab.test'] });
    const rsa1024 = await issue(lab.ca, { commonName: 'store.lab.test', dnsNames: ['store.lab.test'], keyAlgorithm: 'rsa-1024' });
    const stranger = await issue(lab.ca, { commonName: 'store.lab.test', dnsNames: ['store.lab.test'], keyAlgorithm: 'ec-p256' });
    const otherCa = await createCa('another CA');
    const good = await forKey({});
    const cases: { what: string; entry: string; pem: string; reason: string }[] = [
      { what: 'expired', entry: 'store', pem: chainOf(expired.certPem), reason: 'expired' },
      { what: 'not yet valid', entry: 'store', pem: chainOf(notYet.certPem), reason: 'not_yet_valid' },
      { what: 'SANs not covering the entry', entry: 'pinned', pem: chainOf(otherNames.certPem), reason: 'names' },
      { what: 'broken chain (issuer missing, a stranger CA instead)', entry: 'store', pem: `${good.certPem}\n${otherCa.certPem}`, reason: 'chain' },
      { what: 'RSA-1024', entry: 'store', pem: chainOf(rsa1024.certPem), reason: 'weak_key' },
      { what: 'SHA-1 signature', entry: 'store', pem: chainOf(sha1.certPem), reason: 'weak_signature' },
      { what: 'public key not in the token', entry: 'store', pem: chainOf(stranger.certPem), reason: 'key_unknown' },
      { what: 'truncated PEM', entry: 'store', pem: chainOf(expired.certPem).slice(0, 300), reason: 'parse' },
      { what: 'a private key pasted in', entry: 'store', pem: `${chainOf(stranger.certPem)}\n${stranger.keyPem}`, reason: 'private_key' },
    ];
    const before = proxy.lines.length;
    for (const { what, entry, pem, reason } of cases) {
      const answer = await proxy.admin('PUT', `/certs/${entry}`, pem);
      expect(answer.status, `${what}: ${answer.text}`).toBe(422);
      expect(JSON.parse(answer.text), what).toMatchObject({ error: { code: 'KEYEDGE_ERR_CERTIFICATE', reason } });
    }
    expect(await servedSerial('store.lab.test')).toBe(serving.store);
    expect(await servedSerial('pinned.lab.test')).toBe(serving.pinned);
    // The pasted key never reaches a log line.
    const body = stranger.keyPem
      .split('\n')
      .filter((l) => !l.startsWith('-----'))
      .join('');
    expect(body.length).toBeGreaterThan(40);
    expect(JSON.stringify(proxy.lines.slice(before))).not.toContain(body.slice(0, 40));

    // A chain in the wrong order is put right, not refused.
    const renewed = await forKey({});
    const reversed = await proxy.admin('PUT', '/certs/store', `${lab.ca.certPem}\n${renewed.certPem}`);
    expect(reversed.status, reversed.text).toBe(200);
    expect(await servedSerial('store.lab.test')).toBe(renewed.cert.serialNumber);
  });

  it('refuses a bad file in the store with a log line, and the old certificate keeps serving', async () => {
    const serving = await servedSerial('store.lab.test');
    const before = proxy.lines.length;
    storeWrite('store', '-----BEGIN CERTIFICATE-----\nMIIB\n');
    const refused = await waitFor('the refusal', () =>
      proxy.lines.slice(before).find((l) => l.certificate === 'store' && l.code === 'KEYEDGE_ERR_CERTIFICATE'),
    );
    expect(refused).toMatchObject({ reason: 'parse', level: 50 });
    expect(await servedSerial('store.lab.test')).toBe(serving);
    const listed = JSON.parse((await proxy.admin('GET', '/certs', undefined, null)).text) as {
      certificates: { name: string; serial: string; refused: { reason: string } | null }[];
    };
    expect(listed.certificates.find((c) => c.name === 'store')).toMatchObject({ serial: serving, refused: { reason: 'parse' } });
    const good = await lab.certificate('store-good', lab.keys.ec, ['store.lab.test']);
    storeWrite('store', chainOf(good.leaf.certPem));
    await waitFor('the good file', async () => ((await servedSerial('store.lab.test')) === good.leaf.cert.serialNumber ? true : undefined), 5000);
  });

  it('counts reloads and exposes expiry in /metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
    expect(text).toMatch(/keyedge_proxy_reloads_total\{trigger="admin",result="ok"\} [1-9]/);
    expect(text).toMatch(/keyedge_proxy_certificate_expiry_seconds\{certificate="store"\} \d+/);
    expect(text).toMatch(/keyedge_proxy_certificates\{state="serving"\} 4/);
  });
});

/** keyedge_proxy_<family>_connections_closed_total{reason="certificate"}, summed over the workers. */
const retiredCount = async (family = 'http2'): Promise<number> => {
  const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
  const lines = text.split('\n').filter((l) => l.startsWith(`keyedge_proxy_${family}_connections_closed_total{`) && l.includes('reason="certificate"'));
  return lines.reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
};
/** Writes store entry `entry` with a certificate for `names` and waits until every worker serves it. */
const serveEntry = async (entry: string, names: string[]): Promise<void> => {
  const cert = await lab.certificate(`${entry}-${names.length}-${Date.now()}`, lab.keys.ec, names);
  storeWrite(entry, chainOf(cert.leaf.certPem));
  // The primary lists it once every worker has applied it.
  await waitFor(`${entry} serving`, async () => {
    const { certificates } = JSON.parse((await proxy.admin('GET', '/certs', undefined, null)).text) as { certificates: { name: string; serial: string }[] };
    return certificates.find((c) => c.name === entry)?.serial === cert.leaf.cert.serialNumber ? true : undefined;
  });
};

/**
 * A TLS client to `servername` whose writes after its ClientHello (its Finished, then what it sends next) are held:
 * the proxy has picked the certificate, and the handshake completes only when `release()` lets them through.
 */
function heldHandshake(
  servername: string,
  alpn: string,
): { readonly tls: tls.TLSSocket; readonly tcp: net.Socket; readonly picked: () => boolean; release(): void } {
  const tcp = net.connect({ host: '127.0.0.1', port: proxy.port });
  let release: (() => void) | undefined | null;
  let sent = 0;
  let serverFlight = false;
  tcp.once('data', () => (serverFlight = true));
  const gate = new Duplex({
    // One write at a time (Writable): the first held one holds those after it; once let through, all pass.
    write(chunk: Buffer, _encoding, done) {
      if (sent++ === 0 || release === null) return void tcp.write(chunk, done);
      release = () => tcp.write(chunk, done);
    },
    read() {},
    final(done) {
      tcp.end();
      done();
    },
  });
  tcp.on('data', (chunk: Buffer) => gate.push(chunk));
  tcp.on('end', () => gate.push(null));
  tcp.on('error', (err) => gate.destroy(err));
  return {
    tls: tls.connect({ socket: gate, ca, servername, ALPNProtocols: [alpn] }),
    tcp,
    picked: () => serverFlight && typeof release === 'function',
    release() {
      const letThrough = release;
      release = null;
      letThrough?.();
    },
  };
}

describe('HTTP/2 connections after a certificate change', () => {
  const goaways = (session: http2.ClientHttp2Session): number[] => {
    const codes: number[] = [];
    session.on('goaway', (code: number) => codes.push(code));
    return codes;
  };

  it('a renewal without a name sends its connections GOAWAY NO_ERROR: streams in flight finish, new ones are refused', async () => {
    await serveEntry('h2drop', ['a.h2.lab.test']);
    await serveEntry('h2kept', ['kept.h2.lab.test']);
    const before = await retiredCount();
    // In flight: a stream whose answer the origin holds.
    const busy = h2Connect(proxy.port, ca, 'a.h2.lab.test');
    const busyGoaways = goaways(busy);
    const slow = h2Request(busy, { ':path': '/held', ':authority': 'a.h2.lab.test' });
    // Idle, raw frames: after its GOAWAY it opens another stream, as no library would.
    const idle = new RawH2(proxy.port, ca, 'a.h2.lab.test');
    await idle.secure;
    idle.preface();
    idle.write(getHeaders(1, 'a.h2.lab.test', '/first'));
    const kept = h2Connect(proxy.port, ca, 'kept.h2.lab.test');
    const keptGoaways = goaways(kept);
    expect((await h2Request(kept, { ':path': '/kept-1', ':authority': 'kept.h2.lab.test' })).status).toBe(200);
    await waitFor('the held stream and the idle one answered', () => (held.length === 1 && idle.answered.has(1) ? true : undefined));

    await serveEntry('h2drop', ['b.h2.lab.test']);
    await waitFor('GOAWAY on both', () => (busyGoaways.length > 0 && idle.goaways.length > 0 ? true : undefined), 5000);
    expect(busyGoaways).toEqual([http2.constants.NGHTTP2_NO_ERROR]);
    expect(idle.goaways[0]).toBe(http2.constants.NGHTTP2_NO_ERROR);
    // A stream past the GOAWAY's last stream id is never routed (RFC 9113 §6.8).
    idle.write(getHeaders(3, 'a.h2.lab.test', '/after-goaway'));
    // The stream in flight finishes, whole.
    held.shift()?.();
    const answer = await slow;
    expect(answer.status).toBe(200);
    expect(answer.body.toString()).toBe(SLOW_BODY);
    await sleep(300);
    expect(idle.answered.has(3)).toBe(false);
    expect(originBSaw).not.toContain('/after-goaway');
    // A connection whose certificate still covers its names is left alone.
    expect((await h2Request(kept, { ':path': '/kept-2', ':authority': 'kept.h2.lab.test' })).status).toBe(200);
    expect(keptGoaways).toEqual([]);
    await waitFor('the count', async () => ((await retiredCount()) === before + 2 ? true : undefined), 5000);
    idle.tls.destroy();
    await Promise.all([closeSession(busy), closeSession(kept)]);
  });

  it('a coalesced connection gets GOAWAY when the other name it served is dropped', async () => {
    await serveEntry('h2pair', ['one.h2.lab.test', 'two.h2.lab.test']);
    const before = await retiredCount();
    const session = h2Connect(proxy.port, ca, 'one.h2.lab.test');
    const codes = goaways(session);
    // Coalesced (RFC 9113 §9.1.1): the certificate covers two.h2.lab.test too.
    expect((await h2Request(session, { ':path': '/coalesced', ':authority': 'two.h2.lab.test' })).status).toBe(200);
    await serveEntry('h2pair', ['one.h2.lab.test']);
    await waitFor('GOAWAY', () => (codes.length > 0 ? true : undefined), 5000);
    expect(codes).toEqual([http2.constants.NGHTTP2_NO_ERROR]);
    await waitFor('the count', async () => ((await retiredCount()) === before + 1 ? true : undefined), 5000);
    await closeSession(session);
  });

  it('a renewal from exact names to a wildcard covering them sends no GOAWAY; one from the wildcard back to exact names does', async () => {
    await serveEntry('h2cov', ['a.cov.h2.lab.test', 'b.cov.h2.lab.test']);
    const before = await retiredCount();
    const exact = h2Connect(proxy.port, ca, 'a.cov.h2.lab.test');
    const exactGoaways = goaways(exact);
    expect((await h2Request(exact, { ':path': '/cov-1', ':authority': 'a.cov.h2.lab.test' })).status).toBe(200);
    // Coalesced (RFC 9113 §9.1.1): the certificate covers b.cov.h2.lab.test too.
    expect((await h2Request(exact, { ':path': '/cov-2', ':authority': 'b.cov.h2.lab.test' })).status).toBe(200);
    // The renewal covers both names (RFC 6125 §6.4.3): no name the connection reached is gone.
    await serveEntry('h2cov', ['*.cov.h2.lab.test']);
    // Every worker applied it (serveEntry) before these streams: a GOAWAY would have come first and refused them.
    expect((await h2Request(exact, { ':path': '/cov-3', ':authority': 'a.cov.h2.lab.test' })).status).toBe(200);
    expect((await h2Request(exact, { ':path': '/cov-4', ':authority': 'b.cov.h2.lab.test' })).status).toBe(200);
    expect(exactGoaways).toEqual([]);
    expect(await retiredCount()).toBe(before);

    // A connection served the wildcard may have reached any name under it: back to exact names, it gets GOAWAY; the
    // first one, whose names the exact certificate covers, still none.
    const wild = h2Connect(proxy.port, ca, 'a.cov.h2.lab.test');
    const wildGoaways = goaways(wild);
    expect((await h2Request(wild, { ':path': '/cov-5', ':authority': 'b.cov.h2.lab.test' })).status).toBe(200);
    await serveEntry('h2cov', ['a.cov.h2.lab.test', 'b.cov.h2.lab.test']);
    await waitFor('GOAWAY', () => (wildGoaways.length > 0 ? true : undefined), 5000);
    expect(wildGoaways).toEqual([http2.constants.NGHTTP2_NO_ERROR]);
    expect((await h2Request(exact, { ':path': '/cov-6', ':authority': 'b.cov.h2.lab.test' })).status).toBe(200);
    expect(exactGoaways).toEqual([]);
    await waitFor('the count', async () => ((await retiredCount()) === before + 1 ? true : undefined), 5000);
    await Promise.all([closeSession(exact), closeSession(wild)]);
  });

  it('a connection whose handshake completes after the change gets GOAWAY as it starts', async () => {
    await serveEntry('h2late', ['late.h2.lab.test']);
    const before = await retiredCount();
    // Its handshake completes after the reload (heldHandshake), the certificate picked before it.
    const late = heldHandshake('late.h2.lab.test', 'h2');
    const session = http2.connect('https://late.h2.lab.test', { createConnection: () => late.tls });
    session.on('error', () => undefined);
    const codes = goaways(session);
    await waitFor("the proxy's certificate", () => (late.picked() ? true : undefined), 5000);
    await serveEntry('h2late', ['later.h2.lab.test']);
    late.release();
    await waitFor('GOAWAY', () => (codes.length > 0 ? true : undefined), 5000);
    expect(codes).toEqual([http2.constants.NGHTTP2_NO_ERROR]);
    await waitFor('the count', async () => ((await retiredCount()) === before + 1 ? true : undefined), 5000);
    session.destroy();
    late.tcp.destroy();
  });
});

describe('HTTP/1.1 connections after a certificate change', () => {
  /** The whole answers received so far on `text`. */
  const answers = (text: string): Message[] => splitAll(text, (rest) => nextAnswer(rest, () => false, false)).messages;
  const request = (name: string, path: string): string => `GET ${path} HTTP/1.1\r\nhost: ${name}\r\n\r\n`;

  it('a renewal without a name closes its idle keep-alive connections, and the busy ones after the answer in flight', async () => {
    await serveEntry('h1drop', ['a.h1.lab.test']);
    await serveEntry('h1kept', ['kept.h1.lab.test']);
    const before = await retiredCount('http1');
    const idle = await rawTls(proxy.port, 'a.h1.lab.test', ca);
    idle.socket.write(request('a.h1.lab.test', '/h1-idle'));
    const busy = await rawTls(proxy.port, 'a.h1.lab.test', ca);
    busy.socket.write(request('a.h1.lab.test', '/held'));
    const kept = await rawTls(proxy.port, 'kept.h1.lab.test', ca);
    kept.socket.write(request('kept.h1.lab.test', '/h1-kept-1'));
    // A WebSocket tunnel for the dropped name: left open.
    const ws = await openWebSocket(proxy.port, ca, 'a.h1.lab.test', '/ws');
    if (!('socket' in ws)) throw new Error(`no WebSocket: ${ws.status}`);
    await waitFor('the idle and kept answers, the held request', () =>
      answers(idle.text()).length === 1 && answers(kept.text()).length === 1 && held.length === 1 ? true : undefined,
    );
    expect(answers(idle.text())[0]?.headers.get('connection')).toEqual(['keep-alive']);

    await serveEntry('h1drop', ['b.h1.lab.test']);
    // The idle one is closed at once, with no answer to anything.
    await Promise.race([idle.closed, sleep(5000).then(() => Promise.reject(new Error('the idle connection stayed open')))]);
    expect(answers(idle.text())).toHaveLength(1);
    // A request sent after the change on the busy connection is not processed (RFC 9112 §9.6).
    busy.socket.write(request('a.h1.lab.test', '/h1-after-change'));
    await sleep(200);
    held.shift()?.();
    await Promise.race([busy.closed, sleep(5000).then(() => Promise.reject(new Error('the busy connection stayed open')))]);
    const [answer, ...more] = answers(busy.text());
    expect(answer?.start).toBe('HTTP/1.1 200 OK');
    expect(answer?.headers.get('connection')).toEqual(['close']);
    expect(answer?.body).toBe(SLOW_BODY);
    expect(more).toEqual([]);
    expect(originBSaw).not.toContain('/h1-after-change');
    // A connection whose certificate still covers its names is left alone.
    kept.socket.write(request('kept.h1.lab.test', '/h1-kept-2'));
    await waitFor('the second kept answer', () => (answers(kept.text()).length === 2 ? true : undefined));
    expect(answers(kept.text()).map((a) => a.headers.get('connection'))).toEqual([['keep-alive'], ['keep-alive']]);
    expect(kept.socket.destroyed).toBe(false);
    originTunnels.at(-1)?.write(encodeFrame(TEXT, 'after the change', false));
    expect(await Promise.race([ws.next(), sleep(5000).then(() => 'the tunnel was closed')])).toBe('after the change');
    await waitFor('the count', async () => ((await retiredCount('http1')) === before + 2 ? true : undefined), 5000);
    kept.socket.destroy();
    ws.socket.destroy();
    for (const tunnel of originTunnels.splice(0)) tunnel.destroy();
  });

  it.each([
    ['pipe', ''],
    // Its 100 (Continue) is written as the origin takes its body, then its answer's head: both wait behind the held one.
    ['cont', 'expect: 100-continue\r\n'],
  ])('a busy connection answers every pipelined request it already forwarded, the last with `Connection: close` (%s)', async (entry, expectation) => {
    const name = `${entry}.h1.lab.test`;
    await serveEntry(`h1${entry}`, [name]);
    const busy = await rawTls(proxy.port, name, ca);
    // Pipelined behind the held one: forwarded at once (the origin has it), its answer queued behind the held one's.
    const post = `POST /h1-pipelined-${entry} HTTP/1.1\r\nhost: ${name}\r\n${expectation}content-length: 4\r\n\r\nbody`;
    busy.socket.write(request(name, '/held') + post);
    await waitFor('both requests at the origin', () => (held.length === 1 && originBSaw.includes(`/h1-pipelined-${entry}`) ? true : undefined));

    await serveEntry(`h1${entry}`, [`${entry}2.h1.lab.test`]);
    // Sent after the change: not processed (RFC 9112 §9.6).
    busy.socket.write(request(name, `/h1-after-pipelined-${entry}`));
    await sleep(200);
    held.shift()?.();
    await Promise.race([busy.closed, sleep(5000).then(() => Promise.reject(new Error('the busy connection stayed open')))]);
    // The POST reached the origin: its answer is written, in order, before the connection closes (RFC 9112 §9.3.2).
    const got = answers(busy.text());
    expect(got.map((a) => [a.start, a.body, a.headers.get('connection')])).toEqual([
      ['HTTP/1.1 200 OK', SLOW_BODY, ['keep-alive']],
      ...(expectation === '' ? [] : [['HTTP/1.1 100 Continue', '', undefined]]),
      ['HTTP/1.1 200 OK', 'origin-b', ['close']],
    ]);
    expect(originBSaw).not.toContain(`/h1-after-pipelined-${entry}`);
  });

  it('a WebSocket upgrade pipelined behind an answer in progress is not opened after the change: the connection closes after that answer', async () => {
    await serveEntry('h1ws', ['ws.h1.lab.test']);
    const busy = await rawTls(proxy.port, 'ws.h1.lab.test', ca);
    const upgrade = `GET /ws-behind HTTP/1.1\r\nhost: ws.h1.lab.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n`;
    // Node's server hands the upgrade over as it parses it; it waits for the held answer (RFC 9112 §9.3.2).
    busy.socket.write(request('ws.h1.lab.test', '/held') + upgrade);
    await waitFor('the held request at the origin', () => (held.length === 1 ? true : undefined));
    await sleep(200);
    await serveEntry('h1ws', ['ws2.h1.lab.test']);
    held.shift()?.();
    // Opened, the tunnel would have been left alone, for as long as its client kept it, on a name no longer served.
    await Promise.race([busy.closed, sleep(5000).then(() => Promise.reject(new Error('the connection stayed open')))]);
    expect(answers(busy.text()).map((a) => [a.start, a.headers.get('connection')])).toEqual([['HTTP/1.1 200 OK', ['close']]]);
    expect(originBSaw).not.toContain('/ws-behind');
    for (const tunnel of originTunnels.splice(0)) tunnel.destroy();
  });

  it('a connection whose handshake completes after the change gets `Connection: close` on its first answer', async () => {
    await serveEntry('h1late', ['late.h1.lab.test']);
    const before = await retiredCount('http1');
    const late = heldHandshake('late.h1.lab.test', 'http/1.1');
    let text = '';
    late.tls.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    late.tls.on('error', () => undefined);
    // The proxy's close, seen on the TCP connection (the TLS socket over the gate does not report it).
    const closed = new Promise((resolve) => late.tcp.once('end', resolve));
    // Queued behind the held Finished: sent once the handshake completes.
    late.tls.write(request('late.h1.lab.test', '/h1-late-1') + request('late.h1.lab.test', '/h1-late-2'));
    await waitFor("the proxy's certificate", () => (late.picked() ? true : undefined), 5000);
    await serveEntry('h1late', ['later.h1.lab.test']);
    late.release();
    await Promise.race([closed, sleep(5000).then(() => Promise.reject(new Error(`the late connection stayed open: ${text}`)))]);
    const got = answers(text);
    expect(got).toHaveLength(1);
    expect(got[0]?.headers.get('connection')).toEqual(['close']);
    expect(originBSaw).not.toContain('/h1-late-2');
    await waitFor('the count', async () => ((await retiredCount('http1')) === before + 1 ? true : undefined), 5000);
    late.tcp.destroy();
  });

  it('a WebSocket asked for on a connection whose handshake completes after the change is refused (503), never opened: the connection closes', async () => {
    await serveEntry('h1wslate', ['wslate.h1.lab.test']);
    const tunnels = originTunnels.length;
    const late = heldHandshake('wslate.h1.lab.test', 'http/1.1');
    let text = '';
    late.tls.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    late.tls.on('error', () => undefined);
    const closed = new Promise((resolve) => late.tcp.once('end', resolve));
    late.tls.write(
      'GET /ws-late HTTP/1.1\r\nhost: wslate.h1.lab.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n',
    );
    await waitFor("the proxy's certificate", () => (late.picked() ? true : undefined), 5000);
    await serveEntry('h1wslate', ['wslater.h1.lab.test']);
    late.release();
    try {
      // Opened, the tunnel lived on, for as long as its client kept it, on a connection the change had ended.
      await Promise.race([closed, sleep(5000).then(() => Promise.reject(new Error(`the late connection stayed open: ${text.split('\r\n')[0]}`)))]);
      expect(answers(text).map((a) => [a.start, a.headers.get('connection'), a.headers.get('x-keyedge-error')])).toEqual([
        ['HTTP/1.1 503 Service Unavailable', ['close'], ['KEYEDGE_HTTP_UPGRADE_CLOSING']],
      ]);
      expect(originTunnels.length).toBe(tunnels);
    } finally {
      late.tcp.destroy();
      for (const tunnel of originTunnels.splice(tunnels)) tunnel.destroy();
    }
  });
});

describe('a worker that dies', () => {
  it('is replaced by one serving the current certificates', async () => {
    const serving = await servedSerial('store.lab.test');
    const workers = clusterWorkerPids(proxy.pid);
    process.kill(workers[0]!, 'SIGKILL');
    await waitFor('a replacement worker', () => (proxy.lines.some((l) => l.msg === 'proxy worker died; starting a replacement') ? true : undefined));
    await sleep(1500);
    for (let i = 0; i < 10; i++) expect(await servedSerial('store.lab.test')).toBe(serving);
  });
});
