/*
 * The N-API face of the bridge (plain C, node_api.h):
 *
 *   init({ socketPath? | tls?: { host, port, caPem, certPem, keyPem, servername? }
 *          | servers: [{ name?, socketPath? | tls? }, ...],
 *          timeoutMs?, breakerMs?, healthChecked?: boolean })
 *       registers the provider (once per process) and sets the key servers
 *       (every call; open connections are replaced). One endpoint at the top
 *       level, or a pool in `servers` (rpc.h).
 *   setHealth(generation, index, up) -> boolean: a health check's verdict.
 *   setTls(generation, index, { caPem, certPem, keyPem }) -> boolean: new
 *       client TLS material for a TLS key server (renewed certificates), its
 *       open connection closed so the next sign connects with it; checked as init() checks it, a refusal throws and
 *       changes nothing; false for a stale generation or a server not TLS.
 *   stats() -> { signs, failovers, generation, failures: { connect, timeout, remote, protocol, breaker },
 *                lastError, servers: [{ name, state, signs, failovers, rejoins, failures, signSeconds,
 *                latencyEwmaMs }] }
 *
 * Errors thrown carry a `code`: KEYEDGE_ERR_CONFIG for bad options,
 * KEYEDGE_ERR_SETUP when OpenSSL refuses the provider.
 */
#include <limits.h>
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
    /* In range before the cast: converting NaN, an infinity or a number outside int's range to int is
     * undefined behaviour (C11 6.3.1.4), which x86-64 happens to turn into INT_MIN. Seen with UBSan:
     * gcc -fsanitize=float-cast-overflow on src/*.c, then init({ socketPath: 'x', timeoutMs: 1e12 }). */
    if (napi_typeof(env, v, &type) != napi_ok || type != napi_number || napi_get_value_double(env, v, &d) != napi_ok
        || !(d >= INT_MIN && d <= INT_MAX) || d != (double)(int)d) {
        snprintf(err, errlen, "%s must be an integer", name);
        return 0;
    }
    *out = (int)d;
    return 1;
}

/* The strings of one endpoint, malloc'ed (freed by free_endpoint). */
typedef struct {
    char *name, *socket_path, *host, *servername, *ca, *cert, *key;
} endpoint_strings;

static void free_endpoint(endpoint_strings *e)
{
    if (e->key != NULL)
        memset(e->key, 0, strlen(e->key)); /* the client key's PEM: do not leave it lying around */
    free(e->name);
    free(e->socket_path);
    free(e->host);
    free(e->servername);
    free(e->ca);
    free(e->cert);
    free(e->key);
    memset(e, 0, sizeof(*e));
}

/* { name?, socketPath? | tls?: { host, port, caPem, certPem, keyPem, servername? } } into *c. */
static int get_endpoint(napi_env env, napi_value obj, int named, keyless_server_config *c, endpoint_strings *e,
                        char *err, size_t errlen)
{
    napi_value tlsobj = NULL;
    napi_valuetype type;
    int has_tls;

    memset(c, 0, sizeof(*c));
    if ((named && !get_string(env, obj, "name", 0, &e->name, err, errlen))
        || !get_string(env, obj, "socketPath", 0, &e->socket_path, err, errlen)
        || (has_tls = get_prop(env, obj, "tls", &tlsobj)) < 0)
        return 0;
    if (has_tls) {
        if (napi_typeof(env, tlsobj, &type) != napi_ok || type != napi_object) {
            snprintf(err, errlen, "tls must be an object");
            return 0;
        }
        if (!get_string(env, tlsobj, "host", 1, &e->host, err, errlen)
            || !get_int(env, tlsobj, "port", 0, &c->tls_port, err, errlen)
            || !get_string(env, tlsobj, "caPem", 1, &e->ca, err, errlen)
            || !get_string(env, tlsobj, "certPem", 1, &e->cert, err, errlen)
            || !get_string(env, tlsobj, "keyPem", 1, &e->key, err, errlen)
            || !get_string(env, tlsobj, "servername", 0, &e->servername, err, errlen))
            return 0;
    }
    if ((e->socket_path != NULL) == (has_tls != 0)) {
        snprintf(err, errlen, "a key server needs exactly one of socketPath and tls");
        return 0;
    }
    c->name = e->name;
    c->socket_path = e->socket_path;
    c->tls_host = e->host;
    c->tls_servername = e->servername;
    c->tls_ca_pem = e->ca;
    c->tls_cert_pem = e->cert;
    c->tls_key_pem = e->key;
    return 1;
}

static int get_bool(napi_env env, napi_value obj, const char *name, int *out, char *err, size_t errlen)
{
    napi_value v = NULL;
    bool b = false;
    int r = get_prop(env, obj, name, &v);

    *out = 0;
    if (r <= 0)
        return r == 0;
    if (napi_get_value_bool(env, v, &b) != napi_ok) {
        snprintf(err, errlen, "%s must be a boolean", name);
        return 0;
    }
    *out = b;
    return 1;
}

static napi_value js_init(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], list = NULL, item;
    napi_valuetype type;
    char err[300] = "";
    keyless_server_config servers[KEYLESS_MAX_SERVERS];
    endpoint_strings strings[KEYLESS_MAX_SERVERS];
    keyless_rpc_config cfg;
    uint32_t n = 0, i;
    bool is_array = false;
    int ok = 0, has_list;

    memset(&cfg, 0, sizeof(cfg));
    memset(strings, 0, sizeof(strings));
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || napi_typeof(env, argv[0], &type) != napi_ok || type != napi_object)
        return throw_config(env, "init() takes an options object");
    if (!get_int(env, argv[0], "timeoutMs", 250, &cfg.timeout_ms, err, sizeof(err))
        || !get_int(env, argv[0], "breakerMs", 200, &cfg.breaker_ms, err, sizeof(err))
        || !get_bool(env, argv[0], "healthChecked", &cfg.health_checked, err, sizeof(err))
        || (has_list = get_prop(env, argv[0], "servers", &list)) < 0)
        goto end;
    if (has_list) {
        /* A pool: servers: [{ name?, socketPath? | tls? }, ...]; no endpoint at the top level. */
        if (napi_is_array(env, list, &is_array) != napi_ok || !is_array || napi_get_array_length(env, list, &n) != napi_ok
            || n < 1 || n > KEYLESS_MAX_SERVERS) {
            snprintf(err, sizeof(err), "servers must be an array of 1 to %d key servers", KEYLESS_MAX_SERVERS);
            goto end;
        }
        if (get_prop(env, argv[0], "socketPath", &item) != 0 || get_prop(env, argv[0], "tls", &item) != 0) {
            snprintf(err, sizeof(err), "init() takes servers, or one socketPath or tls, not both");
            goto end;
        }
        for (i = 0; i < n; i++) {
            if (napi_get_element(env, list, i, &item) != napi_ok || napi_typeof(env, item, &type) != napi_ok
                || type != napi_object) {
                snprintf(err, sizeof(err), "servers[%u] must be an object", i);
                goto end;
            }
            if (!get_endpoint(env, item, 1, &servers[i], &strings[i], err, sizeof(err)))
                goto end;
        }
    } else {
        n = 1;
        if (!get_endpoint(env, argv[0], 0, &servers[0], &strings[0], err, sizeof(err))) {
            if (strstr(err, "exactly one") != NULL)
                snprintf(err, sizeof(err), "init() needs exactly one of socketPath and tls, or servers");
            goto end;
        }
    }
    cfg.servers = servers;
    cfg.nservers = (int)n;
    if (!keyless_rpc_configure(&cfg, err, sizeof(err)))
        goto end;
    if (!keyless_provider_register(err, sizeof(err))) {
        napi_throw_error(env, "KEYEDGE_ERR_SETUP", err);
        err[0] = '\0';
        goto end;
    }
    ok = 1;
end:
    for (i = 0; i < KEYLESS_MAX_SERVERS; i++)
        free_endpoint(&strings[i]);
    if (!ok) {
        bool pending = false;
        napi_is_exception_pending(env, &pending);
        if (!pending)
            throw_config(env, err[0] != '\0' ? err : "init() failed");
    }
    return NULL;
}

/* setHealth(generation, index, up) -> whether it applied (false: a stale generation or index). */
static napi_value js_set_health(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3], out;
    uint32_t generation = 0;
    int32_t index = -1;
    bool up = false;

    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 3 || napi_get_value_uint32(env, argv[0], &generation) != napi_ok
        || napi_get_value_int32(env, argv[1], &index) != napi_ok || napi_get_value_bool(env, argv[2], &up) != napi_ok)
        return throw_config(env, "setHealth(generation, index, up) takes two integers and a boolean");
    CHECK(napi_get_boolean(env, keyless_rpc_set_health(generation, index, up) == 1, &out));
    return out;
}

/* setTls(generation, index, { caPem, certPem, keyPem }) -> whether it applied (false: stale, or not a TLS server). */
static napi_value js_set_tls(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3], out;
    napi_valuetype type;
    uint32_t generation = 0;
    int32_t index = -1;
    endpoint_strings e;
    char err[300] = "";
    int rc = -1;

    memset(&e, 0, sizeof(e));
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 3 || napi_get_value_uint32(env, argv[0], &generation) != napi_ok
        || napi_get_value_int32(env, argv[1], &index) != napi_ok || napi_typeof(env, argv[2], &type) != napi_ok
        || type != napi_object)
        return throw_config(env, "setTls(generation, index, { caPem, certPem, keyPem }) takes two integers and an object");
    if (get_string(env, argv[2], "caPem", 1, &e.ca, err, sizeof(err))
        && get_string(env, argv[2], "certPem", 1, &e.cert, err, sizeof(err))
        && get_string(env, argv[2], "keyPem", 1, &e.key, err, sizeof(err)))
        rc = keyless_rpc_set_tls(generation, index, e.ca, e.cert, e.key, err, sizeof(err));
    free_endpoint(&e); /* wipes the key's PEM */
    if (rc < 0) {
        bool pending = false;

        napi_is_exception_pending(env, &pending);
        return pending ? NULL : throw_config(env, err[0] != '\0' ? err : "setTls() failed");
    }
    CHECK(napi_get_boolean(env, rc == 1, &out));
    return out;
}

static int set_number(napi_env env, napi_value obj, const char *name, uint64_t v)
{
    napi_value n;

    return napi_create_double(env, (double)v, &n) == napi_ok && napi_set_named_property(env, obj, name, n) == napi_ok;
}

static napi_value failures_object(napi_env env, uint64_t connect, uint64_t timeout, uint64_t remote,
                                  uint64_t protocol, const uint64_t *breaker)
{
    napi_value failures;

    CHECK(napi_create_object(env, &failures));
    if (!set_number(env, failures, "connect", connect) || !set_number(env, failures, "timeout", timeout)
        || !set_number(env, failures, "remote", remote) || !set_number(env, failures, "protocol", protocol)
        || (breaker != NULL && !set_number(env, failures, "breaker", *breaker)))
        return NULL;
    return failures;
}

static napi_value js_stats(napi_env env, napi_callback_info info)
{
    static const char *const states[] = { "up", "cooling", "down" };
    keyless_rpc_stats st;
    keyless_server_stats per[KEYLESS_MAX_SERVERS];
    napi_value out, failures, list, item, s;
    int n = 0, i;

    (void)info;
    keyless_rpc_get_stats(&st, per, KEYLESS_MAX_SERVERS, &n);
    CHECK(napi_create_object(env, &out));
    if ((failures = failures_object(env, st.connect, st.timeout, st.remote, st.protocol, &st.breaker)) == NULL
        || !set_number(env, out, "signs", st.signs) || !set_number(env, out, "failovers", st.failovers)
        || !set_number(env, out, "generation", st.generation))
        return NULL;
    CHECK(napi_set_named_property(env, out, "failures", failures));
    CHECK(napi_create_string_utf8(env, st.last_error, NAPI_AUTO_LENGTH, &s));
    CHECK(napi_set_named_property(env, out, "lastError", s));
    CHECK(napi_create_array_with_length(env, (size_t)n, &list));
    for (i = 0; i < n && i < KEYLESS_MAX_SERVERS; i++) {
        const keyless_server_stats *p = &per[i];
        napi_value v;

        CHECK(napi_create_object(env, &item));
        CHECK(napi_create_string_utf8(env, p->name, NAPI_AUTO_LENGTH, &s));
        CHECK(napi_set_named_property(env, item, "name", s));
        CHECK(napi_create_string_utf8(env, states[p->state], NAPI_AUTO_LENGTH, &s));
        CHECK(napi_set_named_property(env, item, "state", s));
        if ((failures = failures_object(env, p->connect, p->timeout, p->remote, p->protocol, NULL)) == NULL
            || !set_number(env, item, "signs", p->signs) || !set_number(env, item, "failovers", p->failovers)
            || !set_number(env, item, "rejoins", p->rejoins))
            return NULL;
        CHECK(napi_set_named_property(env, item, "failures", failures));
        CHECK(napi_create_double(env, (double)p->sign_us_total / 1e6, &v));
        CHECK(napi_set_named_property(env, item, "signSeconds", v));
        CHECK(napi_create_double(env, p->latency_ewma_ms, &v));
        CHECK(napi_set_named_property(env, item, "latencyEwmaMs", v));
        CHECK(napi_set_element(env, list, (uint32_t)i, item));
    }
    CHECK(napi_set_named_property(env, out, "servers", list));
    return out;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */)
{
    napi_property_descriptor props[] = {
        { "init", NULL, js_init, NULL, NULL, NULL, napi_enumerable, NULL },
        { "stats", NULL, js_stats, NULL, NULL, NULL, napi_enumerable, NULL },
        { "setHealth", NULL, js_set_health, NULL, NULL, NULL, napi_enumerable, NULL },
        { "setTls", NULL, js_set_tls, NULL, NULL, NULL, napi_enumerable, NULL },
    };
    napi_value name;

    if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok
        || napi_create_string_utf8(env, KEYLESS_PROVIDER_NAME, NAPI_AUTO_LENGTH, &name) != napi_ok
        || napi_set_named_property(env, exports, "providerName", name) != napi_ok)
        return NULL;
    return exports;
}
