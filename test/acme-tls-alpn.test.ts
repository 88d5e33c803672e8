import { createHash, X509Certificate } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { ACME_IDENTIFIER_OID } from '../keyserver/shared/alpn-cert.js';
import { createLogger } from '../keyserver/shared/log.js';
import * as x509 from '../keyserver/shared/x509.js';
import { ChallengeAnswers, ChallengeBoard } from '../proxy/acme/challenges.js';
import { startProxyWorker } from '../proxy/worker.js';
import { ALPN_KEY_AUTHORIZATION, publishAlpnChallenge } from './helpers/alpn-challenge.js';
import { curl } from './helpers/clients.js';
import { type AcmeLab, type Pebble, startAcmeLab } from './helpers/pebble.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { ecAndRsaServing, freePort, type KeylessLab } from './helpers/proxy-lab.js';

// Issue 14, must-show 1 (TLS-ALPN-01, RFC 8737): a real `keyedge proxy` (two
// workers, no plain-HTTP port at all) gets a certificate from a real pebble
// whose validation authority connects to the proxy's HTTPS port offering only
// "acme-tls/1": the challenge certificate is signed through the key server
// with the order's certificate key (in the SoftHSM2 token) and presented by
// the workers over the keyless bridge. The certificate is then served; curl
// trusting pebble's root gets the origin's page; the keys are read back
// through PKCS#11 attributes.
let lab: KeylessLab;
let pebble: Pebble;
let proxy: ClusterProxy;
let keyserverConfig: string;
let httpsPort: number;
let acmeLab: AcmeLab;
let cli: AcmeLab['cli'];

beforeAll(async () => {
  // Pebble's VA needs the HTTPS port before the proxy starts; its HTTP-01 port is one nobody listens on.
  httpsPort = await freePort();
  acmeLab = await startAcmeLab({ pebble: { tlsPort: httpsPort } });
  ({ lab, pebble, keyserverConfig, cli } = acmeLab);
  proxy = await startClusterProxy(
    lab,
    'acme-alpn',
    (p) =>
      storeProxyConfig(
        lab,
        { ...p, port: httpsPort },
        {
          domains: [{ name: '*.acme.test', origin: `http://127.0.0.1:${lab.origin.port}` }],
          acme: acmeLab.acme({ contact: ['mailto:ops@acme.test'], challenges: ['tls-alpn-01'], timeoutMs: 10_000 }),
        },
      ),
    {},
    90_000,
  );
}, 150_000);

afterAll(async () => {
  await proxy?.stop();
  await acmeLab?.close();
});

describe('ACME issuance against pebble, TLS-ALPN-01', () => {
  it('keyedge cert issue: validated on the HTTPS port, then served; curl trusting pebble’s root gets the page', async () => {
    const issued = await cli(['cert', 'issue', '--config', proxy.configFile, '--domain', 'alpn.acme.test']);
    expect(issued.stderr).toBe('');
    expect(issued.code).toBe(0);
    expect(issued.stdout).toMatch(/issued alpn\.acme\.test: serving, key id [0-9a-f]{64}/);
    expect(pebble.orders()).toBe(1);

    const got = await curl(httpsPort, 'alpn.acme.test', await pebble.rootFile());
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout).toContain(`"host":"alpn.acme.test:${httpsPort}"`);

    const certs = JSON.parse((await proxy.admin('GET', '/certs')).text) as { certificates: { name: string; keyId: string; issuer: string }[] };
    const entry = certs.certificates.find((c) => c.name === 'alpn.acme.test');
    expect(entry?.issuer).toMatch(/Pebble/i);

    // The account key and the certificate key (which also signed the challenge certificate): in the token, sensitive, not extractable.
    const listed = await cli(['key', 'list', '--json', '--config', keyserverConfig], 30_000);
    const keys = JSON.parse(listed.stdout) as { keyId: string; label: string; sensitive: boolean; extractable: boolean; type: string }[];
    const account = keys.filter((k) => k.label.startsWith('acme-account-'));
    const certKey = keys.find((k) => k.keyId === entry?.keyId);
    expect(account).toHaveLength(1);
    expect(certKey?.label).toMatch(/^acme-alpn\.acme\.test-/);
    // No other key was made for the challenge.
    expect(keys.filter((k) => k.label.startsWith('acme-'))).toHaveLength(2);
    for (const key of [...account, certKey]) {
      expect(key).toMatchObject({ sensitive: true, extractable: false, type: 'ec-p256' });
    }
  }, 120_000);
});

/** A handshake offering `alpn` for `servername`; the negotiated protocol, the served certificate, and whether the server closed without sending data. */
function alpnHandshake(
  port: number,
  servername: string,
  alpn: string[],
  untilEnd = true,
): Promise<{ alpn?: string | false | null; cert?: Buffer; closedByServer?: boolean; error?: string }> {
  return new Promise((resolve) => {
    // The validation certificate is self-signed: the CA's VA checks its content, not a chain (RFC 8737 §3).
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ALPNProtocols: alpn, rejectUnauthorized: false });
    let data = 0;
    socket.once('secureConnect', () => {
      const negotiated = socket.alpnProtocol;
      const cert = socket.getPeerCertificate().raw;
      // A data connection stays open: what was negotiated is all there is to see.
      if (!untilEnd) {
        socket.destroy();
        return resolve({ alpn: negotiated, cert });
      }
      socket.on('data', (d: Buffer) => (data += d.length));
      socket.once('end', () => {
        socket.end();
        resolve({ alpn: negotiated, cert, closedByServer: data === 0 });
      });
    });
    socket.once('error', (err) => resolve({ error: err.message }));
  });
}

/** `text` written to the plain-HTTP port at once; everything answered until the server closes (or 5 s). */
function rawHttp(port: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1', () => socket.write(text));
    const done = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    };
    const timer = setTimeout(done, 5_000);
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.on('close', done);
    socket.on('error', done);
  });
}

describe('the workers\u2019 acme-tls/1 answer (RFC 8737 §3), through the keyless bridge', () => {
  it('presents the challenge certificate only for a pending name, then closes; the key stays in the token', async () => {
    const answers = new ChallengeAnswers();
    const board = new ChallengeBoard(async (message) => answers.apply(message));
    // ec.lab.test held (ecAndRsaServing), any other name refused; the plain-HTTP port for the HTTP-01 probes below.
    const worker = await startProxyWorker(
      lab.proxyConfig({
        ...(await ecAndRsaServing(lab)),
        listen: [{ host: '127.0.0.1', port: 0, profile: 'intermediate' }],
        httpRedirect: { host: '127.0.0.1', port: 0 },
      }),
      { log: createLogger('alpn-test', 'silent'), challenges: answers },
    );
    const client = await KeyserverClient.connect({ unixPath: lab.socket });
    try {
      const keyAuthorization = ALPN_KEY_AUTHORIZATION;
      await publishAlpnChallenge(board, lab, client, 'new.lab.test');
      const port = worker.ports[0]!;

      const answered = await alpnHandshake(port, 'new.lab.test', ['acme-tls/1']);
      expect(answered.error).toBeUndefined();
      expect(answered).toMatchObject({ alpn: 'acme-tls/1', closedByServer: true });
      const served = new x509.X509Certificate(new Uint8Array(answered.cert!));
      expect(new X509Certificate(answered.cert!).subjectAltName).toBe('DNS:new.lab.test');
      const identifier = served.getExtension(ACME_IDENTIFIER_OID);
      expect(identifier?.critical).toBe(true);
      const expected = AsnConvert.serialize(new OctetString(createHash('sha256').update(keyAuthorization).digest()));
      expect(Buffer.from(identifier!.value)).toEqual(Buffer.from(expected));
      expect(await served.verify({ signatureOnly: true })).toBe(true);
      expect(Buffer.from(served.publicKey.rawData)).toEqual(lab.keys.ec.spki);

      // Not an HTTP-01 answer; without acme-tls/1 the name is unknown (refused); another name gets no challenge certificate.
      expect(answers.answer('new.lab.test', '/.well-known/acme-challenge/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA')).toBeUndefined();
      expect((await alpnHandshake(port, 'new.lab.test', ['http/1.1'])).error).toMatch(/unrecognized name|alert number 112/i);
      expect((await alpnHandshake(port, 'other.lab.test', ['acme-tls/1'])).error).toBeDefined();

      // acme-tls/1 with h2 for the pending name: the challenge answer alone (acme-tls/1, closed), never the data path.
      const mixed = await alpnHandshake(port, 'new.lab.test', ['h2', 'acme-tls/1', 'http/1.1']);
      expect(mixed).toMatchObject({ alpn: 'acme-tls/1', closedByServer: true });
      expect(new X509Certificate(mixed.cert!).subjectAltName).toBe('DNS:new.lab.test');
      // A held name with no challenge: acme-tls/1 never negotiated; offered alone, refused (no_application_protocol, RFC
      // 7301 §3.2); offered with the data protocols, the name's normal certificate and one of those.
      const alone = await alpnHandshake(port, 'ec.lab.test', ['acme-tls/1']);
      expect(alone.error).toMatch(/no application protocol|alert number 120/);
      for (const offered of [
        ['acme-tls/1', 'h2'],
        ['acme-tls/1', 'http/1.1'],
      ]) {
        const held = await alpnHandshake(port, 'ec.lab.test', offered, false);
        expect(held.error).toBeUndefined();
        expect(held.alpn).toBe(offered[1]);
        expect(new X509Certificate(held.cert!).subjectAltName).toContain('DNS:ec.lab.test');
      }
      // The pending name asked in another case, or with a trailing dot: the challenge certificate (the name is normalised),
      // or a refusal; never another name's.
      for (const name of ['NEW.lab.test', 'new.lab.test.']) {
        const other = await alpnHandshake(port, name, ['acme-tls/1']);
        if (other.error === undefined) expect(new X509Certificate(other.cert!).subjectAltName).toBe('DNS:new.lab.test');
      }
      // A name that is a suffix or a wildcard match of the pending one gets no challenge certificate.
      for (const name of ['lab.test', 'x.new.lab.test']) {
        const other = await alpnHandshake(port, name, ['acme-tls/1']);
        if (other.error === undefined) expect(new X509Certificate(other.cert!).subjectAltName ?? '').not.toBe('DNS:new.lab.test');
        expect(other.alpn ?? false).not.toBe('acme-tls/1');
      }

      // HTTP-01 on the plain-HTTP port: only the exact pending token for its own name is answered; anything else is the
      // port's usual answer (a redirect, 404 for an unknown host, or a challenge-shaped path relayed to the origin).
      const token = 'LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0';
      const http01 = `${token}.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI`;
      await board.add({ kind: 'http-01', token, name: 'web.lab.test', keyAuthorization: http01 });
      const httpPort = worker.httpPort!;
      const at = (path: string, host = 'web.lab.test', method = 'GET'): string => `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;
      const path = `/.well-known/acme-challenge/${token}`;
      const exact = await rawHttp(httpPort, at(path));
      expect(exact.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
      expect(exact.endsWith(`\r\n\r\n${http01}`)).toBe(true);
      expect((await rawHttp(httpPort, at(path, 'WEB.lab.test:80'))).endsWith(http01)).toBe(true);
      const head = await rawHttp(httpPort, at(path, 'web.lab.test', 'HEAD'));
      expect(head.includes(http01)).toBe(false);
      for (const [odd, host] of [
        [`/.well-known/acme-challenge/${token}/`, 'web.lab.test'],
        [`/.well-known/acme-challenge/../acme-challenge/${token}`, 'web.lab.test'],
        [`/.well-known/acme-challenge/%2e%2e/acme-challenge/${token}`, 'web.lab.test'],
        [`/.well-known/%2e%2e/.well-known/acme-challenge/${token}`, 'web.lab.test'],
        [`/.well-known/acme-challenge/${token}%2f`, 'web.lab.test'],
        [`/.well-known/acme-challenge/${token}?x=1`, 'web.lab.test'],
        [`/.well-known/acme-challenge/${'a'.repeat(8_000)}`, 'web.lab.test'],
        [path, 'new.lab.test'],
        [path, 'ec.lab.test'],
        [path, 'web.lab.test.evil'],
        [path, '127.0.0.1'],
      ] as const) {
        const got = await rawHttp(httpPort, at(odd, host));
        expect(got.includes(http01), `${odd.slice(0, 80)} Host ${host}`).toBe(false);
        expect(got.split('\r\n')[0], `${odd.slice(0, 80)} Host ${host}`).toMatch(/^HTTP\/1\.1 (200|301|302|307|308|400|404|414|431) /);
      }
      // Pipelined: each request its own answer, in order; the token's only for its own name.
      const piped = await rawHttp(
        httpPort,
        `GET ${path} HTTP/1.1\r\nHost: other.lab.test\r\n\r\nGET ${path} HTTP/1.1\r\nHost: web.lab.test\r\n\r\n${at('/next')}`,
      );
      const statuses = piped.match(/HTTP\/1\.1 \d{3}/g) ?? [];
      expect(statuses).toHaveLength(3);
      expect(piped.split(http01)).toHaveLength(2);
      expect(statuses[1]).toBe('HTTP/1.1 200');
      expect(piped.indexOf(http01)).toBeGreaterThan(piped.indexOf(statuses[1]!, piped.indexOf(statuses[0]!) + 1));
      await board.remove(token);
      expect((await rawHttp(httpPort, at(path))).includes(http01)).toBe(false);

      // Withdrawn: the name is unknown again.
      await board.remove('evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA');
      expect((await alpnHandshake(port, 'new.lab.test', ['acme-tls/1'])).error).toBeDefined();
    } finally {
      client.close();
      await worker.close();
    }
  }, 60_000);
});
