/*
 * The signing RPC to a pool of key servers (keyserver/protocol/SPEC.md).
 *
 * pool.c: synchronous, on the calling thread. One persistent connection per
 * key server per process, opened lazily, one request at a time (a mutex
 * serialises threads). The whole call has one deadline (timeout_ms); a sign
 * that fails on one key server is retried on the next while that deadline
 * allows (failover), each attempt getting an equal share of what is left.
 * Choice: the key server with the lowest latency (EWMA of its signs, decaying
 * while it is idle so that every server is re-measured now and then). A
 * circuit breaker per key server: after a connect failure, a timeout, a
 * draining answer or (in a pool) any failure but an ERROR about the request
 * or the key (SIGN_FAILED counts as the key's), it is skipped for breaker_ms; with health checks on
 * (health_checked) it stays out until keyless_rpc_set_health says it is up.
 * A server is only skipped while another is usable: with every server
 * skipped, the breakers alone decide, so one key server behaves as before.
 *
 * rpc.c: the exchange on one connection: framing and strict answer checks.
 */
#ifndef KEYLESS_RPC_H
#define KEYLESS_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "transport.h"

#define KEYLESS_MAX_SERVERS 16
#define KEYLESS_SERVER_NAME_MAX 32

typedef struct {
    const char *name;        /* metric label, [a-z0-9_-]; NULL: the index */
    const char *socket_path; /* unix socket, or NULL for tls */
    const char *tls_host;    /* TCP + mutual TLS 1.3, when socket_path is NULL */
    int tls_port;
    const char *tls_servername; /* NULL: verify tls_host */
    const char *tls_ca_pem;
    const char *tls_cert_pem;
    const char *tls_key_pem;
} keyless_server_config;

typedef struct {
    const keyless_server_config *servers;
    int nservers; /* 1..KEYLESS_MAX_SERVERS */
    int timeout_ms;
    int breaker_ms;
    int health_checked; /* a server marked down stays out until keyless_rpc_set_health(up) */
} keyless_rpc_config;

/* Per call: each sign counts once, by its outcome. */
typedef struct {
    uint64_t signs;     /* signatures returned */
    uint64_t failovers; /* attempts that failed on one server and went on to the next */
    uint64_t connect, timeout, remote, protocol, breaker;
    uint32_t generation; /* of the configuration, for keyless_rpc_set_health */
    char last_error[256];
} keyless_rpc_stats;

enum { KEYLESS_SERVER_UP = 0, KEYLESS_SERVER_COOLING = 1, KEYLESS_SERVER_DOWN = 2 };

/* Per key server: each attempt counts once. */
typedef struct {
    char name[KEYLESS_SERVER_NAME_MAX + 1];
    int state;          /* KEYLESS_SERVER_*: up, breaker open, down until a health check answers */
    uint64_t signs;     /* signatures this server returned */
    uint64_t failovers; /* failed attempts here that were retried on another server */
    uint64_t connect, timeout, remote, protocol;
    uint64_t rejoins;       /* times a health check brought it back */
    uint64_t sign_us_total; /* time spent in its successful signs */
    double latency_ewma_ms; /* 0 until measured */
} keyless_server_stats;

/* Outcome of keyless_rpc_sign. */
enum {
    RPC_OK = 0,
    RPC_E_CONNECT,  /* could not connect, or the connection broke */
    RPC_E_TIMEOUT,  /* the deadline passed */
    RPC_E_REMOTE,   /* the key server answered ERROR */
    RPC_E_PROTOCOL, /* malformed answer */
    RPC_E_BREAKER,  /* failed fast: every circuit open */
    RPC_E_NOTCONF,  /* init() was never called */
    RPC_E_STALE,    /* rpc.c to pool.c only: see keyless_rpc_exchange */
};

/* Alg bytes (SPEC.md, "Algorithms"). */
#define ALG_ECDSA_SHA256 0x01
#define ALG_RSA_PKCS1_SHA256 0x11
#define ALG_RSA_PSS_SHA256 0x21

/* Error codes treated specially (SPEC.md, "Error codes"). The request itself is wrong: another
 * key server would refuse it too, so no failover. */
#define ERR_MALFORMED_FRAME 1
#define ERR_UNSUPPORTED_VERSION 2
#define ERR_UNKNOWN_OP 3
#define ERR_ALGORITHM_MISMATCH 6
#define ERR_UNKNOWN_ALGORITHM 7
#define ERR_BAD_DIGEST_LENGTH 8
/* About one key, or may be, not the server's health: no breaker in a pool (pool.c). */
#define ERR_UNKNOWN_KEY 5
#define ERR_NOT_AUTHORISED 9
#define ERR_SIGN_FAILED 10
/* The connection is closed after these; a draining server is skipped for a while. */
#define ERR_FRAME_TOO_LARGE 4
#define ERR_SHUTTING_DOWN 13

/* Replaces the key servers and limits. Validates everything first: on failure
 * nothing changes. Closes the current connections and resets the breakers. */
int keyless_rpc_configure(const keyless_rpc_config *cfg, char *err, size_t errlen);

/*
 * Signs `digest` with key `key_id` using algorithm `alg`. On RPC_OK the
 * signature is in sig[0..*siglen): for RSA exactly sigmax bytes, for ECDSA a
 * DER ECDSA-Sig-Value of at most sigmax bytes (anything else is a protocol
 * failure). Otherwise `err` says why (no key material in it) and the stats
 * count the failure.
 */
int keyless_rpc_sign(const unsigned char *key_id, unsigned char alg, const unsigned char *digest, size_t dlen,
                     unsigned char *sig, size_t *siglen, size_t sigmax, char *err, size_t errlen);

/* A health check's verdict on server `index` of configuration `generation`
 * (a stale generation is ignored): up brings a down server back, down keeps
 * it out of the choice. Returns 1 when applied. */
int keyless_rpc_set_health(uint32_t generation, int index, int up);

/* Replaces the CA, client certificate and key of TLS server `index` of
 * configuration `generation` and closes its open connection, so the next sign
 * connects with them (an SSL in use elsewhere keeps its own reference to the
 * old SSL_CTX). Everything is checked first (as init() does):
 * -1 with `err` when refused, nothing changed; 0 for a stale generation or an
 * index that is not a TLS server; 1 applied. */
int keyless_rpc_set_tls(uint32_t generation, int index, const char *ca_pem, const char *cert_pem, const char *key_pem,
                        char *err, size_t errlen);

/* Copies the totals and up to `max` servers' counters; *n gets the number of servers. */
void keyless_rpc_get_stats(keyless_rpc_stats *out, keyless_server_stats *servers, int max, int *n);

/* rpc.c: one SIGN exchange on an open connection, answer validated; closes
 * the connection on any failure that leaves the stream untrusted, and after
 * an answer followed by bytes nobody asked for. On RPC_E_REMOTE, *code is
 * the key server's error code. `reused`: the connection served an earlier
 * request; then one that fails before any byte of the answer (the key
 * server closed it while idle), or whose first answer carries another
 * request's id (stray bytes from before), is RPC_E_STALE, closed, for the
 * caller to retry on a new connection. Not thread-safe: the caller holds the
 * pool's lock. */
int keyless_rpc_exchange(keyless_transport *t, const unsigned char *key_id, unsigned char alg,
                         const unsigned char *digest, size_t dlen, int reused, unsigned char *sig, size_t *siglen,
                         size_t sigmax, int64_t deadline, unsigned *code, char *err, size_t errlen);

#endif
