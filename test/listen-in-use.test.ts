import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI } from './helpers/basics.js';
import { storeProxyConfig } from './helpers/proxy-cluster.js';
import { freePort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// Every listener of both daemons meets a port already taken the same way: the
// command says KEYEDGE_ERR_SETUP naming the address and exits non-zero at once,
// never runs half-started (the proxy's primary once waited forever on workers
// that could not listen, or respawned them).
let lab: KeylessLab;

beforeAll(async () => {
  lab = await startKeylessLab();
});
afterAll(async () => {
  await lab?.close();
});

/** A plain TCP server holding a loopback port, as another program would. */
async function occupy(): Promise<{ port: number; close: () => void }> {
  const server = net.createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, close: () => void server.close() };
}

/**
 * Runs `keyedge ARGS`, resolving when it exits or after `limitMs` (then it is
 * killed and `code` is null); `afterFailureMs` is how long it lived after it
 * first printed EADDRINUSE.
 */
function runUntilExit(args: readonly string[], limitMs: number): Promise<{ code: number | null; output: string; afterFailureMs: number }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let failedAt = Number.NaN;
    const collect = (d: Buffer): void => {
      output += d.toString();
      if (Number.isNaN(failedAt) && output.includes('EADDRINUSE')) failedAt = Date.now();
    };
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    const timer = setTimeout(() => child.kill('SIGKILL'), limitMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output, afterFailureMs: Date.now() - failedAt });
    });
  });
}

/** The product exits within a second of the failure; a loaded 2-core CI machine gets a few more. */
const AFTER_FAILURE_MS = 5_000;

/**
 * The product's bound is a second after the failure; the limit here is the
 * process's whole start (config, key server ping, certificate validation,
 * forking workers) on a loaded 2-core machine, plus that second: 15 s was
 * met at a load average of 12, a redirect listener's worker not yet loaded
 * when it ran out. A start that fails in time ends the wait at once.
 */
const LIMIT_MS = 40_000;

async function expectSetupFailure(args: readonly string[], port: number): Promise<void> {
  const result = await runUntilExit(args, LIMIT_MS);
  expect(result.code, `still running after ${LIMIT_MS} ms:\n${result.output}`).not.toBeNull();
  expect(result.code).not.toBe(0);
  expect(result.output).toContain(`keyedge: KEYEDGE_ERR_SETUP: `);
  expect(result.output).toContain(`cannot listen on tcp 127.0.0.1:${port}: EADDRINUSE`);
  expect(result.afterFailureMs).toBeLessThan(AFTER_FAILURE_MS);
}

function proxyConfigFile(name: string, ports: { port: number; adminPort: number; redirect?: number }): string {
  const dir = join(lab.dir, name);
  const config = storeProxyConfig(
    lab,
    { port: ports.port, adminPort: ports.adminPort, storeDir: join(dir, 'certs'), tokenFile: join(dir, 'token') },
    {
      ...(ports.redirect === undefined ? {} : { httpRedirect: { host: '127.0.0.1', port: ports.redirect } }),
    },
  );
  mkdirSync(join(dir, 'certs'), { recursive: true });
  const file = join(lab.dir, `${name}.json`);
  writeFileSync(file, JSON.stringify(config));
  return file;
}

describe('a port already in use: KEYEDGE_ERR_SETUP naming the address, and a non-zero exit', { timeout: LIMIT_MS + 20_000 }, () => {
  it("the proxy's TLS front (2 workers: the primary exits with the workers' failure, no respawning)", async () => {
    const taken = await occupy();
    try {
      const file = proxyConfigFile('front', { port: taken.port, adminPort: await freePort() });
      const result = await runUntilExit(['proxy', '--config', file], LIMIT_MS);
      expect(result.code, `still running after ${LIMIT_MS} ms:\n${result.output}`).not.toBeNull();
      expect(result.code).not.toBe(0);
      expect(result.output).toContain(`KEYEDGE_ERR_SETUP: proxy worker could not start: cannot listen on tcp 127.0.0.1:${taken.port}: EADDRINUSE`);
      expect(result.output).not.toContain('starting a replacement');
      expect(result.afterFailureMs).toBeLessThan(AFTER_FAILURE_MS);
    } finally {
      taken.close();
    }
  });

  it("the proxy's admin port", async () => {
    const taken = await occupy();
    try {
      await expectSetupFailure(['proxy', '--config', proxyConfigFile('admin', { port: await freePort(), adminPort: taken.port })], taken.port);
    } finally {
      taken.close();
    }
  });

  it("the proxy's plain-HTTP redirect listener", async () => {
    const taken = await occupy();
    try {
      const file = proxyConfigFile('redirect', { port: await freePort(), adminPort: await freePort(), redirect: taken.port });
      await expectSetupFailure(['proxy', '--config', file], taken.port);
    } finally {
      taken.close();
    }
  });

  it("the key server's admin port", async () => {
    const taken = await occupy();
    try {
      // The lab's token, a socket of its own: only the admin port collides.
      const file = join(lab.dir, 'keyserver-admin.json');
      writeFileSync(
        file,
        JSON.stringify({
          stateDir: join(lab.dir, 'state'),
          listen: { unix: { path: join(lab.dir, 'ks2.sock') } },
          admin: { host: '127.0.0.1', port: taken.port },
          log: { level: 'warn' },
        }),
      );
      await expectSetupFailure(['keyserver', '--config', file], taken.port);
    } finally {
      taken.close();
    }
  });

  it('the demo origin', async () => {
    const taken = await occupy();
    try {
      await expectSetupFailure(['demo-origin', '--port', String(taken.port)], taken.port);
    } finally {
      taken.close();
    }
  });
});
