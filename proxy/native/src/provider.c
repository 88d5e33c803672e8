/*
 * The provider itself: its dispatch tables, its init function, error
 * reporting through the core, and registration in the default library
 * context.
 *
 * Algorithm names are exactly the default provider's, so OpenSSL treats our
 * keys as ordinary "EC" / "RSA" keys (libssl's certificate slots, sigalg
 * checks). Ordinary fetches (NULL property query) must keep resolving to the
 * default provider: a fetch without a query takes the first implementation the
 * method store holds for a name, so keyless_provider_register() makes sure the
 * default provider's implementations are in the store before ours, and checks
 * the result.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#include "keyless.h"

/* Core functions, captured at init. One provider instance per process (we
 * load it in the default library context only), so globals are fine. */
static OSSL_FUNC_core_new_error_fn *c_new_error;
static OSSL_FUNC_core_set_error_debug_fn *c_set_error_debug;
static OSSL_FUNC_core_vset_error_fn *c_vset_error;
static OSSL_FUNC_BIO_read_ex_fn *c_bio_read_ex;
static const OSSL_CORE_HANDLE *c_handle;

int keyless_core_bio_read(OSSL_CORE_BIO *bio, void *buf, size_t len, size_t *got)
{
    *got = 0;
    if (c_bio_read_ex == NULL)
        return 0;
    return c_bio_read_ex(bio, buf, len, got);
}

/*
 * Pushes an error onto OpenSSL's error queue of the calling thread. Through
 * the core it gets this provider's error library, so OpenSSL prints it as
 * "keyedge-keyless::<reason>:<detail>". Never give it key material.
 */
void keyless_raise(const char *file, int line, const char *func, int reason, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (c_new_error != NULL && c_set_error_debug != NULL && c_vset_error != NULL) {
        c_new_error(c_handle);
        c_set_error_debug(c_handle, file, line, func);
        c_vset_error(c_handle, reason, fmt, ap);
    } else {
        ERR_new();
        ERR_set_debug(file, line, func);
        ERR_vset_error(ERR_LIB_PROV, reason, fmt, ap);
    }
    va_end(ap);
}

static const OSSL_ITEM reason_strings[] = {
    { KEYLESS_R_KEYSERVER, "key server signing failed" },
    { KEYLESS_R_UNSUPPORTED, "not supported by the key server" },
    { KEYLESS_R_BAD_KEY, "malformed keyless key" },
    { KEYLESS_R_NO_PRIVATE_KEY, "public key only: cannot sign" },
    { KEYLESS_R_BAD_ARGUMENT, "bad argument" },
    { KEYLESS_R_INTERNAL, "internal error" },
    { 0, NULL },
};

/* --- algorithm tables ----------------------------------------------------- */

#define NAMES_EC "EC:id-ecPublicKey:1.2.840.10045.2.1"
#define NAMES_RSA "RSA:rsaEncryption:1.2.840.113549.1.1.1"

static const OSSL_ALGORITHM keymgmts[] = {
    { NAMES_EC, KEYLESS_PROPS, keyless_ec_keymgmt_functions, "keyedge keyless EC key" },
    { NAMES_RSA, KEYLESS_PROPS, keyless_rsa_keymgmt_functions, "keyedge keyless RSA key" },
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM signatures[] = {
    { "ECDSA", KEYLESS_PROPS, keyless_ecdsa_signature_functions, "ECDSA at the key server" },
    { NAMES_RSA, KEYLESS_PROPS, keyless_rsa_signature_functions, "RSA PKCS#1 v1.5 / PSS at the key server" },
    { NULL, NULL, NULL, NULL },
};

/* input=pem: OpenSSL's PEM decoder skips labels it does not know, so a
 * KEYEDGE KEYLESS KEY block reaches these. */
static const OSSL_ALGORITHM decoders[] = {
    { NAMES_EC, KEYLESS_PROPS ",input=pem", keyless_ec_decoder_functions, "KEYEDGE KEYLESS KEY (EC)" },
    { NAMES_RSA, KEYLESS_PROPS ",input=pem", keyless_rsa_decoder_functions, "KEYEDGE KEYLESS KEY (RSA)" },
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM *prov_query(void *provctx, int operation_id, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return keymgmts;
    case OSSL_OP_SIGNATURE:
        return signatures;
    case OSSL_OP_DECODER:
        return decoders;
    default:
        return NULL; /* no ciphers, digests, key exchange, decryption */
    }
}

static const OSSL_PARAM *prov_gettable_params(void *provctx)
{
    static const OSSL_PARAM table[] = {
        OSSL_PARAM_DEFN(OSSL_PROV_PARAM_NAME, OSSL_PARAM_UTF8_PTR, NULL, 0),
        OSSL_PARAM_DEFN(OSSL_PROV_PARAM_VERSION, OSSL_PARAM_UTF8_PTR, NULL, 0),
        OSSL_PARAM_DEFN(OSSL_PROV_PARAM_STATUS, OSSL_PARAM_INTEGER, NULL, 0),
        OSSL_PARAM_END,
    };
    (void)provctx;
    return table;
}

static int prov_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    (void)provctx;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME)) != NULL
        && !OSSL_PARAM_set_utf8_ptr(p, "keyedge keyless bridge"))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION)) != NULL && !OSSL_PARAM_set_utf8_ptr(p, "1"))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS)) != NULL && !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

static const OSSL_ITEM *prov_get_reason_strings(void *provctx)
{
    (void)provctx;
    return reason_strings;
}

static void prov_teardown(void *provctx)
{
    OPENSSL_free(provctx);
}

static const OSSL_DISPATCH provider_functions[] = {
    { OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))prov_teardown },
    { OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))prov_query },
    { OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))prov_gettable_params },
    { OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))prov_get_params },
    { OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, (void (*)(void))prov_get_reason_strings },
    { 0, NULL },
};

static int provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
                         void **provctx)
{
    KEYLESS_PROVCTX *ctx;

    for (; in->function_id != 0; in++) {
        switch (in->function_id) {
        case OSSL_FUNC_CORE_NEW_ERROR:
            c_new_error = OSSL_FUNC_core_new_error(in);
            break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
            c_set_error_debug = OSSL_FUNC_core_set_error_debug(in);
            break;
        case OSSL_FUNC_CORE_VSET_ERROR:
            c_vset_error = OSSL_FUNC_core_vset_error(in);
            break;
        case OSSL_FUNC_BIO_READ_EX:
            c_bio_read_ex = OSSL_FUNC_BIO_read_ex(in);
            break;
        default:
            break;
        }
    }
    if (c_bio_read_ex == NULL)
        return 0; /* the decoder cannot work without it */
    if ((ctx = OPENSSL_zalloc(sizeof(*ctx))) == NULL)
        return 0;
    ctx->handle = handle;
    c_handle = handle;
    *provctx = ctx;
    *out = provider_functions;
    return 1;
}

/* --- registration --------------------------------------------------------- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static OSSL_PROVIDER *prov_default; /* held for the life of the process */
static OSSL_PROVIDER *prov_keyless; /* idem */
static int builtin_added;

/* Fetches the default provider's implementations of the names we also
 * implement, so they enter the method store first. */
static void prefetch_default(void)
{
    static const char *const keytypes[] = { "EC", "RSA" };
    static const char *const sigs[] = { "ECDSA", "RSA" };
    size_t i;

    for (i = 0; i < 2; i++) {
        EVP_KEYMGMT_free(EVP_KEYMGMT_fetch(NULL, keytypes[i], NULL));
        EVP_SIGNATURE_free(EVP_SIGNATURE_fetch(NULL, sigs[i], NULL));
    }
}

/* Which provider an ordinary fetch of `name` resolves to: "" when it fails. */
static const char *resolves_to(int op, const char *name)
{
    const char *who = "";

    if (op == OSSL_OP_KEYMGMT) {
        EVP_KEYMGMT *km = EVP_KEYMGMT_fetch(NULL, name, NULL);
        if (km != NULL)
            who = OSSL_PROVIDER_get0_name(EVP_KEYMGMT_get0_provider(km));
        EVP_KEYMGMT_free(km); /* the provider (and its name) outlives the method */
    } else {
        EVP_SIGNATURE *sig = EVP_SIGNATURE_fetch(NULL, name, NULL);
        if (sig != NULL)
            who = OSSL_PROVIDER_get0_name(EVP_SIGNATURE_get0_provider(sig));
        EVP_SIGNATURE_free(sig);
    }
    return who;
}

static int check_resolution(char *err, size_t errlen)
{
    static const struct {
        int op;
        const char *name;
    } checks[] = {
        { OSSL_OP_KEYMGMT, "EC" },
        { OSSL_OP_KEYMGMT, "RSA" },
        { OSSL_OP_SIGNATURE, "ECDSA" },
        { OSSL_OP_SIGNATURE, "RSA" },
    };
    size_t i;

    for (i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
        const char *who = resolves_to(checks[i].op, checks[i].name);
        if (strcmp(who, KEYLESS_PROVIDER_NAME) == 0) {
            snprintf(err, errlen, "an ordinary fetch of %s resolves to the keyless provider, not the default one",
                     checks[i].name);
            return 0;
        }
    }
    return 1;
}

int keyless_provider_register(char *err, size_t errlen)
{
    int ok = 0;

    pthread_mutex_lock(&reg_lock);
    if (prov_keyless != NULL) {
        ok = 1;
        goto done;
    }
    ERR_set_mark();
    /* Default first, with retain_fallbacks = 1: an explicit load of ours alone
     * would switch off the automatic loading of the default provider. */
    if (prov_default == NULL && (prov_default = OSSL_PROVIDER_try_load(NULL, "default", 1)) == NULL) {
        snprintf(err, errlen, "cannot load OpenSSL's default provider");
        goto pop;
    }
    prefetch_default();
    if (!builtin_added && !OSSL_PROVIDER_add_builtin(NULL, KEYLESS_PROVIDER_NAME, provider_init)) {
        snprintf(err, errlen, "OSSL_PROVIDER_add_builtin failed");
        goto pop;
    }
    builtin_added = 1;
    if ((prov_keyless = OSSL_PROVIDER_load(NULL, KEYLESS_PROVIDER_NAME)) == NULL) {
        snprintf(err, errlen, "OSSL_PROVIDER_load(%s) failed", KEYLESS_PROVIDER_NAME);
        goto pop;
    }
    if (!check_resolution(err, errlen)) {
        OSSL_PROVIDER_unload(prov_keyless);
        prov_keyless = NULL;
        goto pop;
    }
    ok = 1;
pop:
    ERR_pop_to_mark(); /* nothing of this is the caller's business */
done:
    pthread_mutex_unlock(&reg_lock);
    return ok;
}
