/**
 * Every stable code keyedge emits, each with its one-line meaning: the one
 * registry README's tables are checked against (test/code-parity.test.ts).
 * Codes never change meaning; a new one is added here, to README and to the
 * error class or answer that raises it, in the same change.
 *
 * It sits in config/, the base layer (README, "Layout"), because codes are,
 * like the config keys, part of the product's declared surface, and because
 * the config loader raises the first of them. It is data only: the classes
 * live with their layer (config/errors.ts, keyserver/shared/errors.ts,
 * proxy/certs/errors.ts, proxy/http/errors.ts).
 */

/** `KeyedgeError.code`: what the CLI prints and exits on (README, "Error codes"). */
export const ERROR_CODES = {
  KEYEDGE_ERR_CONFIG: 'the config file is invalid: file, key path, what was expected',
  KEYEDGE_ERR_USAGE: 'unknown command or flag, missing value',
  KEYEDGE_ERR_TOKEN_MODULE: 'the PKCS#11 module could not be loaded or initialised',
  KEYEDGE_ERR_TOKEN_NOT_FOUND: 'no token with the configured label or serial',
  KEYEDGE_ERR_TOKEN_LOGIN: 'the token refused the PIN',
  KEYEDGE_ERR_TOKEN_PIN: 'the PIN env variable is unset, or the PIN file is unreadable or empty',
  KEYEDGE_ERR_TOKEN_OPERATION: 'a PKCS#11 call failed',
  KEYEDGE_ERR_TOKEN_SIGNATURE: "the token gave back an RSA signature that does not verify with the key's public key: not sent",
  KEYEDGE_ERR_KEY_NOT_FOUND: 'no key with that label or key id',
  KEYEDGE_ERR_KEY_EXISTS: 'the label is taken, or the key is already in the token',
  KEYEDGE_ERR_KEY_UNSUPPORTED: 'key type or size not supported',
  KEYEDGE_ERR_KEY_INPUT: 'the key file is unreadable, encrypted or not a private key',
  KEYEDGE_ERR_KEY_IN_USE:
    "`key delete` refused: a certificate of the proxy's store (a fleet's: etcd) or config uses the key, or a store entry that could not be read may (--force deletes it anyway)",
  KEYEDGE_ERR_PROTOCOL: 'a frame broke the key-server protocol',
  KEYEDGE_ERR_REMOTE: 'the key server answered with a wire error code',
  KEYEDGE_ERR_TIMEOUT: "no answer from the key server within the client's deadline",
  KEYEDGE_ERR_CLOSED: 'the connection to the key server is closed or could not be opened',
  KEYEDGE_ERR_OVERLOADED: "the client's own cap on requests in flight is reached",
  KEYEDGE_ERR_SETUP: 'set-up failed: SoftHSM2 missing, the keyless bridge not built, a port or socket already taken',
  KEYEDGE_ERR_CERTIFICATE: 'a certificate chain is unreadable or unfit to serve (see CERTIFICATE_REFUSALS)',
  KEYEDGE_ERR_CERT_NOT_FOUND: 'no certificate store entry of that name',
  KEYEDGE_ERR_CERT_EXISTS: "the store entry already exists, or the name is a config certificate's",
  KEYEDGE_ERR_CERT_STORE: 'the store directory cannot be read or written, or an entry name or its metadata is invalid',
  KEYEDGE_ERR_CERT_LINKED:
    "the store entry's chain or metadata file is a symbolic link (another tool's file, such as certbot's live/): keyedge does not write it; nothing was written",
  KEYEDGE_ERR_CERT_STORE_GONE:
    'the store directory is gone, or another directory holding no certificate took its place (or any other one, during an upload): the reload, upload or `keyedge cert` change is refused and every entry keeps serving',
  KEYEDGE_ERR_STORE_UNAVAILABLE:
    "the fleet's shared store (etcd) is unreachable: the change is refused, the node serves its last good state; `key delete` with a fleet's config deletes nothing",
  KEYEDGE_ERR_STORE_CONFLICT:
    "the fleet's store entry changed on another node between this write's read and its write, or another writer held a store directory entry's lock: nothing was written; retry to validate against it",
  KEYEDGE_ERR_STORE_TOO_LARGE: "a value larger than one request to the fleet's store (etcd) may be: refused before it is sent, naming the key and its size",
  KEYEDGE_ERR_ACME: 'an ACME exchange failed: the CA unreachable or slow, a problem document (its type), a failed validation',
  KEYEDGE_ERR_ACME_DOMAINS:
    'an ACME issue leaves out names its entry is managed for: nothing ordered; the message names the entry and both lists (replace them with --replace-domains)',
} as const;
export type KeyedgeErrorCode = keyof typeof ERROR_CODES;

/** The proxy's own answers: `x-keyedge-error` header and access-log code (README, "HTTP answers of our own"). */
export const HTTP_CODES = {
  KEYEDGE_HTTP_MISDIRECTED: '421: the Host is not covered by the certificate of the connection',
  KEYEDGE_HTTP_UNKNOWN_HOST: '404: no configured domain matches the Host',
  KEYEDGE_HTTP_UPGRADE_BODY: '400: an Upgrade request declares a body',
  KEYEDGE_HTTP_UPGRADE_CLOSING: '503: an Upgrade on a connection the graceful stop or a certificate change is closing',
  KEYEDGE_HTTP_BODY_TOO_LARGE: '413: the request body is over limits.maxBodyBytes',
  KEYEDGE_HTTP_HEADERS_TOO_LARGE:
    '431: HTTP/2 request headers over limits.maxHeaderBytes from a client that has not acknowledged our SETTINGS; an HTTP/1.1 request head over limits.maxHeaderBytes (the parser refused it) or of 4,096 field lines or more',
  KEYEDGE_HTTP_BAD_TARGET:
    '400: an absolute-form target that is not http(s), has userinfo or does not parse, or `*` outside OPTIONS; a Host or HTTP/2 :authority that is not host[:port]',
  KEYEDGE_HTTP_TRANSFER_CODING: "501: an HTTP/1.1 request's Transfer-Encoding names a coding besides its final chunked",
  KEYEDGE_HTTP_BAD_FRAMING:
    "400: an HTTP/1.0 request with Transfer-Encoding, or an HTTP/1.1 request's Transfer-Encoding without a final chunked; a request head or chunked body the parser refused",
  KEYEDGE_HTTP_SERVER_OPTIONS: '200: `OPTIONS *`, answered by the proxy itself',
  KEYEDGE_HTTP_EXPECTATION_FAILED: '417: an Expect other than 100-continue',
  KEYEDGE_HTTP_PLAIN_HTTP: '400: plain HTTP sent to a TLS port',
  KEYEDGE_HTTP_H2_PREFACE: '400: the HTTP/2 connection preface (prior knowledge) on a connection that speaks HTTP/1.1',
  KEYEDGE_HTTP_BODY_TIMEOUT: '408: the request body stalled or took too long',
  KEYEDGE_HTTP_HEADER_TIMEOUT: '408: the request head did not arrive whole within limits.headerTimeoutMs',
  KEYEDGE_HTTP_ORIGIN_BUSY: "503: the origin's connections are busy and its queue is full or timed out",
  KEYEDGE_HTTP_SEND_TIMEOUT: 'connection cut: the client took nothing of its answer for limits.sendTimeoutMs',
  KEYEDGE_HTTP_ORIGIN_UNREACHABLE: '502: the origin refused the connection or failed before answering',
  KEYEDGE_HTTP_ORIGIN_CERTIFICATE: "502: an https origin's certificate failed verification",
  KEYEDGE_HTTP_ORIGIN_TIMEOUT: '504: the origin did not answer in time',
  KEYEDGE_HTTP_ORIGIN_ABORTED: 'connection cut: the origin failed after its answer had started (broke it off, or stalled past limits.originReadTimeoutMs)',
  KEYEDGE_HTTP_TINY_FRAMES:
    'stream reset ENHANCE_YOUR_CALM: an HTTP/2 request body sent a few bytes a DATA frame, more than 1,024 frames averaging under 64 bytes arriving while earlier ones were still unread',
  KEYEDGE_HTTP_CLIENT_CLOSED: 'never sent: the client left before the answer was whole (logged as 499 when no head went out)',
} as const;
export type HttpErrorCode = keyof typeof HTTP_CODES;

/** `CertificateError.reason`: why a certificate was refused, one stable word per rule (README, "Certificate store"). */
export const CERTIFICATE_REFUSALS = {
  parse: 'no PEM certificate, a truncated block, a block that is not X.509',
  private_key: 'a block other than CERTIFICATE, such as a pasted private key',
  chain: 'the certificates are not one issuer path',
  expired: 'the leaf is past its validity period',
  not_yet_valid: 'the leaf is not valid yet',
  names: 'the leaf has no DNS name, or does not cover every name of the entry',
  weak_key: 'a key weaker than RSA 2048 / EC P-256 (leaf: RSA >= 2048 or EC P-256/P-384)',
  weak_signature: 'a certificate signed with a hash weaker than SHA-256',
  key_mismatch: "the pinned key id is not the leaf's, or the key server holds another key under it",
  usage: "a leaf clients refuse as a server's certificate: an extended key usage without serverAuth, or a CA certificate issued by another CA",
  incomplete_chain: 'the leaf alone, and its issuer is neither a configured intermediate nor a bundled root',
  key_unknown: "the key server holds no key with the leaf's key id",
} as const;
export type CertificateRefusal = keyof typeof CERTIFICATE_REFUSALS;

/**
 * The key server's wire error codes by name (keyserver/protocol/SPEC.md, "Error codes"); their numbers are
 * keyserver/protocol/constants.ts's `ErrorCode`, which the parity test holds to the same names.
 */
export const WIRE_ERROR_CODES = {
  MALFORMED_FRAME: 'a structural or item rule of the protocol is broken',
  UNSUPPORTED_VERSION: 'the version byte is not 1',
  UNKNOWN_OP: 'the opcode is not defined for requests',
  FRAME_TOO_LARGE: "the body length is above the server's maximum; the connection closes",
  UNKNOWN_KEY: 'no key with this KEY_ID in the token',
  ALGORITHM_MISMATCH: 'the key cannot do this algorithm',
  UNKNOWN_ALGORITHM: 'the ALGORITHM byte is not in the table',
  BAD_DIGEST_LENGTH: "the DIGEST length differs from the algorithm's hash length",
  NOT_AUTHORISED: 'this client identity may not use this key id',
  SIGN_FAILED: 'the token refused or failed the operation',
  OVERLOADED: "more requests in flight on this connection than the server's cap",
  DEADLINE_EXCEEDED: "the server's per-request deadline passed",
  SHUTTING_DOWN: 'the server is draining; new requests are refused',
  INTERNAL: 'a server bug or unexpected failure',
} as const;
export type WireErrorCodeName = keyof typeof WIRE_ERROR_CODES;
