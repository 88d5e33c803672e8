import { appendFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from './helpers/basics.js';
import { type ClusterPorts, type ClusterProxy, startClusterProxy, storeProxyConfig, waitFor } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// A config file written in two parts (a tool truncating it and writing the rest a moment later): the watch's reload
// (150 ms debounce) reads the first part alone. That half file was refused, logged at error level and counted as a
// refused reload, though the whole file served a moment later. The rescan is an hour away: only the watch reloads.

/** Between the two parts: past the watch's debounce (150 ms), well inside the second the loader waits for quiet. */
const GAP_MS = 400;

let lab: KeylessLab;
let proxy: ClusterProxy;
let ports: ClusterPorts;
let chain: string;
const config = (p: ClusterPorts, domains: string[]): Record<string, unknown> =>
  storeProxyConfig(lab, p, {
    certStore: { dir: p.storeDir, rescanSeconds: 3600 },
    certificates: [{ name: 'wild', chain }],
    domains: domains.map((name) => ({ name, origin: `http://127.0.0.1:${lab.origin.port}` })),
  });

beforeAll(async () => {
  lab = await startKeylessLab();
  chain = (await lab.certificate('wild', lab.keys.ec, ['*.lab.test'])).file;
  proxy = await startClusterProxy(lab, 'config-half', (p) => {
    ports = p;
    return config(p, ['*.lab.test']);
  });
}, 90_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

describe('a config file written in two parts', () => {
  it('is reloaded whole, with no refusal of its first part', async () => {
    const before = proxy.lines.length;
    const text = JSON.stringify(config(ports, ['*.lab.test', 'half.example.test']), null, 2);
    const cut = Math.floor(text.length / 2);
    writeFileSync(proxy.configFile, text.slice(0, cut));
    // A blocking wait: the gap is the writer's, not this worker's event loop's (which a loaded machine stretches).
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, GAP_MS);
    appendFileSync(proxy.configFile, text.slice(cut));
    const since = () => proxy.lines.slice(before);
    await waitFor('a reload of the whole file', () => (since().some((l) => l.msg === 'reload done' && l.trigger === 'watch') ? true : undefined), 20_000);
    // The second part's events start one more reload at most: let it finish.
    await sleep(3_000);
    const refused = since().filter((l) => typeof l.msg === 'string' && l.msg.startsWith('reload refused'));
    expect(refused).toEqual([]);
  });
});
