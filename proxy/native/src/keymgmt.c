/*
 * KEYMGMT for keyless EC and RSA keys.
 *
 * Our keydata never holds private material. It can be
 *  - a remote key (from our DECODER via LOAD): "has" a private key, which
 *    lives at the key server, and signs through signature.c;
 *  - a public key IMPORTed from another provider (EVP_PKEY_eq does that with
 *    the certificate's key before calling MATCH).
 *
 * Every key parameter is answered by a default-provider EVP_PKEY of the public
 * key (key->pub), so bits, group, max size, default digest, point format and
 * so on are exactly what the default provider would say.
 *
 * EXPORT refuses whenever the private half is selected: signing first tries
 * the default provider's signature with our key exported to its keymgmt, and
 * only this refusal makes OpenSSL fall back to our own SIGNATURE. It also
 * keeps OpenSSL from ever building a default-provider key that claims to be
 * the private key. IMPORT refuses private key material outright.
 */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/params.h>

#include "keyless.h"

const char *keyless_type_name(int type)
{
    return type == EVP_PKEY_EC ? "EC" : "RSA";
}

KEYLESS_KEY *keyless_key_new(int type)
{
    KEYLESS_KEY *key = OPENSSL_zalloc(sizeof(*key));

    if (key == NULL)
        return NULL;
    key->magic = KEYLESS_KEY_MAGIC;
    key->refs = 1;
    key->type = type;
    return key;
}

int keyless_key_up_ref(KEYLESS_KEY *key)
{
    __atomic_add_fetch(&key->refs, 1, __ATOMIC_RELAXED);
    return 1;
}

void keyless_key_free(KEYLESS_KEY *key)
{
    if (key == NULL)
        return;
    if (__atomic_sub_fetch(&key->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    EVP_PKEY_free(key->pub);
    OPENSSL_cleanse(key, sizeof(*key)); /* clears the magic too */
    OPENSSL_free(key);
}

/* --- life cycle ----------------------------------------------------------- */

static void *ec_new(void *provctx)
{
    (void)provctx;
    return keyless_key_new(EVP_PKEY_EC);
}

static void *rsa_new(void *provctx)
{
    (void)provctx;
    return keyless_key_new(EVP_PKEY_RSA);
}

static void km_free(void *keydata)
{
    keyless_key_free(keydata);
}

/*
 * The decoder passes the address of its KEYLESS_KEY pointer. We take the
 * object over and clear the decoder's pointer, so the decoder knows not to
 * free it (the same hand-over as the default provider's decoders).
 */
static void *load(int type, const void *reference, size_t reference_sz)
{
    KEYLESS_KEY *key;

    if (reference_sz != sizeof(key))
        return NULL;
    memcpy(&key, reference, sizeof(key));
    if (key == NULL || key->magic != KEYLESS_KEY_MAGIC || key->type != type)
        return NULL;
    memset((void *)reference, 0, sizeof(key));
    return key;
}

static void *ec_load(const void *reference, size_t reference_sz)
{
    return load(EVP_PKEY_EC, reference, reference_sz);
}

static void *rsa_load(const void *reference, size_t reference_sz)
{
    return load(EVP_PKEY_RSA, reference, reference_sz);
}

static void *km_dup(const void *keydata_from, int selection)
{
    const KEYLESS_KEY *from = keydata_from;
    KEYLESS_KEY *key;

    if (from == NULL || (key = keyless_key_new(from->type)) == NULL)
        return NULL;
    memcpy(key->id, from->id, sizeof(key->id));
    key->remote = from->remote && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
    if (from->pub != NULL && (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0) {
        /* pub is never modified once set, so sharing it is safe */
        if (!EVP_PKEY_up_ref(from->pub)) {
            keyless_key_free(key);
            return NULL;
        }
        key->pub = from->pub;
    }
    return key;
}

/* --- questions ------------------------------------------------------------ */

static int km_has(const void *keydata, int selection)
{
    const KEYLESS_KEY *key = keydata;

    if (key == NULL)
        return 0;
    /* Yes to "private key" for remote keys: libssl only accepts a key for a
     * certificate slot that has one. */
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && !key->remote)
        return 0;
    if ((selection & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)) != 0 && key->pub == NULL)
        return 0;
    return 1;
}

/* Equal public keys mean equal keys; params-only selections compare params. */
static int km_match(const void *keydata1, const void *keydata2, int selection)
{
    const KEYLESS_KEY *a = keydata1, *b = keydata2;

    if (a == NULL || b == NULL || a->type != b->type || a->pub == NULL || b->pub == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0)
        return EVP_PKEY_eq(a->pub, b->pub) == 1;
    if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0)
        return EVP_PKEY_parameters_eq(a->pub, b->pub) == 1;
    return 1;
}

static const char *ec_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? "ECDSA" : NULL;
}

static const char *rsa_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? "RSA" : NULL;
}

/* --- parameters: forwarded to the default provider's copy ------------------ */

static int km_get_params(void *keydata, OSSL_PARAM params[])
{
    KEYLESS_KEY *key = keydata;

    if (key == NULL)
        return 0;
    if (key->pub == NULL)
        return 1; /* an empty key has nothing to say, like the default provider's */
    return EVP_PKEY_get_params(key->pub, params);
}

static const OSSL_PARAM *ec_gettable_params(void *provctx)
{
    static const OSSL_PARAM table[] = {
        OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_X, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_Y, NULL, 0),
        OSSL_PARAM_END,
    };
    (void)provctx;
    return table;
}

static const OSSL_PARAM *rsa_gettable_params(void *provctx)
{
    static const OSSL_PARAM table[] = {
        OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
        OSSL_PARAM_END,
    };
    (void)provctx;
    return table;
}

/* --- import / export ------------------------------------------------------ */

static int is_private_param(const char *name)
{
    return strcmp(name, OSSL_PKEY_PARAM_PRIV_KEY) == 0 || strcmp(name, OSSL_PKEY_PARAM_RSA_D) == 0
        || strncmp(name, "rsa-factor", 10) == 0 || strncmp(name, "rsa-exponent", 12) == 0
        || strncmp(name, "rsa-coefficient", 15) == 0;
}

/*
 * Public keys only: anything carrying private key material is refused, so a
 * key of ours never holds a private key. The public key becomes a
 * default-provider EVP_PKEY, like the one a decoded key gets.
 */
static int km_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    KEYLESS_KEY *key = keydata;
    const OSSL_PARAM *p;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pub = NULL;
    int ok = 0;

    if (key == NULL || key->remote || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0)
        return 0;
    for (p = params; p != NULL && p->key != NULL; p++)
        if (is_private_param(p->key))
            return 0;
    ctx = EVP_PKEY_CTX_new_from_name(NULL, keyless_type_name(key->type), "provider=default");
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0
        || EVP_PKEY_fromdata(ctx, &pub, EVP_PKEY_PUBLIC_KEY, (OSSL_PARAM *)params) <= 0)
        goto end;
    EVP_PKEY_free(key->pub);
    key->pub = pub;
    pub = NULL;
    ok = 1;
end:
    EVP_PKEY_free(pub);
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

static int km_export(void *keydata, int selection, OSSL_CALLBACK *cb, void *cbarg)
{
    KEYLESS_KEY *key = keydata;
    OSSL_PARAM *params = NULL;
    int ok;

    /* Silent refusal: this is the normal path of every signing init. */
    if (key == NULL || key->pub == NULL || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
        return 0;
    if (EVP_PKEY_todata(key->pub, selection, &params) <= 0)
        return 0;
    ok = cb(params, cbarg);
    OSSL_PARAM_free(params);
    return ok;
}

static const OSSL_PARAM ec_public_types[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM rsa_public_types[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *ec_types(int selection)
{
    return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 ? NULL : ec_public_types;
}

static const OSSL_PARAM *rsa_types(int selection)
{
    return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 ? NULL : rsa_public_types;
}

#define FN(id, f) { id, (void (*)(void))(f) }

const OSSL_DISPATCH keyless_ec_keymgmt_functions[] = {
    FN(OSSL_FUNC_KEYMGMT_NEW, ec_new),
    FN(OSSL_FUNC_KEYMGMT_FREE, km_free),
    FN(OSSL_FUNC_KEYMGMT_LOAD, ec_load),
    FN(OSSL_FUNC_KEYMGMT_DUP, km_dup),
    FN(OSSL_FUNC_KEYMGMT_HAS, km_has),
    FN(OSSL_FUNC_KEYMGMT_MATCH, km_match),
    FN(OSSL_FUNC_KEYMGMT_GET_PARAMS, km_get_params),
    FN(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, ec_gettable_params),
    FN(OSSL_FUNC_KEYMGMT_IMPORT, km_import),
    FN(OSSL_FUNC_KEYMGMT_IMPORT_TYPES, ec_types),
    FN(OSSL_FUNC_KEYMGMT_EXPORT, km_export),
    FN(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, ec_types),
    FN(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, ec_query_operation_name),
    { 0, NULL },
};

const OSSL_DISPATCH keyless_rsa_keymgmt_functions[] = {
    FN(OSSL_FUNC_KEYMGMT_NEW, rsa_new),
    FN(OSSL_FUNC_KEYMGMT_FREE, km_free),
    FN(OSSL_FUNC_KEYMGMT_LOAD, rsa_load),
    FN(OSSL_FUNC_KEYMGMT_DUP, km_dup),
    FN(OSSL_FUNC_KEYMGMT_HAS, km_has),
    FN(OSSL_FUNC_KEYMGMT_MATCH, km_match),
    FN(OSSL_FUNC_KEYMGMT_GET_PARAMS, km_get_params),
    FN(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, rsa_gettable_params),
    FN(OSSL_FUNC_KEYMGMT_IMPORT, km_import),
    FN(OSSL_FUNC_KEYMGMT_IMPORT_TYPES, rsa_types),
    FN(OSSL_FUNC_KEYMGMT_EXPORT, km_export),
    FN(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, rsa_types),
    FN(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, rsa_query_operation_name),
    { 0, NULL },
};
