import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import type { ServedCertificate } from '../proxy/certs/certificate.js';
import { buildOcspRequest, checkOcspResponse, OcspStapler, refreshDelay } from '../proxy/tls/ocsp.js';
import { run } from './helpers/clients.js';
import { sleep } from './helpers/basics.js';
import { writeResponderFiles } from './helpers/ocsp-responder.js';
import { createCa, type Issued, issue, type TestCa, writeIssued, writePem } from './helpers/pki.js';

// Who signed an OCSP response (RFC 6960 §4.2.2.2): the certificate's issuer, or a responder certificate the issuer
// signed for OCSP signing (id-kp-OCSPSigning). The responder is reached over plain HTTP, so anyone on the path may
// answer; a staple signed by anyone else is one a strict client (Firefox) rejects, failing the handshake, for as long
// as the forged nextUpdate says. nginx with ssl_stapling_verify on (as Mozilla's recommended configuration has it) staples no such thing.
const OCSP_SIGNING = '1.3.6.1.5.5.7.3.9';
const lines: Record<string, unknown>[] = [];
// At debug level: a failure after the first of a run is logged there (only the first is warned), and the cases count fetches by their lines.
const log = createLogger('ocsp-signer-test', 'debug', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
let dir: string;
let ca: TestCa;
let caFile: string;
let responder: http.Server;
let port: number;
/** The DER answer the responder sends for each path. */
const answers = new Map<string, Buffer>();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ocsp-signer-'));
  ca = await createCa('Signer Root');
  caFile = writePem(dir, 'ca', ca.certPem);
  responder = http.createServer((req, res) => {
    req.resume();
    const answer = answers.get(req.url ?? '');
    if (answer === undefined) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/ocsp-response' }).end(answer);
  });
  await new Promise<void>((resolve) => responder.listen(0, '127.0.0.1', resolve));
  port = (responder.address() as net.AddressInfo).port;
});
afterAll(() => {
  responder?.closeAllConnections();
  responder?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** `openssl ocsp` as a responder: answers the request file `request` from `index`, signed by `signer` (certificate and key files), into `response`; `days`: its nextUpdate (none: no nextUpdate). */
async function opensslRespond(index: string, signer: { cert: string; key: string }, request: string, response: string, days?: number): Promise<void> {
  const validity = days === undefined ? [] : ['-ndays', String(days)];
  const made = await run('openssl', [
    'ocsp',
    '-index',
    index,
    '-rsigner',
    signer.cert,
    '-rkey',
    signer.key,
    '-CA',
    caFile,
    ...validity,
    '-reqin',
    request,
    '-respout',
    response,
  ]);
  expect(made.code, made.stderr).toBe(0);
}

/** The answer `openssl ocsp` writes for `leaf` with `status`, signed by `signer` (its certificate in the response, as openssl includes it). */
async function answer(name: string, leaf: Issued, signer: Issued, status: 'good' | 'revoked'): Promise<string> {
  const { index } = writeResponderFiles(dir, ca, [{ leaf, status }]);
  const files = writeIssued(dir, `${name}-signer`, signer);
  const request = join(dir, `${name}-req.der`);
  const response = join(dir, `${name}-${status}-resp.der`);
  writeFileSync(request, buildOcspRequest(leaf.cert, ca.cert).der);
  await opensslRespond(index, files, request, response, 1);
  return response;
}

/** A leaf of `ca` whose responder is /<name>. */
async function leafAt(name: string): Promise<{ leaf: Issued; certificate: ServedCertificate }> {
  const leaf = await issue(ca, {
    commonName: `${name}.example`,
    dnsNames: [`${name}.example`],
    keyAlgorithm: 'ec-p256',
    ocspUrl: `http://127.0.0.1:${port}/${name}`,
  });
  return { leaf, certificate: { name, leaf: leaf.cert, chain: [leaf.cert, ca.cert] } as unknown as ServedCertificate };
}

/**
 * A leaf of `ca` whose responder at /<name> answers "good", signed by `signer`; `openssl ocsp -respin` tells whether a
 * client verifying against the CA accepts that answer.
 */
async function leafAnsweredBy(name: string, signer: Issued): Promise<{ certificate: ServedCertificate; clientVerifies: boolean }> {
  const { leaf, certificate } = await leafAt(name);
  const response = await answer(name, leaf, signer, 'good');
  answers.set(`/${name}`, readFileSync(response));
  const leafFile = writePem(dir, `${name}-leaf`, leaf.certPem);
  const verified = await run('openssl', ['ocsp', '-respin', response, '-issuer', caFile, '-cert', leafFile, '-CAfile', caFile]);
  return { certificate, clientVerifies: verified.stderr.includes('Response verify OK') };
}

/** Tracks `certificate` until the stapler logs its first outcome for it; the staple then, and the failure's reason. */
async function firstOutcome(certificate: ServedCertificate): Promise<{ staple: Buffer | undefined; reason: unknown }> {
  const stapler = new OcspStapler(log);
  try {
    stapler.track(certificate);
    const outcome = (): Record<string, unknown> | undefined =>
      lines.find(
        (l) => l.certificate === certificate.name && (l.msg === 'OCSP staple updated' || l.msg === 'OCSP fetch failed; serving without a fresh staple'),
      );
    for (const started = Date.now(); Date.now() - started < 10_000 && outcome() === undefined; ) await sleep(25);
    expect(outcome(), `no outcome logged for ${certificate.name}`).toBeDefined();
    return { staple: stapler.stapleOf(certificate), reason: outcome()?.reason };
  } finally {
    stapler.stop();
  }
}

describe("an OCSP response's signer", () => {
  it('the issuer itself: stapled', async () => {
    const { certificate, clientVerifies } = await leafAnsweredBy('by-issuer', ca);
    expect(clientVerifies).toBe(true);
    expect((await firstOutcome(certificate)).staple).toBeInstanceOf(Buffer);
  });

  it('a responder the issuer certified for OCSP signing: stapled', async () => {
    const delegate = await issue(ca, { commonName: 'Signer Root OCSP', keyAlgorithm: 'ec-p256', extendedKeyUsages: [OCSP_SIGNING] });
    const { certificate, clientVerifies } = await leafAnsweredBy('delegated', delegate);
    expect(clientVerifies).toBe(true);
    expect((await firstOutcome(certificate)).staple).toBeInstanceOf(Buffer);
  });

  it('a certificate of the issuer without the OCSP-signing usage: not stapled', async () => {
    const notResponder = await issue(ca, { commonName: 'another.example', dnsNames: ['another.example'], keyAlgorithm: 'ec-p256' });
    const { certificate, clientVerifies } = await leafAnsweredBy('no-eku', notResponder);
    expect(clientVerifies).toBe(false);
    const outcome = await firstOutcome(certificate);
    expect(outcome.staple).toBeUndefined();
    expect(outcome.reason).toMatch(/signed/);
  });

  it('a key the issuer never certified (a forged answer): not stapled', async () => {
    const forger = await createCa('Signer Root'); // the same name, another key
    const { certificate, clientVerifies } = await leafAnsweredBy('forged', forger);
    expect(clientVerifies).toBe(false);
    const outcome = await firstOutcome(certificate);
    expect(outcome.staple).toBeUndefined();
    expect(outcome.reason).toMatch(/signed/);
  });
});

describe('a revocation after a "good" answer', () => {
  it('withdraws the cached staple once the issuer signs "revoked"; a forged "revoked" withdraws nothing', async () => {
    const name = 'revoked-later';
    const { leaf, certificate } = await leafAt(name);
    answers.set(`/${name}`, readFileSync(await answer(name, leaf, ca, 'good')));
    const forged = readFileSync(await answer(`${name}-forged`, leaf, await createCa('Signer Root'), 'revoked'));
    const revoked = readFileSync(await answer(name, leaf, ca, 'revoked'));
    const failures = (reason: RegExp): number =>
      lines.filter((l) => l.certificate === name && /^OCSP fetch failed/.test(String(l.msg)) && reason.test(String(l.reason))).length;
    const until = async (done: () => boolean): Promise<void> => {
      for (const started = Date.now(); Date.now() - started < 10_000 && !done(); ) await sleep(25);
      expect(done()).toBe(true);
    };
    // Asked again every 200 ms, so the test sees the answers change.
    const stapler = new OcspStapler(log, { refreshIn: () => 200, retryMs: [200] });
    try {
      stapler.track(certificate);
      await until(() => stapler.stapleOf(certificate) !== undefined);
      const good = stapler.stapleOf(certificate)!;
      answers.set(`/${name}`, forged);
      await until(() => failures(/./) >= 2);
      expect(stapler.stapleOf(certificate)?.equals(good)).toBe(true);
      answers.set(`/${name}`, revoked);
      await until(() => failures(/revoked/) >= 1);
      // The CA said revoked: the "good" answer it gave before is no longer ours to show.
      expect(stapler.stapleOf(certificate)).toBeUndefined();
      // The forged ones were refused for their signer, before their status counted.
      expect(failures(/signed/)).toBeGreaterThanOrEqual(2);
    } finally {
      stapler.stop();
    }
  });
});

describe('when a staple is fetched again (refreshDelay)', () => {
  const HOUR = 3_600_000;
  const now = Date.parse('2026-12-07T00:00:00Z');
  const ahead = (ms: number): Date => new Date(now + ms);

  it('well before nextUpdate: a responder down for the last hour of an answer leaves the certificate no staple', () => {
    // Let's Encrypt's answers are good for 7 days and renewed every few: asked again only an hour before the end, an
    // outage of that hour (the retries reach 10 minutes apart) ended the staple, and a Must-Staple certificate
    // failed every handshake, with a newer answer at the responder for days.
    expect(refreshDelay(ahead(7 * 24 * HOUR), now)).toBeLessThanOrEqual(12 * HOUR);
    expect(refreshDelay(ahead(4 * HOUR), now)).toBe(2 * HOUR);
    expect(refreshDelay(ahead(90 * 60_000), now)).toBe(30 * 60_000);
    // An answer dated far ahead (a broken or hostile responder) is not kept unasked for its year.
    expect(refreshDelay(ahead(365 * 24 * HOUR), now)).toBeLessThanOrEqual(12 * HOUR);
    // Never sooner than a minute, whatever it says; an hour without a nextUpdate.
    expect(refreshDelay(ahead(30_000), now)).toBe(60_000);
    expect(refreshDelay(undefined, now)).toBe(HOUR);
  });
});

describe('one leaf served under two entry names', () => {
  it('keeps its staple, and its refreshes, for the name still served when the other is removed', async () => {
    const { leaf, certificate: first } = await leafAt('shared');
    answers.set('/shared', readFileSync(await answer('shared', leaf, ca, 'good')));
    // The same chain under another entry name: an entry renamed by adding the new name, then removing the old.
    const second = { ...first, name: 'shared-renamed' } as ServedCertificate;
    let asked = 0;
    const counting = (req: http.IncomingMessage): void => void (req.url === '/shared' && asked++);
    responder.on('request', counting);
    const stapler = new OcspStapler(log, { refreshIn: () => 200, retryMs: [200] });
    try {
      stapler.track(first);
      stapler.track(second);
      for (const started = Date.now(); Date.now() - started < 10_000 && stapler.stapleOf(second) === undefined; ) await sleep(25);
      expect(stapler.stapleOf(second)).toBeInstanceOf(Buffer);
      stapler.untrack(first);
      expect(stapler.stapleOf(second)).toBeInstanceOf(Buffer);
      // Still asked again: the loop of the leaf goes on for the name that serves it.
      const before = asked;
      for (const started = Date.now(); Date.now() - started < 10_000 && asked < before + 2; ) await sleep(25);
      expect(asked).toBeGreaterThanOrEqual(before + 2);
      stapler.untrack(second);
      expect(stapler.stapleOf(second)).toBeUndefined();
    } finally {
      stapler.stop();
      responder.off('request', counting);
    }
  });
});

describe('many stapled certificates', () => {
  it('ask their responders a few at a time, not all at once', async () => {
    // A start with thousands of stapled certificates began every fetch in the same moment: one socket each, in a
    // worker that needs its descriptors for clients, and thousands of requests at once at the CA's responder.
    const held: http.ServerResponse[] = [];
    let inFlight = 0;
    let most = 0;
    const crowd = http.createServer((req, res) => {
      req.resume();
      inFlight++;
      most = Math.max(most, inFlight);
      res.once('close', () => inFlight--);
      held.push(res);
    });
    await new Promise<void>((resolve) => crowd.listen(0, '127.0.0.1', resolve));
    const at = (crowd.address() as net.AddressInfo).port;
    const certificates = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const leaf = await issue(ca, {
          commonName: `crowd${i}.example`,
          dnsNames: [`crowd${i}.example`],
          keyAlgorithm: 'ec-p256',
          ocspUrl: `http://127.0.0.1:${at}/`,
        });
        return { name: `crowd${i}`, leaf: leaf.cert, chain: [leaf.cert, ca.cert] } as unknown as ServedCertificate;
      }),
    );
    const stapler = new OcspStapler(log);
    try {
      for (const certificate of certificates) stapler.track(certificate);
      // Every request the stapler starts is held unanswered: what is in flight after a while is what it allows at once.
      for (const started = Date.now(); Date.now() - started < 10_000 && held.length < 8; ) await sleep(25);
      await sleep(1_000);
      expect(held.length).toBeGreaterThanOrEqual(1);
      expect(most).toBeLessThanOrEqual(8);
    } finally {
      stapler.stop();
      for (const res of held) res.destroy();
      crowd.closeAllConnections();
      crowd.close();
    }
  });
});

describe("a responder's own encoding of the certificate's ID", () => {
  it('is matched by what it names, not byte for byte: a SHA-1 identifier with NULL parameters covers the certificate', async () => {
    // Go's golang.org/x/crypto/ocsp, which many CAs' responders are built on, writes its own CertID with the hash
    // algorithm's parameters NULL, whatever the request had; we ask without them (RFC 5754 §2: either form, and a
    // reader accepts both; OpenSSL's OCSP_id_cmp compares the algorithm's OID only). openssl makes such a request,
    // and its responder echoes that CertID, as Go's writes its own.
    const name = 'null-params';
    const { leaf, certificate } = await leafAt(name);
    const { index } = writeResponderFiles(dir, ca, [{ leaf, status: 'good' }]);
    const leafFile = writePem(dir, `${name}-leaf`, leaf.certPem);
    const request = join(dir, `${name}-openssl-req.der`);
    const response = join(dir, `${name}-openssl-resp.der`);
    const asked = await run('openssl', ['ocsp', '-issuer', caFile, '-cert', leafFile, '-no_nonce', '-reqout', request]);
    expect(asked.code, asked.stderr).toBe(0);
    await opensslRespond(index, { cert: caFile, key: writeIssued(dir, `${name}-ca`, ca).key }, request, response, 1);
    const der = readFileSync(response);
    expect(der.includes(Buffer.from('300906052b0e03021a0500', 'hex'))).toBe(true); // sha1, NULL parameters
    expect(checkOcspResponse(der, buildOcspRequest(leaf.cert, ca.cert).certId)).toBeInstanceOf(Date);
    answers.set(`/${name}`, der);
    expect((await firstOutcome(certificate)).staple).toBeInstanceOf(Buffer);
  });
});

describe('an older answer sent again (a replay from the path, or a stale cache)', () => {
  it('is refused: it neither replaces a newer staple nor brings back the "good" a later "revoked" withdrew', async () => {
    const name = 'replayed';
    const { leaf, certificate } = await leafAt(name);
    // openssl dates an answer to the second: the older one made a second and more before the newer ones.
    const older = readFileSync(await answer(`${name}-older`, leaf, ca, 'good'));
    await sleep(1_100);
    const newer = readFileSync(await answer(`${name}-newer`, leaf, ca, 'good'));
    const revoked = readFileSync(await answer(`${name}-revoked`, leaf, ca, 'revoked'));
    const fetched = (): number => lines.filter((l) => l.certificate === name).length;
    const stapler = new OcspStapler(log, { refreshIn: () => 200, retryMs: [200] });
    const twoMoreFetches = async (): Promise<void> => {
      const before = fetched();
      for (const started = Date.now(); Date.now() - started < 10_000 && fetched() < before + 2; ) await sleep(25);
      expect(fetched()).toBeGreaterThanOrEqual(before + 2);
    };
    try {
      answers.set(`/${name}`, newer);
      stapler.track(certificate);
      for (const started = Date.now(); Date.now() - started < 10_000 && stapler.stapleOf(certificate) === undefined; ) await sleep(25);
      expect(stapler.stapleOf(certificate)?.equals(newer)).toBe(true);
      answers.set(`/${name}`, older);
      await twoMoreFetches();
      expect(stapler.stapleOf(certificate)?.equals(newer)).toBe(true);
      answers.set(`/${name}`, revoked);
      await twoMoreFetches();
      expect(stapler.stapleOf(certificate)).toBeUndefined();
      answers.set(`/${name}`, older);
      await twoMoreFetches();
      expect(stapler.stapleOf(certificate)).toBeUndefined();
    } finally {
      stapler.stop();
    }
  });
});

describe('a stapler stopped while a responder is being asked', () => {
  it('drops the fetch at once: a worker that stops does not wait out the fetch deadline on a responder that never answers', async () => {
    let closed: number | undefined;
    let arrived = false;
    const silent = http.createServer((req) => {
      arrived = true;
      req.socket.once('close', () => void (closed = Date.now()));
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const at = (silent.address() as net.AddressInfo).port;
    const leaf = await issue(ca, { commonName: 'silent.example', dnsNames: ['silent.example'], keyAlgorithm: 'ec-p256', ocspUrl: `http://127.0.0.1:${at}/` });
    const stapler = new OcspStapler(log);
    try {
      stapler.track({ name: 'silent', leaf: leaf.cert, chain: [leaf.cert, ca.cert] } as unknown as ServedCertificate);
      for (const started = Date.now(); Date.now() - started < 10_000 && !arrived; ) await sleep(25);
      expect(arrived).toBe(true);
      const stopped = Date.now();
      stapler.stop();
      // A fetch let run holds its connection (and the worker's exit) until its deadline: 5 s for headers, 10 s in all.
      for (; Date.now() - stopped < 4_000 && closed === undefined; ) await sleep(25);
      expect(closed, 'the connection to the responder is still open').toBeDefined();
    } finally {
      stapler.stop();
      silent.closeAllConnections();
      silent.close();
    }
  });
});

describe('bytes an OCSP answer has no place for', () => {
  // Outside what is signed (after the answer, or after its signature's elements): anyone on the responder's path may
  // add them, and the signature still verifies. A strict DER reader refuses such an answer (Firefox's mozilla::pkix,
  // Go's x/crypto/ocsp, pyca/cryptography: "ExtraData"), and Firefox fails the handshake on a staple it cannot read.
  /** A DER header for `content` under `tag`. */
  const tlv = (tag: number, content: Buffer): Buffer => {
    const n = content.length;
    const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
    return Buffer.concat([Buffer.from([tag, ...length]), content]);
  };
  /** The content of the element at the start of `der`. */
  const contentOf = (der: Buffer): Buffer => der.subarray(der[1]! < 0x80 ? 2 : 2 + (der[1]! & 0x7f), der.length);

  it("are refused, whether after the answer or inside its signed part's wrapper; the answer as sent is stapled", async () => {
    const name = 'extra-bytes';
    const { leaf, certificate } = await leafAt(name);
    const good = readFileSync(await answer(name, leaf, ca, 'good'));
    const certId = buildOcspRequest(leaf.cert, ca.cert).certId;
    expect(checkOcspResponse(good, certId)).toBeInstanceOf(Date);
    const trailing = Buffer.concat([good, Buffer.from('\r\n')]);
    // The BasicOCSPResponse with one more element after its certificates, the OCTET STRING and SEQUENCEs around it
    // rebuilt: OCSPResponse { status, [0] { ResponseBytes { type, OCTET STRING { BasicOCSPResponse } } } }.
    const top = contentOf(good);
    const status = top.subarray(0, 3); // ENUMERATED successful
    const responseBytes = contentOf(contentOf(top.subarray(3)));
    const type = responseBytes.subarray(0, 2 + responseBytes[1]!); // the OID of a basic response
    const basic = contentOf(responseBytes.subarray(type.length));
    const padded = tlv(0x30, Buffer.concat([contentOf(basic), Buffer.from([0x05, 0x00])]));
    const inside = tlv(0x30, Buffer.concat([status, tlv(0xa0, tlv(0x30, Buffer.concat([type, tlv(0x04, padded)])))]));
    for (const [what, der] of [
      ['trailing', trailing],
      ['inside', inside],
    ] as const) {
      expect(() => checkOcspResponse(der, certId), what).toThrow(/DER/);
      answers.set(`/${name}`, der);
      const outcome = await firstOutcome({ ...certificate, name: `${name}-${what}` } as ServedCertificate);
      expect(outcome.staple, what).toBeUndefined();
    }
  });
});

describe('how long an answer is stapled', () => {
  // A strict client takes an answer as old past its nextUpdate, past ten days after its thisUpdate, and past one day
  // after it when it has no nextUpdate (mozilla::pkix: "NSS requires all OCSP responses without a nextUpdate to be
  // recent"), a Must-Staple certificate failing its handshakes then: stapling one longer only serves a staple refused.
  const DAY = 86_400_000;

  /** A 'good' answer the CA signs for a new leaf at /<name>, valid `days` (none: no nextUpdate); its file and the leaf's CertID. */
  async function caAnswer(name: string, days?: number): Promise<{ response: string; certId: ReturnType<typeof buildOcspRequest>['certId'] }> {
    const { leaf } = await leafAt(name);
    const { index } = writeResponderFiles(dir, ca, [{ leaf, status: 'good' }]);
    const request = join(dir, `${name}-req.der`);
    const response = join(dir, `${name}-resp.der`);
    const asked = buildOcspRequest(leaf.cert, ca.cert);
    writeFileSync(request, asked.der);
    await opensslRespond(index, { cert: caFile, key: writeIssued(dir, `${name}-ca`, ca).key }, request, response, days);
    return { response, certId: asked.certId };
  }

  it('without a nextUpdate: a day after its thisUpdate, no longer', async () => {
    // No -ndays or -nmin: openssl leaves nextUpdate out.
    const { response, certId } = await caAnswer('no-next-update');
    const printed = await run('openssl', ['ocsp', '-respin', response, '-resp_text', '-noverify']);
    expect(printed.stdout).not.toContain('Next Update');
    const der = readFileSync(response);
    const until = checkOcspResponse(der, certId);
    expect(until).toBeInstanceOf(Date);
    expect(Math.abs(until!.getTime() - Date.now() - DAY)).toBeLessThan(10 * 60_000);
    expect(() => checkOcspResponse(der, certId, new Date(Date.now() + 2 * DAY))).toThrow(/expired/);
  });

  it('with a nextUpdate a month ahead: ten days after its thisUpdate, no longer', async () => {
    const { response, certId } = await caAnswer('month-ahead', 30);
    const until = checkOcspResponse(readFileSync(response), certId);
    expect(Math.abs(until!.getTime() - Date.now() - 10 * DAY)).toBeLessThan(10 * 60_000);
  });
});

describe('a responder down for a while', () => {
  it('warns once when stapling starts failing, not at every retry; an info line when it recovers; a warning again if it fails again', async () => {
    const name = 'outage';
    const { leaf, certificate } = await leafAt(name);
    const good = readFileSync(await answer(name, leaf, ca, 'good'));
    // No answer at /outage: the responder says 404, a failure at each try.
    answers.delete(`/${name}`);
    let asked = 0;
    const counting = (req: http.IncomingMessage): void => void (req.url === `/${name}` && asked++);
    responder.on('request', counting);
    // Lines of this certificate at info level and above (the failures between warnings are at debug level).
    const mine = (msg: RegExp): Record<string, unknown>[] => lines.filter((l) => l.certificate === name && Number(l.level) >= 30 && msg.test(String(l.msg)));
    const until = async (what: string, done: () => boolean): Promise<void> => {
      for (const started = Date.now(); Date.now() - started < 10_000 && !done(); ) await sleep(25);
      expect(done(), what).toBe(true);
    };
    // Retried every 50 ms, refreshed every 100 ms once good (the default warning interval, an hour, is never reached here).
    const stapler = new OcspStapler(log, { refreshIn: () => 100, retryMs: [50] });
    try {
      stapler.track(certificate);
      await until('eight failed fetches', () => asked >= 8);
      expect(mine(/OCSP fetch failed/).length, 'warnings over eight failures').toBe(1);
      expect(mine(/OCSP fetch failed/)[0]).toMatchObject({ level: 40, reason: 'responder answered HTTP 404' });
      // The responder back: stapled, and the recovery said once, with how many tries failed.
      answers.set(`/${name}`, good);
      await until('a staple', () => stapler.stapleOf(certificate) !== undefined);
      await until('the recovery line', () => mine(/OCSP staple fetched again after failures/).length === 1);
      expect(mine(/OCSP staple fetched again after failures/)[0]).toMatchObject({ level: 30 });
      expect(Number(mine(/OCSP staple fetched again after failures/)[0]!.failures)).toBeGreaterThanOrEqual(8);
      // Failing again after the recovery is a new start: warned again, once.
      const before = asked;
      answers.delete(`/${name}`);
      await until('eight more failed fetches', () => asked >= before + 8);
      expect(mine(/OCSP fetch failed/).length, 'warnings after the second outage began').toBe(2);
      expect(mine(/OCSP staple fetched again after failures/).length).toBe(1);
    } finally {
      stapler.stop();
      responder.off('request', counting);
    }
  });
});

describe('a responder down for longer than the warning interval', () => {
  it('is warned about again once per interval, not at each retry', async () => {
    const name = 'long-outage';
    const { certificate } = await leafAt(name);
    answers.delete(`/${name}`);
    const stapler = new OcspStapler(log, { refreshIn: () => 60_000, retryMs: [20], warnAgainMs: 400 });
    const warnings = (): Record<string, unknown>[] => lines.filter((l) => l.certificate === name && l.level === 40);
    const failures = (): number => lines.filter((l) => l.certificate === name && /^OCSP fetch failed/.test(String(l.msg))).length;
    try {
      const started = Date.now();
      stapler.track(certificate);
      for (; Date.now() - started < 10_000 && warnings().length < 2; ) await sleep(25);
      expect(warnings().length).toBeGreaterThanOrEqual(2);
      const elapsed = Date.now() - started;
      // At most one per 400 ms since the first, however many retries failed meanwhile.
      expect(warnings().length).toBeLessThanOrEqual(Math.floor(elapsed / 400) + 1);
      expect(failures()).toBeGreaterThanOrEqual(warnings().length);
      expect(Number(warnings()[1]!.failingForMs)).toBeGreaterThanOrEqual(400);
    } finally {
      stapler.stop();
    }
  });
});

describe('one responder down for many certificates', () => {
  it('is warned about once with how many certificates it serves, not once per certificate; its recovery said once', async () => {
    // Each certificate's stapling starting to fail was its own warning: 1,000 certificates on one responder were 1,000
    // warning lines in each worker at start, all saying the same thing.
    // 100, not 1,000: the answer covering them all is parsed whole for each (its size grows with them).
    const count = 100;
    const path = '/many-down';
    const url = `http://127.0.0.1:${port}${path}`;
    const leaves = await Promise.all(
      Array.from({ length: count }, (_, i) =>
        issue(ca, { commonName: `many-${i}.example`, dnsNames: [`many-${i}.example`], keyAlgorithm: 'ec-p256', ocspUrl: url }),
      ),
    );
    const certificates = leaves.map((leaf, i) => ({ name: `many-${i}`, leaf: leaf.cert, chain: [leaf.cert, ca.cert] }) as unknown as ServedCertificate);
    // One answer covering them all, for when the responder is back (openssl answers each certificate a request lists).
    const { index } = writeResponderFiles(
      dir,
      ca,
      leaves.map((leaf) => ({ leaf, status: 'good' as const })),
    );
    const leafFiles = leaves.map((leaf, i) => writePem(dir, `many-${i}`, leaf.certPem));
    const request = join(dir, 'many-req.der');
    const made = await run('openssl', ['ocsp', '-issuer', caFile, ...leafFiles.flatMap((f) => ['-cert', f]), '-no_nonce', '-reqout', request]);
    expect(made.code, made.stderr).toBe(0);
    const response = join(dir, 'many-resp.der');
    await opensslRespond(index, { cert: caFile, key: writeIssued(dir, 'many-ca', ca).key }, request, response, 1);
    answers.delete(path);
    const ofResponder = (): Record<string, unknown>[] => lines.filter((l) => l.responder === url);
    const failed = (): number => ofResponder().filter((l) => /^OCSP fetch failed/.test(String(l.msg))).length;
    const until = async (what: string, done: () => boolean): Promise<void> => {
      for (const started = Date.now(); Date.now() - started < 60_000 && !done(); ) await sleep(50);
      expect(done(), what).toBe(true);
    };
    const stapler = new OcspStapler(log, { refreshIn: () => 60_000, retryMs: [100] });
    try {
      for (const certificate of certificates) stapler.track(certificate);
      // Every certificate failed, most more than once.
      await until('every certificate failed twice', () => failed() >= 2 * count);
      const warnings = ofResponder().filter((l) => Number(l.level) >= 40);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatchObject({
        msg: 'OCSP fetch failed; serving without a fresh staple',
        certificates: count,
        reason: 'responder answered HTTP 404',
      });
      // The responder back: each certificate stapled, the recovery said once for the responder, not once per certificate.
      answers.set(path, readFileSync(response));
      await until('every certificate stapled', () => certificates.every((c) => stapler.stapleOf(c) !== undefined));
      const recovered = ofResponder().filter((l) => Number(l.level) >= 30 && l.msg !== 'OCSP fetch failed; serving without a fresh staple');
      expect(recovered.filter((l) => String(l.msg).startsWith('OCSP responder answering again'))).toHaveLength(1);
      expect(recovered.filter((l) => String(l.msg).startsWith('OCSP responder answering again'))[0]).toMatchObject({ failed: count });
      // The certificate the warning named is told recovered by name; the rest only at debug level.
      expect(recovered.filter((l) => l.msg === 'OCSP staple fetched again after failures')).toHaveLength(1);
    } finally {
      stapler.stop();
    }
  }, 180_000);
});

describe('a start where every fetch succeeds', () => {
  it('is told in one info line with how many certificates were stapled, not one per certificate; refreshes at debug level', async () => {
    // Each certificate's staple was an info line of its own in each worker: 1,000 certificates, 1,000 lines per worker
    // at every start, and again at every refresh, all saying the same thing.
    const count = 20;
    const path = '/many-good';
    const url = `http://127.0.0.1:${port}${path}`;
    const leaves = await Promise.all(
      Array.from({ length: count }, (_, i) =>
        issue(ca, { commonName: `good-${i}.example`, dnsNames: [`good-${i}.example`], keyAlgorithm: 'ec-p256', ocspUrl: url }),
      ),
    );
    const certificates = leaves.map((leaf, i) => ({ name: `good-${i}`, leaf: leaf.cert, chain: [leaf.cert, ca.cert] }) as unknown as ServedCertificate);
    // One answer covering them all (openssl answers each certificate a request lists).
    const { index } = writeResponderFiles(
      dir,
      ca,
      leaves.map((leaf) => ({ leaf, status: 'good' as const })),
    );
    const leafFiles = leaves.map((leaf, i) => writePem(dir, `good-${i}`, leaf.certPem));
    const request = join(dir, 'many-good-req.der');
    const made = await run('openssl', ['ocsp', '-issuer', caFile, ...leafFiles.flatMap((f) => ['-cert', f]), '-no_nonce', '-reqout', request]);
    expect(made.code, made.stderr).toBe(0);
    const response = join(dir, 'many-good-resp.der');
    await opensslRespond(index, { cert: caFile, key: writeIssued(dir, 'many-good-ca', ca).key }, request, response, 1);
    answers.set(path, readFileSync(response));
    const from = lines.length;
    const since = (): Record<string, unknown>[] => lines.slice(from);
    const updated = (): Record<string, unknown>[] => since().filter((l) => l.msg === 'OCSP staple updated');
    const until = async (what: string, done: () => boolean): Promise<void> => {
      for (const started = Date.now(); Date.now() - started < 60_000 && !done(); ) await sleep(50);
      expect(done(), what).toBe(true);
    };
    // Asked again soon after each answer: the refreshes are seen too.
    const stapler = new OcspStapler(log, { refreshIn: () => 200, retryMs: [100] });
    try {
      for (const certificate of certificates) stapler.track(certificate);
      await until('every certificate stapled', () => certificates.every((c) => stapler.stapleOf(c) !== undefined));
      await until('every certificate refreshed once', () => new Set(updated().map((l) => l.certificate)).size === count && updated().length >= 2 * count);
      const info = since().filter((l) => Number(l.level) >= 30);
      expect(info).toEqual([expect.objectContaining({ level: 30, msg: 'OCSP staples fetched', certificates: count })]);
      // Each staple, the first and the refreshes, is still there for debugging.
      expect(updated().every((l) => l.level === 20)).toBe(true);
      // A certificate tracked later (a reload that adds one) is a round of its own, told when its first fetch is done:
      // here one the answer does not cover, warned about by name, and counted as not stapled.
      const later = await issue(ca, { commonName: 'good-later.example', dnsNames: ['good-later.example'], keyAlgorithm: 'ec-p256', ocspUrl: url });
      stapler.track({ name: 'good-later', leaf: later.cert, chain: [later.cert, ca.cert] } as unknown as ServedCertificate);
      const summaries = (): Record<string, unknown>[] => since().filter((l) => l.msg === 'OCSP staples fetched');
      await until('the later certificate told', () => summaries().length === 2);
      expect(summaries()[1]).toMatchObject({ level: 30, certificates: 0, failed: 1 });
      expect(since().filter((l) => l.level === 40)).toEqual([
        expect.objectContaining({
          certificate: 'good-later',
          msg: 'OCSP fetch failed; serving without a fresh staple',
          reason: 'the response does not cover this certificate',
        }),
      ]);
    } finally {
      stapler.stop();
      answers.delete(path);
    }
  }, 120_000);
});
