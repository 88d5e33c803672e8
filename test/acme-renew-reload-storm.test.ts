import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/keyserver.js';
import { type AcmeLab, type Pebble, startAcmeLab } from './helpers/pebble.js';
import { type ClusterProxy, waitFor } from './helpers/proxy-cluster.js';

// An ACME renewal with a new key while every other reload trigger fires at once and without pause: SIGHUP, POST
// /reload, the config file rewritten (its watch), the store directory's watch (a file of another entry renamed
// into it), under steady load (a new TLS connection per request). Whatever pass runs when the new key is made, the
// chain written and the serving state swapped, no handshake may fail, the renewal must serve, and the previous key,
// retired with no grace period at all (keyGraceSeconds 0, the maintenance pass every second), may be deleted only
// once nothing serves it. Reloads are one at a time (serving/coordinator.ts) and the renewal's own reload is queued
// behind whichever runs; the previous key is retired only after that reload committed, and deleted only when no
// committed record uses it (acme/housekeeping.ts).
let pebble: Pebble;
let proxy: ClusterProxy;
let keyserverConfig: string;
const NAME = 'www.storm.test';
let acmeLab: AcmeLab;
let cli: AcmeLab['cli'];

async function tokenKeyIds(): Promise<string[]> {
  const listed = await cli(['key', 'list', '--json', '--config', keyserverConfig], 30_000);
  if (listed.code !== 0) throw new Error(`keyedge key list failed (exit ${listed.code}): ${listed.stderr.trim() || 'no stderr'}`);
  return (JSON.parse(listed.stdout) as { keyId: string }[]).map((k) => k.keyId);
}

beforeAll(async () => {
  acmeLab = await startAcmeLab();
  ({ pebble, keyserverConfig, cli } = acmeLab);
  // A sign deadline a loaded 2-core machine meets: a sign timed out is load, not the race looked for.
  proxy = await acmeLab.startProxy(
    ['*.storm.test'],
    { renewal: { checkSeconds: 1, keyGraceSeconds: 0 } },
    { keyserver: { socket: acmeLab.lab.socket, timeoutMs: 3_000 } },
  );
}, 150_000);

afterAll(async () => {
  await proxy?.stop();
  await acmeLab?.close();
});

/** One request on a new connection; resolves with the served certificate's serial, or throws. */
function getOnce(ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port: proxy.port, servername: NAME, headers: { host: NAME }, ca, agent: false, timeout: 15_000 }, (res) => {
      const serial = (res.socket as TLSSocket).getPeerCertificate().serialNumber;
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve(serial) : reject(new Error(`status ${res.statusCode}`))));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

describe('ACME renewal with a new key under a storm of reloads', () => {
  it('no failed handshake, the renewal serves, the previous key goes only once nothing serves it', async () => {
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', NAME]);
    expect(issued.code, issued.stderr).toBe(0);
    const firstKey = /key id ([0-9a-f]{64})/.exec(issued.stdout)?.[1];
    expect(firstKey).toBeDefined();
    const ca = readFileSync(await pebble.rootFile(), 'utf8');
    const firstSerial = await getOnce(ca);

    let running = true;
    const failures: string[] = [];
    const serials = new Map<string, number>();
    const load = async (): Promise<void> => {
      while (running) {
        try {
          const serial = await getOnce(ca);
          serials.set(serial, (serials.get(serial) ?? 0) + 1);
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
    };
    const config = readFileSync(proxy.configFile, 'utf8');
    let triggers = 0;
    const storm = async (): Promise<void> => {
      for (let i = 0; running; i++) {
        process.kill(proxy.pid, 'SIGHUP');
        void proxy.admin('POST', '/reload').catch(() => undefined);
        // Saved as an editor does (a new file renamed over it): each is a whole pass of the config watch.
        writeFileSync(`${proxy.configFile}.tmp`, config);
        renameSync(`${proxy.configFile}.tmp`, proxy.configFile);
        // Another entry's metadata (no chain: not an entry) renamed into the store: a targeted pass of the store's watch.
        const noise = join(proxy.storeDir, '.noise.tmp');
        writeFileSync(noise, `{ "names": ["noise${i % 2}.storm.test"] }\n`);
        renameSync(noise, join(proxy.storeDir, 'noise.json'));
        triggers++;
        await sleep(40);
      }
    };
    const clients = [...Array.from({ length: 4 }, () => load()), storm()];
    await sleep(1_000);
    const renewed = await cli(['cert', 'renew', NAME, '--config', proxy.configFile]);
    expect(renewed.code, renewed.stderr).toBe(0);
    const secondKey = /key id ([0-9a-f]{64})/.exec(renewed.stdout)?.[1];
    expect(secondKey).toBeDefined();
    expect(secondKey).not.toBe(firstKey);
    await waitFor('a request served with the new certificate', () => ([...serials.keys()].some((s) => s !== firstSerial) ? true : undefined), 20_000);
    // Several maintenance passes (each second) while the storm goes on: the previous key is deleted meanwhile.
    await waitFor('the previous key to be deleted', async () => ((await tokenKeyIds()).includes(firstKey!) ? undefined : true), 30_000);
    await sleep(1_000);
    running = false;
    await Promise.all(clients);
    // Why a handshake failed, if one did: a key the key server does not hold (deleted, or not found yet) is `remote`.
    const metrics = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
    const keyless = metrics.split('\n').filter((l) => l.startsWith('keyedge_proxy_keyless_failures_total{'));

    expect({ failures, keyless: keyless.filter((l) => !l.endsWith(' 0')) }).toEqual({ failures: [], keyless: [] });
    expect(triggers).toBeGreaterThan(20);
    expect(serials.size).toBe(2);
    expect(await tokenKeyIds()).toContain(secondKey);
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string; keyId: string; refused: unknown }[] };
    const entry = certs.certificates.find((c) => c.keyId === secondKey);
    expect(entry?.refused ?? null).toBeNull();
    expect(await getOnce(ca)).not.toBe(firstSerial);
  }, 240_000);
});
