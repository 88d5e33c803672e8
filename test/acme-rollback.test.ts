/**
 * End to end against pebble: an operator's rollback of a managed store entry
 * (PUT /certs/NAME with the chain before, on the same key: `renewal.newKey:
 * false`; the use keyGraceSeconds is sized for) while an expansion of that
 * entry is failing. The serving certificate changes during the order, but not
 * for the order: the entry keeps the names of the certificate the store holds
 * (orders.ts records a new list only when the store step says it wrote it),
 * and its renewals keep working.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FaultFront, startFaultFront } from './helpers/acme-fault-front.js';
import { sleep } from './helpers/basics.js';
import { type AcmeLab, startAcmeLab } from './helpers/pebble.js';
import type { ClusterProxy } from './helpers/proxy-cluster.js';

const NAME = 'www.roll.test';
const EXTRA = 'extra.roll.test';
let lab: AcmeLab;
let front: FaultFront;
let proxy: ClusterProxy;

interface Row {
  name: string;
  serial: string;
  names: string[];
  acme: { domains: string[] } | null;
}

async function row(): Promise<Row> {
  const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: Row[] };
  return certs.certificates.find((c) => c.name === NAME)!;
}

beforeAll(async () => {
  lab = await startAcmeLab();
  front = await startFaultFront(lab.pebble.directory, lab.pebble.tlsCaFile, lab.pebble.tlsKeyFile);
  proxy = await lab.startProxy(['*.roll.test'], { directory: front.directory, timeoutMs: 2_000, orderTimeoutSeconds: 8, renewal: { newKey: false } });
}, 180_000);

afterAll(async () => {
  await proxy?.stop();
  await front?.close();
  await lab?.close();
});

describe('a rollback of the store entry while an expansion fails', () => {
  it("the entry's names stay those of the certificate the store holds", async () => {
    const issued = await proxy.admin('POST', '/acme/issue', JSON.stringify({ domains: [NAME] }));
    expect(issued.status, issued.text).toBe(200);
    const before = readFileSync(join(proxy.storeDir, `${NAME}.pem`), 'utf8');
    const renewed = await proxy.admin('POST', `/acme/renew/${NAME}`, '');
    expect(renewed.status, renewed.text).toBe(200);
    const current = await row();

    // The CA slow: the expansion fails on its timeouts, some seconds from now.
    front.mode = 'slow';
    front.slowMs = 4_000;
    const expansion = proxy.admin('POST', '/acme/issue', JSON.stringify({ domains: [NAME, EXTRA] }));
    await sleep(500);
    // Meanwhile the operator rolls the entry back to the chain before (same key, names [NAME]).
    const rollback = await proxy.admin('PUT', `/certs/${NAME}`, before);
    expect(rollback.status, rollback.text).toBe(200);
    const answer = await expansion;
    front.mode = 'pass';
    expect(answer.status, answer.text).toBe(502);

    const after = await row();
    expect(after.serial).not.toBe(current.serial);
    expect(after.names).toEqual([NAME]);
    // Not the failed expansion's list, as if its certificate were the one stored.
    expect(after.acme?.domains).toEqual([NAME]);
    // So the renewal of the certificate that serves orders NAME alone: had it ordered EXTRA (not pointed here) it failed,
    // every time, until NAME's certificate expired.
    await lab.pebble.addA(EXTRA, '127.0.0.2');
    const renewal = await proxy.admin('POST', `/acme/renew/${NAME}`, '');
    expect(renewal.status, renewal.text).toBe(200);
  }, 120_000);
});
