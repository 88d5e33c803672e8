/*
 * SIGNATURE: ECDSA, and RSA with PKCS#1 v1.5 or PSS padding. The hash is
 * computed here; the key server signs the digest (rpc.c).
 *
 * What the key server can do, and so all we accept: SHA-256/384/512; for PSS
 * MGF1 with the same hash and salt length = hash length. Anything else is
 * refused when it is set (DIGEST_SIGN_INIT for the digest, so libssl's check
 * of each sigalg skips what we cannot sign), never discovered at the key
 * server. No verification, no raw RSA, no decryption: this provider signs.
 *
 * libssl calls EVP_DigestSign twice, first with sig == NULL to learn the
 * size: that answer comes from the key (EVP_PKEY_get_size of its public
 * copy), without an RPC.
 */
#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "keyless.h"
#include "rpc.h"

enum { SCHEME_ECDSA, SCHEME_RSA };

/* --- hashes --------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t len;
} hashes[KEYLESS_NHASH] = {
    { "SHA2-256", 32 },
    { "SHA2-384", 48 },
    { "SHA2-512", 64 },
};

static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *mds[KEYLESS_NHASH]; /* fetched once, held for the life of the process */

static void fetch_mds(void)
{
    int i;

    for (i = 0; i < KEYLESS_NHASH; i++)
        mds[i] = EVP_MD_fetch(NULL, hashes[i].name, NULL);
}

const EVP_MD *keyless_md(int hash)
{
    pthread_once(&md_once, fetch_mds);
    return hash >= 0 && hash < KEYLESS_NHASH ? mds[hash] : NULL;
}

size_t keyless_hash_len(int hash)
{
    return hash >= 0 && hash < KEYLESS_NHASH ? hashes[hash].len : 0;
}

/* Any of OpenSSL's names for the hash ("SHA256", "SHA2-256", "sha-256", OID). */
int keyless_hash_by_name(const char *name)
{
    int i;

    for (i = 0; name != NULL && i < KEYLESS_NHASH; i++)
        if (keyless_md(i) != NULL && EVP_MD_is_a(keyless_md(i), name))
            return i;
    return -1;
}

/* --- context -------------------------------------------------------------- */

#define SALT_UNSET (-100)

typedef struct {
    int scheme;
    KEYLESS_KEY *key;   /* one reference held while set */
    int hash;           /* KEYLESS_SHA*, -1 when not chosen yet */
    int mgf1;           /* -1: same as hash */
    int pad;            /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING */
    int saltlen;        /* >= 0, RSA_PSS_SALTLEN_DIGEST/AUTO/MAX, or SALT_UNSET (= digest) */
    int digest_mode;    /* inside DigestSign: the hash is fixed */
    EVP_MD_CTX *mdctx;  /* streaming hash for DigestSignUpdate, made on first use */
} SIG_CTX;

static void *newctx(int scheme)
{
    SIG_CTX *ctx = OPENSSL_zalloc(sizeof(*ctx));

    if (ctx == NULL)
        return NULL;
    ctx->scheme = scheme;
    ctx->hash = -1;
    ctx->mgf1 = -1;
    ctx->pad = RSA_PKCS1_PADDING;
    ctx->saltlen = SALT_UNSET;
    return ctx;
}

static void *ecdsa_newctx(void *provctx, const char *propq)
{
    (void)provctx;
    (void)propq;
    return newctx(SCHEME_ECDSA);
}

static void *rsa_newctx(void *provctx, const char *propq)
{
    (void)provctx;
    (void)propq;
    return newctx(SCHEME_RSA);
}

static void freectx(void *vctx)
{
    SIG_CTX *ctx = vctx;

    if (ctx == NULL)
        return;
    keyless_key_free(ctx->key);
    EVP_MD_CTX_free(ctx->mdctx);
    OPENSSL_free(ctx);
}

static void *dupctx(void *vctx)
{
    SIG_CTX *src = vctx, *dst = OPENSSL_memdup(src, sizeof(*src));

    if (dst == NULL)
        return NULL;
    dst->mdctx = NULL;
    if (dst->key != NULL)
        keyless_key_up_ref(dst->key);
    if (src->mdctx != NULL
        && ((dst->mdctx = EVP_MD_CTX_new()) == NULL || !EVP_MD_CTX_copy_ex(dst->mdctx, src->mdctx))) {
        freectx(dst);
        return NULL;
    }
    return dst;
}

/* --- parameters ----------------------------------------------------------- */

/* Largest PSS salt for this key and hash (RFC 8017 9.1.1: emLen - hLen - 2). */
static long pss_max_salt(const SIG_CTX *ctx, int hash)
{
    int bits = EVP_PKEY_get_bits(ctx->key->pub);
    long emlen = (bits - 1 + 7) / 8;

    return emlen - (long)keyless_hash_len(hash) - 2;
}

/* PSS as the key server does it, with `hash`? Raises an error if not. */
static int pss_ok(const SIG_CTX *ctx, int hash)
{
    long hlen = (long)keyless_hash_len(hash), salt;

    if (ctx->mgf1 >= 0 && ctx->mgf1 != hash) {
        KEYLESS_RAISE(KEYLESS_R_UNSUPPORTED, "PSS with MGF1-%s and %s: the key server uses the same hash for both",
                      hashes[ctx->mgf1].name, hashes[hash].name);
        return 0;
    }
    switch (ctx->saltlen) {
    case SALT_UNSET:
    case RSA_PSS_SALTLEN_DIGEST:
        return 1;
    case RSA_PSS_SALTLEN_AUTO: /* when signing, AUTO and MAX mean the largest salt */
    case RSA_PSS_SALTLEN_MAX:
        salt = pss_max_salt(ctx, hash);
        break;
    default:
        salt = ctx->saltlen;
        break;
    }
    if (salt != hlen) {
        KEYLESS_RAISE(KEYLESS_R_UNSUPPORTED, "PSS salt length %ld with %s: the key server signs with salt length %ld",
                      salt, hashes[hash].name, hlen);
        return 0;
    }
    return 1;
}

static int set_hash(SIG_CTX *ctx, const char *name)
{
    int hash = keyless_hash_by_name(name);

    if (hash < 0) {
        KEYLESS_RAISE(KEYLESS_R_UNSUPPORTED, "digest %s: the key server signs SHA-256, SHA-384 and SHA-512 only",
                      name);
        return 0;
    }
    if (ctx->digest_mode && hash != ctx->hash) {
        KEYLESS_RAISE(KEYLESS_R_BAD_ARGUMENT, "the digest cannot change during a DigestSign operation");
        return 0;
    }
    ctx->hash = hash;
    return 1;
}

static int set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    SIG_CTX *ctx = vctx;
    const OSSL_PARAM *p;
    const char *s = NULL;
    int v;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL
        && (!OSSL_PARAM_get_utf8_string_ptr(p, &s) || !set_hash(ctx, s)))
        return 0;
    if (ctx->scheme != SCHEME_RSA)
        return 1;

    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL) {
        /* An int (EVP_PKEY_CTX_set_rsa_padding) or a name. */
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            if (!OSSL_PARAM_get_utf8_string_ptr(p, &s))
                return 0;
            v = strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0 ? RSA_PKCS1_PADDING
                : strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0   ? RSA_PKCS1_PSS_PADDING
                                                                : -1;
        } else if (!OSSL_PARAM_get_int(p, &v))
            return 0;
        if (v != RSA_PKCS1_PADDING && v != RSA_PKCS1_PSS_PADDING) {
            KEYLESS_RAISE(KEYLESS_R_UNSUPPORTED, "RSA padding mode %d: the key server does PKCS#1 v1.5 and PSS only", v);
            return 0;
        }
        ctx->pad = v;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != NULL) {
        int hash;

        if (!OSSL_PARAM_get_utf8_string_ptr(p, &s))
            return 0;
        if ((hash = keyless_hash_by_name(s)) < 0) {
            KEYLESS_RAISE(KEYLESS_R_UNSUPPORTED, "MGF1 digest %s is not supported by the key server", s);
            return 0;
        }
        ctx->mgf1 = hash;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != NULL) {
        /* An int, or "digest" / "max" / "auto" / a decimal number (what
         * EVP_PKEY_CTX_set_rsa_pss_saltlen turns into in OpenSSL 3.0). */
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            char *end;
            long n;

            if (!OSSL_PARAM_get_utf8_string_ptr(p, &s))
                return 0;
            if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0)
                v = RSA_PSS_SALTLEN_DIGEST;
            else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0)
                v = RSA_PSS_SALTLEN_MAX;
            else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0)
                v = RSA_PSS_SALTLEN_AUTO;
            else {
                n = strtol(s, &end, 10);
                if (*s == '\0' || *end != '\0' || n < RSA_PSS_SALTLEN_MAX || n > 1024) {
                    KEYLESS_RAISE(KEYLESS_R_BAD_ARGUMENT, "PSS salt length \"%s\"", s);
                    return 0;
                }
                v = (int)n;
            }
        } else if (!OSSL_PARAM_get_int(p, &v))
            return 0;
        if (v < RSA_PSS_SALTLEN_MAX) {
            KEYLESS_RAISE(KEYLESS_R_BAD_ARGUMENT, "PSS salt length %d", v);
            return 0;
        }
        ctx->saltlen = v;
    }
    /* Refuse what we can already tell the key server cannot do. */
    if (ctx->pad == RSA_PKCS1_PSS_PADDING && ctx->hash >= 0 && ctx->key != NULL && !pss_ok(ctx, ctx->hash))
        return 0;
    return 1;
}

static const OSSL_PARAM *ecdsa_settable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM table[] = {
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
        OSSL_PARAM_END,
    };
    (void)vctx;
    (void)provctx;
    return table;
}

static const OSSL_PARAM *rsa_settable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM table[] = {
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
        OSSL_PARAM_END,
    };
    (void)vctx;
    (void)provctx;
    return table;
}

static int get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    SIG_CTX *ctx = vctx;
    OSSL_PARAM *p;

    if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL
        && !OSSL_PARAM_set_utf8_string(p, ctx->hash >= 0 ? hashes[ctx->hash].name : ""))
        return 0;
    if (ctx->scheme == SCHEME_RSA && (p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL) {
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            if (!OSSL_PARAM_set_utf8_string(p, ctx->pad == RSA_PKCS1_PSS_PADDING ? OSSL_PKEY_RSA_PAD_MODE_PSS
                                                                                  : OSSL_PKEY_RSA_PAD_MODE_PKCSV15))
                return 0;
        } else if (!OSSL_PARAM_set_int(p, ctx->pad))
            return 0;
    }
    return 1;
}

static const OSSL_PARAM *gettable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM table[] = {
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
        OSSL_PARAM_END,
    };
    (void)vctx;
    (void)provctx;
    return table;
}

/* --- operations ----------------------------------------------------------- */

static int init(SIG_CTX *ctx, void *provkey, const OSSL_PARAM params[])
{
    KEYLESS_KEY *key = provkey;

    if (key == NULL || key->magic != KEYLESS_KEY_MAGIC || key->pub == NULL) {
        KEYLESS_RAISE(KEYLESS_R_INTERNAL, "not a keyless key");
        return 0;
    }
    if (!key->remote) {
        KEYLESS_RAISE(KEYLESS_R_NO_PRIVATE_KEY, "this key has no private half at the key server");
        return 0;
    }
    if ((ctx->scheme == SCHEME_ECDSA) != (key->type == EVP_PKEY_EC)) {
        KEYLESS_RAISE(KEYLESS_R_INTERNAL, "signature scheme does not fit the key type");
        return 0;
    }
    keyless_key_up_ref(key);
    keyless_key_free(ctx->key);
    ctx->key = key;
    ctx->hash = -1;
    ctx->mgf1 = -1;
    ctx->pad = RSA_PKCS1_PADDING;
    ctx->saltlen = SALT_UNSET;
    ctx->digest_mode = 0;
    EVP_MD_CTX_free(ctx->mdctx);
    ctx->mdctx = NULL;
    return set_ctx_params(ctx, params);
}

static int sign_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    return init(vctx, provkey, params);
}

static int digest_sign_init(void *vctx, const char *mdname, void *provkey, const OSSL_PARAM params[])
{
    SIG_CTX *ctx = vctx;

    if (!init(ctx, provkey, NULL))
        return 0;
    /* Unsupported digests fail here: libssl probes each sigalg this way
     * (EVP_PKEY_digestsign_supports_digest) and skips what fails. */
    if (!set_hash(ctx, mdname != NULL ? mdname : "SHA2-256"))
        return 0;
    ctx->digest_mode = 1;
    return set_ctx_params(ctx, params);
}

static size_t max_size(const SIG_CTX *ctx)
{
    int n = EVP_PKEY_get_size(ctx->key->pub);

    return n > 0 ? (size_t)n : 0;
}

static unsigned char alg_byte(const SIG_CTX *ctx, int hash)
{
    if (ctx->scheme == SCHEME_ECDSA)
        return (unsigned char)(ALG_ECDSA_SHA256 + hash);
    return (unsigned char)((ctx->pad == RSA_PKCS1_PSS_PADDING ? ALG_RSA_PSS_SHA256 : ALG_RSA_PKCS1_SHA256) + hash);
}

/* Sends a digest to the key server. The only place that does an RPC. */
static int remote_sign(SIG_CTX *ctx, int hash, const unsigned char *digest, size_t dlen, unsigned char *sig,
                       size_t *siglen, size_t sigsize)
{
    char err[400];
    size_t max, n = 0;

    if (ctx->key == NULL) {
        KEYLESS_RAISE(KEYLESS_R_BAD_ARGUMENT, "sign without init");
        return 0;
    }
    max = max_size(ctx); /* after the check: it reads ctx->key */
    if (ctx->scheme == SCHEME_RSA && ctx->pad == RSA_PKCS1_PSS_PADDING && !pss_ok(ctx, hash))
        return 0;
    if (max == 0 || sigsize < max) {
        KEYLESS_RAISE(KEYLESS_R_BAD_ARGUMENT, "signature buffer of %zu bytes, %zu needed", sigsize, max);
        return 0;
    }
    if (keyless_rpc_sign(ctx->key->id, alg_byte(ctx, hash), digest, dlen, sig, &n, max, err, sizeof(err)) != RPC_OK) {
        KEYLESS_RAISE(KEYLESS_R_KEYSERVER, "%s", err);
        return 0;
    }
    *siglen = n;
    return 1;
}

static int sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize, const unsigned char *tbs,
                size_t tbslen)
{
    SIG_CTX *ctx = vctx;
    int hash = ctx->hash, i;

    if (ctx->key == NULL)
        return 0;
    if (sig == NULL) {
        *siglen = max_size(ctx);
        return *siglen > 0;
    }
    /* EVP_PKEY_sign gets a digest: its length names the hash if nobody did. */
    for (i = 0; hash < 0 && i < KEYLESS_NHASH; i++)
        if (tbslen == hashes[i].len)
            hash = i;
    if (hash < 0 || tbslen != hashes[hash].len) {
        KEYLESS_RAISE(KEYLESS_R_BAD_ARGUMENT, "a %zu-byte digest is not SHA-256, SHA-384 or SHA-512", tbslen);
        return 0;
    }
    return remote_sign(ctx, hash, tbs, tbslen, sig, siglen, sigsize);
}

static int digest_sign_update(void *vctx, const unsigned char *data, size_t datalen)
{
    SIG_CTX *ctx = vctx;

    if (!ctx->digest_mode)
        return 0;
    if (ctx->mdctx == NULL) {
        if ((ctx->mdctx = EVP_MD_CTX_new()) == NULL || !EVP_DigestInit_ex(ctx->mdctx, keyless_md(ctx->hash), NULL)) {
            KEYLESS_RAISE(KEYLESS_R_INTERNAL, "cannot start %s", hashes[ctx->hash].name);
            return 0;
        }
    }
    return EVP_DigestUpdate(ctx->mdctx, data, datalen);
}

static int digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    SIG_CTX *ctx = vctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;

    if (!ctx->digest_mode)
        return 0;
    if (sig == NULL) { /* size query: no RPC, and the hash stays open */
        *siglen = max_size(ctx);
        return *siglen > 0;
    }
    if (ctx->mdctx == NULL && !digest_sign_update(ctx, NULL, 0))
        return 0;
    if (!EVP_DigestFinal_ex(ctx->mdctx, digest, &dlen))
        return 0;
    return remote_sign(ctx, ctx->hash, digest, dlen, sig, siglen, sigsize);
}

/* One-shot EVP_DigestSign: what libssl uses, for TLS 1.3 CertificateVerify
 * and TLS 1.2 ServerKeyExchange. */
static int digest_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize, const unsigned char *tbs,
                       size_t tbslen)
{
    SIG_CTX *ctx = vctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;

    if (!ctx->digest_mode)
        return 0;
    if (sig == NULL) { /* libssl's first call: the size, without an RPC */
        *siglen = max_size(ctx);
        return *siglen > 0;
    }
    if (!EVP_Digest(tbs, tbslen, digest, &dlen, keyless_md(ctx->hash), NULL)) {
        KEYLESS_RAISE(KEYLESS_R_INTERNAL, "%s failed", hashes[ctx->hash].name);
        return 0;
    }
    return remote_sign(ctx, ctx->hash, digest, dlen, sig, siglen, sigsize);
}

#define FN(id, f) { id, (void (*)(void))(f) }

#define COMMON_FUNCTIONS                                                   \
    FN(OSSL_FUNC_SIGNATURE_SIGN_INIT, sign_init),                          \
    FN(OSSL_FUNC_SIGNATURE_SIGN, sign),                                    \
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, digest_sign_init),            \
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, digest_sign_update),        \
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, digest_sign_final),          \
    FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN, digest_sign),                      \
    FN(OSSL_FUNC_SIGNATURE_FREECTX, freectx),                              \
    FN(OSSL_FUNC_SIGNATURE_DUPCTX, dupctx),                                \
    FN(OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, get_ctx_params),                \
    FN(OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, gettable_ctx_params),      \
    FN(OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, set_ctx_params)

const OSSL_DISPATCH keyless_ecdsa_signature_functions[] = {
    FN(OSSL_FUNC_SIGNATURE_NEWCTX, ecdsa_newctx),
    COMMON_FUNCTIONS,
    FN(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, ecdsa_settable_ctx_params),
    { 0, NULL },
};

const OSSL_DISPATCH keyless_rsa_signature_functions[] = {
    FN(OSSL_FUNC_SIGNATURE_NEWCTX, rsa_newctx),
    COMMON_FUNCTIONS,
    FN(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, rsa_settable_ctx_params),
    { 0, NULL },
};
