/**
 * The in-memory comparison server of the handshake bench
 * (bench/handshake/inmemory.ts) is the real proxy cluster with PEM key
 * files behind its KeySource: it serves a TLS handshake and a request with
 * keys from files, and shows what only the product's worker does (a plain
 * HTTP request on the TLS port answered 400 and counted), so "in memory vs
 * keyless" measures the keyless hop and nothing else.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InMemoryConfig } from '../bench/handshake/inmemory.js';
import { freePort } from '../bench/harness/spawn.js';
import { createCa, issue, writePem } from './helpers/pki.js';
import { waitFor } from './helpers/proxy-cluster.js';
import { REPO } from './helpers/basics.js';

const SCRIPT = join(REPO, 'dist/bench/handshake/inmemory.js');

describe('in-memory bench server', () => {
  const dir = mkdtempSync(join(tmpdir(), 'keyedge-inmemory-'));
  const origin = http.createServer((_req, res) => res.end('from origin'));
  let server: ChildProcess | undefined;
  let output = '';
  let caPem = '';
  let port = 0;
  let admin = 0;

  beforeAll(async () => {
    const ca = await createCa('inmemory-ca');
    caPem = ca.certPem;
    const leaf = await issue(ca, { commonName: 'ec.mem.test', dnsNames: ['ec.mem.test'], keyAlgorithm: 'ec-p256' });
    const chain = writePem(dir, 'ec-chain', `${leaf.certPem.trim()}\n${ca.certPem}`);
    const key = writePem(dir, 'ec-key', leaf.keyPem);
    await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
    [port, admin] = [await freePort(), await freePort()];
    const config: InMemoryConfig = {
      host: '127.0.0.1',
      port,
      workers: 2,
      profile: 'intermediate',
      certificates: [{ name: 'ec', chain, key }],
      domains: [{ name: 'ec.mem.test', origin: `http://127.0.0.1:${(origin.address() as net.AddressInfo).port}` }],
      admin: { host: '127.0.0.1', port: admin },
      logLevel: 'info',
      hstsMaxAgeSeconds: 0,
      ocspStapling: false,
      shutdownGraceMs: 1000,
    };
    writeFileSync(join(dir, 'inmemory.json'), JSON.stringify(config));
    server = spawn(process.execPath, [SCRIPT, '--config', join(dir, 'inmemory.json')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    server.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    server.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await waitFor('in-memory ready', () => (output.includes('"in-memory ready"') ? true : server?.exitCode !== null ? output : undefined), 60_000);
    expect(output).toContain('"in-memory ready"');
  }, 90_000);

  afterAll(async () => {
    if (server !== undefined && server.exitCode === null) {
      const exited = new Promise((resolve) => server?.once('exit', resolve));
      server.kill('SIGTERM');
      await exited;
    }
    origin.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers a TLS handshake and a request with the key from its PEM file, through the real worker', async () => {
    const answer = await new Promise<{ status: number; body: string; protocol: string | null }>((resolve, reject) => {
      const req = https.get({ host: '127.0.0.1', port, servername: 'ec.mem.test', headers: { host: 'ec.mem.test' }, ca: caPem, agent: false }, (res) => {
        const protocol = (res.socket as import('node:tls').TLSSocket).getProtocol();
        let body = '';
        res.on('data', (chunk: Buffer) => (body += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, protocol }));
      });
      req.on('error', reject);
    });
    expect(answer).toEqual({ status: 200, body: 'from origin', protocol: 'TLSv1.3' });
  });

  it("answers plain HTTP on the TLS port with the product's 400 and counts it, as keyedge proxy does", async () => {
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => socket.write('GET / HTTP/1.1\r\nhost: ec.mem.test\r\n\r\n'));
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    const metrics = await waitFor(
      'plain_http counted',
      async () => {
        const text = await fetch(`http://127.0.0.1:${admin}/metrics`).then((r) => r.text());
        return /keyedge_proxy_tls_handshakes_total\{[^}]*result="plain_http"[^}]*\} [1-9]/.test(text) ? text : undefined;
      },
      15_000,
    );
    expect(metrics).toMatch(/keyedge_proxy_keyless_signs_total\S* 0/);
  });
});
