/**
 * Certificates for the certificate benches, made in the bench process fast enough for 10,000 of them: a throwaway
 * ECDSA P-256 CA and leaves for a given public key, DER-encoded here and signed with `crypto.sign` (~0.1 ms a leaf;
 * openssl per certificate would take minutes, @peculiar/x509 over WebCrypto several seconds).
 *
 * The leaves are ordinary RFC 5280 TLS server certificates: v3, a positive 16-byte serial (§4.1.2.2), UTCTime validity
 * (§4.1.2.5.1), critical basicConstraints CA:FALSE and keyUsage digitalSignature, EKU serverAuth, subjectAltName
 * dNSNames (RFC 6125 §6.4.4), and subject/authority key identifiers (§4.2.1.1-2) so chain building never falls back
 * to name matching.
 */
import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from 'node:crypto';

/** DER (X.690 §8.1.3): tag, length (short form below 128, else long form), content. */
function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : n < 0x10000 ? [0x82, n >> 8, n & 0xff] : [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), content]);
}
const seq = (...parts: Buffer[]): Buffer => tlv(0x30, Buffer.concat(parts));
const hex = (text: string): Buffer => Buffer.from(text.replaceAll(' ', ''), 'hex');

/** Extension 2.5.29.`id` (subjectKeyIdentifier 14, keyUsage 15, subjectAltName 17, basicConstraints 19, authorityKeyIdentifier 35, extKeyUsage 37). */
const extension = (id: number, critical: boolean, value: Buffer): Buffer =>
  seq(hex(`06 03 55 1d ${id.toString(16).padStart(2, '0')}`), ...(critical ? [hex('01 01 ff')] : []), tlv(0x04, value));
const ECDSA_SHA256 = seq(hex('06 08 2a 86 48 ce 3d 04 03 02')); // 1.2.840.10045.4.3.2, no parameters (RFC 5758 §3.2)
const commonName = (text: string): Buffer => seq(tlv(0x31, seq(hex('06 03 55 04 03'), tlv(0x0c, Buffer.from(text, 'utf8')))));
/** UTCTime YYMMDDHHMMSSZ: RFC 5280 §4.1.2.5 requires it for years before 2050. */
const utcTime = (date: Date): Buffer => tlv(0x17, Buffer.from(`${date.toISOString().slice(2, 19).replace(/[-T:]/g, '')}Z`, 'ascii'));
/** SHA-1 of the SPKI (RFC 5280 §4.2.1.2, method 1 in spirit). */
const keyIdentifier = (spkiDer: Buffer): Buffer => createHash('sha1').update(spkiDer).digest();

/** 16 random bytes, positive and first byte ≥ 0x10, so every serial prints as 32 hex digits. */
function newSerial(): Buffer {
  const serial = randomBytes(16);
  serial[0] = 0x10 + (serial[0]! % 0x70);
  return serial;
}

type Fields = { serial: Buffer; issuer: Buffer; subject: Buffer; validity: readonly Date[]; spkiDer: Buffer; extensions: Buffer[] };

/** A v3 certificate, PEM, signed by `key` (ECDSA P-256 with SHA-256: node's DER Ecdsa-Sig-Value, as X.509 carries it). */
function certificate(f: Fields, key: KeyObject): string {
  const validity = seq(...f.validity.map(utcTime));
  const tbs = seq(hex('a0 03 02 01 02'), tlv(0x02, f.serial), ECDSA_SHA256, f.issuer, validity, f.subject, f.spkiDer, tlv(0xa3, seq(...f.extensions)));
  const der = seq(tbs, ECDSA_SHA256, tlv(0x03, Buffer.concat([Buffer.from([0]), sign('sha256', tbs, key)])));
  const lines = der.toString('base64').match(/.{1,64}/g)!;
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}

/** A throwaway CA, used from one thread; `issue` is synchronous. */
export class BenchCa {
  readonly pem: string;
  readonly #key: KeyObject;
  readonly #subject: Buffer;
  readonly #keyId: Buffer;
  /** From a minute back (clock skew between the bench and the proxy) for `validDays`. */
  readonly #validity: readonly [Date, Date];

  constructor(name: string, validDays = 10) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const spkiDer = publicKey.export({ type: 'spki', format: 'der' });
    [this.#key, this.#subject, this.#keyId] = [privateKey, commonName(name), keyIdentifier(spkiDer)];
    const notBefore = new Date(Date.now() - 60_000);
    this.#validity = [notBefore, new Date(notBefore.getTime() + validDays * 86_400_000)];
    const extensions = [
      extension(0x13, true, seq(hex('01 01 ff'))), // basicConstraints cA TRUE
      extension(0x0f, true, hex('03 02 01 06')), // keyUsage keyCertSign, cRLSign
      extension(0x0e, false, tlv(0x04, this.#keyId)),
    ];
    const fields = { serial: newSerial(), issuer: this.#subject, subject: this.#subject, validity: this.#validity, spkiDer, extensions };
    this.pem = certificate(fields, privateKey);
  }

  /**
   * A TLS server leaf for `spkiDer` (the key server's public key) covering `dnsNames`, valid as long as the CA less a
   * day; `serial` in upper-case hex, as node:tls reports a peer certificate's serialNumber.
   */
  issue(spkiDer: Buffer, dnsNames: readonly string[]): { readonly pem: string; readonly serial: string } {
    const serial = newSerial();
    const extensions = [
      extension(0x13, true, seq()), // basicConstraints, cA FALSE
      extension(0x0f, true, hex('03 02 07 80')), // keyUsage digitalSignature
      extension(0x25, false, seq(hex('06 08 2b 06 01 05 05 07 03 01'))), // extKeyUsage serverAuth
      extension(0x11, false, seq(...dnsNames.map((n) => tlv(0x82, Buffer.from(n, 'ascii'))))),
      extension(0x0e, false, tlv(0x04, keyIdentifier(spkiDer))),
      extension(0x23, false, seq(tlv(0x80, this.#keyId))),
    ];
    const validity = [this.#validity[0], new Date(this.#validity[1].getTime() - 86_400_000)];
    const pem = certificate({ serial, issuer: this.#subject, subject: commonName(dnsNames[0] ?? 'leaf'), validity, spkiDer, extensions }, this.#key);
    return { pem, serial: serial.toString('hex').toUpperCase() };
  }

  /** The leaf followed by this CA: what a store entry or a config chain file holds. */
  chain(leaf: { readonly pem: string }): string {
    return `${leaf.pem}${this.pem}`;
  }
}
