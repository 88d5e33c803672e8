/*
 * One SIGN exchange on an open connection to a key server: framing and the
 * strict validation of the answer (keyserver/protocol/SPEC.md). The pool
 * (pool.c) picks the server, owns the deadline and counts outcomes.
 *
 * Threads: called under the pool's lock only (the answer buffer and the
 * request-id counter are shared).
 *
 * Connection rules (SPEC.md): one request in flight, so the answer must carry
 * our request id; any failure except a well-formed ERROR answer closes the
 * connection (a timed-out request may still be answered later, and the
 * stream can no longer be trusted).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/ec.h>

#include "rpc.h"
#include "transport.h"

#define HEADER_LEN 12
#define MAX_BODY 16384 /* what we buffer of an answer's body, as the protocol's default limit */
#define VERSION 1
#define OP_SIGN 0x03
#define OP_SIGNATURE 0x83
#define OP_ERROR 0xff
#define TAG_KEY_ID 0x01
#define TAG_ALGORITHM 0x02
#define TAG_DIGEST 0x03
#define TAG_SIGNATURE 0x05
#define TAG_ERROR_CODE 0x07
#define TAG_ERROR_DETAIL 0x80

static uint32_t next_id = 1;
static unsigned char answer[HEADER_LEN + MAX_BODY]; /* answer buffer, used under the pool's lock */

static const char *error_name(unsigned code)
{
    static const char *const names[] = {
        NULL,          "MALFORMED_FRAME",   "UNSUPPORTED_VERSION", "UNKNOWN_OP",        "FRAME_TOO_LARGE",
        "UNKNOWN_KEY", "ALGORITHM_MISMATCH", "UNKNOWN_ALGORITHM",  "BAD_DIGEST_LENGTH", "NOT_AUTHORISED",
        "SIGN_FAILED", "OVERLOADED",        "DEADLINE_EXCEEDED",   "SHUTTING_DOWN",     "INTERNAL",
    };
    return code < sizeof(names) / sizeof(names[0]) && names[code] != NULL ? names[code] : NULL;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static unsigned char *put_item(unsigned char *p, unsigned char tag, const unsigned char *v, size_t len)
{
    p[0] = tag;
    p[1] = (unsigned char)(len >> 8);
    p[2] = (unsigned char)len;
    memcpy(p + 3, v, len);
    return p + 3 + len;
}

static void fmt(char *err, size_t errlen, const char *f, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static void fmt(char *err, size_t errlen, const char *f, ...)
{
    va_list ap;

    va_start(ap, f);
    vsnprintf(err, errlen, f, ap);
    va_end(ap);
}

/*
 * Validates a SIGNATURE or ERROR body (SPEC.md "Items", "Validation order").
 * RPC_OK with the signature copied out, RPC_E_REMOTE with *code set, or
 * RPC_E_PROTOCOL. `err` gets the reason either way.
 */
static int parse_answer(unsigned op, unsigned char alg, const unsigned char *b, size_t len, unsigned char *sig,
                        size_t *siglen, size_t sigmax, unsigned *code, char *err, size_t errlen)
{
    unsigned char seen[32] = { 0 };
    const unsigned char *sigv = NULL, *codev = NULL, *detailv = NULL;
    size_t off = 0, sigl = 0, codel = 0, detaill = 0, i;
    char detail[128];

    while (off < len) {
        unsigned tag;
        size_t ilen;

        if (len - off < 3) {
            fmt(err, errlen, "malformed answer: item header truncated");
            return RPC_E_PROTOCOL;
        }
        tag = b[off];
        ilen = (size_t)b[off + 1] << 8 | b[off + 2];
        off += 3;
        if (ilen > len - off) {
            fmt(err, errlen, "malformed answer: item 0x%02x declares %zu bytes but only %zu remain", tag, ilen,
                len - off);
            return RPC_E_PROTOCOL;
        }
        if (seen[tag >> 3] & (1u << (tag & 7))) {
            fmt(err, errlen, "malformed answer: duplicate item 0x%02x", tag);
            return RPC_E_PROTOCOL;
        }
        seen[tag >> 3] |= (unsigned char)(1u << (tag & 7));
        if (op == OP_SIGNATURE && tag == TAG_SIGNATURE) {
            sigv = b + off;
            sigl = ilen;
        } else if (op == OP_ERROR && tag == TAG_ERROR_CODE) {
            codev = b + off;
            codel = ilen;
        } else if (op == OP_ERROR && tag == TAG_ERROR_DETAIL) {
            detailv = b + off;
            detaill = ilen;
        } else if ((tag >= 0x01 && tag <= 0x07) || tag == TAG_ERROR_DETAIL) {
            fmt(err, errlen, "malformed answer: unexpected item 0x%02x in opcode 0x%02x", tag, op);
            return RPC_E_PROTOCOL;
        } else if ((tag & 0x80) == 0) {
            fmt(err, errlen, "malformed answer: unknown critical item 0x%02x", tag);
            return RPC_E_PROTOCOL;
        } /* else: unknown optional item, skipped */
        off += ilen;
    }

    if (op == OP_SIGNATURE) {
        if (sigv == NULL || sigl < 1 || sigl > 1024) {
            fmt(err, errlen, "malformed answer: %s", sigv == NULL ? "missing SIGNATURE" : "bad SIGNATURE length");
            return RPC_E_PROTOCOL;
        }
        if (sigl > sigmax || (alg >= 0x10 && sigl != sigmax)) {
            /* RSA signatures are exactly the modulus length (RFC 8017 I2OSP). */
            fmt(err, errlen, "malformed answer: a %zu-byte signature for a key of %zu", sigl, sigmax);
            return RPC_E_PROTOCOL;
        }
        if (alg < 0x10) {
            /* ECDSA: one DER ECDSA-Sig-Value and nothing else. */
            const unsigned char *q = sigv;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)sigl);
            int good = es != NULL && q == sigv + sigl;

            ECDSA_SIG_free(es);
            if (!good) {
                fmt(err, errlen, "malformed answer: the ECDSA signature is not a DER ECDSA-Sig-Value");
                return RPC_E_PROTOCOL;
            }
        }
        memcpy(sig, sigv, sigl);
        *siglen = sigl;
        return RPC_OK;
    }
    if (codev == NULL || codel != 2 || (*code = (unsigned)codev[0] << 8 | codev[1]) == 0 || detaill > 512) {
        fmt(err, errlen, "malformed answer: bad ERROR items");
        return RPC_E_PROTOCOL;
    }
    /* The detail is for humans: keep printable ASCII, cut it short. */
    for (i = 0; i < detaill && i < sizeof(detail) - 1; i++)
        detail[i] = detailv[i] >= 0x20 && detailv[i] < 0x7f ? (char)detailv[i] : '?';
    detail[i] = '\0';
    if (error_name(*code) != NULL)
        fmt(err, errlen, "%s%s%s%s", error_name(*code), i > 0 ? " (" : "", detail, i > 0 ? ")" : "");
    else
        fmt(err, errlen, "UNKNOWN_ERROR_%u%s%s%s", *code, i > 0 ? " (" : "", detail, i > 0 ? ")" : "");
    return RPC_E_REMOTE;
}

static int io_status(int rc)
{
    return rc == IO_TIMEOUT ? RPC_E_TIMEOUT : RPC_E_CONNECT;
}

/*
 * Reads one answer frame into `answer`: as many bytes as have arrived, up to
 * the buffer's size, so that an answer written in one go costs one recv().
 * Checks the header as soon as it is in. *have gets what was read: more
 * than the frame means bytes after it, which nobody asked for (one request
 * in flight), so the caller closes the connection after this answer; they
 * are never taken for the next request's answer. RPC_E_STALE: `reused` and
 * the connection ended before any byte, or the first header carries another
 * request's id (bytes that were there before the request).
 */
static int read_answer(keyless_transport *t, uint32_t id, int reused, int64_t deadline, size_t *have,
                       size_t *frame, char *err, size_t errlen)
{
    size_t n;
    int rc;

    *have = 0;
    *frame = HEADER_LEN;
    while (*have < *frame) {
        if ((rc = t->ops->recv_some(t, answer + *have, sizeof(answer) - *have, &n, deadline, err, errlen)) != IO_OK)
            return reused && rc == IO_ERR && *have == 0 ? RPC_E_STALE : io_status(rc);
        *have += n;
        if (*frame == HEADER_LEN && *have >= HEADER_LEN) {
            unsigned op = answer[1];
            uint32_t blen = get32(answer + 8);

            if (answer[0] != VERSION || answer[2] != 0 || answer[3] != 0 || (op != OP_SIGNATURE && op != OP_ERROR)
                || get32(answer + 4) != id || blen > MAX_BODY) {
                fmt(err, errlen,
                    "malformed answer header (version %u, opcode 0x%02x, request id %u for %u, body %u bytes)",
                    answer[0], op, get32(answer + 4), id, blen);
                return reused && get32(answer + 4) != id ? RPC_E_STALE : RPC_E_PROTOCOL;
            }
            *frame = HEADER_LEN + blen;
        }
    }
    return RPC_OK;
}

int keyless_rpc_exchange(keyless_transport *transport, const unsigned char *key_id, unsigned char alg,
                         const unsigned char *digest, size_t dlen, int reused, unsigned char *sig, size_t *siglen,
                         size_t sigmax, int64_t deadline, unsigned *codep, char *err, size_t errlen)
{
    unsigned char req[HEADER_LEN + 3 + 32 + 3 + 1 + 3 + 64], *p;
    uint32_t id = next_id++;
    size_t have, frame;
    unsigned code = 0;
    int rc, st;

    *codep = 0;
    if (dlen > 64)
        return RPC_E_PROTOCOL; /* signature.c never does this */
    p = req + HEADER_LEN;
    p = put_item(p, TAG_KEY_ID, key_id, 32);
    p = put_item(p, TAG_ALGORITHM, &alg, 1);
    p = put_item(p, TAG_DIGEST, digest, dlen);
    req[0] = VERSION;
    req[1] = OP_SIGN;
    req[2] = req[3] = 0;
    put32(req + 4, id);
    put32(req + 8, (uint32_t)(p - req - HEADER_LEN));

    if ((rc = transport->ops->send_all(transport, req, (size_t)(p - req), deadline, err, errlen)) != IO_OK) {
        transport->ops->close(transport);
        /* Nothing of the answer yet: a connection found closed on send is as stale as one found closed on recv. */
        return reused && rc == IO_ERR ? RPC_E_STALE : io_status(rc);
    }
    if ((st = read_answer(transport, id, reused, deadline, &have, &frame, err, errlen)) != RPC_OK) {
        transport->ops->close(transport);
        return st;
    }
    st = parse_answer(answer[1], alg, answer + HEADER_LEN, frame - HEADER_LEN, sig, siglen, sigmax, &code, err,
                      errlen);
    *codep = code;
    /* A well-formed ERROR leaves the connection usable, except these two; bytes after the answer never do. */
    if (st == RPC_E_PROTOCOL || (st == RPC_E_REMOTE && (code == ERR_SHUTTING_DOWN || code == ERR_FRAME_TOO_LARGE))
        || have > frame)
        transport->ops->close(transport);
    else
        transport->answered_at = keyless_now_ms();
    return st;
}
