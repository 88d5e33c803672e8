import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadKeyserverConfig, loadProxyConfig } from '../config/load.js';
import { ConfigError } from '../keyserver/shared/errors.js';
import { type ClusterPorts, type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// A config file with a key twice in one object (two "domains" arrays, two "limits" blocks: a merge by hand) loaded on
// the last one, the first dropped without a word (JSON.parse keeps the last; RFC 8259 §4 leaves duplicates to the
// parser). A reload answered 200 and served half the file. Such a file is now refused, naming both places, never
// quoting a value, nor a key that could be a secret; the running config keeps serving, as for any refused file.

let dir: string;
let lab: KeylessLab;
let proxy: ClusterProxy;
let ports: ClusterPorts;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-duplicate-keys-'));
  lab = await startKeylessLab();
  proxy = await startClusterProxy(lab, 'duplicate-keys', (p) => {
    ports = p;
    return storeProxyConfig(lab, p, { certStore: { dir: p.storeDir, rescanSeconds: 3600 } });
  });
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
  rmSync(dir, { recursive: true, force: true });
});

function loadError(load: (file: string) => unknown, text: string): ConfigError {
  const file = join(dir, `c${Math.random().toString(16).slice(2)}.json`);
  writeFileSync(file, text);
  try {
    load(file);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message.startsWith(`${file}: `)).toBe(true);
    return err as ConfigError;
  }
  throw new Error('loaded');
}

describe('a config file with a key twice in one object', () => {
  it('is refused by a reload, naming both places, and the running config keeps serving', async () => {
    const config = storeProxyConfig(lab, ports, { certStore: { dir: ports.storeDir, rescanSeconds: 3600 } });
    const { domains, ...rest } = config;
    // The operator's file: one "domains" near the top, another below (every line a key, as an editor lays it out).
    const body = JSON.stringify({ domains, ...rest }, null, 2).replace(/\n}$/, `,\n  "domains": []\n}`);
    writeFileSync(proxy.configFile, body);
    const line = body.split('\n').findIndex((l) => l.startsWith('  "domains": []')) + 1;
    const answer = await proxy.admin('POST', '/reload');
    // Before: 200, the routing of the second "domains" alone (none).
    expect(answer.status, answer.text).toBe(409);
    const report = JSON.parse(answer.text) as { error: { code: string; message: string } };
    expect(report.error.code).toBe('KEYEDGE_ERR_CONFIG');
    expect(report.error.message).toContain(`${proxy.configFile}: domains: duplicate key at line ${line}, column 3 (first at line 2, column 3)`);
    const routed = await fetch(`http://127.0.0.1:${proxy.adminPort}/readyz`);
    expect(routed.status).toBe(200);
    proxy.writeConfig(config);
    expect((await proxy.admin('POST', '/reload')).status).toBe(200);
  }, 60_000);

  it('is refused at any depth, for either daemon, without quoting a key that could be a secret', () => {
    const nested = loadError(loadProxyConfig, '{"limits": {"maxHeaderBytes": 2048,\n "maxHeaderBytes": 4096}}');
    expect(nested.message).toContain('limits.maxHeaderBytes: duplicate key at line 2, column 2 (first at line 1, column 13)');
    const inArray = loadError(loadProxyConfig, '{"domains": [{"name": "a.test", "origin": "http://127.0.0.1:1"}, {"name": "b.test", "name": "c.test"}]}');
    expect(inArray.message).toContain('domains[1].name: duplicate key');
    const secret = loadError(loadKeyserverConfig, '{"clients": {"s3cr3t-pin-1234": 1, "s3cr3t-pin-1234": 2}}');
    expect(secret.message).not.toContain('s3cr3t');
    expect(secret.message).toContain('a key of 15 characters');
    // Equal once unescaped: the same key to JSON.parse.
    expect(loadError(loadProxyConfig, '{"workers": 1, "worker\\u0073": 2}').message).toContain('workers: duplicate key');
    // The same key in two objects is no duplicate; nor is a value equal to a key.
    const file = join(dir, 'fine.json');
    writeFileSync(file, '{"limits": {"maxHeaderBytes": 2048}, "tls": {"hstsMaxAgeSeconds": 1}, "log": {"level": "info"}, "stateDir": "limits"}');
    expect(loadProxyConfig(file).limits.maxHeaderBytes).toBe(2048);
  });

  it('a file nested deeper than any setting is refused naming the file and where, for either daemon: the key check recursed past the stack', () => {
    // Valid JSON 10,000 arrays deep: "RangeError: Maximum call stack size exceeded", naming no file, at start or reload.
    const deep = `{"x": ${'['.repeat(10_000)}${']'.repeat(10_000)}}`;
    for (const load of [loadProxyConfig, loadKeyserverConfig]) {
      expect(loadError(load, deep).message).toMatch(/: nested deeper than 64 arrays and objects at line 1, column 70\b/);
    }
  });
});
