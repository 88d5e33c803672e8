/**
 * Certificates for the certificate benchmarks, made in the bench process fast enough for 10,000 of them: a throwaway
 * ECDSA P-256 CA (node:crypto) and leaves for a given public key, DER-encoded here and signed with `crypto.sign`
 * (about 0.1 ms a leaf; openssl per certificate would take minutes, @peculiar/x509 over WebCrypto several seconds).
 *
 * The leaves are ordinary RFC 5280 TLS server certificates: v3, a positive 16-byte serial (§4.1.2.2), UTCTime validity
 * (§4.1.2.5.1), critical basicConstraints CA:FALSE and keyUsage digitalSignature, EKU serverAuth, subjectAltName
 * dNSNames (RFC 6125 §6.4.4: clients match on these), and subject/authority key identifiers (§4.2.1.1-2) so chain
 * building never falls back to name matching.
 */
import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from 'node:crypto';

/** DER (X.690 §8, §10): tag, length (short form below 128, else long form), content. */
function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : n < 0x10000 ? [0x82, n >> 8, n & 0xff] : [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), content]);
}
const seq = (...parts: Buffer[]): Buffer => tlv(0x30, Buffer.concat(parts));
const hex = (text: string): Buffer => Buffer.from(text.replaceAll(' ', ''), 'hex');

/** An extension (critical or not) of the OBJECT IDENTIFIER 2.5.29.`id` (encoded here) with `value`. */
const extension = (id: number, critical: boolean, value: Buffer): Buffer =>
  seq(hex(`06 03 55 1d ${id.toString(16).padStart(2, '0')}`), ...(critical ? [hex('01 01 ff')] : []), tlv(0x04, value));
const EXT = { subjectKeyIdentifier: 0x0e, keyUsage: 0x0f, subjectAltName: 0x11, basicConstraints: 0x13, authorityKeyIdentifier: 0x23, extKeyUsage: 0x25 };
const SIGNATURE_ALGORITHM = seq(hex('06 08 2a 86 48 ce 3d 04 03 02')); // ecdsa-with-SHA256 1.2.840.10045.4.3.2, no parameters (RFC 5758 §3.2)

/** A Name of one commonName (2.5.4.3) RDN. */
const name = (commonName: string): Buffer => seq(tlv(0x31, seq(hex('06 03 55 04 03'), tlv(0x0c, Buffer.from(commonName, 'utf8')))));

/** UTCTime YYMMDDHHMMSSZ: RFC 5280 §4.1.2.5 requires it for years before 2050. */
const utcTime = (date: Date): Buffer => tlv(0x17, Buffer.from(`${date.toISOString().slice(2, 19).replace(/[-T:]/g, '')}Z`, 'ascii'));

/** SHA-1 of the SPKI: a key identifier (RFC 5280 §4.2.1.2 allows any unique value; this is its method 1 in spirit). */
const keyIdentifier = (spkiDer: Buffer): Buffer => createHash('sha1').update(spkiDer).digest();

/** 16 random bytes, top bit clear (positive INTEGER) and first byte ≥ 0x10, so every serial prints as 32 hex digits. */
function newSerial(): Buffer {
  const serial = randomBytes(16);
  serial[0] = 0x10 + (serial[0]! % 0x70);
  return serial;
}

/** A v3 certificate, PEM, signed by `signingKey` (ECDSA P-256 with SHA-256). */
function certificate(
  serial: Buffer,
  issuer: Buffer,
  subject: Buffer,
  validity: readonly [Date, Date],
  spkiDer: Buffer,
  extensions: readonly Buffer[],
  key: KeyObject,
) {
  const version = hex('a0 03 02 01 02'); // [0] v3
  const tbs = seq(version, tlv(0x02, serial), SIGNATURE_ALGORITHM, issuer, seq(...validity.map(utcTime)), subject, spkiDer, tlv(0xa3, seq(...extensions)));
  // node:crypto's ECDSA signature is DER Ecdsa-Sig-Value, what X.509 carries (RFC 5758 §3.2).
  const der = seq(tbs, SIGNATURE_ALGORITHM, tlv(0x03, Buffer.concat([Buffer.from([0]), sign('sha256', tbs, key)])));
  return `-----BEGIN CERTIFICATE-----\n${der
    .toString('base64')
    .match(/.{1,64}/g)!
    .join('\n')}\n-----END CERTIFICATE-----\n`;
}

/** An issued leaf; `serial` in upper-case hex, as node:tls reports a peer certificate's serialNumber. */
type IssuedLeaf = { readonly pem: string; readonly serial: string };

/** A throwaway CA, used from one thread; `issue` is synchronous. */
export class BenchCa {
  readonly pem: string;
  readonly #key: KeyObject;
  readonly #subject: Buffer;
  readonly #keyId: Buffer;
  /** From a minute back (clock skew between the bench and the proxy's validation) for `validDays`. */
  readonly #validity: readonly [Date, Date];

  constructor(commonName: string, validDays = 10) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spkiDer = publicKey.export({ type: 'spki', format: 'der' });
    this.#key = privateKey;
    this.#subject = name(commonName);
    this.#keyId = keyIdentifier(spkiDer);
    const notBefore = new Date(Date.now() - 60_000);
    this.#validity = [notBefore, new Date(notBefore.getTime() + validDays * 86_400_000)];
    const extensions = [
      extension(EXT.basicConstraints, true, seq(hex('01 01 ff'))), // cA TRUE
      extension(EXT.keyUsage, true, hex('03 02 01 06')), // keyCertSign, cRLSign
      extension(EXT.subjectKeyIdentifier, false, tlv(0x04, this.#keyId)),
    ];
    this.pem = certificate(newSerial(), this.#subject, this.#subject, this.#validity, spkiDer, extensions, privateKey);
  }

  /** A TLS server leaf for `spkiDer` (the key server's public key) covering `dnsNames`; valid as long as the CA, less a day. */
  issue(spkiDer: Buffer, dnsNames: readonly string[]): IssuedLeaf {
    const serial = newSerial();
    const extensions = [
      extension(EXT.basicConstraints, true, seq()),
      extension(EXT.keyUsage, true, hex('03 02 07 80')), // digitalSignature
      extension(EXT.extKeyUsage, false, seq(hex('06 08 2b 06 01 05 05 07 03 01'))), // serverAuth
      extension(EXT.subjectAltName, false, seq(...dnsNames.map((n) => tlv(0x82, Buffer.from(n, 'ascii'))))),
      extension(EXT.subjectKeyIdentifier, false, tlv(0x04, keyIdentifier(spkiDer))),
      extension(EXT.authorityKeyIdentifier, false, seq(tlv(0x80, this.#keyId))),
    ];
    const validity = [this.#validity[0], new Date(this.#validity[1].getTime() - 86_400_000)] as const;
    const pem = certificate(serial, this.#subject, name(dnsNames[0] ?? 'leaf'), validity, spkiDer, extensions, this.#key);
    return { pem, serial: serial.toString('hex').toUpperCase() };
  }

  /** The leaf followed by this CA: what a store entry or a config chain file holds. */
  chain(leaf: IssuedLeaf): string {
    return `${leaf.pem}${this.pem}`;
  }
}
