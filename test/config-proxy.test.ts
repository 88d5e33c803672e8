import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { PROXY_DEFAULTS } from '../config/proxy-schema.js';
import { ConfigError } from '../keyserver/errors.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keyedge-proxy-config-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, content: unknown): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(content));
  return file;
}

describe('proxy config', () => {
  it('loads the example and resolves paths against its directory', () => {
    const config = loadProxyConfig(join(import.meta.dirname, '..', 'config', 'proxy.json'));
    const repo = join(import.meta.dirname, '..');
    expect(config.stateDir).toBe(join(repo, 'var'));
    expect(config.keyserver.socket).toBe(join(repo, 'var', 'keyserver.sock'));
    expect(config.certificates[0]?.chain).toBe(join(repo, 'var', 'demo', 'demo-chain.pem'));
    expect(config.keyserver.timeoutMs).toBe(250);
    expect(Object.isFrozen(config.listen[0])).toBe(true);
  });

  it('fills defaults from the one table', () => {
    const config = loadProxyConfig(write('empty.json', {}));
    expect(config.tls).toEqual(PROXY_DEFAULTS.tls);
    expect(config.sni).toEqual({ default: null, onUnknown: 'reject' });
    expect(config.keyserver.tcp).toBeNull();
    expect(config.httpRedirect).toBeNull();
    expect(config.listen).toEqual([{ host: '127.0.0.1', port: 8443, profile: 'intermediate' }]);
  });

  it('puts the certificate store under the state directory unless told otherwise', () => {
    const defaults = loadProxyConfig(write('store-default.json', { stateDir: 'state' }));
    expect(defaults.certStore).toEqual({ dir: join(dir, 'state', 'certs'), rescanSeconds: PROXY_DEFAULTS.certStore.rescanSeconds });
    const relative = loadProxyConfig(write('store-relative.json', { stateDir: 'state', certStore: { dir: 'live', rescanSeconds: 5 } }));
    expect(relative.certStore).toEqual({ dir: join(dir, 'state', 'live'), rescanSeconds: 5 });
    const absolute = loadProxyConfig(write('store-absolute.json', { certStore: { dir: '/etc/keyedge/certs' } }));
    expect(absolute.certStore.dir).toBe('/etc/keyedge/certs');
    expect(Object.isFrozen(absolute.certStore)).toBe(true);
  });

  it('takes a key server over mutual TLS instead of the socket', () => {
    const config = loadProxyConfig(write('tcp.json', { keyserver: { tcp: { host: 'ks', port: 7443, ca: 'ca.pem', cert: 'c.pem', key: 'k.pem' } } }));
    expect(config.keyserver.socket).toBeNull();
    expect(config.keyserver.tcp?.ca).toBe(join(dir, 'ca.pem'));
  });

  it.each([
    [{ listen: [{ port: 8443, profile: 'old' }] }, 'listen[0].profile', 'expected "intermediate" or "modern"'],
    [{ certificates: [{ name: 'a', chain: 'a.pem', key: 'a-key.pem' }] }, 'certificates[0].key', 'unknown key'],
    [{ certificates: [{ name: 'a', chain: 'a.pem' }, { name: 'a', chain: 'b.pem' }] }, 'certificates[1]', 'duplicate certificate name'],
    [{ domains: [{ name: 'Shop.Example', origin: 'http://o' }] }, 'domains[0].name', 'lower-case DNS name'],
    [{ domains: [{ name: 'shop.example', origin: 'ftp://o' }] }, 'domains[0].origin', 'http:// or https://'],
    [{ domains: [{ name: 'shop.example', origin: 'http://user:pw@o' }] }, 'domains[0].origin', 'without credentials'],
    [{ sni: { onUnknown: 'default' } }, 'sni.onUnknown', 'needs sni.default'],
    [{ keyserver: { socket: null } }, 'keyserver', '"socket" or "tcp"'],
    [{ keyserver: { timeoutMs: 5 } }, 'keyserver.timeoutMs', 'from 10 to 10000'],
    [{ workers: 0 }, 'workers', 'from 1 to 256'],
    [{ certStore: { rescanSeconds: 0 } }, 'certStore.rescanSeconds', 'from 1 to 86400'],
    [{ certStore: { dir: '' } }, 'certStore.dir', 'directory path'],
    [{ certStore: { path: 'x' } }, 'certStore.path', 'unknown key'],
    [{ certStore: 'certs' }, 'certStore', 'an object { "dir", "rescanSeconds" }'],
  ])('refuses %j at %s', (content, path, expected) => {
    const file = write('bad.json', content);
    let error: unknown;
    try {
      loadProxyConfig(file);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).code).toBe('KEYEDGE_ERR_CONFIG');
    expect((error as Error).message).toContain(file);
    expect((error as Error).message).toContain(path);
    expect((error as Error).message).toContain(expected);
  });
});
