/**
 * A small test PKI: CAs and leaf certificates made with @peculiar/x509 over
 * node's WebCrypto, written out as PEM (certificate, PKCS#8 key).
 *
 *   const ca = await createCa('test-ca');
 *   const leaf = await issue(ca, { commonName: 'edge-1', dnsNames: ['localhost'], keyAlgorithm: 'ec-p256' });
 *   const files = writeIssued(dir, 'edge-1', leaf); // { cert, key } paths
 *
 * Leaves carry serverAuth and clientAuth, so one certificate serves either
 * side of a TLS connection; validity, SANs and key type are the caller's.
 */
import { createPublicKey, webcrypto } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '../../keyserver/shared/x509.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

/** What the product accepts, plus what certificate validation must refuse (rsa-1024, ec-p521 leaves). */
export type TestKeyAlgorithm = 'ec-p256' | 'ec-p384' | 'ec-p521' | 'rsa-1024' | 'rsa-2048';

/** The hash the issuer signs with; SHA-1 only to make certificates that validation must refuse. */
export type TestSignatureHash = 'SHA-1' | 'SHA-256' | 'SHA-384';

export interface Issued {
  readonly certPem: string;
  /** PKCS#8 PEM. */
  readonly keyPem: string;
  readonly cert: x509.X509Certificate;
  readonly keys: CryptoKeyPair;
}

export interface TestCa extends Issued {
  readonly name: string;
}

export interface IssueOptions {
  readonly commonName: string;
  readonly dnsNames?: readonly string[];
  readonly uris?: readonly string[];
  readonly ips?: readonly string[];
  /** Default: one minute ago (tolerates clock skew). */
  readonly notBefore?: Date;
  /** Default: one day after notBefore. */
  readonly notAfter?: Date;
  readonly keyAlgorithm: TestKeyAlgorithm;
  /** A CA certificate (basicConstraints cA, keyCertSign) instead of a TLS leaf. */
  readonly isCa?: boolean;
  /** An OCSP responder URL for the Authority Information Access extension. */
  readonly ocspUrl?: string;
  /** Default SHA-256. */
  readonly signatureHash?: TestSignatureHash;
  /** A leaf's extended key usages (OIDs); default serverAuth and clientAuth. */
  readonly extendedKeyUsages?: readonly string[];
  /** A leaf that also says it is a CA (basicConstraints cA), as a misissued one may. */
  readonly leafIsCa?: boolean;
  /** More extensions, as given (a malformed one included), after the others. */
  readonly extraExtensions?: readonly x509.Extension[];
}

const DAY_MS = 86_400_000;

function keyParams(algorithm: TestKeyAlgorithm): RsaHashedKeyGenParams | EcKeyGenParams {
  switch (algorithm) {
    case 'ec-p256':
      return { name: 'ECDSA', namedCurve: 'P-256' };
    case 'ec-p384':
      return { name: 'ECDSA', namedCurve: 'P-384' };
    case 'ec-p521':
      return { name: 'ECDSA', namedCurve: 'P-521' };
    case 'rsa-1024':
    case 'rsa-2048':
      return { name: 'RSASSA-PKCS1-v1_5', modulusLength: algorithm === 'rsa-1024' ? 1024 : 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };
  }
}

/**
 * The key and algorithm that sign with `keys` using `hash`. WebCrypto binds
 * an RSA key to one hash, so for another hash the private key is re-imported.
 */
async function signer(keys: CryptoKeyPair, hash: TestSignatureHash): Promise<{ key: CryptoKey; algorithm: Algorithm | EcdsaParams | RsaHashedImportParams }> {
  if (keys.privateKey.algorithm.name === 'ECDSA') return { key: keys.privateKey, algorithm: { name: 'ECDSA', hash } };
  const algorithm = { name: 'RSASSA-PKCS1-v1_5', hash };
  if ((keys.privateKey.algorithm as RsaHashedKeyAlgorithm).hash.name === hash) return { key: keys.privateKey, algorithm };
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { key: await webcrypto.subtle.importKey('pkcs8', pkcs8, algorithm, false, ['sign']), algorithm };
}

async function generateKeys(algorithm: TestKeyAlgorithm): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(keyParams(algorithm), true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function pkcs8Pem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

function serialNumber(): string {
  // Positive (top bit clear), 16 bytes: RFC 5280 §4.1.2.2.
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}

function names(options: IssueOptions): x509.JsonGeneralName[] {
  return [
    ...(options.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(options.uris ?? []).map((value) => ({ type: 'url' as const, value })),
    ...(options.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
  ];
}

async function build(options: IssueOptions, issuer: TestCa | undefined, givenPublicKey?: CryptoKey): Promise<Issued> {
  const keys: CryptoKeyPair = givenPublicKey === undefined ? await generateKeys(options.keyAlgorithm) : ({ publicKey: givenPublicKey } as CryptoKeyPair);
  const notBefore = options.notBefore ?? new Date(Date.now() - 60_000);
  const notAfter = options.notAfter ?? new Date(notBefore.getTime() + DAY_MS);
  const subject = `CN=${options.commonName}`;
  const extensions: x509.Extension[] = [
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    new x509.BasicConstraintsExtension(options.isCa === true || options.leafIsCa === true, undefined, true),
    new x509.KeyUsagesExtension(
      options.isCa ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature : x509.KeyUsageFlags.digitalSignature,
      true,
    ),
  ];
  if (!options.isCa) {
    extensions.push(
      new x509.ExtendedKeyUsageExtension([...(options.extendedKeyUsages ?? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth])]),
    );
  }
  if (options.ocspUrl !== undefined) extensions.push(new x509.AuthorityInfoAccessExtension({ ocsp: [new x509.GeneralName('url', options.ocspUrl)] }));
  const sans = names(options);
  if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sans));
  extensions.push(...(options.extraExtensions ?? []));

  let cert: x509.X509Certificate;
  const hash = options.signatureHash ?? 'SHA-256';
  if (issuer === undefined) {
    const sign = await signer(keys, hash);
    cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serialNumber(),
      name: subject,
      notBefore,
      notAfter,
      keys: { publicKey: keys.publicKey, privateKey: sign.key },
      signingAlgorithm: sign.algorithm,
      extensions,
    });
  } else {
    extensions.push(await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey));
    const sign = await signer(issuer.keys, hash);
    cert = await x509.X509CertificateGenerator.create({
      serialNumber: serialNumber(),
      subject,
      issuer: issuer.cert.subject,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: sign.key,
      signingAlgorithm: sign.algorithm,
      extensions,
    });
  }
  const keyPem = givenPublicKey === undefined ? await pkcs8Pem(keys.privateKey) : '';
  return { certPem: cert.toString('pem'), keyPem, cert, keys };
}

/** A self-signed root CA (EC P-256 unless told otherwise), valid from a minute ago for ten days, self-signed with `signatureHash`. */
export async function createCa(name: string, keyAlgorithm: TestKeyAlgorithm = 'ec-p256', signatureHash: TestSignatureHash = 'SHA-256'): Promise<TestCa> {
  const notBefore = new Date(Date.now() - 60_000);
  const issued = await build(
    { commonName: name, keyAlgorithm, isCa: true, notBefore, notAfter: new Date(notBefore.getTime() + 10 * DAY_MS), signatureHash },
    undefined,
  );
  return { ...issued, name };
}

/** A certificate signed by `ca`: a TLS leaf, or with `isCa` an intermediate CA. */
export async function issue(ca: TestCa, options: IssueOptions): Promise<Issued> {
  return build(options, ca);
}

/**
 * A leaf for a public key we do not hold (a key inside the token): `keyPem`
 * is empty. The key's type comes from the SPKI.
 */
export async function issueForPublicKey(ca: TestCa, spki: Buffer, options: Omit<IssueOptions, 'keyAlgorithm' | 'isCa'>): Promise<Issued> {
  const type = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  const details = type.asymmetricKeyDetails;
  const algorithm: RsaHashedImportParams | EcKeyImportParams =
    type.asymmetricKeyType === 'ec'
      ? { name: 'ECDSA', namedCurve: details?.namedCurve === 'secp384r1' ? 'P-384' : 'P-256' }
      : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
  const publicKey = await webcrypto.subtle.importKey('spki', new Uint8Array(spki), algorithm, true, ['verify']);
  return build({ ...options, keyAlgorithm: type.asymmetricKeyType === 'ec' ? 'ec-p256' : 'rsa-2048' }, ca, publicKey);
}

/** An intermediate CA under `ca`, usable as the issuer of further certificates. */
export async function issueCa(
  ca: TestCa,
  name: string,
  keyAlgorithm: TestKeyAlgorithm = 'ec-p256',
  extra: Pick<IssueOptions, 'signatureHash' | 'notBefore' | 'notAfter'> = {},
): Promise<TestCa> {
  return { ...(await build({ commonName: name, keyAlgorithm, isCa: true, ...extra }, ca)), name };
}

/** Writes `pem` to `<dir>/<name>.pem` (mode 0600) and returns the path. */
export function writePem(dir: string, name: string, pem: string): string {
  const file = join(dir, `${name}.pem`);
  writeFileSync(file, pem.endsWith('\n') ? pem : `${pem}\n`, { mode: 0o600 });
  return file;
}

/** Writes `<name>.pem` (certificate) and `<name>-key.pem` (PKCS#8 key). */
export function writeIssued(dir: string, name: string, issued: Issued): { cert: string; key: string } {
  return { cert: writePem(dir, name, issued.certPem), key: writePem(dir, `${name}-key`, issued.keyPem) };
}

export interface TestPkiFiles {
  readonly ca: TestCa;
  readonly caFile: string;
  /** SAN IP 127.0.0.1 and DNS localhost, CN localhost. */
  readonly server: { cert: string; key: string };
  /** Client certificates by common name, from `ca`. */
  readonly clients: Record<string, { cert: string; key: string; issued: Issued }>;
  /** An unrelated CA and a client certificate from it (CN "foreign-client" unless told otherwise). */
  readonly otherCa: TestCa;
  readonly otherCaFile: string;
  readonly foreignClient: { cert: string; key: string; issued: Issued };
}

export interface ClientSpec {
  readonly commonName: string;
  readonly dnsNames?: readonly string[];
  readonly uris?: readonly string[];
  readonly keyAlgorithm?: TestKeyAlgorithm;
}

/**
 * The usual mutual-TLS set-up in `dir`: a CA, a server certificate for
 * 127.0.0.1/localhost, the given client certificates, and another CA with a
 * client certificate of its own (which the first CA's trust must refuse).
 */
export async function createTestPki(dir: string, clients: readonly ClientSpec[], foreignCommonName = 'foreign-client'): Promise<TestPkiFiles> {
  const ca = await createCa('keyedge test CA');
  const otherCa = await createCa('unrelated test CA');
  const server = await issue(ca, { commonName: 'localhost', dnsNames: ['localhost'], ips: ['127.0.0.1'], keyAlgorithm: 'ec-p256' });
  const out: Record<string, { cert: string; key: string; issued: Issued }> = {};
  for (const spec of clients) {
    const issued = await issue(ca, {
      commonName: spec.commonName,
      dnsNames: spec.dnsNames,
      uris: spec.uris,
      keyAlgorithm: spec.keyAlgorithm ?? 'ec-p256',
    });
    out[spec.commonName] = { ...writeIssued(dir, `client-${spec.commonName}`, issued), issued };
  }
  const foreign = await issue(otherCa, { commonName: foreignCommonName, keyAlgorithm: 'ec-p256' });
  return {
    ca,
    caFile: writePem(dir, 'ca', ca.certPem),
    server: writeIssued(dir, 'server', server),
    clients: out,
    otherCa,
    otherCaFile: writePem(dir, 'other-ca', otherCa.certPem),
    foreignClient: { ...writeIssued(dir, 'foreign-client', foreign), issued: foreign },
  };
}
