/*
 * The N-API face of the bridge (plain C, node_api.h):
 *
 *   init({ socketPath?, timeoutMs?, breakerMs?, tls?: { host, port, caPem, certPem, keyPem, servername? } })
 *       registers the provider (once per process) and sets the key server
 *       endpoint (every call; the open connection is replaced). Exactly one
 *       of socketPath and tls.
 *   stats() -> { signs, failures: { connect, timeout, remote, protocol, breaker }, lastError }
 *
 * Errors thrown carry a `code`: KEYEDGE_ERR_CONFIG for bad options,
 * KEYEDGE_ERR_SETUP when OpenSSL refuses the provider.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <node_api.h>

#include "keyless.h"
#include "rpc.h"

#define CHECK(call)                                                                                               \
    do {                                                                                                          \
        if ((call) != napi_ok)                                                                                    \
            return NULL; /* an exception is pending */                                                            \
    } while (0)

static napi_value throw_config(napi_env env, const char *msg)
{
    napi_throw_error(env, "KEYEDGE_ERR_CONFIG", msg);
    return NULL;
}

/* Property `name` of `obj`: 1 present, 0 absent (undefined), -1 on error. */
static int get_prop(napi_env env, napi_value obj, const char *name, napi_value *out)
{
    bool has = false;
    napi_valuetype type;

    if (napi_has_named_property(env, obj, name, &has) != napi_ok)
        return -1;
    if (!has)
        return 0;
    if (napi_get_named_property(env, obj, name, out) != napi_ok || napi_typeof(env, *out, &type) != napi_ok)
        return -1;
    return type == napi_undefined ? 0 : 1;
}

/* A string property as a malloc'ed C string (NUL bytes refused). */
static int get_string(napi_env env, napi_value obj, const char *name, int required, char **out, char *err,
                      size_t errlen)
{
    napi_value v = NULL;
    napi_valuetype type;
    size_t len = 0;
    int r = get_prop(env, obj, name, &v);

    *out = NULL;
    if (r < 0)
        return 0;
    if (r == 0) {
        if (required)
            snprintf(err, errlen, "%s is required", name);
        return !required;
    }
    if (napi_typeof(env, v, &type) != napi_ok || type != napi_string
        || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
        snprintf(err, errlen, "%s must be a string", name);
        return 0;
    }
    if ((*out = malloc(len + 1)) == NULL || napi_get_value_string_utf8(env, v, *out, len + 1, &len) != napi_ok) {
        snprintf(err, errlen, "out of memory");
        return 0;
    }
    if (strlen(*out) != len) {
        snprintf(err, errlen, "%s must not contain NUL characters", name);
        return 0;
    }
    return 1;
}

static int get_int(napi_env env, napi_value obj, const char *name, int dflt, int *out, char *err, size_t errlen)
{
    napi_value v = NULL;
    napi_valuetype type;
    double d;
    int r = get_prop(env, obj, name, &v);

    *out = dflt;
    if (r <= 0)
        return r == 0;
    if (napi_typeof(env, v, &type) != napi_ok || type != napi_number || napi_get_value_double(env, v, &d) != napi_ok
        || d != (double)(int)d) {
        snprintf(err, errlen, "%s must be an integer", name);
        return 0;
    }
    *out = (int)d;
    return 1;
}

static napi_value js_init(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], tlsobj = NULL;
    napi_valuetype type;
    char err[300] = "";
    char *socket_path = NULL, *host = NULL, *servername = NULL, *ca = NULL, *cert = NULL, *key = NULL;
    keyless_rpc_config cfg;
    int ok = 0, has_tls = 0, port = 0;

    memset(&cfg, 0, sizeof(cfg));
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || napi_typeof(env, argv[0], &type) != napi_ok || type != napi_object)
        return throw_config(env, "init() takes an options object");
    if (!get_string(env, argv[0], "socketPath", 0, &socket_path, err, sizeof(err))
        || !get_int(env, argv[0], "timeoutMs", 250, &cfg.timeout_ms, err, sizeof(err))
        || !get_int(env, argv[0], "breakerMs", 200, &cfg.breaker_ms, err, sizeof(err))
        || (has_tls = get_prop(env, argv[0], "tls", &tlsobj)) < 0)
        goto end;
    if (has_tls) {
        if (napi_typeof(env, tlsobj, &type) != napi_ok || type != napi_object) {
            snprintf(err, sizeof(err), "tls must be an object");
            goto end;
        }
        if (!get_string(env, tlsobj, "host", 1, &host, err, sizeof(err))
            || !get_int(env, tlsobj, "port", 0, &port, err, sizeof(err))
            || !get_string(env, tlsobj, "caPem", 1, &ca, err, sizeof(err))
            || !get_string(env, tlsobj, "certPem", 1, &cert, err, sizeof(err))
            || !get_string(env, tlsobj, "keyPem", 1, &key, err, sizeof(err))
            || !get_string(env, tlsobj, "servername", 0, &servername, err, sizeof(err)))
            goto end;
    }
    if ((socket_path != NULL) == (has_tls != 0)) {
        snprintf(err, sizeof(err), "init() needs exactly one of socketPath and tls");
        goto end;
    }
    cfg.socket_path = socket_path;
    cfg.tls_host = host;
    cfg.tls_port = port;
    cfg.tls_servername = servername;
    cfg.tls_ca_pem = ca;
    cfg.tls_cert_pem = cert;
    cfg.tls_key_pem = key;
    if (!keyless_rpc_configure(&cfg, err, sizeof(err)))
        goto end;
    if (!keyless_provider_register(err, sizeof(err))) {
        napi_throw_error(env, "KEYEDGE_ERR_SETUP", err);
        err[0] = '\0';
        goto end;
    }
    ok = 1;
end:
    if (key != NULL)
        memset(key, 0, strlen(key)); /* the client key's PEM: do not leave it lying around */
    free(socket_path);
    free(host);
    free(servername);
    free(ca);
    free(cert);
    free(key);
    if (!ok) {
        bool pending = false;
        napi_is_exception_pending(env, &pending);
        if (!pending)
            throw_config(env, err[0] != '\0' ? err : "init() failed");
    }
    return NULL;
}

static int set_number(napi_env env, napi_value obj, const char *name, uint64_t v)
{
    napi_value n;

    return napi_create_double(env, (double)v, &n) == napi_ok && napi_set_named_property(env, obj, name, n) == napi_ok;
}

static napi_value js_stats(napi_env env, napi_callback_info info)
{
    keyless_rpc_stats st;
    napi_value out, failures, s;

    (void)info;
    keyless_rpc_get_stats(&st);
    CHECK(napi_create_object(env, &out));
    CHECK(napi_create_object(env, &failures));
    if (!set_number(env, out, "signs", st.signs) || !set_number(env, failures, "connect", st.connect)
        || !set_number(env, failures, "timeout", st.timeout) || !set_number(env, failures, "remote", st.remote)
        || !set_number(env, failures, "protocol", st.protocol) || !set_number(env, failures, "breaker", st.breaker))
        return NULL;
    CHECK(napi_set_named_property(env, out, "failures", failures));
    CHECK(napi_create_string_utf8(env, st.last_error, NAPI_AUTO_LENGTH, &s));
    CHECK(napi_set_named_property(env, out, "lastError", s));
    return out;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */)
{
    napi_property_descriptor props[] = {
        { "init", NULL, js_init, NULL, NULL, NULL, napi_enumerable, NULL },
        { "stats", NULL, js_stats, NULL, NULL, NULL, napi_enumerable, NULL },
    };
    napi_value name;

    if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok
        || napi_create_string_utf8(env, KEYLESS_PROVIDER_NAME, NAPI_AUTO_LENGTH, &name) != napi_ok
        || napi_set_named_property(env, exports, "providerName", name) != napi_ok)
        return NULL;
    return exports;
}
