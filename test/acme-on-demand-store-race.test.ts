import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FaultFront, startFaultFront } from './helpers/acme-fault-front.js';
import { type AcmeLab, startAcmeLab } from './helpers/pebble.js';
import { issueForPublicKey } from './helpers/pki.js';
import { type ClusterProxy, waitFor } from './helpers/proxy-cluster.js';

// An on-demand order checks that no store entry has the name's entry name
// (the gate, then issue()), but the order runs for seconds at the CA: an
// entry the operator (or a renewal tool) writes meanwhile was replaced by the
// order's chain, the store step taking it as a renewal. The first certificate
// of an on-demand entry is stored only as a new entry. The CA here is pebble
// behind a front that holds the finalize request, so the operator's write
// lands while the order is at the CA, every run.
let acmeLab: AcmeLab;
let front: FaultFront;
let proxy: ClusterProxy;

beforeAll(async () => {
  acmeLab = await startAcmeLab();
  front = await startFaultFront(acmeLab.pebble.directory, acmeLab.pebble.tlsCaFile, acmeLab.pebble.tlsKeyFile);
  proxy = await acmeLab.startProxy(['*.test'], {
    directory: front.directory,
    // The lab's names are under .test, a special-use TLD: a private CA's gate (pebble is one) lets them through.
    onDemand: { publicNamesOnly: false },
  });
}, 150_000);

afterAll(async () => {
  await proxy?.stop();
  await front?.close();
  await acmeLab?.close();
});

function handshake(name: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: proxy.port, servername: name, rejectUnauthorized: false });
    socket.setTimeout(15_000, () => socket.destroy(new Error('timeout')));
    socket.once('secureConnect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

describe('an on-demand order while the operator writes a store entry of that name', () => {
  it("fails at the store step: the operator's entry stays as written", async () => {
    const { lab, pebble } = acmeLab;
    await pebble.addA('race.test', '127.0.0.1');
    front.mode = 'slowFinalize';
    front.slowMs = 4_000;
    expect(await handshake('race.test')).toBe(false);
    // The order passed every check, its validation done: its finalize is held at the front.
    await waitFor('the order to reach its finalize', () => ((front.faults.slowFinalize ?? 0) >= 1 ? true : undefined), 30_000);
    // The operator's certificate for the name, written as a renewal tool does (a temp file, then a rename).
    const leaf = await issueForPublicKey(lab.ca, lab.keys.ec.spki, { commonName: 'race.test', dnsNames: ['race.test'] });
    const pem = `${leaf.certPem}\n${lab.ca.certPem}`;
    const file = join(proxy.storeDir, 'race.test.pem');
    writeFileSync(`${file}.tmp`, pem);
    renameSync(`${file}.tmp`, file);
    const outcome = await waitFor(
      "the order's outcome",
      () =>
        proxy.lines.find(
          (l) =>
            l.certificate === 'race.test' &&
            typeof l.msg === 'string' &&
            (l.msg === 'ACME certificate issued and serving' || l.msg.startsWith('ACME on-demand certificate not stored')),
        ),
      30_000,
    );
    // Before: 'ACME certificate issued and serving', the operator's entry replaced by the order's chain.
    expect(outcome).toMatchObject({
      msg: expect.stringMatching(/an entry of that name was written to the store/),
      reason: expect.stringMatching(/already in the store/),
    });
    expect(readFileSync(file, 'utf8')).toBe(pem);
    // The name is the operator's: no ACME entry is left to renew it (over it) later.
    await waitFor('the on-demand entry to be forgotten', async () => {
      const listed = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string; acme: unknown }[] };
      const entry = listed.certificates.find((c) => c.name === 'race.test');
      return entry !== undefined && (entry.acme ?? null) === null ? true : undefined;
    });
    front.mode = 'pass';
  }, 90_000);
});
