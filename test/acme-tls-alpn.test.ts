import { createHash, X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyserverClient } from '../keyserver/client/client.js';
import { Algorithm } from '../keyserver/protocol/constants.js';
import { ACME_IDENTIFIER_OID, createAlpnChallengeCertWith } from '../keyserver/shared/alpn-cert.js';
import { csrKeyOfSpki } from '../keyserver/shared/csr.js';
import { createLogger } from '../keyserver/shared/log.js';
import * as x509 from '../keyserver/shared/x509.js';
import { ChallengeAnswers, ChallengeBoard } from '../proxy/acme/challenges.js';
import { ecdsaDerToRaw } from '../proxy/acme/jws.js';
import { startProxyWorker } from '../proxy/worker.js';
import { curl } from './helpers/clients.js';
import { type AcmeLab, type Pebble, startAcmeLab } from './helpers/pebble.js';
import { type ClusterProxy, startClusterProxy, storeProxyConfig } from './helpers/proxy-cluster.js';
import { freePort, type KeylessLab } from './helpers/proxy-lab.js';

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
): Promise<{ alpn?: string | false | null; cert?: Buffer; closedByServer?: boolean; error?: string }> {
  return new Promise((resolve) => {
    // The validation certificate is self-signed: the CA's VA checks its content, not a chain (RFC 8737 §3).
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ALPNProtocols: alpn, rejectUnauthorized: false });
    let data = 0;
    socket.once('secureConnect', () => {
      const negotiated = socket.alpnProtocol;
      const cert = socket.getPeerCertificate().raw;
      socket.on('data', (d: Buffer) => (data += d.length));
      socket.once('end', () => {
        socket.end();
        resolve({ alpn: negotiated, cert, closedByServer: data === 0 });
      });
    });
    socket.once('error', (err) => resolve({ error: err.message }));
  });
}

describe('the workers\u2019 acme-tls/1 answer (RFC 8737 §3), through the keyless bridge', () => {
  it('presents the challenge certificate only for a pending name, then closes; the key stays in the token', async () => {
    const answers = new ChallengeAnswers();
    const board = new ChallengeBoard(async (message) => answers.apply(message));
    const worker = await startProxyWorker(
      lab.proxyConfig({ sni: { onUnknown: 'reject' }, listen: [{ host: '127.0.0.1', port: 0, profile: 'intermediate' }] }),
      { log: createLogger('alpn-test', 'silent'), challenges: answers },
    );
    const client = await KeyserverClient.connect({ unixPath: lab.socket });
    try {
      const key = lab.keys.ec;
      const keyAuthorization = 'evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI';
      const certificate = await createAlpnChallengeCertWith(csrKeyOfSpki(key.spki), 'new.lab.test', keyAuthorization, async (_hash, digest) =>
        ecdsaDerToRaw(await client.sign(key.keyId, Algorithm.ECDSA_SHA256, digest), 32),
      );
      await board.add({
        kind: 'tls-alpn-01',
        token: 'evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA',
        name: 'new.lab.test',
        certificatePem: certificate.toString('pem'),
        keyId: key.keyId,
        spki: key.spki.toString('base64'),
      });
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
      expect(Buffer.from(served.publicKey.rawData)).toEqual(key.spki);

      // Not an HTTP-01 answer; without acme-tls/1 the name is unknown (refused); another name gets no challenge certificate.
      expect(answers.answer('new.lab.test', '/.well-known/acme-challenge/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA')).toBeUndefined();
      expect((await alpnHandshake(port, 'new.lab.test', ['http/1.1'])).error).toMatch(/unrecognized name|alert number 112/i);
      expect((await alpnHandshake(port, 'other.lab.test', ['acme-tls/1'])).error).toBeDefined();

      // Withdrawn: the name is unknown again.
      await board.remove('evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA');
      expect((await alpnHandshake(port, 'new.lab.test', ['acme-tls/1'])).error).toBeDefined();
    } finally {
      client.close();
      await worker.close();
    }
  }, 60_000);
});
