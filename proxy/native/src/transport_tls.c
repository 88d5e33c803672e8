/*
 * TCP + mutual TLS 1.3 transport, with libssl of the node process.
 *
 * The client certificate, key and the CA are given as PEM text and loaded
 * into one SSL_CTX at configuration time, so mistakes show up in init(), not
 * in the first handshake. They can be replaced later (a renewed client
 * certificate: keyless_tls_ctx_new, then keyless_tls_swap_ctx under the
 * pool's lock): the next connect uses the new SSL_CTX (pool.c closes the
 * open connection; until it does, its SSL holds a reference to the old one). The host name is resolved at configuration time too
 * (getaddrinfo blocks, which must not happen inside a client's handshake);
 * a connect tries each of its addresses in turn (connect_any).
 *
 * The server certificate is verified against the CA and against `servername`
 * (when given) or `host` (a DNS name, or an IP address matched against the
 * certificate's IP SANs).
 *
 * Non-blocking socket: every libssl call that would block is answered by a
 * poll() with the remaining time. SSL_want_read/SSL_want_write say which,
 * rather than SSL_get_error, which could be misled by errors the caller
 * (libssl's own server handshake) left on the error queue; a call that put a
 * new error on the queue has failed, whatever they say (wait_for_ssl).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "keyless.h"
#include "transport.h"

#define MAX_ADDRS 8 /* of those the host name resolves to: more is a misconfiguration, not redundancy */

typedef struct {
    keyless_transport base;
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t addrlens[MAX_ADDRS];
    int naddrs;
    int current; /* the address connected to last: tried first */
    char *verify_name; /* DNS name to check, or NULL */
    char *verify_ip;   /* IP address to check, or NULL */
    char *sni;         /* server name indication, or NULL */
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
    int hangups; /* waits in a row that poll() answered with a hang-up */
} tls_transport;

static void last_ssl_error(const char *what, SSL *ssl, char *err, size_t errlen)
{
    char buf[160] = "";
    unsigned long e = ERR_peek_last_error();
    long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;

    if (vr != X509_V_OK)
        snprintf(err, errlen, "%s: server certificate: %s", what, X509_verify_cert_error_string(vr));
    else if (e != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        snprintf(err, errlen, "%s: %s", what, buf);
    } else
        snprintf(err, errlen, "%s: connection closed (%s)", what, errno != 0 ? strerror(errno) : "eof");
}

/*
 * Waits for what libssl wants after a call that returned <= 0; `before` is
 * ERR_peek_last_error() from just before that call.
 *
 * A call that raised an error failed for good, whatever SSL_want_read says:
 * libssl leaves "wants to read" set when it fails a record it has read (a
 * peer answering with bytes that are not TLS: "wrong version number"), and
 * the socket stays readable, so waiting and calling again was a busy loop
 * until the deadline. A handshake call starts by clearing the queue, so an
 * empty queue after the call is no error of its own. (An error equal to the
 * newest one before the call goes unnoticed; the deadline then ends the call.)
 *
 * A broken connection must not become a busy loop: after a reset, libssl may
 * fail to write its alert and still say it wants to write, and poll() on a
 * hung-up socket returns at once. So a hang-up while waiting to write, or two
 * waits in a row ending in a hang-up, are the end of the connection.
 */
static int wait_for_ssl(tls_transport *t, unsigned long before, int64_t deadline, const char *what, char *err,
                        size_t errlen)
{
    short events, revents = 0;
    int w;

    if (ERR_peek_last_error() != 0 && ERR_peek_last_error() != before) {
        last_ssl_error(what, t->ssl, err, errlen);
        return IO_ERR;
    }
    if (SSL_want_read(t->ssl))
        events = POLLIN;
    else if (SSL_want_write(t->ssl))
        events = POLLOUT;
    else {
        last_ssl_error(what, t->ssl, err, errlen);
        return IO_ERR;
    }
    w = keyless_wait_fd(t->fd, events, deadline, &revents);
    if (w > 0 && (revents & (POLLHUP | POLLERR | POLLNVAL)) != 0
        && (events == POLLOUT || (revents & POLLIN) == 0 || ++t->hangups > 1)) {
        last_ssl_error(what, t->ssl, err, errlen);
        if (strstr(err, "connection closed") == NULL && strstr(err, "eof") == NULL)
            snprintf(err, errlen, "%s: the key server closed the connection", what);
        return IO_ERR;
    }
    if (w == 0) {
        snprintf(err, errlen, "%s: no progress within the deadline", what);
        return IO_TIMEOUT;
    }
    if (w < 0) {
        snprintf(err, errlen, "%s: poll: %s", what, strerror(errno));
        return IO_ERR;
    }
    return IO_OK;
}

static void tls_close(keyless_transport *base)
{
    tls_transport *t = (tls_transport *)base;

    /* No close_notify: the connection may have failed fatally, and the key
     * server needs none (no truncation attack on a request/answer stream
     * whose frames carry their own lengths). */
    SSL_free(t->ssl);
    t->ssl = NULL;
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    base->connected = 0;
}

/*
 * Connects to the first address that takes the connection, as curl and nginx
 * do with a name that resolves to several (IPv6 and IPv4 of a dual-stack
 * host: a key server listening on one family only is still reached). Starts
 * with the address connected to last, so a dead one is not paid for on each
 * reconnect. Each address gets an equal share of the time left among those
 * still untried, so one that drops SYNs cannot eat the whole deadline.
 */
static int connect_any(tls_transport *t, int64_t deadline, char *err, size_t errlen)
{
    int k, i, rc = IO_ERR;

    for (k = 0; k < t->naddrs; k++) {
        int64_t now = keyless_now_ms();

        if (now >= deadline && k > 0)
            break; /* rc: the last attempt's */
        i = (t->current + k) % t->naddrs;
        rc = keyless_connect_fd((struct sockaddr *)&t->addrs[i], t->addrlens[i],
                                now + (deadline - now) / (t->naddrs - k), &t->fd, err, errlen);
        if (rc == IO_OK) {
            t->current = i;
            return IO_OK;
        }
    }
    if (t->naddrs > 1) {
        size_t len = strlen(err);

        snprintf(err + len, errlen - len, " (each of the %d addresses of the host)", t->naddrs);
    }
    return rc;
}

static int tls_open(keyless_transport *base, int64_t deadline, char *err, size_t errlen)
{
    tls_transport *t = (tls_transport *)base;
    int rc, one = 1;

    base->answered_at = 0;
    if ((rc = connect_any(t, deadline, err, errlen)) != IO_OK)
        return rc;
    (void)setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    t->hangups = 0;
    if ((t->ssl = SSL_new(t->ctx)) == NULL || !SSL_set_fd(t->ssl, t->fd)
        || (t->sni != NULL && !SSL_set_tlsext_host_name(t->ssl, t->sni))
        || (t->verify_name != NULL && !SSL_set1_host(t->ssl, t->verify_name))
        || (t->verify_ip != NULL && !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), t->verify_ip))) {
        last_ssl_error("TLS set-up", NULL, err, errlen);
        tls_close(base);
        return IO_ERR;
    }
    for (;;) {
        unsigned long before = ERR_peek_last_error();

        errno = 0;
        if (SSL_connect(t->ssl) == 1)
            break;
        if ((rc = wait_for_ssl(t, before, deadline, "TLS handshake", err, errlen)) != IO_OK) {
            tls_close(base);
            return rc;
        }
    }
    base->connected = 1;
    return IO_OK;
}

static int tls_send_all(keyless_transport *base, const unsigned char *buf, size_t len, int64_t deadline, char *err,
                        size_t errlen)
{
    tls_transport *t = (tls_transport *)base;
    size_t n;
    int rc;

    while (len > 0) {
        unsigned long before = ERR_peek_last_error();

        errno = 0;
        if (SSL_write_ex(t->ssl, buf, len, &n)) {
            t->hangups = 0;
            buf += n;
            len -= n;
            continue;
        }
        if ((rc = wait_for_ssl(t, before, deadline, "send", err, errlen)) != IO_OK)
            return rc;
    }
    return IO_OK;
}

static int tls_recv_some(keyless_transport *base, unsigned char *buf, size_t len, size_t *got, int64_t deadline,
                         char *err, size_t errlen)
{
    tls_transport *t = (tls_transport *)base;
    int rc;

    *got = 0;
    for (;;) {
        unsigned long before = ERR_peek_last_error();

        errno = 0;
        if (SSL_read_ex(t->ssl, buf, len, got)) {
            t->hangups = 0;
            return IO_OK;
        }
        if ((rc = wait_for_ssl(t, before, deadline, "receive", err, errlen)) != IO_OK) {
            if (rc == IO_TIMEOUT)
                snprintf(err, errlen, "no answer within the deadline");
            return rc;
        }
    }
}

static int tls_usable(keyless_transport *base)
{
    tls_transport *t = (tls_transport *)base;
    struct pollfd pfd = { t->fd, POLLIN, 0 };
    unsigned char byte;
    unsigned long before;
    size_t n;
    int ok;

    if (SSL_pending(t->ssl) > 0)
        return 0; /* application data nobody asked for */
    if (poll(&pfd, 1, 0) == 0)
        return 1;
    /* Readable while idle: TLS 1.3 session tickets are fine (libssl consumes
     * them and wants more), EOF, an alert or application data are not. */
    ERR_set_mark();
    before = ERR_peek_last_error();
    /* Wanting more is fine, unless the read raised an error (see wait_for_ssl). */
    ok = !SSL_read_ex(t->ssl, &byte, 1, &n) && SSL_want_read(t->ssl)
         && (ERR_peek_last_error() == 0 || ERR_peek_last_error() == before);
    ERR_pop_to_mark();
    return ok;
}

static void tls_destroy(keyless_transport *base)
{
    tls_transport *t = (tls_transport *)base;

    tls_close(base);
    SSL_CTX_free(t->ctx);
    OPENSSL_free(t->verify_name);
    OPENSSL_free(t->verify_ip);
    OPENSSL_free(t->sni);
    OPENSSL_free(t);
}

static const keyless_transport_ops tls_ops = {
    tls_open, tls_send_all, tls_recv_some, tls_usable, tls_close, tls_destroy,
};

/* --- configuration -------------------------------------------------------- */

static int is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static int load_ctx(SSL_CTX **ctxp, const char *ca_pem, const char *cert_pem, const char *key_pem, char *err,
                    size_t errlen)
{
    SSL_CTX *ctx;
    BIO *bio = NULL;
    X509 *x = NULL;
    EVP_PKEY *key = NULL;
    int n = 0, ok = 0;

    if ((ctx = *ctxp = SSL_CTX_new_ex(NULL, NULL, TLS_client_method())) == NULL
        || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)) {
        last_ssl_error("SSL_CTX_new", NULL, err, errlen);
        goto end;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);

    /* CA: every certificate of the PEM text is a trust anchor. */
    if ((bio = BIO_new_mem_buf(ca_pem, -1)) == NULL)
        goto oom;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (!X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), x)) {
            last_ssl_error("tls.caPem", NULL, err, errlen);
            goto end;
        }
        X509_free(x);
        x = NULL;
        n++;
    }
    if (n == 0) {
        snprintf(err, errlen, "tls.caPem holds no PEM certificate");
        goto end;
    }
    BIO_free(bio);

    /* Client certificate, then any chain certificates after it. */
    if ((bio = BIO_new_mem_buf(cert_pem, -1)) == NULL)
        goto oom;
    if ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) == NULL || !SSL_CTX_use_certificate(ctx, x)) {
        snprintf(err, errlen, "tls.certPem holds no usable PEM certificate");
        goto end;
    }
    X509_free(x);
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (!SSL_CTX_add0_chain_cert(ctx, x)) /* takes x on success only */
            goto oom;
        x = NULL;
    }
    BIO_free(bio);

    if ((bio = BIO_new_mem_buf(key_pem, -1)) == NULL)
        goto oom;
    key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    /* A keyless key (ours, once the provider is registered, decodes like any other) would sign this
     * connection's CertificateVerify (RFC 8446, 4.4.3) through this bridge: from inside a sign, which
     * holds the pool's lock that the handshake's own sign then waits on for ever (pool.c). */
    if (key != NULL && EVP_PKEY_get0_provider(key) != NULL
        && strcmp(OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(key)), KEYLESS_PROVIDER_NAME) == 0) {
        snprintf(err, errlen,
                 "tls.keyPem is a keyless key (" KEYLESS_PEM_LABEL
                 "): the client key of a key server connection must be a local private key");
        goto end;
    }
    if (key == NULL || !SSL_CTX_use_PrivateKey(ctx, key) || !SSL_CTX_check_private_key(ctx)) {
        snprintf(err, errlen, "tls.keyPem is not an unencrypted PEM private key matching tls.certPem");
        goto end;
    }
    ok = 1;
    goto end;
oom:
    snprintf(err, errlen, "out of memory");
end:
    X509_free(x);
    EVP_PKEY_free(key);
    BIO_free(bio);
    return ok;
}

/*
 * A new SSL_CTX from PEM text, every check of init() made (load_ctx), or NULL
 * with `err` saying why (no key material in it). The caller's error queue is
 * left as it was.
 */
struct ssl_ctx_st *keyless_tls_ctx_new(const char *ca_pem, const char *cert_pem, const char *key_pem, char *err,
                                       size_t errlen)
{
    SSL_CTX *ctx = NULL;

    ERR_set_mark();
    if (!load_ctx(&ctx, ca_pem, cert_pem, key_pem, err, errlen)) {
        SSL_CTX_free(ctx);
        ctx = NULL;
    }
    ERR_pop_to_mark();
    return ctx;
}

/*
 * Puts `ctx` in place for the next connects of `base` and returns the one it
 * replaces, for the caller to free (an open connection holds its own
 * reference: it stays usable). NULL, and nothing changed, when `base` is not
 * a TLS transport. The caller holds the pool's lock (tls_open reads t->ctx).
 */
struct ssl_ctx_st *keyless_tls_swap_ctx(keyless_transport *base, struct ssl_ctx_st *ctx)
{
    tls_transport *t = (tls_transport *)base;
    SSL_CTX *old;

    if (base->ops != &tls_ops)
        return NULL;
    old = t->ctx;
    t->ctx = ctx;
    return old;
}

keyless_transport *keyless_tls_transport_new(const char *host, int port, const char *servername, const char *ca_pem,
                                             const char *cert_pem, const char *key_pem, char *err, size_t errlen)
{
    tls_transport *t;
    struct addrinfo hints, *res = NULL, *ai;
    char portstr[16];
    int gai;

    if (host == NULL || *host == '\0' || port <= 0 || port > 65535) {
        snprintf(err, errlen, "tls needs a host and a port from 1 to 65535");
        return NULL;
    }
    if ((t = OPENSSL_zalloc(sizeof(*t))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->base.ops = &tls_ops;
    t->fd = -1;
    snprintf(t->base.where, sizeof(t->base.where), "tls:%s:%d", host, port);

    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(portstr, sizeof(portstr), "%d", port);
    if ((gai = getaddrinfo(host, portstr, &hints, &res)) != 0 || res == NULL) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(gai));
        goto fail;
    }
    /* All of them, in getaddrinfo's order (RFC 6724 destination address selection). */
    for (ai = res; ai != NULL && t->naddrs < MAX_ADDRS; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(t->addrs[0]))
            continue;
        memcpy(&t->addrs[t->naddrs], ai->ai_addr, ai->ai_addrlen);
        t->addrlens[t->naddrs++] = ai->ai_addrlen;
    }
    freeaddrinfo(res);
    if (t->naddrs == 0) {
        snprintf(err, errlen, "cannot resolve %s: no usable address", host);
        goto fail;
    }

    if (servername != NULL && *servername != '\0') {
        t->sni = OPENSSL_strdup(servername);
        t->verify_name = OPENSSL_strdup(servername);
        if (t->sni == NULL || t->verify_name == NULL)
            goto oom;
    } else if (is_ip_literal(host)) {
        if ((t->verify_ip = OPENSSL_strdup(host)) == NULL)
            goto oom;
    } else {
        t->sni = OPENSSL_strdup(host);
        t->verify_name = OPENSSL_strdup(host);
        if (t->sni == NULL || t->verify_name == NULL)
            goto oom;
    }
    ERR_set_mark();
    if (!load_ctx(&t->ctx, ca_pem, cert_pem, key_pem, err, errlen)) {
        ERR_pop_to_mark();
        goto fail;
    }
    ERR_pop_to_mark();
    return &t->base;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    tls_destroy(&t->base);
    return NULL;
}
