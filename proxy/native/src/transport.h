/*
 * How rpc.c reaches the key server: a byte stream with deadlines.
 *
 * Every call blocks the calling thread (node's main thread, inside a TLS
 * handshake) at most until `deadline` (CLOCK_MONOTONIC milliseconds): sockets
 * are non-blocking and waits are poll() with the remaining time.
 *
 * Implementations: unix socket (transport_sock.c) and TCP + mutual TLS 1.3
 * (transport_tls.c). A transport object holds its configuration and at most
 * one open connection.
 */
#ifndef KEYLESS_TRANSPORT_H
#define KEYLESS_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum { IO_OK = 0, IO_ERR = -1, IO_TIMEOUT = -2 };

typedef struct keyless_transport keyless_transport;

typedef struct {
    /* Opens the connection. IO_OK, IO_ERR or IO_TIMEOUT (err filled). */
    int (*open)(keyless_transport *t, int64_t deadline, char *err, size_t errlen);
    int (*send_all)(keyless_transport *t, const unsigned char *buf, size_t len, int64_t deadline, char *err,
                    size_t errlen);
    /* Reads what has arrived, at least 1 and at most `len` bytes, waiting
     * until the deadline for the first: IO_OK with *got > 0, IO_ERR (EOF
     * included) or IO_TIMEOUT. One call is usually one recv(): the key server
     * writes each answer in one write, so a whole answer arrives at once. */
    int (*recv_some)(keyless_transport *t, unsigned char *buf, size_t len, size_t *got, int64_t deadline, char *err,
                     size_t errlen);
    /* Whether the idle open connection can still be used: no EOF, no stray
     * bytes. Checked before a request is sent, so that a connection the key
     * server closed while we were idle is replaced without failing a sign
     * (pool.c skips it right after an answer, see RECENT_MS there). */
    int (*usable)(keyless_transport *t);
    void (*close)(keyless_transport *t);   /* closes the connection; keeps the configuration */
    void (*destroy)(keyless_transport *t); /* closes and frees everything */
} keyless_transport_ops;

struct keyless_transport {
    const keyless_transport_ops *ops;
    int connected;
    int64_t answered_at; /* keyless_now_ms() of the last whole answer on this connection, 0 for none */
    char where[200]; /* for messages: "unix:/path" or "tls:host:port" */
};

int64_t keyless_now_ms(void);

/* Waits for `events` on fd until the deadline: 1 ready, 0 timed out, -1 poll
 * failed. *revents (may be NULL) gets what poll() reported. */
int keyless_wait_fd(int fd, short events, int64_t deadline, short *revents);

/* Non-blocking connect of a new stream socket, waiting up to the deadline. */
int keyless_connect_fd(const struct sockaddr *addr, socklen_t addrlen, int64_t deadline, int *fd_out, char *err,
                       size_t errlen);

keyless_transport *keyless_unix_transport_new(const char *path, char *err, size_t errlen);
/* Replacing a TLS transport's certificate, key and CA (transport_tls.c): a
 * new SSL_CTX, all of init()'s checks made (NULL and `err` on failure), then
 * swapped in under the pool's lock; the swap returns the old one to free, or
 * NULL (nothing changed) for a transport that is not TLS. */
struct ssl_ctx_st;
struct ssl_ctx_st *keyless_tls_ctx_new(const char *ca_pem, const char *cert_pem, const char *key_pem, char *err,
                                       size_t errlen);
struct ssl_ctx_st *keyless_tls_swap_ctx(keyless_transport *t, struct ssl_ctx_st *ctx);
keyless_transport *keyless_tls_transport_new(const char *host, int port, const char *servername, const char *ca_pem,
                                             const char *cert_pem, const char *key_pem, char *err, size_t errlen);

#endif
