/*
 * DECODER (input=pem) for "KEYEDGE KEYLESS KEY" blocks, one per key type.
 *
 * Body (base64): version 0x01 | 32-byte key id (SHA-256 of the SPKI DER) |
 * SubjectPublicKeyInfo DER.
 *
 * Input that is not such a block is left alone: we return 1 without calling
 * data_cb ("empty handed"), the decoder framework rewinds the BIO and tries
 * the next decoder. A block of ours whose key is of the other type is left to
 * the other decoder the same way. A block of ours that is malformed is an
 * error.
 */
#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "keyless.h"

/* Larger inputs are read only this far: our block is about 1.1 KiB even for
 * RSA-8192, and it must come first in what OpenSSL hands us. */
#define MAX_PEM_INPUT (64 * 1024)

typedef struct {
    int type;
} DECODER_CTX;

static void *ec_newctx(void *provctx)
{
    DECODER_CTX *ctx = OPENSSL_zalloc(sizeof(*ctx));

    (void)provctx;
    if (ctx != NULL)
        ctx->type = EVP_PKEY_EC;
    return ctx;
}

static void *rsa_newctx(void *provctx)
{
    DECODER_CTX *ctx = OPENSSL_zalloc(sizeof(*ctx));

    (void)provctx;
    if (ctx != NULL)
        ctx->type = EVP_PKEY_RSA;
    return ctx;
}

static void freectx(void *vctx)
{
    OPENSSL_free(vctx);
}

static int does_selection(void *provctx, int selection)
{
    (void)provctx;
    return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

/* Reads what the core BIO holds, up to MAX_PEM_INPUT bytes. Caller frees *out. */
static int read_input(OSSL_CORE_BIO *cin, unsigned char **out, size_t *outlen)
{
    size_t cap = 4096, len = 0, got;
    unsigned char *buf = OPENSSL_malloc(cap), *bigger;

    if (buf == NULL)
        return 0;
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_PEM_INPUT)
                break;
            if ((bigger = OPENSSL_realloc(buf, cap * 2)) == NULL) {
                OPENSSL_free(buf);
                return 0;
            }
            buf = bigger;
            cap *= 2;
        }
        if (!keyless_core_bio_read(cin, buf + len, cap - len, &got) || got == 0)
            break; /* end of input (or an error, which is the same to us) */
        len += got;
    }
    *out = buf;
    *outlen = len;
    return 1;
}

/* Is the first PEM block of the input ours? (PEM allows text before it.) */
static int first_block_is_ours(const unsigned char *buf, size_t len)
{
    static const char begin[] = "-----BEGIN ";
    static const char ours[] = "-----BEGIN " KEYLESS_PEM_LABEL "-----";
    size_t i;

    for (i = 0; i + sizeof(begin) - 1 <= len; i++) {
        if (buf[i] != '-' || memcmp(buf + i, begin, sizeof(begin) - 1) != 0)
            continue;
        return len - i >= sizeof(ours) - 1 && memcmp(buf + i, ours, sizeof(ours) - 1) == 0;
    }
    return 0;
}

/*
 * Parses our block into a remote key. Returns 1 with *key set, 1 with *key
 * NULL when the key is of the other decoder's type, 0 on malformed input
 * (error raised).
 */
static int parse_block(int type, const unsigned char *buf, size_t len, KEYLESS_KEY **key_out)
{
    BIO *mem = NULL;
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL, digest[SHA256_DIGEST_LENGTH];
    const unsigned char *p;
    long dlen = 0;
    size_t spki_len;
    EVP_PKEY *pub = NULL;
    KEYLESS_KEY *key = NULL;
    int ok = 0, pub_type;

    *key_out = NULL;
    if ((mem = BIO_new_mem_buf(buf, (int)len)) == NULL) {
        KEYLESS_RAISE(KEYLESS_R_INTERNAL, "out of memory");
        goto end;
    }
    if (!PEM_read_bio(mem, &name, &header, &data, &dlen) || strcmp(name, KEYLESS_PEM_LABEL) != 0) {
        KEYLESS_RAISE(KEYLESS_R_BAD_KEY, "the " KEYLESS_PEM_LABEL " block is not valid PEM");
        goto end;
    }
    if (dlen < 1 + KEYLESS_KEY_ID_LEN + 2 || data[0] != KEYLESS_PEM_VERSION) {
        KEYLESS_RAISE(KEYLESS_R_BAD_KEY, "unsupported " KEYLESS_PEM_LABEL " (version %d, %ld bytes)",
                      dlen > 0 ? data[0] : -1, dlen);
        goto end;
    }
    p = data + 1 + KEYLESS_KEY_ID_LEN;
    spki_len = (size_t)dlen - 1 - KEYLESS_KEY_ID_LEN;
    SHA256(p, spki_len, digest);
    if (CRYPTO_memcmp(digest, data + 1, KEYLESS_KEY_ID_LEN) != 0) {
        KEYLESS_RAISE(KEYLESS_R_BAD_KEY, "the key id is not the SHA-256 of the public key in the block");
        goto end;
    }
    /* A default-provider copy of the public key answers every key parameter. */
    pub = d2i_PUBKEY_ex(NULL, &p, (long)spki_len, NULL, "provider=default");
    if (pub == NULL || p != data + dlen) {
        KEYLESS_RAISE(KEYLESS_R_BAD_KEY, "the public key in the " KEYLESS_PEM_LABEL " block does not parse");
        goto end;
    }
    pub_type = EVP_PKEY_is_a(pub, "EC") ? EVP_PKEY_EC : EVP_PKEY_is_a(pub, "RSA") ? EVP_PKEY_RSA : 0;
    if (pub_type == 0) {
        KEYLESS_RAISE(KEYLESS_R_BAD_KEY, "keyless keys must be EC or RSA (rsaEncryption), not %s",
                      EVP_PKEY_get0_type_name(pub));
        goto end;
    }
    ok = 1;
    if (pub_type != type)
        goto end; /* the other decoder's */
    if ((key = keyless_key_new(type)) == NULL) {
        KEYLESS_RAISE(KEYLESS_R_INTERNAL, "out of memory");
        ok = 0;
        goto end;
    }
    key->remote = 1;
    memcpy(key->id, data + 1, KEYLESS_KEY_ID_LEN);
    key->pub = pub;
    pub = NULL;
    *key_out = key;
end:
    EVP_PKEY_free(pub);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    BIO_free(mem);
    return ok;
}

static int decode(void *vctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb, void *data_cbarg,
                  OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    DECODER_CTX *ctx = vctx;
    unsigned char *buf = NULL;
    size_t len = 0;
    KEYLESS_KEY *key = NULL;
    int ok;

    (void)selection;
    (void)pw_cb;
    (void)pw_cbarg;
    if (!read_input(cin, &buf, &len))
        return 0;
    if (!first_block_is_ours(buf, len)) {
        OPENSSL_free(buf);
        return 1; /* not ours: empty handed, the next decoder gets a go */
    }
    ok = parse_block(ctx->type, buf, len, &key);
    OPENSSL_free(buf);
    if (ok && key != NULL) {
        int object_type = OSSL_OBJECT_PKEY;
        OSSL_PARAM params[4];

        params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &object_type);
        params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, (char *)keyless_type_name(ctx->type), 0);
        /* The reference is the address of our pointer: our KEYMGMT's LOAD
         * takes the key over and sets the pointer to NULL. */
        params[2] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key, sizeof(key));
        params[3] = OSSL_PARAM_construct_end();
        ok = data_cb(params, data_cbarg);
    }
    keyless_key_free(key); /* NULL when LOAD took it */
    return ok;
}

/* Only called when the framework picked a keymgmt of another provider, which
 * would be asked to import a key it cannot hold: refuse. */
static int export_object(void *vctx, const void *reference, size_t reference_sz, OSSL_CALLBACK *export_cb,
                         void *export_cbarg)
{
    (void)vctx;
    (void)reference;
    (void)reference_sz;
    (void)export_cb;
    (void)export_cbarg;
    return 0;
}

#define FN(id, f) { id, (void (*)(void))(f) }

const OSSL_DISPATCH keyless_ec_decoder_functions[] = {
    FN(OSSL_FUNC_DECODER_NEWCTX, ec_newctx),
    FN(OSSL_FUNC_DECODER_FREECTX, freectx),
    FN(OSSL_FUNC_DECODER_DOES_SELECTION, does_selection),
    FN(OSSL_FUNC_DECODER_DECODE, decode),
    FN(OSSL_FUNC_DECODER_EXPORT_OBJECT, export_object),
    { 0, NULL },
};

const OSSL_DISPATCH keyless_rsa_decoder_functions[] = {
    FN(OSSL_FUNC_DECODER_NEWCTX, rsa_newctx),
    FN(OSSL_FUNC_DECODER_FREECTX, freectx),
    FN(OSSL_FUNC_DECODER_DOES_SELECTION, does_selection),
    FN(OSSL_FUNC_DECODER_DECODE, decode),
    FN(OSSL_FUNC_DECODER_EXPORT_OBJECT, export_object),
    { 0, NULL },
};
