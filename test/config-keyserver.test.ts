import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, test } from 'vitest';
import { ConfigError } from '../keyserver/shared/errors.js';
import { loadKeyserverConfig, parseKeyserverConfig } from '../config/load.js';
import { KEYSERVER_DEFAULTS } from '../config/schema.js';
import { runCli } from './helpers/basics.js';

const repo = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'keyedge-config-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const SOURCE = '/etc/keyedge/keyserver.json';
const KEY_A = 'a'.repeat(64);
const KEY_B = '0123456789abcdef'.repeat(4);
const TCP = { cert: 'tls/server.pem', key: 'tls/server-key.pem', clientCa: 'tls/clients-ca.pem' };
const CLIENT = { name: 'edge-1', match: { commonName: 'edge-1' }, keys: '*' };

function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('defaults', () => {
  test('no file: every default, paths under ./var of the working directory', () => {
    const c = loadKeyserverConfig();
    const stateDir = path.resolve('var');
    expect(c.source).toBe('(defaults)');
    expect(c.stateDir).toBe(stateDir);
    expect(c.pkcs11).toEqual({
      module: 'embedded',
      token: { label: 'keyedge' },
      pin: { file: path.join(stateDir, 'token', 'user.pin') },
      sessions: KEYSERVER_DEFAULTS.pkcs11.sessions,
    });
    expect(c.pkcs11.sessions).toBeGreaterThanOrEqual(2);
    expect(c.pkcs11.sessions).toBeLessThanOrEqual(256);
    expect(c.listen).toEqual({ unix: { path: path.join(stateDir, 'keyserver.sock'), mode: 0o600, keys: '*' }, tcp: null });
    expect(c.clients).toEqual([]);
    expect(c.limits).toEqual({
      maxBodyBytes: 16384,
      maxInFlightPerConnection: 256,
      maxConnections: 1024,
      maxConnectionsPerClient: 256,
      frameTimeoutMs: 5000,
      tlsHandshakeTimeoutMs: 10000,
      requestTimeoutMs: 2000,
      shutdownGraceMs: 10000,
      tokenStallExitMs: 60000,
    });
    expect(c.admin).toEqual({ host: '127.0.0.1', port: 9464 });
    expect(c.log).toEqual({ level: 'info', keyUsageIntervalSeconds: 60, rateLimitIntervalSeconds: 10, rateLimitBurst: 10 });
  });

  test('the defaults table is frozen', () => {
    expect(Object.isFrozen(KEYSERVER_DEFAULTS)).toBe(true);
    expect(Object.isFrozen(KEYSERVER_DEFAULTS.limits)).toBe(true);
  });

  test('overrides are merged over the defaults and validated', () => {
    const c = loadKeyserverConfig(undefined, { stateDir: tmp, admin: { port: 0 } });
    expect(c.stateDir).toBe(tmp);
    expect(c.admin).toEqual({ host: '127.0.0.1', port: 0 });
    const err = configErrorOf(() => loadKeyserverConfig(undefined, { admin: { prot: 0 } }));
    expect(err.path).toBe('admin.prot');
  });
});

describe('examples', () => {
  test('config/keyserver.json: the embedded default', () => {
    const file = path.join(repo, 'config', 'keyserver.json');
    const c = loadKeyserverConfig(file);
    const stateDir = path.join(repo, 'var');
    expect(c.source).toBe(file);
    expect(c.stateDir).toBe(stateDir);
    expect(c.pkcs11.module).toBe('embedded');
    expect(c.pkcs11.pin).toEqual({ file: path.join(stateDir, 'token', 'user.pin') });
    expect(c.listen.unix?.path).toBe(path.join(stateDir, 'keyserver.sock'));
    expect(c.listen.tcp).toBeNull();
    expect(c.admin).toEqual({ host: '127.0.0.1', port: 9464 });
  });

  test('config/keyserver-production.json: HSM, PIN from env, unix + mTLS', () => {
    const file = path.join(repo, 'config', 'keyserver-production.json');
    // A throwaway stateDir: loading must not create or open anything there.
    const stateDir = path.join(tmp, 'production-state');
    const c = loadKeyserverConfig(file, { stateDir });
    expect(existsSync(stateDir)).toBe(false);
    expect(c.stateDir).toBe(stateDir);
    expect(c.pkcs11.module).toMatch(/^\/.*\.so$/);
    expect(c.pkcs11.token).toHaveProperty('serial');
    expect(c.pkcs11.pin).toEqual({ env: 'KEYEDGE_TOKEN_PIN' });
    expect(c.listen.unix?.path).toBe(path.join(stateDir, 'keyserver.sock'));
    expect(c.listen.tcp?.cert).toBe(path.join(repo, 'config', 'tls', 'server.pem'));
    expect(c.clients).toHaveLength(2);
    expect(c.clients[0]?.match).toEqual({ commonName: 'edge-1' });
    expect(Array.isArray(c.clients[0]?.keys)).toBe(true);
    expect(c.clients[1]?.match.spkiSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(c.clients[1]?.keys).toBe('*');
  });
});

describe('invalid configs', () => {
  // [what, config, key path the error must name, text saying what was expected]
  const cases: [string, unknown, string, RegExp][] = [
    ['unknown top-level key', { stateDr: './var' }, 'stateDr', /unknown key; expected one of: stateDir, /],
    ['unknown nested key', { limits: { maxInflight: 8 } }, 'limits.maxInflight', /expected one of: .*maxInFlightPerConnection/],
    ['wrong type', { limits: { maxBodyBytes: '16k' } }, 'limits.maxBodyBytes', /expected an integer from 64 to 1048576, got a string/],
    ['out-of-range number', { pkcs11: { sessions: 0 } }, 'pkcs11.sessions', /expected an integer from 1 to 256, got 0/],
    ['out-of-range port', { admin: { port: 70000 } }, 'admin.port', /expected an integer from 0 to 65535, got 70000/],
    ['bad mode string', { listen: { unix: { mode: '600' } } }, 'listen.unix.mode', /expected an octal mode string like "0600"/],
    ['bad key id', { listen: { unix: { keys: [KEY_A, 'ABC'] } } }, 'listen.unix.keys[1]', /expected a key id: 64 lowercase hex/],
    ['key id not a string', { listen: { unix: { keys: [7] } } }, 'listen.unix.keys[0]', /expected a key id/],
    ['keys neither "*" nor a list', { listen: { unix: { keys: 'all' } } }, 'listen.unix.keys', /expected "\*" or a non-empty array of key ids/],
    ['empty key list', { listen: { unix: { keys: [] } } }, 'listen.unix.keys', /non-empty array/],
    ['duplicate key id', { listen: { unix: { keys: [KEY_A, KEY_B, KEY_A] } } }, 'listen.unix.keys[2]', /duplicate key id .*expected each key once/],
    ['literal PIN string', { pkcs11: { pin: '123456' } }, 'pkcs11.pin', /PINs come from an environment variable .* or a file/],
    ['literal PIN value', { pkcs11: { pin: { value: '123456' } } }, 'pkcs11.pin.value', /PINs come from an environment variable .* or a file/],
    ['both env and file', { pkcs11: { pin: { env: 'PIN', file: 'pin' } } }, 'pkcs11.pin', /exactly one of "env" or "file"/],
    ['both label and serial', { pkcs11: { token: { label: 'a', serial: 'b' } } }, 'pkcs11.token', /exactly one of "label" or "serial", not both/],
    ['relative module path', { pkcs11: { module: 'lib.so', pin: { env: 'PIN' } } }, 'pkcs11.module', /expected "embedded" or an absolute path/],
    [
      'non-embedded module without pin',
      { pkcs11: { module: '/usr/lib/hsm.so' } },
      'pkcs11.pin',
      /required when pkcs11.module is not "embedded": expected \{ "env"/,
    ],
    ['clients without tcp', { clients: [CLIENT] }, 'clients', /mutual-TLS listener, which is not configured: expected listen.tcp/],
    ['tcp without clients', { listen: { tcp: TCP } }, 'listen.tcp', /no client may use this listener/],
    ['tcp missing a path', { listen: { tcp: { cert: 'a', key: 'b' } }, clients: [CLIENT] }, 'listen.tcp.clientCa', /missing; expected a PEM CA bundle path/],
    ['no listener', { listen: { unix: null } }, 'listen', /expected at least one listener/],
    [
      'empty client match',
      { listen: { tcp: TCP }, clients: [{ ...CLIENT, match: {} }] },
      'clients[0].match',
      /at least one of commonName, dnsName, uri, spkiSha256/,
    ],
    ['bad spkiSha256', { listen: { tcp: TCP }, clients: [{ ...CLIENT, match: { spkiSha256: 'AB' } }] }, 'clients[0].match.spkiSha256', /64 lowercase hex/],
    ['duplicate client name', { listen: { tcp: TCP }, clients: [CLIENT, CLIENT] }, 'clients[1].name', /duplicate client name/],
    ['bad log level', { log: { level: 'verbose' } }, 'log.level', /expected one of: fatal, error, warn, info/],
    ['not an object', [], '', /expected a JSON object, got an array/],
  ];

  test.each(cases)('%s', (_what, raw, keyPath, expected) => {
    const err = configErrorOf(() => parseKeyserverConfig(raw, SOURCE, '/etc/keyedge'));
    expect(err.code).toBe('KEYEDGE_ERR_CONFIG');
    expect(err.file).toBe(SOURCE);
    expect(err.path).toBe(keyPath);
    expect(err.message.startsWith(`${SOURCE}: ${keyPath ? `${keyPath}: ` : ''}`)).toBe(true);
    expect(err.message).toMatch(expected);
  });

  test('a literal PIN never appears in the error', () => {
    for (const pin of ['s3cr3t-PIN', { value: 's3cr3t-PIN' }]) {
      const err = configErrorOf(() => parseKeyserverConfig({ pkcs11: { pin } }, SOURCE, '/'));
      expect(err.message).not.toContain('s3cr3t');
    }
  });

  test("a numeric PIN where a path or a name goes never appears in the error, nor on the key server's stderr", async () => {
    // "expected a file path (a non-empty string), got 86427531": a number was quoted wherever it was found.
    for (const pin of [86427531, { value: 86427531 }, { file: 86427531 }, { env: 86427531 }]) {
      const err = configErrorOf(() => parseKeyserverConfig({ pkcs11: { pin } }, SOURCE, '/'));
      expect(err.message).not.toContain('86427531');
    }
    expect(configErrorOf(() => parseKeyserverConfig({ pkcs11: { pin: { file: 86427531 } } }, SOURCE, '/')).message).toMatch(
      /pkcs11\.pin\.file: expected a file path \(a non-empty string\), got a number/,
    );
    const file = path.join(tmp, 'numeric-pin.json');
    writeFileSync(file, JSON.stringify({ stateDir: tmp, pkcs11: { module: '/usr/lib/hsm.so', pin: { file: 86427531 } } }));
    const started = await runCli(['keyserver', '--config', file]);
    expect(started.code).toBe(1);
    expect(started.stderr).toContain('KEYEDGE_ERR_CONFIG');
    expect(`${started.stdout}${started.stderr}`).not.toContain('86427531');
  });

  test("a PIN typed as a key's name is not quoted, nor on the key server's stderr; a misspelt setting still is", async () => {
    // 'pkcs11.pin["8642s7531"]: unknown key': the path quoted every unknown key's name.
    for (const raw of [{ pkcs11: { pin: { '8642s7531': true } } }, { '8642s7531': 1 }, { pkcs11: { pin: { file: 'p', 'pin=8642s7531': null } } }]) {
      const err = configErrorOf(() => parseKeyserverConfig(raw, SOURCE, '/'));
      expect(err.message).not.toContain('8642s7531');
      expect(err.message).toMatch(/unknown key; expected one of: .*\(a key of \d+ characters, not quoted: it could be a secret\)/);
    }
    expect(configErrorOf(() => parseKeyserverConfig({ pkcs11: { pin: { fiel: 'p' } } }, SOURCE, '/')).message).toMatch(/pkcs11\.pin\.fiel: unknown key/);
    const file = path.join(tmp, 'pin-as-key.json');
    writeFileSync(file, JSON.stringify({ stateDir: tmp, pkcs11: { module: '/usr/lib/hsm.so', pin: { '8642s7531': '' } } }));
    const started = await runCli(['keyserver', '--config', file]);
    expect(started.code).toBe(1);
    expect(started.stderr).toMatch(/KEYEDGE_ERR_CONFIG.*pkcs11\.pin/);
    expect(`${started.stdout}${started.stderr}`).not.toContain('8642s7531');
  });

  test('every problem is reported, one per line, the first one as path', () => {
    const raw = { stateDr: 'x', limits: { maxInflight: 1, maxBodyBytes: 1 }, listen: { unix: null } };
    const err = configErrorOf(() => parseKeyserverConfig(raw, SOURCE, '/'));
    const lines = err.message.split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]?.startsWith(`${SOURCE}: ${err.path}: `)).toBe(true);
    expect(lines.slice(1).every((l) => l.startsWith('  '))).toBe(true);
    const named = [err.path, ...lines.slice(1).map((l) => l.trim().split(': ')[0])].sort();
    expect(named).toEqual(['limits.maxBodyBytes', 'limits.maxInflight', 'listen', 'stateDr'].sort());
    expect(err.message).toMatch(/limits\.maxBodyBytes: expected an integer from 64/);
    expect(err.message).toMatch(/limits\.maxInflight: unknown key/);
    expect(err.message).toMatch(/stateDr: unknown key/);
    expect(err.message).toMatch(/listen: expected at least one listener/);
  });

  test('invalid JSON names the file, line and column', () => {
    const file = path.join(tmp, 'broken.json');
    writeFileSync(file, '{\n  "stateDir": "x",\n}\n');
    const err = configErrorOf(() => loadKeyserverConfig(file));
    expect(err.code).toBe('KEYEDGE_ERR_CONFIG');
    expect(err.file).toBe(file);
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/invalid JSON at line 3, column 1/);
  });

  test('invalid JSON never quotes the file content', () => {
    const file = path.join(tmp, 'quoted.json');
    writeFileSync(file, '{"pkcs11": {"pin": "s3cr3t"}}}');
    const err = configErrorOf(() => loadKeyserverConfig(file));
    expect(err.message).toMatch(/invalid JSON/);
    expect(err.message).not.toContain('s3cr3t');
  });

  test('invalid JSON shows its line around the column, values masked, at most about 60 characters', () => {
    // V8's own message quotes one character ('unexpected token'): the line, with where in it, is what finds the fault.
    const file = path.join(tmp, 'excerpt.json');
    writeFileSync(file, '{\n  "stateDir": "x" "workers": 2\n}\n');
    const err = configErrorOf(() => loadKeyserverConfig(file));
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/invalid JSON at line 2, column 19 near/);
    expect(err.message).toContain('near \'  "…": "…" >>>"…": …\'');
    const long = path.join(tmp, 'long.json');
    writeFileSync(long, `{"stateDir": "${'x'.repeat(5_000)}", "a": 1,, "b": "${'y'.repeat(5_000)}"}`);
    const excerpt = /near '(.*)'/.exec(configErrorOf(() => loadKeyserverConfig(long)).message)?.[1] ?? '';
    expect(excerpt).toContain('>>>,');
    expect(excerpt.length).toBeLessThanOrEqual(64);
  });

  test.each([
    ['a string', '{"pkcs11": {"pin": "s3cr3t"}}}', 's3cr3t'],
    ['a number', '{"pkcs11": {"pin": 246813579}},', '246813579'],
    ['a bare word', '{"pkcs11": {"pin": s3cr3t}}', "'s'"],
    ['a bare word in a short file', '{"pin": s3cr3t}', 's3cr3t'],
    ['a bare word at its start', '{"pin": s3cr3t, "workers": 2, "stateDir": "x"}', 's3cr3t'],
    ['a bare word mid-file', '{"stateDir": "x", "pin": s3cr3t, "workers": 2, "stateDir": "x"}', 's3cr3t'],
    ['a key', '{"pkcs11": {"s3cr3t": 1,}}', 's3cr3t'],
    ['a URL with credentials', '{"acme": {"onDemand": {"ask": "http://edge:HUNTER2@ask.example/"}},}', 'HUNTER2'],
    ['a comment', '{"workers": 2 // the PIN is s3cr3t\n}', 's3cr3t'],
  ])('invalid JSON near %s never quotes it', (_name, text, secret) => {
    const file = path.join(tmp, 'masked.json');
    writeFileSync(file, text);
    const err = configErrorOf(() => loadKeyserverConfig(file));
    expect(err.message.includes(secret)).toBe(false);
    // A file under 21 characters V8 quotes whole, with no position: it has no line to show.
    expect(err.message).toMatch(text.length < 21 ? /invalid JSON: unexpected word;/ : /invalid JSON at line \d+, column \d+ near '/);
  });

  test('a missing file names the file', () => {
    const file = path.join(tmp, 'absent.json');
    const err = configErrorOf(() => loadKeyserverConfig(file));
    expect(err.message).toContain(file);
    expect(err.message).toMatch(/ENOENT/);
  });
});

describe('result', () => {
  test('is deeply frozen', () => {
    const c = loadKeyserverConfig(path.join(repo, 'config', 'keyserver-production.json'), { stateDir: tmp });
    expect(() => {
      (c as { stateDir: string }).stateDir = '/elsewhere';
    }).toThrow(TypeError);
    expect(() => {
      (c.limits as { maxConnections: number }).maxConnections = 1;
    }).toThrow(TypeError);
    expect(() => {
      (c.clients as unknown[]).push({});
    }).toThrow(TypeError);
    expect(() => {
      (c.clients[0]!.keys as string[]).push(KEY_A);
    }).toThrow(TypeError);
    expect(Object.isFrozen(c.pkcs11.pin)).toBe(true);
  });

  test('relative paths resolve against the config file directory; the socket against stateDir', () => {
    const dir = path.join(tmp, 'etc');
    const file = path.join(dir, 'keyserver.json');
    mkdirSync(dir);
    writeFileSync(
      file,
      JSON.stringify({
        stateDir: '../state',
        pkcs11: { module: '/opt/hsm/lib.so', token: { serial: '42' }, pin: { file: 'secrets/pin' } },
        listen: { unix: { path: 'run/ks.sock', mode: '0660', keys: [KEY_B] }, tcp: { ...TCP, port: 0 } },
        clients: [{ name: 'edge', match: { dnsName: 'edge.example', uri: 'spiffe://edge' }, keys: [KEY_A, KEY_B] }],
      }),
    );
    const c = loadKeyserverConfig(file);
    expect(c.source).toBe(file);
    expect(c.stateDir).toBe(path.join(tmp, 'state'));
    expect(c.pkcs11.pin).toEqual({ file: path.join(dir, 'secrets', 'pin') });
    expect(c.listen.unix).toEqual({ path: path.join(tmp, 'state', 'run', 'ks.sock'), mode: 0o660, keys: [KEY_B] });
    expect(c.listen.tcp).toEqual({
      host: '127.0.0.1',
      port: 0,
      cert: path.join(dir, 'tls', 'server.pem'),
      key: path.join(dir, 'tls', 'server-key.pem'),
      clientCa: path.join(dir, 'tls', 'clients-ca.pem'),
    });
    expect(c.clients[0]?.match).toEqual({ dnsName: 'edge.example', uri: 'spiffe://edge' });

    const abs = parseKeyserverConfig({ stateDir: '/srv/ks', listen: { unix: { path: '/run/ks.sock' } } }, SOURCE, dir);
    expect(abs.stateDir).toBe('/srv/ks');
    expect(abs.listen.unix?.path).toBe('/run/ks.sock');
  });
});
