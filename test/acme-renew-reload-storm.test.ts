import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type AcmeLab, type Pebble, startAcmeLab } from './helpers/pebble.js';
import { type ClusterProxy, waitFor } from './helpers/proxy-cluster.js';
import { getOnce, steadyLoad, tokenKeyIds } from './helpers/renewal-load.js';

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

describe('ACME renewal with a new key under a storm of reloads', () => {
  it('no failed handshake, the renewal serves, the previous key goes only once nothing serves it', async () => {
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', NAME]);
    expect(issued.code, issued.stderr).toBe(0);
    const firstKey = /key id ([0-9a-f]{64})/.exec(issued.stdout)?.[1];
    expect(firstKey).toBeDefined();
    const ca = readFileSync(await pebble.rootFile(), 'utf8');
    const firstSerial = await getOnce(proxy.port, NAME, ca);

    const load = steadyLoad(proxy.port, NAME, ca);
    const { serials, failures } = load;
    let running = true;
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
    const storming = storm();
    await sleep(1_000);
    const renewed = await cli(['cert', 'renew', NAME, '--config', proxy.configFile]);
    expect(renewed.code, renewed.stderr).toBe(0);
    const secondKey = /key id ([0-9a-f]{64})/.exec(renewed.stdout)?.[1];
    expect(secondKey).toBeDefined();
    expect(secondKey).not.toBe(firstKey);
    await waitFor('a request served with the new certificate', () => ([...serials.keys()].some((s) => s !== firstSerial) ? true : undefined), 20_000);
    // Several maintenance passes (each second) while the storm goes on: the previous key is deleted meanwhile.
    await waitFor('the previous key to be deleted', async () => ((await tokenKeyIds(cli, keyserverConfig)).includes(firstKey!) ? undefined : true), 30_000);
    await sleep(1_000);
    running = false;
    await Promise.all([load.stop(), storming]);
    // Why a handshake failed, if one did: a key the key server does not hold (deleted, or not found yet) is `remote`.
    const metrics = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
    const keyless = metrics.split('\n').filter((l) => l.startsWith('keyedge_proxy_keyless_failures_total{'));

    expect({ failures, keyless: keyless.filter((l) => !l.endsWith(' 0')) }).toEqual({ failures: [], keyless: [] });
    expect(triggers).toBeGreaterThan(20);
    expect(serials.size).toBe(2);
    expect(await tokenKeyIds(cli, keyserverConfig)).toContain(secondKey);
    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string; keyId: string; refused: unknown }[] };
    const entry = certs.certificates.find((c) => c.keyId === secondKey);
    expect(entry?.refused ?? null).toBeNull();
    expect(await getOnce(proxy.port, NAME, ca)).not.toBe(firstSerial);
  }, 240_000);
});
