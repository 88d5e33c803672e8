import { mkdtempSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { AsnConvert } from '@peculiar/asn1-schema';
import { BasicOCSPResponse, OCSPResponse, OCSPResponseStatus } from '@peculiar/asn1-ocsp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProxyConfig } from '../config/proxy-schema.js';
import { createLogger } from '../keyserver/shared/log.js';
import { readPack, writePack } from '../proxy/serving/pack.js';
import { buildOcspRequest, checkOcspResponse, ocspResponderUrl } from '../proxy/tls/ocsp.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { run, sClient } from './helpers/clients.js';
import { sleep } from './helpers/basics.js';
import { openAfterGc, openFiles } from './helpers/open-files.js';
import { indexSerial, type OcspResponder, respondOffline, startOcspResponder, writeResponderFiles } from './helpers/ocsp-responder.js';
import { createCa, type Issued } from './helpers/pki.js';
import { freePort, startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';

// OCSP stapling against a real responder (`openssl ocsp`): fetched in the
// background, served from cache, never on the handshake's path.
let lab: KeylessLab;
let responder: OcspResponder;
let proxy: RunningWorker;
let port: number;
let ca: string;
let config: ProxyConfig;
const certs: Record<'good' | 'revoked' | 'dead', { file: string; leaf: Issued; pem: string }> = {} as never;
const logLines: string[] = [];
const log = createLogger('proxy-ocsp-test', 'info', { write: (line: string) => void logLines.push(line) });

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const [responderPort, deadPort] = [await freePort(), await freePort()];
  const issue = async (name: 'good' | 'revoked' | 'dead', responderAt: number): Promise<void> => {
    const issued = await lab.certificate(name, lab.keys.ec, [`${name}.lab.test`], { ocspUrl: `http://127.0.0.1:${responderAt}` });
    certs[name] = { ...issued, pem: join(lab.dir, `${name}-leaf.pem`) };
    writeFileSync(certs[name].pem, issued.leaf.certPem);
  };
  await issue('good', responderPort);
  await issue('revoked', responderPort);
  await issue('dead', deadPort); // nothing listens there
  // The responder is up before the proxy starts: the stapler asks at once.
  responder = await startOcspResponder(
    lab.dir,
    lab.ca,
    [
      { leaf: certs.good.leaf, status: 'good' },
      { leaf: certs.revoked.leaf, status: 'revoked' },
    ],
    responderPort,
  );
  config = lab.proxyConfig({
    certificates: (['good', 'revoked', 'dead'] as const).map((name) => ({ name, chain: certs[name].file })),
  });
  expect(config.tls.ocspStapling).toBe(true); // the default
  proxy = await startProxyWorker(config, { log });
  port = proxy.ports[0]!;
});
afterAll(async () => {
  await responder?.stop();
  await proxy?.close();
  await lab?.close();
});

/** One node:tls handshake asking for a staple: what came back and how long the handshake took. */
function handshake(servername: string): Promise<{ ok: boolean; error?: string; staple: Buffer | undefined; ms: number }> {
  return new Promise((resolve) => {
    const start = performance.now();
    let staple: Buffer | undefined;
    // requestOCSP is a tls.connect option that @types/node lists only for TLSSocket.
    const options: tls.ConnectionOptions & { requestOCSP: boolean } = { host: '127.0.0.1', port, servername, ca, requestOCSP: true };
    const socket = tls.connect(options);
    socket.setTimeout(10_000, () => socket.destroy(new Error('timeout')));
    socket.on('OCSPResponse', (response?: Buffer | null) => void (staple = response ?? undefined)); // null: none sent
    socket.once('secureConnect', () => {
      const ms = performance.now() - start;
      socket.destroy();
      resolve({ ok: true, staple, ms });
    });
    socket.once('error', (err) => resolve({ ok: false, error: err.message, staple, ms: performance.now() - start }));
  });
}

/** s_client -status until the staple shows (the stapler fetches in the background), at most `ms`. */
async function statusUntil(servername: string, done: (output: string) => boolean, ms = 10_000): Promise<string> {
  const start = performance.now();
  for (;;) {
    const result = await sClient(port, servername, lab.caFile, ['-status']);
    const output = result.stdout + result.stderr;
    if (done(output) || performance.now() - start > ms) return output;
    await sleep(200);
  }
}

/** The stapler's log lines about one certificate, as parsed pino records. */
function stapleLog(certificate: string): { msg: string; reason?: string }[] {
  return logLines.map((l) => JSON.parse(l) as { certificate?: string; msg: string; reason?: string }).filter((r) => r.certificate === certificate);
}

describe('stapling from a real responder', () => {
  it('fetches a "good" response in the background and staples it', async () => {
    const output = await statusUntil('good.lab.test', (o) => o.includes('OCSP Response Status: successful'));
    expect(output).toContain('OCSP Response Status: successful');
    expect(output).toContain('Cert Status: good');
    expect(output).toContain(`Serial Number: ${indexSerial(certs.good.leaf)}`);
    expect(output).toContain('HTTP/1.1 200 OK');
    expect(responder.requests()).toBeGreaterThanOrEqual(1);
    // The start told in one line once each certificate's first fetch is done, not a line per staple: the good one
    // stapled; the revoked one and the one whose responder is down not (each warned about by name).
    const summaries = (): Record<string, unknown>[] =>
      logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.msg === 'OCSP staples fetched');
    for (const started = Date.now(); summaries().length === 0 && Date.now() - started < 20_000; ) await sleep(100);
    expect(summaries()).toEqual([expect.objectContaining({ level: 30, certificates: 1, failed: 2 })]);
    expect(stapleLog('good').map((r) => r.msg)).not.toContain('OCSP staple updated');

    // node:tls receives it as a DER OCSPResponse, which openssl verifies against the CA.
    const viaNode = await handshake('good.lab.test');
    expect(viaNode.ok, viaNode.error).toBe(true);
    expect(viaNode.staple).toBeInstanceOf(Buffer);
    const parsed = AsnConvert.parse(viaNode.staple!, OCSPResponse);
    expect(parsed.responseStatus).toBe(OCSPResponseStatus.successful);
    const basic = AsnConvert.parse(parsed.responseBytes!.response.buffer, BasicOCSPResponse);
    expect(Buffer.from(basic.tbsResponseData.responses[0]!.certID.serialNumber).toString('hex')).toBe(certs.good.leaf.cert.serialNumber);
    const respFile = join(lab.dir, 'stapled.der');
    writeFileSync(respFile, viaNode.staple!);
    const verified = await run('openssl', ['ocsp', '-respin', respFile, '-issuer', lab.caFile, '-cert', certs.good.pem, '-CAfile', lab.caFile]);
    expect(verified.stderr).toContain('Response verify OK');
    expect(verified.stdout).toContain(`${certs.good.pem}: good`);
  });

  it('a certificate whose responder is unreachable is served at once, without a staple', async () => {
    for (let i = 0; i < 3; i++) {
      const result = await handshake('dead.lab.test');
      expect(result.ok, result.error).toBe(true);
      expect(result.staple).toBeUndefined();
      expect(result.ms).toBeLessThan(1000);
    }
    const output = (await sClient(port, 'dead.lab.test', lab.caFile, ['-status'])).stdout;
    expect(output).toContain('HTTP/1.1 200 OK');
    expect(output).toContain('OCSP response: no response sent');
    expect(output).not.toContain('OCSP Response Status');
  });

  it('a revoked certificate is never stapled, though the responder answered', async () => {
    const start = performance.now();
    while (!stapleLog('revoked').some((r) => r.msg.startsWith('OCSP fetch failed')) && performance.now() - start < 5000) await sleep(100);
    expect(stapleLog('revoked')).toContainEqual(expect.objectContaining({ reason: 'the certificate is revoked' }));
    expect(responder.requests()).toBeGreaterThanOrEqual(2); // this one and the good one
    const output = (await sClient(port, 'revoked.lab.test', lab.caFile, ['-status'])).stdout;
    expect(output).toContain('HTTP/1.1 200 OK');
    expect(output).toContain('OCSP response: no response sent');
    expect((await handshake('revoked.lab.test')).staple).toBeUndefined();
  });

  it('with the responder down, handshakes still succeed at once and carry the cached staple', async () => {
    const cached = await statusUntil('good.lab.test', (o) => o.includes('Cert Status: good'));
    expect(cached).toContain('Cert Status: good');
    const before = await handshake('good.lab.test');
    await responder.stop();
    for (let i = 0; i < 3; i++) {
      const result = await handshake('good.lab.test');
      expect(result.ok, result.error).toBe(true);
      expect(result.staple?.equals(before.staple!)).toBe(true);
      expect(result.ms).toBeLessThan(1000); // the stapler's fetch timeout is 5 s
    }
    const output = (await sClient(port, 'good.lab.test', lab.caFile, ['-status'])).stdout;
    expect(output).toContain('Cert Status: good');
    expect(output).toContain('HTTP/1.1 200 OK');
  });

  // The responder is still down. An entry re-sent with the same leaf and issuer and another chain (an intermediate
  // re-bundled, a cross-signed root appended) is a change to the worker; it dropped the leaf's staple and refresh loop
  // and started over, so until the responder answered again the certificate went unstapled.
  it('a certificate re-sent with the same leaf and issuer keeps its staple', async () => {
    const before = await handshake('good.lab.test');
    expect(before.staple).toBeInstanceOf(Buffer);
    const record = proxy.state.records.get('good')!;
    const cross = await createCa('keyedge cross CA');
    const chainPem = `${record.chainPem.trim()}\n${cross.certPem}`;
    proxy.apply({
      generation: 500,
      routing: { domains: config.domains, sni: config.sni },
      upsert: [{ ...record, chainPem, inputId: `${record.inputId}-rebundled` }],
      remove: [],
    });
    expect(proxy.state.records.get('good')?.chainPem).toBe(chainPem);
    const after = await handshake('good.lab.test');
    expect(after.ok, after.error).toBe(true);
    expect(after.staple?.equals(before.staple!), 'the staple was dropped with the old chain').toBe(true);
  });
});

describe('stapling across whole states read from packs', () => {
  // A whole state read from a pack (a worker's start or a rebase of a large store, serving/pack.ts) keeps the pack's
  // descriptor while anything read from it lives, and the primary unlinks the file once the workers opened it. The
  // staple loop of a certificate kept its first certificate object, so a leaf served unchanged from one whole state to
  // the next held the older pack open, its disk space with it, for the worker's life.
  it('a stapled leaf kept from one whole state to the next holds no earlier pack open', async () => {
    const dir = mkdtempSync(join(lab.dir, 'packs-'));
    const renewed = await lab.certificate('dead-renewed', lab.keys.ec, ['dead.lab.test'], { ocspUrl: ocspResponderUrl(certs.dead.leaf.cert)! });
    let generation = 1_000;
    const applyWhole = (renew: boolean): string => {
      const upsert = [...proxy.state.records.values()].map((record) =>
        renew && record.name === 'dead'
          ? { ...record, chainPem: readFileSync(renewed.file, 'utf8'), serial: renewed.leaf.cert.serialNumber, inputId: 'renewed' }
          : { ...record },
      );
      generation++;
      const packed = writePack(dir, `whole-${generation}.pack`, {
        generation,
        routing: { domains: config.domains, sni: config.sni },
        upsert,
        remove: [],
        whole: true,
      });
      proxy.apply(readPack(packed));
      // As the primary does once its workers opened it.
      unlinkSync(packed.file);
      return packed.file;
    };
    // 'dead' renewed: its staple loop starts on the certificate read from this pack.
    const first = applyWhole(true);
    expect(proxy.state.records.get('dead')?.serial).toBe(renewed.leaf.cert.serialNumber);
    expect(proxy.state.records.get('dead')?.stapled).toBe(true);
    // The same leaf in the next whole state: the loop goes on, and nothing serves from the first pack any more.
    const second = applyWhole(false);
    expect(openFiles()).toContain(`${second} (deleted)`);
    expect(await openAfterGc([first]), 'the first pack is still open').toEqual([]);
    expect(openFiles()).toContain(`${second} (deleted)`);
    const served = await handshake('dead.lab.test');
    expect(served.ok, served.error).toBe(true);
  });
});

describe('OCSP request and response checks (proxy/tls/ocsp.ts)', () => {
  const files = (): ReturnType<typeof writeResponderFiles> =>
    writeResponderFiles(lab.dir, lab.ca, [
      { leaf: certs.good.leaf, status: 'good' },
      { leaf: certs.revoked.leaf, status: 'revoked' },
    ]);
  const exchange = async (name: 'good' | 'revoked' | 'dead'): Promise<{ der: Buffer; certId: ReturnType<typeof buildOcspRequest>['certId'] }> => {
    const { der, certId } = buildOcspRequest(certs[name].leaf.cert, lab.ca.cert);
    const reqFile = join(lab.dir, `${name}-req.der`);
    const respFile = join(lab.dir, `${name}-resp.der`);
    writeFileSync(reqFile, der);
    const answered = await respondOffline(files(), reqFile, respFile);
    expect(answered.code, answered.stderr).toBe(0);
    return { der: readFileSync(respFile), certId };
  };

  it('names the responder from the leaf, and builds a request openssl reads', async () => {
    expect(ocspResponderUrl(certs.good.leaf.cert)).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(ocspResponderUrl(lab.ca.cert)).toBeUndefined();
    const { der } = buildOcspRequest(certs.good.leaf.cert, lab.ca.cert);
    const reqFile = join(lab.dir, 'parse-req.der');
    writeFileSync(reqFile, der);
    const parsed = await run('openssl', ['ocsp', '-reqin', reqFile, '-req_text']);
    expect(parsed.code, parsed.stderr).toBe(0);
    expect(parsed.stdout).toContain('Hash Algorithm: sha1');
    expect(parsed.stdout).toContain(`Serial Number: ${indexSerial(certs.good.leaf)}`);
    // The CertID's issuer hashes are the ones openssl computes for this CA.
    const ours = await run('openssl', ['ocsp', '-issuer', lab.caFile, '-cert', certs.good.pem, '-req_text', '-no_nonce']);
    const hashes = (text: string): string[] =>
      text
        .split('\n')
        .filter((l) => /Issuer (Name|Key) Hash/.test(l))
        .map((l) => l.trim());
    expect(hashes(parsed.stdout)).toEqual(hashes(ours.stdout));
    expect(hashes(ours.stdout)).toHaveLength(2);
  });

  it('accepts a current "good" answer and returns its nextUpdate', async () => {
    const { der, certId } = await exchange('good');
    const nextUpdate = checkOcspResponse(der, certId);
    expect(nextUpdate).toBeInstanceOf(Date);
    expect(Math.abs(nextUpdate!.getTime() - Date.now() - 86_400_000)).toBeLessThan(600_000);
    expect(() => checkOcspResponse(der, certId, new Date(Date.now() + 2 * 86_400_000))).toThrow(/expired/);
    expect(() => checkOcspResponse(der, certId, new Date(Date.now() - 86_400_000))).toThrow(/future/);
  });

  it('refuses revoked, unknown, other certificates and error statuses', async () => {
    const revoked = await exchange('revoked');
    expect(() => checkOcspResponse(revoked.der, revoked.certId)).toThrow('the certificate is revoked');
    const unknown = await exchange('dead'); // not in index.txt
    expect(() => checkOcspResponse(unknown.der, unknown.certId)).toThrow('certificate status unknown');
    const good = await exchange('good');
    expect(() => checkOcspResponse(good.der, revoked.certId)).toThrow('does not cover');
    // OCSPResponse { responseStatus unauthorized (6) }
    expect(() => checkOcspResponse(Buffer.from('30030a0106', 'hex'), good.certId)).toThrow(/unauthorized/);
  });
});
