/*
 * The signing RPC to the key server (keyserver/protocol/SPEC.md).
 *
 * Synchronous, on the calling thread: one persistent connection per process,
 * opened lazily, one request at a time (a mutex serialises threads), a
 * deadline per call, no retry. After a connect failure or a timeout, calls
 * fail at once for breaker_ms (circuit breaker), so a dead key server costs a
 * handshake nothing but its failure.
 */
#ifndef KEYLESS_RPC_H
#define KEYLESS_RPC_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *socket_path; /* unix socket, or NULL for tls */
    const char *tls_host;    /* TCP + mutual TLS 1.3, when socket_path is NULL */
    int tls_port;
    const char *tls_servername; /* NULL: verify tls_host */
    const char *tls_ca_pem;
    const char *tls_cert_pem;
    const char *tls_key_pem;
    int timeout_ms;
    int breaker_ms;
} keyless_rpc_config;

typedef struct {
    uint64_t signs; /* signatures returned */
    uint64_t connect, timeout, remote, protocol, breaker;
    char last_error[256];
} keyless_rpc_stats;

/* Outcome of keyless_rpc_sign. */
enum {
    RPC_OK = 0,
    RPC_E_CONNECT,  /* could not connect, or the connection broke */
    RPC_E_TIMEOUT,  /* the deadline passed */
    RPC_E_REMOTE,   /* the key server answered ERROR */
    RPC_E_PROTOCOL, /* malformed answer */
    RPC_E_BREAKER,  /* failed fast: circuit open */
    RPC_E_NOTCONF,  /* init() was never called */
};

/* Alg bytes (SPEC.md, "Algorithms"). */
#define ALG_ECDSA_SHA256 0x01
#define ALG_RSA_PKCS1_SHA256 0x11
#define ALG_RSA_PSS_SHA256 0x21

/* Replaces the endpoint and limits. Validates everything first: on failure
 * nothing changes. Closes the current connection and resets the breaker. */
int keyless_rpc_configure(const keyless_rpc_config *cfg, char *err, size_t errlen);

/*
 * Signs `digest` with key `key_id` using algorithm `alg`. On RPC_OK the
 * signature is in sig[0..*siglen): for RSA exactly sigmax bytes, for ECDSA a
 * DER ECDSA-Sig-Value of at most sigmax bytes (anything else is a protocol
 * failure). Otherwise `err` says why (no key material
 * in it) and the stats count the failure.
 */
int keyless_rpc_sign(const unsigned char *key_id, unsigned char alg, const unsigned char *digest, size_t dlen,
                     unsigned char *sig, size_t *siglen, size_t sigmax, char *err, size_t errlen);

void keyless_rpc_get_stats(keyless_rpc_stats *out);

#endif
