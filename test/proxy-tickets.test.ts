import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeGet, sClient } from './helpers/clients.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// Session tickets on a real `keyedge proxy` (primary + 2 workers, keyless):
// every resumed connection gets a fresh ticket, so a client that uses each
// ticket once keeps resuming; the primary's key ring survives rotations.
let lab: KeylessLab;
let proxy: ClusterProxy;
let ca: string;

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['ec.lab.test']);
  proxy = await startClusterProxy(lab, 'tickets', (p) => storeProxyConfig(lab, p, { certificates: [{ name: 'ec', chain: ec.file }], sni: { default: 'ec' } }));
});
afterAll(async () => {
  await proxy?.stop();
  await lab?.close();
});

/** One s_client connection over TLS 1.3 presenting the ticket in `sessIn` (if any), saving what it gets to `sessOut`. */
async function sClientTicket(sessIn: string | undefined, sessOut: string): Promise<{ reused: boolean; gotTicket: boolean; answered: boolean }> {
  rmSync(sessOut, { force: true });
  const result = await sClient(
    proxy.port,
    'ec.lab.test',
    lab.caFile,
    ['-tls1_3', '-sess_out', sessOut, ...(sessIn === undefined ? [] : ['-sess_in', sessIn])],
    'ec.lab.test',
  );
  return { reused: result.stdout.includes('Reused, TLSv1.3'), gotTicket: existsSync(sessOut), answered: result.stdout.includes('HTTP/1.1 200') };
}

/** keyedge_proxy_tls_ticket_lookups_total, summed over the workers by the primary. */
async function lookups(): Promise<{ newest: number; previous: number; unknown: number }> {
  const text = (await proxy.admin('GET', '/metrics')).text;
  const count = (key: string): number => Number(new RegExp(`^keyedge_proxy_tls_ticket_lookups_total\\{key="${key}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
  return { newest: count('newest'), previous: count('previous'), unknown: count('unknown') };
}

describe('session tickets on keyedge proxy', () => {
  it('resumes a chain of 10 connections, each presenting the ticket the one before got, with no key-server sign', async () => {
    const file = (i: number): string => join(lab.dir, `chain-${i}.pem`);
    const first = await sClientTicket(undefined, file(0));
    expect(first).toEqual({ reused: false, gotTicket: true, answered: true });
    const signs = await lab.signCount();
    const outcomes: boolean[] = [];
    for (let i = 1; i <= 10; i++) {
      const next = await sClientTicket(file(i - 1), file(i));
      expect(next.answered).toBe(true);
      outcomes.push(next.reused && next.gotTicket);
    }
    expect(outcomes.filter(Boolean)).toHaveLength(10);
    expect(await lab.signCount()).toBe(signs);
  });

  it('keeps resuming through rotations under load: tickets of the previous keys resume, no full handshake', async () => {
    const old = join(lab.dir, 'before-rotation.pem');
    expect((await sClientTicket(undefined, old)).gotTicket).toBe(true);
    // Four clients in a loop, each keeping only the newest ticket it got (as BoringSSL does).
    let running = true;
    let connections = 0;
    let resumed = 0;
    const loop = async (): Promise<void> => {
      let session = (await nodeGet(proxy.port, 'ec.lab.test', ca, { minVersion: 'TLSv1.3' })).session;
      while (running) {
        const result = await nodeGet(proxy.port, 'ec.lab.test', ca, { minVersion: 'TLSv1.3', ...(session === undefined ? {} : { session }) });
        connections++;
        if (result.resumed === true) resumed++;
        session = result.session ?? session;
      }
    };
    const loops = [loop(), loop(), loop(), loop()];
    // Every loop past its first, full handshake.
    const started = Date.now();
    while (connections < 8 && Date.now() - started < 10_000) await new Promise((resolve) => setTimeout(resolve, 20));
    const signs = await lab.signCount();
    const before = await lookups();
    for (let i = 0; i < 2; i++) {
      const rotation = await proxy.admin('POST', '/tickets/rotate');
      expect(rotation.status).toBe(200);
      expect(JSON.parse(rotation.text)).toEqual({ keys: 2 + i, workers: 2, applied: 2 });
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    running = false;
    await Promise.all(loops);
    expect(connections).toBeGreaterThan(8);
    console.log(`rotation under load: ${resumed} of ${connections} connections resumed`);
    expect(resumed).toBe(connections);
    // A ticket of the key two rotations back still resumes.
    const stale = await sClientTicket(old, join(lab.dir, 'after-rotation.pem'));
    expect(stale).toMatchObject({ reused: true, gotTicket: true });
    expect(await lab.signCount()).toBe(signs);
    const after = await lookups();
    expect(after.unknown).toBe(before.unknown);
    expect(after.previous).toBeGreaterThan(before.previous);
    // Rotations are logged without key material.
    const logged = proxy.lines.filter((l) => l.msg === 'session ticket key rotated');
    expect(logged.length).toBeGreaterThanOrEqual(2);
    for (const line of logged) expect(Object.keys(line).filter((k) => !['level', 'time', 'pid', 'hostname', 'name', 'msg', 'keys'].includes(k))).toEqual([]);
  });

  it('falls back to a full handshake for a ticket whose key left the ring (the third rotation after it)', async () => {
    const old = join(lab.dir, 'oldest.pem');
    expect((await sClientTicket(undefined, old)).gotTicket).toBe(true);
    for (let i = 0; i < 2; i++) expect((await proxy.admin('POST', '/tickets/rotate')).status).toBe(200);
    expect((await sClientTicket(old, join(lab.dir, 'o1.pem'))).reused).toBe(true);
    expect((await proxy.admin('POST', '/tickets/rotate')).status).toBe(200);
    const signs = await lab.signCount();
    const before = await lookups();
    const full = await sClientTicket(old, join(lab.dir, 'o2.pem'));
    expect(full).toEqual({ reused: false, gotTicket: true, answered: true });
    expect(await lab.signCount()).toBe(signs + 1);
    expect((await lookups()).unknown).toBe(before.unknown + 1);
  });

  it('refuses a rotation without the admin token', async () => {
    expect((await proxy.admin('POST', '/tickets/rotate', undefined, null)).status).toBe(401);
  });
});
