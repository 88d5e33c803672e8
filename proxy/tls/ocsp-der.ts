/**
 * The DER framing of an OCSP response (RFC 6960 §4.2.1), checked before it is
 * stapled: one OCSPResponse, nothing after it, and no element its structure
 * has no place for, down to the BasicOCSPResponse's own elements.
 *
 * Why: the signature covers the response data only, so bytes added after the
 * response, or around the signed part, leave it verifying, and anyone on the
 * responder's plain-HTTP path may add them. The ASN.1 reader used here skips
 * such bytes; a strict DER reader refuses the whole answer (Firefox's
 * mozilla::pkix, Go's x/crypto/ocsp, pyca/cryptography), and Firefox fails
 * the handshake on a staple it cannot read. Lengths must be DER's (definite,
 * shortest form, X.690 §10.1). Pure.
 */

/** One element: its tag, where its content starts and where it ends. */
interface Element {
  readonly tag: number;
  readonly content: number;
  readonly end: number;
}

const SEQUENCE = 0x30;
const ENUMERATED = 0x0a;
const OID = 0x06;
const OCTET_STRING = 0x04;
const BIT_STRING = 0x03;
/** [0] EXPLICIT, constructed. */
const CONTEXT_0 = 0xa0;

class FramingError extends Error {
  constructor() {
    super('the response is not one DER OCSPResponse: bytes after its end, or in a place its structure has none for');
  }
}

/** The elements that exactly fill `der` from `from` to `to`; throws when they do not. */
function elements(der: Buffer, from: number, to: number): Element[] {
  const out: Element[] = [];
  for (let at = from; at < to; ) {
    if (to - at < 2) throw new FramingError();
    const tag = der[at]!;
    let length = der[at + 1]!;
    let content = at + 2;
    if (length >= 0x80) {
      const bytes = length & 0x7f;
      // Indefinite (0x80), longer than a response can be, or not the shortest form: not DER.
      if (bytes === 0 || bytes > 3 || content + bytes > to || der[content] === 0) throw new FramingError();
      length = 0;
      for (let i = 0; i < bytes; i++) length = length * 256 + der[content + i]!;
      if (length < 0x80) throw new FramingError();
      content += bytes;
    }
    const end = content + length;
    if (end > to) throw new FramingError();
    out.push({ tag, content, end });
    at = end;
  }
  return out;
}

/** The one element filling `element`'s content, with `tag`. */
function only(der: Buffer, element: Element, tag: number): Element {
  const inner = elements(der, element.content, element.end);
  if (inner.length !== 1 || inner[0]!.tag !== tag) throw new FramingError();
  return inner[0]!;
}

/** The tags of `element`'s children, in order, must be `tags` (or `tags` less its optional last). */
function children(der: Buffer, element: Element, tags: readonly number[], lastOptional: boolean): Element[] {
  const inner = elements(der, element.content, element.end);
  const fits = inner.length === tags.length || (lastOptional && inner.length === tags.length - 1);
  if (!fits || inner.some((e, i) => e.tag !== tags[i])) throw new FramingError();
  return inner;
}

/** Throws unless `der` is framed as one OCSPResponse whose BasicOCSPResponse has only its own elements. */
export function checkOcspFraming(der: Buffer): void {
  const whole: Element = { tag: 0, content: 0, end: der.length };
  const response = only(der, whole, SEQUENCE);
  // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT ResponseBytes OPTIONAL }
  const [, explicit] = children(der, response, [ENUMERATED, CONTEXT_0], true);
  if (explicit === undefined) return;
  // ResponseBytes ::= SEQUENCE { responseType OBJECT IDENTIFIER, response OCTET STRING }
  const [, octets] = children(der, only(der, explicit, SEQUENCE), [OID, OCTET_STRING], false);
  // BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm, signature BIT STRING, certs [0] EXPLICIT OPTIONAL }
  const basic = only(der, octets!, SEQUENCE);
  const [, , , certs] = children(der, basic, [SEQUENCE, SEQUENCE, BIT_STRING, CONTEXT_0], true);
  if (certs === undefined) return;
  const list = only(der, certs, SEQUENCE);
  if (elements(der, list.content, list.end).some((cert) => cert.tag !== SEQUENCE)) throw new FramingError();
}
