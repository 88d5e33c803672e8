import http from 'node:http';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import type { ServedCertificate } from '../proxy/certs/certificate.js';
import { OcspStapler } from '../proxy/tls/ocsp.js';
import { sleep } from './helpers/basics.js';
import { createCa, issue } from './helpers/pki.js';

// An OCSP responder is a peer like any other, reached over plain HTTP (anyone on the path can answer): what it sends
// must not cost the worker more than the 64 KB a response may take, nor hold its refresh loop past the fetch deadline.
const lines: Record<string, unknown>[] = [];
const log = createLogger('ocsp-abuse-test', 'info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
let responder: http.Server;
let port: number;
let sent = 0;

beforeAll(async () => {
  // Answers 200 with an endless body, as fast as the fetcher reads it; on /trickle, one byte a second.
  responder = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/ocsp-response' });
    if (req.url === '/trickle') {
      const timer = setInterval(() => res.write('0'), 1000);
      res.once('close', () => clearInterval(timer));
      return;
    }
    const chunk = Buffer.alloc(64 * 1024, 0x30);
    const pump = (): void => {
      while (!res.destroyed && res.write(chunk)) sent += chunk.length;
      if (!res.destroyed) res.once('drain', pump);
    };
    pump();
  });
  await new Promise<void>((resolve) => responder.listen(0, '127.0.0.1', resolve));
  port = (responder.address() as net.AddressInfo).port;
});
afterAll(() => responder.closeAllConnections());

/** Tracks a certificate whose leaf names `path` on the responder; resolves with the stapler's first failure line about it. */
async function firstFailure(name: string, path: string, waitMs: number): Promise<Record<string, unknown> | undefined> {
  const ca = await createCa('Abuse Root');
  const leaf = await issue(ca, {
    commonName: `${name}.example`,
    dnsNames: [`${name}.example`],
    keyAlgorithm: 'ec-p256',
    ocspUrl: `http://127.0.0.1:${port}${path}`,
  });
  const certificate = { name, leaf: leaf.cert, chain: [leaf.cert, ca.cert] } as unknown as ServedCertificate;
  const stapler = new OcspStapler(log);
  try {
    stapler.track(certificate);
    const failed = (): Record<string, unknown> | undefined =>
      lines.find((l) => l.certificate === name && l.msg === 'OCSP fetch failed; serving without a fresh staple');
    for (const started = Date.now(); Date.now() - started < waitMs && failed() === undefined; ) await sleep(50);
    expect(stapler.stapleOf(certificate)).toBeUndefined();
    return failed();
  } finally {
    stapler.stop();
  }
}

describe('an OCSP responder that sends an endless body', () => {
  it('is cut past 64 KB and logged; the certificate is served without a staple', async () => {
    expect((await firstFailure('endless', '/', 10_000))?.reason).toMatch(/more than 65536 bytes/);
    // What was read is bounded by the cap, plus what the sockets buffered: nowhere near what 10 s of sending would be.
    expect(sent).toBeLessThan(16 * 1024 * 1024);
  });

  it('is given up on at the fetch deadline when it trickles', async () => {
    expect((await firstFailure('trickle', '/trickle', 20_000))?.reason).toMatch(/aborted|timeout/i);
  }, 30_000);
});
