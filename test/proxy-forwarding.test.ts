import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../keyserver/shared/log.js';
import { namesClientCertificate, spellsForwarding } from '../proxy/http/forwarding-fields.js';
import { TrustedPeers } from '../proxy/http/trusted-peers.js';
import { startProxyWorker, type RunningWorker } from '../proxy/worker.js';
import { closeSession, h2Connect, h2Request } from './helpers/h2.js';
import { createCa, issue, writeIssued, writePem } from './helpers/pki.js';
import { startKeylessLab, type KeylessLab } from './helpers/proxy-lab.js';
import { answered, request } from './helpers/requests.js';

// Forwarding headers from trusted and untrusted peers (RFC 7239, X-Forwarded-*),
// and https origins verified against a configured CA, with their SNI and Host.
let lab: KeylessLab;
let proxy: RunningWorker;
let ca: string;
const lines: Record<string, unknown>[] = [];
const servers: net.Server[] = [];

/** What an origin saw: the headers of interest and, for https, the SNI. */
interface Seen {
  host?: string;
  xff?: string;
  xfp?: string;
  xfh?: string;
  forwarded?: string;
  sni?: string | false | null;
  /** The forwarding fields spelt with `_` for `-`, which CGI-style servers read as the same variables. */
  underscored?: string[];
  /** The fields of FAMILY (in either spelling) that reached the origin, by the name it got. */
  family?: Record<string, string>;
}

/**
 * Forwarding fields keyedge does not set, which frameworks and proxies read to build absolute URLs, decide
 * "is this HTTPS", name the client, or say what the client asked for (forwarding-fields.ts says which reads
 * which), each with a value a spoofing client would send.
 */
const FAMILY: Readonly<Record<string, string>> = {
  'x-forwarded-port': '8443',
  'x-forwarded-ssl': 'on',
  'x-forwarded-scheme': 'https',
  'x-forwarded-protocol': 'ssl',
  'x-forwarded-prefix': '/evil',
  'x-forwarded-server': 'evil.test',
  'x-url-scheme': 'https',
  'x-scheme': 'https',
  'front-end-https': 'on',
  'x-proxied-https': 'on',
  'x-real-ip': '6.6.6.6',
  'true-client-ip': '6.6.6.6',
  // The client's address, to an ACL or a rate limit.
  'x-client-ip': '6.6.6.6',
  'client-ip': '6.6.6.6',
  'cf-connecting-ip': '6.6.6.6',
  'fastly-client-ip': '6.6.6.6',
  'x-cluster-client-ip': '6.6.6.6',
  'x-forwarded': '6.6.6.6',
  'forwarded-for': '6.6.6.6',
  // X-Forwarded-For as ingress-nginx received it, which applications behind it read as the client's.
  'x-original-forwarded-for': '6.6.6.6',
  // What was asked for: a request for / that an application or an auth service takes as one for /admin.
  'x-original-url': '/admin',
  'x-rewrite-url': '/admin',
  'x-original-method': 'DELETE',
  'x-forwarded-uri': '/admin',
  'x-forwarded-method': 'DELETE',
  // The Host the client used, to an application building URLs (Application Gateway's, ngrok's).
  'x-original-host': 'evil.test',
  // A client certificate and its verification, which keyedge never asks for: an identity of the client's choosing.
  'x-forwarded-client-cert': 'By=spiffe://lab/edge;Hash=00;Subject="CN=admin";URI=spiffe://lab/admin',
  'x-forwarded-tls-client-cert': 'MIIBforged',
  'x-forwarded-tls-client-cert-info': 'Subject%3D%22CN%3Dadmin%22',
  'x-client-cert': 'MIIBforged',
  'x-ssl-cert': 'MIIBforged',
  'x-arr-clientcert': 'MIIBforged',
  'client-cert': ':MIIBforged:',
  'client-cert-chain': ':MIIBforged:',
  // ASP.NET Core's IIS integration, and Puppet's defaults (X-Client-DN, X-Client-Verify).
  'ms-aspnetcore-clientcert': 'MIIBforged',
  'x-client-verify': 'SUCCESS',
  'x-client-dn': 'CN=admin',
  // The X-SSL-* and Ssl-Client-* families go by prefix: these are in no list.
  'x-ssl-issuer': 'CN=Lab CA',
  'x-ssl-subject': 'CN=admin',
  'x-ssl-verify': 'SUCCESS',
  'x-ssl-issuer-hash-1': '0ae1f2',
  'x-ssl-client-verify': 'SUCCESS',
  'x-ssl-client-s-dn': 'CN=admin',
  'x-ssl-client-escaped-cert': 'MIIBforged',
  'ssl-client-cert': 'MIIBforged',
  'ssl-client-verify': 'SUCCESS',
  'ssl-client-subject-dn': 'CN=admin',
};
const echo = (req: http.IncomingMessage, res: http.ServerResponse): void => {
  const seen: Seen = {
    host: req.headers.host,
    xff: req.headers['x-forwarded-for'] as string | undefined,
    xfp: req.headers['x-forwarded-proto'] as string | undefined,
    xfh: req.headers['x-forwarded-host'] as string | undefined,
    forwarded: req.headers.forwarded,
    sni: (req.socket as tls.TLSSocket).servername,
  };
  const underscored = Object.keys(req.headers).filter((name) => name.includes('_') && name.includes('forwarded'));
  if (underscored.length > 0) seen.underscored = underscored;
  const family = Object.entries(req.headers).filter(([name]) => name.replaceAll('_', '-') in FAMILY);
  if (family.length > 0) seen.family = Object.fromEntries(family) as Record<string, string>;
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(seen));
};

async function listen(server: net.Server): Promise<number> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as net.AddressInfo).port;
}

beforeAll(async () => {
  lab = await startKeylessLab();
  ca = readFileSync(lab.caFile, 'utf8');
  const ec = await lab.certificate('ec', lab.keys.ec, ['lab.test', '*.lab.test']);
  const plain = `http://127.0.0.1:${await listen(http.createServer(echo))}`;
  const originCa = await createCa('origin CA');
  const originCaFile = writePem(lab.dir, 'origin-ca', originCa.certPem);
  const files = writeIssued(lab.dir, 'origin', await issue(originCa, { commonName: 'origin.test', dnsNames: ['origin.test'], keyAlgorithm: 'ec-p256' }));
  const secure = `https://127.0.0.1:${await listen(https.createServer({ cert: readFileSync(files.cert), key: readFileSync(files.key) }, echo))}`;
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  proxy = await startProxyWorker(
    lab.proxyConfig({
      certificates: [{ name: 'ec', chain: ec.file }],
      domains: [
        { name: 'plain.lab.test', origin: plain },
        { name: 'tls.lab.test', origin: secure, originTls: { ca: originCaFile, servername: 'origin.test' } },
        { name: 'tls-client-host.lab.test', origin: secure, originHost: 'client', originTls: { ca: originCaFile, servername: 'origin.test' } },
        { name: 'wrong-ca.lab.test', origin: secure, originTls: { ca: lab.caFile, servername: 'origin.test' } },
        { name: 'wrong-name.lab.test', origin: secure, originTls: { ca: originCaFile, servername: 'other.test' } },
        { name: 'default-roots.lab.test', origin: secure },
      ],
      // The test client connects from 127.0.0.1 (trusted) or 127.0.0.2 (not).
      forwarding: { trustedProxies: ['127.0.0.1/32', 'fd00::/8'] },
    }),
    { log: createLogger('forwarding-test', 'info', sink) },
  );
});
afterAll(async () => {
  await proxy?.close();
  for (const server of servers) server.close();
  await lab?.close();
});

const claims = { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'www.example', forwarded: 'for=203.0.113.9;proto=http' };

async function seen(host: string, options: Parameters<typeof request>[3] = {}): Promise<Seen> {
  const res = answered(await request(proxy.ports[0]!, ca, host, options));
  expect(res.status).toBe(200);
  return JSON.parse(res.body) as Seen;
}

describe('trusted peers', () => {
  it('matches addresses, CIDR blocks and IPv4-mapped IPv6 peers', () => {
    const peers = new TrustedPeers(['10.0.0.0/8', '192.0.2.7', 'fd00::/8', '::1']);
    expect(peers.trusts('10.20.30.40')).toBe(true);
    expect(peers.trusts('::ffff:10.1.2.3')).toBe(true);
    expect(peers.trusts('192.0.2.7')).toBe(true);
    expect(peers.trusts('192.0.2.8')).toBe(false);
    expect(peers.trusts('fd12:3456::1')).toBe(true);
    expect(peers.trusts('::1')).toBe(true);
    expect(peers.trusts('2001:db8::1')).toBe(false);
    expect(peers.trusts(undefined)).toBe(false);
    expect(new TrustedPeers().trusts('127.0.0.1')).toBe(false);
  });

  it('knows the X-SSL-* and Ssl-Client-* families by prefix, in either spelling, and nothing else by it', () => {
    for (const name of ['x-ssl-client-verify', 'x-ssl-client-i-dn', 'x-ssl-cert', 'x-ssl-issuer', 'x-ssl-subject', 'ssl-client-cert', 'ssl-client-issuer-dn'])
      expect(namesClientCertificate(name)).toBe(true);
    for (const name of ['x-ssl', 'x-ssl-', 'ssl-client', 'x-sslv3', 'x-request-id', 'sec-fetch-site', 'ssl-clientele'])
      expect(namesClientCertificate(name)).toBe(false);
    expect(spellsForwarding('x_ssl_issuer')).toBe(true);
    // Longer than any listed name, yet of a family; an application's own name with `_` is not.
    expect(spellsForwarding('x_ssl_client_certificate_serial_number_hex')).toBe(true);
    expect(spellsForwarding('ssl_client_fingerprint')).toBe(true);
    expect(spellsForwarding('x_my_application_session_identifier_field')).toBe(false);
  });

  it("keeps a trusted peer's forwarding headers and appends to them", async () => {
    expect(await seen('plain.lab.test', { headers: claims })).toEqual({
      host: 'plain.lab.test',
      xff: '203.0.113.9, 127.0.0.1',
      xfp: 'http',
      xfh: 'www.example',
      forwarded: 'for=203.0.113.9;proto=http, for=127.0.0.1;proto=https;host="plain.lab.test"',
    });
  });

  it('sets them itself for a trusted peer that sent none', async () => {
    expect(await seen('plain.lab.test')).toEqual({
      host: 'plain.lab.test',
      xff: '127.0.0.1',
      xfp: 'https',
      xfh: 'plain.lab.test',
      forwarded: 'for=127.0.0.1;proto=https;host="plain.lab.test"',
    });
  });

  it("never passes on a trusted peer's client's forwarding fields spelt with _ for -: no proxy writes them, and the application reads them as the ones set here", async () => {
    // A load balancer in front appends to X-Forwarded-For and passes x_forwarded_for from its client untouched (only
    // nginx drops names with `_` by default): PHP-FPM, WSGI and Rack read both as HTTP_X_FORWARDED_FOR.
    const headers = { x_forwarded_for: '6.6.6.6', x_forwarded_proto: 'http', x_forwarded_host: 'evil.test', 'x-forwarded-for': '203.0.113.9' };
    expect(await seen('plain.lab.test', { headers })).toMatchObject({ xff: '203.0.113.9, 127.0.0.1' });
    expect((await seen('plain.lab.test', { headers })).underscored).toBeUndefined();
  });

  it('drops what an untrusted peer claimed and replaces it', async () => {
    expect(await seen('plain.lab.test', { headers: claims, localAddress: '127.0.0.2' })).toEqual({
      host: 'plain.lab.test',
      xff: '127.0.0.2',
      xfp: 'https',
      xfh: 'plain.lab.test',
      forwarded: 'for=127.0.0.2;proto=https;host="plain.lab.test"',
    });
  });
});

type Transport = 'HTTP/1.1' | 'HTTP/2' | 'an Upgrade';
const TRANSPORTS: readonly Transport[] = ['HTTP/1.1', 'HTTP/2', 'an Upgrade'];

/** What the origin of plain.lab.test saw of one request with `headers`, sent from `localAddress` over `transport`. */
async function through(transport: Transport, headers: Record<string, string>, localAddress: string): Promise<Seen> {
  const host = 'plain.lab.test';
  if (transport === 'HTTP/2') {
    const port = proxy.ports[0]!;
    const session = h2Connect(port, ca, host, {
      createConnection: () => tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress }), ca, servername: host, ALPNProtocols: ['h2'] }),
    });
    try {
      const answer = await h2Request(session, { ':path': '/', ...headers });
      expect(answer.status).toBe(200);
      return JSON.parse(answer.body.toString()) as Seen;
    } finally {
      await closeSession(session);
    }
  }
  // An Upgrade to anything but WebSocket goes as an ordinary request, with node:http's client and the headers as an
  // object (upgrade.ts), where HTTP/1.1 and HTTP/2 requests go with undici and a flat list.
  const upgrade: Record<string, string> = transport === 'an Upgrade' ? { connection: 'upgrade', upgrade: 'example/1' } : {};
  return seen(host, { headers: { ...upgrade, ...headers }, localAddress });
}

describe('the forwarding fields keyedge does not set', () => {
  // An origin builds redirects and links with the port and prefix these name, and takes "on"/"https"/"ssl" in any of
  // them for HTTPS; X-Real-IP, True-Client-IP and X-Client-IP win over X-Forwarded-For where they are read (Tornado,
  // chi, request-ip); X-Original-URL and X-Forwarded-Uri stand for the path asked for (Yii, Authelia, oauth2-proxy);
  // X-Forwarded-Client-Cert, X-Client-Cert, Client-Cert, X-SSL-Client-Verify… for a verified client certificate
  // (Envoy's XFCC, ASP.NET Core's certificate forwarding, RFC 9440, nginx and HAProxy configs), which keyedge never asks for.
  const spoofed = {
    ...FAMILY,
    x_forwarded_port: '1',
    x_forwarded_ssl: 'on',
    x_real_ip: '6.6.6.7',
    front_end_https: 'on',
    x_client_ip: '6.6.6.7',
    client_ip: '6.6.6.7',
    cf_connecting_ip: '6.6.6.7',
    x_original_url: '/admin',
    x_rewrite_url: '/admin',
    x_forwarded_uri: '/admin',
    x_original_host: 'evil.test',
    x_forwarded_client_cert: 'Subject="CN=admin"',
    x_client_cert: 'MIIBforged',
    x_arr_clientcert: 'MIIBforged',
    client_cert: ':MIIBforged:',
    x_ssl_client_verify: 'SUCCESS',
    x_ssl_client_escaped_cert: 'MIIBforged',
    x_ssl_issuer: 'CN=Lab CA',
    x_original_forwarded_for: '6.6.6.7',
    ms_aspnetcore_clientcert: 'MIIBforged',
    x_client_verify: 'SUCCESS',
    x_client_dn: 'CN=admin',
    ssl_client_cert: 'MIIBforged',
    ssl_client_verify: 'SUCCESS',
  };

  it.each(TRANSPORTS)('never reach the origin from an untrusted peer over %s, in either spelling', async (transport) => {
    const result = await through(transport, spoofed, '127.0.0.2');
    expect(result.family).toBeUndefined();
    expect(result).toMatchObject({ xff: '127.0.0.2', xfp: 'https' });
  });

  it.each(TRANSPORTS)("pass from a trusted peer over %s, as its X-Forwarded-Proto does; their `_` spellings do not (its client's)", async (transport) => {
    const result = await through(transport, spoofed, '127.0.0.1');
    expect(result.family).toEqual(FAMILY);
    expect(result).toMatchObject({ xff: '127.0.0.1', xfp: 'https' });
  });
});

describe('https origins', () => {
  it("verifies the origin against the configured CA, sending the configured SNI and the origin's Host", async () => {
    const result = await seen('tls.lab.test');
    expect(result.sni).toBe('origin.test');
    expect(result.host).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(result.xfh).toBe('tls.lab.test');
  });

  it('sends the client\'s Host when originHost is "client"', async () => {
    const result = await seen('tls-client-host.lab.test');
    expect(result).toMatchObject({ sni: 'origin.test', host: 'tls-client-host.lab.test' });
  });

  it.each([
    ['wrong-ca.lab.test', 'an origin certificate from another CA'],
    ['wrong-name.lab.test', 'a certificate for another name'],
    ['default-roots.lab.test', 'a private CA without originTls.ca'],
  ])('answers 502 for %s (%s), with the error code in the log', async (host) => {
    const res = answered(await request(proxy.ports[0]!, ca, host));
    expect(res.status).toBe(502);
    expect(res.headers['x-keyedge-error']).toBe('KEYEDGE_HTTP_ORIGIN_CERTIFICATE');
    await new Promise((resolve) => setTimeout(resolve, 50));
    const warning = lines.find((l) => l.msg === 'origin request failed' && l.domain === host);
    expect(warning).toMatchObject({ code: 'KEYEDGE_HTTP_ORIGIN_CERTIFICATE' });
    expect(String((warning?.err as { code?: string } | undefined)?.code)).toMatch(/CERT|SIGNATURE|ALTNAME/);
    expect(lines.some((l) => l.access === true && l.domain === host && l.status === 502 && l.code === 'KEYEDGE_HTTP_ORIGIN_CERTIFICATE')).toBe(true);
  });
});
