import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KeyedgeError } from '../keyserver/shared/errors.js';
import { unverifiedStartWarning } from '../proxy/serving/keyserver-check.js';
import { CLI } from './helpers/basics.js';
import { createCa, issue } from './helpers/pki.js';
import { freePort } from './helpers/proxy-lab.js';

// The proxy's mutual-TLS identity toward a key server (keyserver.tcp, or a pool's servers[].tcp): a key file that is
// no key, or the key of another certificate, stopped the start with the native bridge's "tls.keyPem is not an
// unencrypted PEM private key matching tls.certPem", which names neither the setting nor a file (nor, in a pool, the
// key server). The content of the file is never quoted.
const dir = mkdtempSync(join(tmpdir(), 'keyedge-ks-client-key-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const MARKER = 'not-a-key-Zq7Wm2';

/** Starts `keyedge proxy` on `keyserver`; resolves with its exit code and everything it wrote. */
async function start(name: string, keyserver: Record<string, unknown>): Promise<{ code: number | null; output: string }> {
  const file = join(dir, `${name}.json`);
  const listen = [{ host: '127.0.0.1', port: await freePort() }];
  writeFileSync(file, JSON.stringify({ stateDir: join(dir, name), workers: 1, admin: null, listen, keyserver }));
  const child = spawn(process.execPath, [CLI, 'proxy', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  return { code, output };
}

/** The primary's warnings that the key server could not be used at start, with their reasons. */
const startWarnings = (output: string): { msg?: unknown; reason?: unknown }[] =>
  output
    .split('\n')
    .filter((line) => line.startsWith('{') && /"msg":"key server [^"]* at start/.test(line))
    .map((line) => {
      const { msg, reason } = JSON.parse(line) as { msg?: unknown; reason?: unknown };
      return { msg, reason };
    });
/** That warning when the key server was not contacted because its settings were refused: a config error, not an outage. */
const REFUSED = 'key server not contacted at start, its connection settings refused (a config error, not an outage): certificates load unverified';

describe("the proxy's client key toward a key server", () => {
  it('that is no key, or does not match its certificate, stops the start naming the key server, the setting and both files', async () => {
    const ca = await createCa('Client Key CA');
    const mine = await issue(ca, { commonName: 'edge', dnsNames: ['edge'], keyAlgorithm: 'ec-p256' });
    const other = await issue(ca, { commonName: 'other', dnsNames: ['other'], keyAlgorithm: 'ec-p256' });
    const write = (file: string, text: string): string => {
      writeFileSync(join(dir, file), text, { mode: 0o600 });
      return join(dir, file);
    };
    const caFile = write('ca.pem', ca.certPem);
    const cert = write('edge.pem', mine.certPem);
    const garbage = write('garbage.key', `-----BEGIN PRIVATE KEY-----\n${MARKER}\n-----END PRIVATE KEY-----\n`);
    const mismatched = write('other.key', other.keyPem);
    const tcp = (key: string) => ({ host: '127.0.0.1', port: 1, ca: caFile, cert, key });
    const [single, pool] = await Promise.all([
      start('single', { tcp: tcp(garbage) }),
      start('pool', {
        servers: [
          { name: 'ks-a', socket: join(dir, 'ks.sock') },
          { name: 'ks-b', tcp: tcp(mismatched) },
        ],
      }),
    ]);
    expect(single.code).toBe(1);
    expect(single.output.includes(MARKER), 'the key file quoted').toBe(false);
    expect(single.output).toContain(
      `KEYEDGE_ERR_CONFIG: proxy worker could not start: key server 0: its client key ${garbage} (tcp.key) is not an unencrypted PEM private key matching its certificate ${cert} (tcp.cert)`,
    );
    expect(pool.code).toBe(1);
    expect(pool.output).toContain(
      `key server ks-b: its client key ${mismatched} (tcp.key) is not an unencrypted PEM private key matching its certificate ${cert} (tcp.cert)`,
    );
    // The primary's warning as it goes ahead unverified said OpenSSL's words ("DECODER routines::unsupported", "x509
    // certificate routines::key values mismatch"), naming neither the setting nor a file; and it called the key server
    // unreachable, an outage to wait out, where the config was at fault.
    expect({ single: startWarnings(single.output), pool: startWarnings(pool.output) }).toEqual({
      single: [
        {
          msg: REFUSED,
          reason: `key server 0: its client key ${garbage} (tcp.key) is not an unencrypted PEM private key matching its certificate ${cert} (tcp.cert)`,
        },
      ],
      pool: [
        {
          msg: REFUSED,
          reason: `key server ks-b: its client key ${mismatched} (tcp.key) is not an unencrypted PEM private key matching its certificate ${cert} (tcp.cert)`,
        },
      ],
    });
    expect(/routines::/.test(single.output + pool.output)).toBe(false);
  }, 40_000);

  it('the warning still says unreachable when the key server was not reached', () => {
    const down = new KeyedgeError('KEYEDGE_ERR_CLOSED', 'cannot connect to the key server at 127.0.0.1:1: connect ECONNREFUSED');
    expect([unverifiedStartWarning(down), unverifiedStartWarning(new Error('hung'))]).toEqual([
      'key server unreachable at start: certificates load unverified, handshakes wait for it',
      'key server unreachable at start: certificates load unverified, handshakes wait for it',
    ]);
  });
});
