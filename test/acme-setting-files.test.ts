import { execFileSync } from 'node:child_process';
import { closeSync, constants, copyFileSync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { type KeylessLab, startKeylessLab } from './helpers/proxy-lab.js';

// acme.caBundle and acme.eab.hmacKeyFile are read in the cluster primary for every ACME order: either replaced by a
// FIFO held open(2) until a writer came, with the primary's event loop (the admin port, reloads, worker
// replacements). Each is refused unread now, failing that order with the file and the setting named (never the
// EAB key), and the primary answers meanwhile. The directory is a real HTTP server answering 503: no order gets past it.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: http.Server;
let caBundle: string;
let eabFile: string;
const EAB_KEY = 'eab-key-Zq81xWv0';

beforeAll(async () => {
  ca = http.createServer((_req, res) => {
    res
      .writeHead(503, { 'content-type': 'application/problem+json' })
      .end(JSON.stringify({ type: 'urn:ietf:params:acme:error:serverInternal', detail: 'down' }));
  });
  await new Promise<void>((resolve) => ca.listen(0, '127.0.0.1', resolve));
  lab = await startKeylessLab();
  caBundle = join(lab.dir, 'acme-ca.pem');
  copyFileSync(lab.caFile, caBundle);
  eabFile = join(lab.dir, 'acme-eab.key');
  writeFileSync(eabFile, `${EAB_KEY}\n`, { mode: 0o600 });
  const directory = `http://127.0.0.1:${(ca.address() as AddressInfo).port}/directory`;
  proxy = await startClusterProxy(lab, 'acme-files', (p) =>
    storeProxyConfig(lab, p, {
      workers: 1,
      acme: { directory, caBundle, eab: { kid: 'kid-1', hmacKeyFile: eabFile }, keyserverConfig: join(lab.dir, 'keyserver.json') },
    }),
  );
}, 60_000);

afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
  await new Promise((resolve) => (ca ? ca.close(resolve) : resolve(undefined)));
});

/** An admin request's answer, or the error's name when none came within 20 s (a primary held by a FIFO). */
async function admin(method: string, path: string, body?: string): Promise<{ status: number; text: string }> {
  try {
    const response = await fetch(`http://127.0.0.1:${proxy.adminPort}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body }),
      signal: AbortSignal.timeout(20_000),
    });
    return { status: response.status, text: await response.text() };
  } catch (err) {
    return { status: 0, text: (err as Error).name };
  }
}

/** Runs `during` with `file` replaced by a FIFO; the file is put back, and a primary blocked on it let go, after. */
async function withFifo(file: string, during: () => Promise<void>): Promise<void> {
  renameSync(file, `${file}.kept`);
  try {
    execFileSync('mkfifo', ['-m', '600', file]);
    await during();
  } finally {
    try {
      closeSync(openSync(file, constants.O_WRONLY | constants.O_NONBLOCK));
    } catch {
      // No reader: nothing is blocked on it.
    }
    rmSync(file, { force: true });
    renameSync(`${file}.kept`, file);
  }
}

describe('the files an ACME order reads', () => {
  for (const [setting, file] of [
    ['acme.caBundle', () => caBundle],
    ['acme.eab.hmacKeyFile', () => eabFile],
  ] as const) {
    it(`${setting} replaced by a FIFO fails the order naming it, unread, and the primary still answers`, async () => {
      await withFifo(file(), async () => {
        const order = await admin('POST', '/acme/issue', JSON.stringify({ domains: ['www.lab.test'] }));
        expect(await admin('GET', '/healthz')).toEqual({ status: 200, text: 'ok\n' });
        expect(order.status, order.text).toBe(502);
        const message = (JSON.parse(order.text) as { error: { message: string } }).error.message;
        expect(message).toBe(`cannot read ${file()} (${setting}): not a regular file`);
      });
      // The file back: the next order gets as far as the CA's directory (503 here).
      const again = await admin('POST', '/acme/issue', JSON.stringify({ domains: ['www.lab.test'] }));
      expect(again.status).toBe(502);
      expect(again.text).toContain('503 serverInternal down');
      expect(JSON.stringify(proxy.lines).includes(EAB_KEY), 'the EAB key in a log line').toBe(false);
    }, 90_000);
  }
});
