import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type AcmeLab, type Pebble, startAcmeLab } from './helpers/pebble.js';
import { type ClusterProxy, waitFor } from './helpers/proxy-cluster.js';
import { getOnce, steadyLoad, tokenKeyIds } from './helpers/renewal-load.js';

// Issue 14, must-show 2: `keyedge cert renew` under steady load (a new TLS
// connection per request, so every request is a full handshake) swaps in a
// certificate for a new key with zero failed handshakes and zero failed
// requests; the previous key is deleted from the token once its grace period
// (2 s here) is over, and not before the new certificate serves.
let pebble: Pebble;
let proxy: ClusterProxy;
let keyserverConfig: string;
const NAME = 'www.renew.test';
let acmeLab: AcmeLab;
let cli: AcmeLab['cli'];

beforeAll(async () => {
  acmeLab = await startAcmeLab();
  ({ pebble, keyserverConfig, cli } = acmeLab);
  proxy = await acmeLab.startProxy(['*.renew.test'], { renewal: { checkSeconds: 1, keyGraceSeconds: 2 } });
}, 150_000);

afterAll(async () => {
  await proxy?.stop();
  await acmeLab?.close();
});

describe('ACME renewal under load', () => {
  it('keyedge cert renew: zero failed requests, the new certificate serves, the old key goes after the grace period', async () => {
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', NAME]);
    expect(issued.code, issued.stderr).toBe(0);
    const firstKey = /key id ([0-9a-f]{64})/.exec(issued.stdout)?.[1];
    expect(firstKey).toBeDefined();
    const ca = readFileSync(await pebble.rootFile(), 'utf8');
    const firstSerial = await getOnce(proxy.port, NAME, ca);

    const load = steadyLoad(proxy.port, NAME, ca);
    const { serials, failures } = load;
    await sleep(1_000);
    const renewed = await cli(['cert', 'renew', NAME, '--config', proxy.configFile]);
    expect(renewed.code, renewed.stderr).toBe(0);
    const secondKey = /key id ([0-9a-f]{64})/.exec(renewed.stdout)?.[1];
    expect(secondKey).toBeDefined();
    expect(secondKey).not.toBe(firstKey);
    // Load goes on after the swap: new connections get the new certificate.
    await waitFor('a request served with the new certificate', () => ([...serials.keys()].some((s) => s !== firstSerial) ? true : undefined), 20_000);
    await sleep(1_000);
    await load.stop();

    const total = [...serials.values()].reduce((a, b) => a + b, 0);
    // What the proxy warned of, for a failure's diagnosis (a signing deadline missed on a starved machine reads as alert 80).
    const warned = JSON.stringify(proxy.lines.filter((line) => Number(line.level) >= 40).slice(-8));
    expect(failures, warned).toEqual([]);
    expect(total).toBeGreaterThan(20);
    expect(serials.get(firstSerial)).toBeGreaterThan(0);
    expect(serials.size).toBe(2);

    // The previous key is deleted after the 2 s grace period (checked every second), the new one stays.
    await waitFor('the previous key to be deleted', async () => ((await tokenKeyIds(cli, keyserverConfig)).includes(firstKey!) ? undefined : true), 30_000);
    expect(await tokenKeyIds(cli, keyserverConfig)).toContain(secondKey);
    // The deletion is counted once the `keyedge key delete` child has exited.
    const metrics = await waitFor('the deletion to be counted', async () => {
      const text = await (await fetch(`http://127.0.0.1:${proxy.adminPort}/metrics`)).text();
      return /keyedge_proxy_acme_keys_deleted_total 1/.test(text) ? text : undefined;
    });
    expect(metrics).toMatch(/keyedge_proxy_acme_attempts_total\{result="ok",problem="none"\} 2/);
    // Still serving, with the new key.
    expect(await getOnce(proxy.port, NAME, ca)).not.toBe(firstSerial);
  }, 150_000);
});
