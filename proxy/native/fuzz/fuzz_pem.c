/*
 * libFuzzer target: decoder.c's DECODE of a "KEYEDGE KEYLESS KEY" PEM block
 * (read_input, first_block_is_ours, parse_block), through a fake core BIO
 * that hands out the input in chunks. The provider's plumbing is stubbed.
 *
 * Input: chunk size byte | PEM text. When the chunk size byte is 0xff, the
 * rest is the block's body instead (version | key id | SPKI DER): the key id
 * is replaced by the SHA-256 of the rest and the body wrapped in our PEM
 * label, so that mutated public keys get past the key id check.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/decoder.c"

typedef struct {
    const uint8_t *p;
    size_t left, chunk;
} fake_bio;

int keyless_core_bio_read(OSSL_CORE_BIO *bio, void *buf, size_t len, size_t *got)
{
    fake_bio *b = (fake_bio *)bio;
    size_t n = len < b->left ? len : b->left;

    if (n > b->chunk)
        n = b->chunk;
    memcpy(buf, b->p, n);
    b->p += n;
    b->left -= n;
    *got = n;
    return 1;
}

void keyless_raise(const char *file, int line, const char *func, int reason, const char *f, ...)
{
    char buf[512];
    va_list ap;

    (void)file, (void)line, (void)func, (void)reason;
    va_start(ap, f);
    vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
}

const char *keyless_type_name(int type)
{
    return type == EVP_PKEY_EC ? "EC" : "RSA";
}

KEYLESS_KEY *keyless_key_new(int type)
{
    KEYLESS_KEY *key = OPENSSL_zalloc(sizeof(*key));

    if (key != NULL) {
        key->magic = KEYLESS_KEY_MAGIC;
        key->refs = 1;
        key->type = type;
    }
    return key;
}

void keyless_key_free(KEYLESS_KEY *key)
{
    if (key == NULL || --key->refs > 0)
        return;
    EVP_PKEY_free(key->pub);
    OPENSSL_free(key);
}

static int got_key;

/* Like our KEYMGMT's LOAD: takes the key over half of the time. */
static int data_cb(const OSSL_PARAM params[], void *arg)
{
    const OSSL_PARAM *ref = OSSL_PARAM_locate_const(params, OSSL_OBJECT_PARAM_REFERENCE);
    KEYLESS_KEY *key;

    (void)arg;
    if (ref == NULL || ref->data_size != sizeof(key))
        abort();
    memcpy(&key, ref->data, sizeof(key));
    if (key == NULL || key->magic != KEYLESS_KEY_MAGIC || key->pub == NULL)
        abort();
    if (got_key++ & 1) {
        keyless_key_free(key);
        memset(ref->data, 0, sizeof(key));
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char head[] = "-----BEGIN " KEYLESS_PEM_LABEL "-----\n", tail[] = "\n-----END " KEYLESS_PEM_LABEL "-----\n";
    unsigned char *body = NULL, *pem = NULL;
    fake_bio b;
    void *ctx;

    if (size < 1)
        return 0;
    b.chunk = data[0] == 0 ? 1 : (size_t)data[0] * 64;
    b.p = data + 1;
    b.left = size - 1;
    if (data[0] == 0xff && size >= 1 + 1 + 32 && size < 20000) {
        size_t blen = size - 1, n;

        body = malloc(blen);
        memcpy(body, data + 1, blen);
        SHA256(body + 33, blen - 33, body + 1);
        pem = malloc(sizeof(head) + sizeof(tail) + blen * 2 + blen / 48 + 8);
        memcpy(pem, head, sizeof(head) - 1);
        n = sizeof(head) - 1;
        for (size_t off = 0; off < blen; off += 48) { /* 64-character lines */
            size_t part = blen - off < 48 ? blen - off : 48;
            n += (size_t)EVP_EncodeBlock(pem + n, body + off, (int)part);
            pem[n++] = '\n';
        }
        n--;
        memcpy(pem + n, tail, sizeof(tail) - 1);
        n += sizeof(tail) - 1;
        b.chunk = 4096;
        b.p = pem;
        b.left = n;
    }
    ctx = (data[0] & 1) ? ec_newctx(NULL) : rsa_newctx(NULL);
    (void)decode(ctx, (OSSL_CORE_BIO *)&b, 0, data_cb, NULL, NULL, NULL);
    freectx(ctx);
    ERR_clear_error();
    free(body);
    free(pem);
    return 0;
}
