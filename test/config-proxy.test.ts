import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProxyConfig } from '../config/load.js';
import { PROXY_DEFAULTS } from '../config/proxy-schema.js';
import { ConfigError } from '../keyserver/shared/errors.js';

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

/** What loading `file` threw (undefined when it loaded). */
function loadError(file: string): unknown {
  try {
    loadProxyConfig(file);
  } catch (err) {
    return err;
  }
  return undefined;
}

describe('proxy config', () => {
  it('loads the example and resolves paths against its directory', () => {
    const config = loadProxyConfig(join(import.meta.dirname, '..', 'config', 'proxy.json'));
    const repo = join(import.meta.dirname, '..');
    expect(config.stateDir).toBe(join(repo, 'var'));
    expect(config.keyserver.servers).toEqual([{ name: '0', socket: join(repo, 'var', 'keyserver.sock'), tcp: null }]);
    expect(config.certificates[0]?.chain).toBe(join(repo, 'var', 'demo', 'demo-chain.pem'));
    expect(config.keyserver.timeoutMs).toBe(250);
    expect(Object.isFrozen(config.listen[0])).toBe(true);
  });

  it('fills defaults from the one table', () => {
    const config = loadProxyConfig(write('empty.json', {}));
    expect(config.tls).toEqual(PROXY_DEFAULTS.tls);
    expect(config.sni).toEqual({ default: null, onUnknown: 'reject' });
    expect(config.keyserver.servers.map((s) => s.tcp)).toEqual([null]);
    expect(config.keyserver.healthIntervalMs).toBe(PROXY_DEFAULTS.keyserver.healthIntervalMs);
    expect(config.httpRedirect).toBeNull();
    expect(config.listen).toEqual([{ host: '127.0.0.1', port: 8443, profile: 'intermediate', http2: true }]);
    expect(config.reloadApplyTimeoutMs).toBe(30_000);
    expect(loadProxyConfig(write('apply.json', { reloadApplyTimeoutMs: 5_000 })).reloadApplyTimeoutMs).toBe(5_000);
    expect(() => loadProxyConfig(write('apply-bad.json', { reloadApplyTimeoutMs: 10 }))).toThrow(/reloadApplyTimeoutMs/);
    expect(config.workerSilentTimeoutMs).toBe(30_000);
    expect(loadProxyConfig(write('silent.json', { workerSilentTimeoutMs: 15_000 })).workerSilentTimeoutMs).toBe(15_000);
    expect(() => loadProxyConfig(write('silent-bad.json', { workerSilentTimeoutMs: 5_000 }))).toThrow(/workerSilentTimeoutMs/);
  });

  it("takes a listener's host and profile and the redirect's host from the one table of defaults, as README gives them", () => {
    // They were literals in resolve-proxy.ts, in neither PROXY_DEFAULTS nor README's table.
    const config = loadProxyConfig(write('bare-listener.json', { listen: [{ port: 8443 }], httpRedirect: { port: 8080 } }));
    expect(config.listen[0]).toMatchObject(PROXY_DEFAULTS.listener);
    expect(config.httpRedirect?.host).toBe(PROXY_DEFAULTS.httpRedirectHost);
    const readme = readFileSync(join(import.meta.dirname, '..', 'README.md'), 'utf8');
    expect(readme).toContain(`| \`listen[].host\` | \`${PROXY_DEFAULTS.listener.host}\` |`);
    expect(readme).toContain(`| \`listen[].profile\` | \`${PROXY_DEFAULTS.listener.profile}\` |`);
    expect(readme).toContain(`| \`httpRedirect.host\` | \`${PROXY_DEFAULTS.httpRedirectHost}\` |`);
  });

  it('refuses two listeners, the redirect or the admin API on one address, naming the later one and the first', () => {
    // Loaded, then the start failed with EADDRINUSE as if another process held the port.
    const message = (content: unknown): string => String((loadError(write('clash.json', content)) as Error | undefined)?.message);
    expect(message({ listen: [{ port: 8443 }, { port: 8443 }] })).toContain('listen[1]: the same address as listen[0] (127.0.0.1 port 8443)');
    expect(message({ listen: [{ port: 9465 }] })).toContain('admin: the same address as listen[0] (127.0.0.1 port 9465)');
    expect(message({ listen: [{ host: '0.0.0.0', port: 8443 }], httpRedirect: { port: 8443 } })).toContain(
      'httpRedirect: the same address as listen[0] (0.0.0.0 port 8443)',
    );
    // `::` takes both families (Linux binds it dual-stack): it clashes with an IPv4 address as with any.
    expect(
      message({
        listen: [
          { host: '::', port: 8443 },
          { host: '127.0.0.1', port: 8443 },
        ],
      }),
    ).toContain('listen[1]: the same address as listen[0]');
    // Another host, another port, or port 0 (any free one) is no clash; nor is IPv4 on every address beside an IPv6
    // address (0.0.0.0 takes IPv4 only).
    for (const fine of [
      { listen: [{ port: 8443 }, { host: '127.0.0.2', port: 8443 }] },
      {
        listen: [
          { host: '0.0.0.0', port: 8443 },
          { host: '2001:db8::1', port: 8443 },
        ],
      },
      {
        listen: [
          { host: '0.0.0.0', port: 8443 },
          { host: '::1', port: 8443 },
        ],
      },
      { listen: [{ port: 0 }, { port: 0 }], admin: { port: 0 } },
      { listen: [{ port: 9465 }], admin: null },
    ]) {
      expect(loadError(write('fine.json', fine)), JSON.stringify(fine)).toBeUndefined();
    }
  });

  it('refuses limits.keepAliveTimeoutMs 0, naming it: Node takes 0 as no timeout, and idle connections were never closed', () => {
    expect(() => loadProxyConfig(write('keepalive-0.json', { limits: { keepAliveTimeoutMs: 0 } }))).toThrow(
      /limits\.keepAliveTimeoutMs.*expected an integer from 1 to 600000/,
    );
    expect(loadProxyConfig(write('keepalive-1.json', { limits: { keepAliveTimeoutMs: 1 } })).limits.keepAliveTimeoutMs).toBe(1);
  });

  it('puts the certificate store under the state directory unless told otherwise', () => {
    const defaults = loadProxyConfig(write('store-default.json', { stateDir: 'state' }));
    expect(defaults.certStore).toEqual({ dir: join(dir, 'state', 'certs'), rescanSeconds: PROXY_DEFAULTS.certStore.rescanSeconds, intermediates: null });
    const store = { dir: 'live', rescanSeconds: 5, intermediates: 'ca/inter.pem' };
    const relative = loadProxyConfig(write('store-relative.json', { stateDir: 'state', certStore: store }));
    expect(relative.certStore).toEqual({ dir: join(dir, 'state', 'live'), rescanSeconds: 5, intermediates: join(dir, 'ca', 'inter.pem') });
    const absolute = loadProxyConfig(write('store-absolute.json', { certStore: { dir: '/etc/keyedge/certs' } }));
    expect(absolute.certStore.dir).toBe('/etc/keyedge/certs');
    expect(Object.isFrozen(absolute.certStore)).toBe(true);
  });

  it('takes the ACME challenge types in order of preference, http-01 alone by default', () => {
    const acme = { directory: 'https://ca.example/dir' };
    expect(loadProxyConfig(write('acme-default.json', { acme })).acme?.challenges).toEqual(['http-01']);
    const both = loadProxyConfig(write('acme-both.json', { acme: { ...acme, challenges: ['tls-alpn-01', 'http-01'] } }));
    expect(both.acme?.challenges).toEqual(['tls-alpn-01', 'http-01']);
    expect(() => loadProxyConfig(write('acme-dns.json', { acme: { ...acme, challenges: ['dns-01'] } }))).toThrow(/"http-01" or "tls-alpn-01"/);
  });

  it('takes a key server over mutual TLS instead of the socket', () => {
    const config = loadProxyConfig(write('tcp.json', { keyserver: { tcp: { host: 'ks', port: 7443, ca: 'ca.pem', cert: 'c.pem', key: 'k.pem' } } }));
    expect(config.keyserver.servers).toHaveLength(1);
    expect(config.keyserver.servers[0]?.socket).toBeNull();
    expect(config.keyserver.servers[0]?.tcp?.ca).toBe(join(dir, 'ca.pem'));
  });

  it('takes a pool of key servers, unix and TCP, named or numbered, in order', () => {
    const tcp = { host: 'ks-b', port: 7443, ca: 'ca.pem', cert: 'c.pem', key: 'k.pem' };
    const config = loadProxyConfig(
      write('pool.json', {
        stateDir: 'state',
        keyserver: { servers: [{ socket: 'a.sock' }, { name: 'ks-b', tcp }], timeoutMs: 300, healthIntervalMs: 500 },
      }),
    );
    expect(config.keyserver.servers).toEqual([
      { name: '0', socket: join(dir, 'state', 'a.sock'), tcp: null },
      { name: 'ks-b', socket: null, tcp: { ...tcp, ca: join(dir, 'ca.pem'), cert: join(dir, 'c.pem'), key: join(dir, 'k.pem'), servername: null } },
    ]);
    expect(config.keyserver.timeoutMs).toBe(300);
    expect(config.keyserver.healthIntervalMs).toBe(500);
    expect(config.keyserver.breakerMs).toBe(PROXY_DEFAULTS.keyserver.breakerMs);
    expect(Object.isFrozen(config.keyserver.servers[1])).toBe(true);
  });

  it('takes one origin or several, with the routing keys of a domain', () => {
    const config = loadProxyConfig(
      write('routing.json', {
        domains: [
          { name: 'one.example', origin: 'http://127.0.0.1:8080' },
          {
            name: '*.many.example',
            origins: ['http://a.internal:8080/', 'https://b.internal:8443'],
            originHost: 'client',
            originTls: { ca: 'origin-ca.pem', servername: 'b.internal' },
            maxBodyBytes: 1_000_000,
          },
        ],
        forwarding: { trustedProxies: ['10.0.0.0/8', '127.0.0.1', '::1', 'fd00::/8'] },
        limits: { originFailureCooldownMs: 0, maxConnectionsPerWorker: 50 },
      }),
    );
    expect(config.domains[0]).toEqual({
      name: 'one.example',
      origins: ['http://127.0.0.1:8080'],
      originHost: null,
      originTls: { ca: null, servername: null },
      maxBodyBytes: null,
      hsts: { includeSubDomains: false, preload: false },
    });
    expect(config.domains[1]).toMatchObject({
      origins: ['http://a.internal:8080', 'https://b.internal:8443'],
      originHost: 'client',
      originTls: { ca: join(dir, 'origin-ca.pem'), servername: 'b.internal' },
      maxBodyBytes: 1_000_000,
    });
    expect(config.forwarding.trustedProxies).toEqual(['10.0.0.0/8', '127.0.0.1', '::1', 'fd00::/8']);
    expect(config.limits.originFailureCooldownMs).toBe(0);
    expect(config.limits.maxConnectionsPerWorker).toBe(50);
  });

  it('defaults the new routing keys from the one table', () => {
    const config = loadProxyConfig(write('routing-defaults.json', {}));
    expect(config.forwarding).toEqual({ trustedProxies: [] });
    expect(config.limits.originFailureCooldownMs).toBe(PROXY_DEFAULTS.limits.originFailureCooldownMs);
    expect(config.limits.maxConnectionsPerWorker).toBe(PROXY_DEFAULTS.limits.maxConnectionsPerWorker);
    expect(config.limits).toMatchObject({
      bodyBufferBytes: 65_536,
      bodyIdleTimeoutMs: 60_000,
      bodyTimeoutMs: 300_000,
      sendTimeoutMs: 60_000,
      originMaxConnections: 64,
      originMaxQueue: 256,
      originQueueTimeoutMs: 10_000,
    });
  });

  it('defaults the TLS front limits from the one table, and takes null for no per-client cap', () => {
    const defaults = loadProxyConfig(write('front-defaults.json', {}));
    expect(defaults.limits.handshakeTimeoutMs).toBe(10_000);
    expect(defaults.limits.maxConnectionsPerClient).toBe(PROXY_DEFAULTS.limits.maxConnectionsPerClient);
    const set = loadProxyConfig(write('front-set.json', { limits: { handshakeTimeoutMs: 2000, maxConnectionsPerClient: null } }));
    expect(set.limits).toMatchObject({ handshakeTimeoutMs: 2000, maxConnectionsPerClient: null });
  });

  it.each([
    [{ listen: [{ port: 8443, profile: 'old' }] }, 'listen[0].profile', 'expected "intermediate" or "modern"'],
    [{ certificates: [{ name: 'a', chain: 'a.pem', key: 'a-key.pem' }] }, 'certificates[0].key', 'unknown key'],
    [
      {
        certificates: [
          { name: 'a', chain: 'a.pem' },
          { name: 'a', chain: 'b.pem' },
        ],
      },
      'certificates[1]',
      'duplicate certificate name',
    ],
    [{ domains: [{ name: 'Shop.Example', origin: 'http://o' }] }, 'domains[0].name', 'lower-case DNS name'],
    // Labels of 63, 267 characters in all: past DNS's 253 (RFC 1035 §2.3.4), no certificate or SNI can name it.
    [{ domains: [{ name: `${'a'.repeat(63)}.`.repeat(4) + 'example.com', origin: 'http://o' }] }, 'domains[0].name', 'at most 253 characters'],
    [{ domains: [{ name: 'shop.example', origin: 'ftp://o' }] }, 'domains[0].origin', 'http:// or https://'],
    [{ domains: [{ name: 'shop.example', origin: 'http://user:pw@o' }] }, 'domains[0].origin', 'no credentials'],
    [{ domains: [{ name: 'shop.example', origin: 'http://o/app' }] }, 'domains[0].origin', 'no credentials, path or query'],
    [{ domains: [{ name: 'shop.example' }] }, 'domains[0]', 'exactly one of "origin" (one URL) or "origins"'],
    [{ domains: [{ name: 'shop.example', origin: 'http://a', origins: ['http://b'] }] }, 'domains[0]', 'exactly one of "origin"'],
    [{ domains: [{ name: 'shop.example', origins: [] }] }, 'domains[0].origins', 'non-empty array of origin URLs'],
    [{ domains: [{ name: 'shop.example', origins: 'http://a' }] }, 'domains[0].origins', 'array of origin URLs'],
    [{ domains: [{ name: 'shop.example', origins: ['http://a', 'ftp://b'] }] }, 'domains[0].origins[1]', 'http:// or https://'],
    [{ domains: [{ name: 'shop.example', origins: ['http://a:80', 'http://a'] }] }, 'domains[0].origins[1]', 'duplicate origin'],
    [{ domains: [{ name: 'shop.example', origin: 'http://a', originHost: 'server' }] }, 'domains[0].originHost', 'expected "client" or "origin"'],
    [{ domains: [{ name: 'shop.example', origin: 'http://a', originTls: { ca: 'ca.pem' } }] }, 'domains[0].originTls', 'https:// origins only'],
    [{ domains: [{ name: 'shop.example', origin: 'https://a', originTls: { ca: '' } }] }, 'domains[0].originTls.ca', 'PEM CA path'],
    [{ domains: [{ name: 'shop.example', origin: 'https://a', originTls: { servername: 'A_B' } }] }, 'domains[0].originTls.servername', 'lower-case DNS name'],
    [{ domains: [{ name: 'shop.example', origin: 'https://a', originTls: { verify: false } }] }, 'domains[0].originTls.verify', 'unknown key'],
    [{ domains: [{ name: 'shop.example', origin: 'http://a', maxBodyBytes: -1 }] }, 'domains[0].maxBodyBytes', 'from 0 to'],
    [{ domains: [{ name: 'shop.example', origin: 'http://a', weight: 2 }] }, 'domains[0].weight', 'unknown key'],
    [{ forwarding: { trustedProxies: ['10.0.0.0/33'] } }, 'forwarding.trustedProxies[0]', 'CIDR block'],
    [{ forwarding: { trustedProxies: ['lb.example'] } }, 'forwarding.trustedProxies[0]', 'IPv4 or IPv6 address'],
    [{ forwarding: { trustedProxies: ['fd00::/129'] } }, 'forwarding.trustedProxies[0]', 'CIDR block'],
    [{ forwarding: { trustedProxies: '10.0.0.0/8' } }, 'forwarding.trustedProxies', 'array of addresses'],
    [{ forwarding: { trustAll: true } }, 'forwarding.trustAll', 'unknown key'],
    [{ limits: { originFailureCooldownMs: -5 } }, 'limits.originFailureCooldownMs', 'from 0 to 3600000'],
    [{ limits: { maxConnectionsPerWorker: 0 } }, 'limits.maxConnectionsPerWorker', 'from 1 to 1000000'],
    [{ limits: { maxConnectionsPerWorker: 1.5 } }, 'limits.maxConnectionsPerWorker', 'integer'],
    [{ limits: { handshakeTimeoutMs: 50 } }, 'limits.handshakeTimeoutMs', 'from 100 to 600000'],
    [{ limits: { maxConnectionsPerClient: 0 } }, 'limits.maxConnectionsPerClient', 'from 1 to 1000000'],
    [{ limits: { originMaxConnections: 0 } }, 'limits.originMaxConnections', 'from 1 to 100000'],
    [{ limits: { bodyIdleTimeoutMs: 10 } }, 'limits.bodyIdleTimeoutMs', 'from 100 to 3600000'],
    [{ limits: { sendTimeoutMs: 'soon' } }, 'limits.sendTimeoutMs', 'integer'],
    [{ sni: { onUnknown: 'default' } }, 'sni.onUnknown', 'needs sni.default'],
    [{ keyserver: { socket: null } }, 'keyserver', '"socket" or "tcp"'],
    [{ keyserver: { timeoutMs: 5 } }, 'keyserver.timeoutMs', 'from 10 to 10000'],
    [{ keyserver: { socket: 'a.sock', servers: [{ socket: 'b.sock' }] } }, 'keyserver', 'or a pool ("servers"), not both'],
    [{ keyserver: { servers: [] } }, 'keyserver.servers', 'at least one key server'],
    [{ keyserver: { servers: [{ name: 'a' }] } }, 'keyserver.servers[0]', 'exactly one of "socket" or "tcp"'],
    [
      {
        keyserver: {
          servers: [
            { name: 'a', socket: 'a.sock' },
            { name: 'a', socket: 'b.sock' },
          ],
        },
      },
      'keyserver.servers[1]',
      'duplicate key server name',
    ],
    [{ keyserver: { servers: [{ name: 'Key Server A', socket: 'a.sock' }] } }, 'keyserver.servers[0].name', '1-32 of a-z 0-9 _ -'],
    [{ keyserver: { servers: Array.from({ length: 17 }, (_, i) => ({ socket: `${i}.sock` })) } }, 'keyserver.servers', 'at most 16'],
    [{ keyserver: { healthIntervalMs: 10 } }, 'keyserver.healthIntervalMs', '0 (off) or from 50 to 60000'],
    [{ workers: 0 }, 'workers', 'from 1 to 256'],
    // A fragment, a query or a path has no meaning to etcd's client, which dropped them unsaid: each is refused.
    [{ etcd: { endpoints: ['http://etcd.example:2379#frag'] } }, 'etcd.endpoints[0]', 'no path, query or fragment'],
    [{ etcd: { endpoints: ['http://etcd.example:2379', 'http://etcd.example:2380/#'] } }, 'etcd.endpoints[1]', 'no path, query or fragment'],
    [{ etcd: { endpoints: ['http://etcd.example:2379?'] } }, 'etcd.endpoints[0]', 'no path, query or fragment'],
    [{ etcd: { endpoints: ['http://etcd.example:2379?a=1'] } }, 'etcd.endpoints[0]', 'no path, query or fragment'],
    [{ etcd: { endpoints: ['http://etcd.example:2379/v3'] } }, 'etcd.endpoints[0]', 'no path, query or fragment'],
    [{ certStore: { rescanSeconds: 0 } }, 'certStore.rescanSeconds', 'from 1 to 86400'],
    [{ certStore: { dir: '' } }, 'certStore.dir', 'directory path'],
    [{ certStore: { path: 'x' } }, 'certStore.path', 'unknown key'],
    [{ certStore: { intermediates: '' } }, 'certStore.intermediates', 'PEM file or directory path'],
    [{ certStore: 'certs' }, 'certStore', 'an object { "dir", "rescanSeconds", "intermediates" }'],
  ])('refuses %j at %s', (content, path, expected) => {
    const file = write('bad.json', content);
    const error = loadError(file);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).code).toBe('KEYEDGE_ERR_CONFIG');
    expect((error as Error).message).toContain(file);
    expect((error as Error).message).toContain(path);
    expect((error as Error).message).toContain(expected);
  });

  it.each([
    // fetch refused the directory with an error quoting it, and it was logged at start, in every order's error and the ACME state.
    [{ acme: { directory: 'https://acct:HUNTER2-secret@ca.example/dir' } }, 'acme.directory'],
    [{ acme: { directory: 'https://HUNTER2-secret@ca.example/dir' } }, 'acme.directory'],
    // Dropped without a word: the operator believed etcd's auth was in force.
    [{ etcd: { endpoints: ['http://:HUNTER2-secret@etcd.example:2379'] } }, 'etcd.endpoints[0]'],
  ])('refuses credentials in a URL (%j) at %s, never quoting them', (content, path) => {
    const error = loadError(write('credentials.json', content));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain(`${path}: expected`);
    expect((error as Error).message).toContain('no credentials');
    expect(`${(error as Error).message} ${(error as Error).stack}`).not.toContain('HUNTER2');
  });

  it('refuses an on-demand ask URL whose user or password is not percent-encoded, never quoting them', () => {
    // Passed, then the proxy's start failed with a bare "URI malformed" as the Basic auth header was made.
    const acme = { directory: 'https://ca.example/dir', onDemand: { ask: 'http://edge%zz:HUNTER2-secret@ask.example/check' } };
    const error = loadError(write('ask-escape.json', { acme }));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('acme.onDemand.ask: expected an http(s) URL whose user and password are percent-encoded');
    expect(`${(error as Error).message} ${(error as Error).stack}`).not.toContain('HUNTER2');
    const fine = { ...acme, onDemand: { ask: 'http://edge%40x:HUNTER2%2Fsecret@ask.example/check' } };
    expect(loadProxyConfig(write('ask-escaped.json', { acme: fine })).acme?.onDemand?.ask).toContain('ask.example');
  });
});
