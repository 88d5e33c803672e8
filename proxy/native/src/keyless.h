/*
 * keyedge keyless bridge: an OpenSSL 3 provider living inside the node
 * process, so that node:tls can use a key whose private half stays at the
 * key server.
 *
 *   PEM "KEYEDGE KEYLESS KEY"  --DECODER-->  KEYLESS_KEY  --KEYMGMT-->  EVP_PKEY
 *   EVP_DigestSign (libssl)    --SIGNATURE--> hash here, sign there (rpc.c)
 *
 * Symbols resolve against the node binary's own libcrypto/libssl at load
 * time: there is exactly one OpenSSL in the process.
 */
#ifndef KEYLESS_H
#define KEYLESS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/evp.h>

#define KEYLESS_PROVIDER_NAME "keyedge-keyless"
#define KEYLESS_PROPS "provider=keyedge-keyless"

/* The PEM block the proxy hands to tls.createSecureContext({ key }). */
#define KEYLESS_PEM_LABEL "KEYEDGE KEYLESS KEY"
#define KEYLESS_PEM_VERSION 0x01
#define KEYLESS_KEY_ID_LEN 32

/* Reason codes of the errors this provider raises (strings in provider.c). */
enum {
    KEYLESS_R_KEYSERVER = 1,  /* the key server did not produce a signature */
    KEYLESS_R_UNSUPPORTED,    /* digest, padding or salt the key server cannot do */
    KEYLESS_R_BAD_KEY,        /* a malformed KEYEDGE KEYLESS KEY block */
    KEYLESS_R_NO_PRIVATE_KEY, /* a public-only key was asked to sign */
    KEYLESS_R_BAD_ARGUMENT,   /* wrong lengths or buffer sizes from the caller */
    KEYLESS_R_INTERNAL,       /* allocation or libcrypto failure */
};

/* Hashes the key server signs with (SPEC.md, "Algorithms"). */
enum { KEYLESS_SHA256 = 0, KEYLESS_SHA384 = 1, KEYLESS_SHA512 = 2, KEYLESS_NHASH = 3 };

#define KEYLESS_KEY_MAGIC 0x6b657931u /* "key1": sanity check on LOAD references */

/*
 * A key of this provider (the keydata of our KEYMGMT).
 *
 * remote = 1: made by our DECODER from a KEYEDGE KEYLESS KEY block; the
 *             private half is at the key server, addressed by `id`.
 * remote = 0: a public key imported from elsewhere (the certificate's key,
 *             imported by EVP_PKEY_eq for the cert/key match). Cannot sign.
 *
 * `pub` is a default-provider EVP_PKEY of the public key; every key parameter
 * (bits, group, max size, ...) is answered from it. It is set once, before the
 * key is shared, and never changed afterwards.
 *
 * Reference counted: the EVP_PKEY owns one reference, each signature context
 * using the key holds another.
 */
typedef struct keyless_key_st {
    uint32_t magic;
    int refs;
    int type; /* EVP_PKEY_EC or EVP_PKEY_RSA */
    int remote;
    unsigned char id[KEYLESS_KEY_ID_LEN];
    EVP_PKEY *pub;
} KEYLESS_KEY;

typedef struct keyless_provctx_st {
    const OSSL_CORE_HANDLE *handle;
} KEYLESS_PROVCTX;

/* keymgmt.c */
KEYLESS_KEY *keyless_key_new(int type);
int keyless_key_up_ref(KEYLESS_KEY *key);
void keyless_key_free(KEYLESS_KEY *key);
const char *keyless_type_name(int type); /* "EC" / "RSA" */

/* provider.c */
int keyless_core_bio_read(OSSL_CORE_BIO *bio, void *buf, size_t len, size_t *got);
void keyless_raise(const char *file, int line, const char *func, int reason, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;
#define KEYLESS_RAISE(reason, ...) keyless_raise(OPENSSL_FILE, OPENSSL_LINE, OPENSSL_FUNC, (reason), __VA_ARGS__)

/* Registers and loads the provider in the default library context (once per process). */
int keyless_provider_register(char *err, size_t errlen);

/* signature.c */
const EVP_MD *keyless_md(int hash); /* fetched once, never freed */
int keyless_hash_by_name(const char *name); /* KEYLESS_SHA* or -1 */
size_t keyless_hash_len(int hash);

/* Dispatch tables. */
extern const OSSL_DISPATCH keyless_ec_keymgmt_functions[];
extern const OSSL_DISPATCH keyless_rsa_keymgmt_functions[];
extern const OSSL_DISPATCH keyless_ec_decoder_functions[];
extern const OSSL_DISPATCH keyless_rsa_decoder_functions[];
extern const OSSL_DISPATCH keyless_ecdsa_signature_functions[];
extern const OSSL_DISPATCH keyless_rsa_signature_functions[];

#endif
