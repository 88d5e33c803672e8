/*
 * Socket plumbing shared by the transports, and the unix-socket transport.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "transport.h"

int64_t keyless_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int keyless_wait_fd(int fd, short events, int64_t deadline, short *revents)
{
    struct pollfd pfd;
    int64_t left;
    int n;

    for (;;) {
        left = deadline - keyless_now_ms();
        if (left <= 0)
            return 0;
        pfd.fd = fd;
        pfd.events = events;
        pfd.revents = 0;
        n = poll(&pfd, 1, (int)left);
        if (revents != NULL)
            *revents = n > 0 ? pfd.revents : 0;
        if (n > 0)
            return 1; /* readable, writable, or error/hang-up: the next I/O call tells */
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

int keyless_connect_fd(const struct sockaddr *addr, socklen_t addrlen, int64_t deadline, int *fd_out, char *err,
                       size_t errlen)
{
    int fd, soerr = 0, w;
    socklen_t len = sizeof(soerr);

    *fd_out = -1;
    fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return IO_ERR;
    }
    if (connect(fd, addr, addrlen) == 0)
        goto connected;
    /* A unix socket whose backlog is full answers EAGAIN: an overloaded key
     * server, reported as a connect failure rather than waited for. */
    if (errno != EINPROGRESS && errno != EINTR) {
        snprintf(err, errlen, "connect: %s", strerror(errno));
        close(fd);
        return IO_ERR;
    }
    w = keyless_wait_fd(fd, POLLOUT, deadline, NULL);
    if (w == 0) {
        snprintf(err, errlen, "connect: no connection within the deadline");
        close(fd);
        return IO_TIMEOUT;
    }
    if (w < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
        snprintf(err, errlen, "connect: %s", strerror(w < 0 ? errno : soerr != 0 ? soerr : errno));
        close(fd);
        return IO_ERR;
    }
connected:
    *fd_out = fd;
    return IO_OK;
}

/* --- unix socket transport ------------------------------------------------ */

typedef struct {
    keyless_transport base;
    struct sockaddr_un addr;
    int fd;
} unix_transport;

static int unix_open(keyless_transport *t, int64_t deadline, char *err, size_t errlen)
{
    unix_transport *u = (unix_transport *)t;
    int rc = keyless_connect_fd((struct sockaddr *)&u->addr, sizeof(u->addr), deadline, &u->fd, err, errlen);

    t->connected = rc == IO_OK;
    t->answered_at = 0;
    return rc;
}

static int unix_send_all(keyless_transport *t, const unsigned char *buf, size_t len, int64_t deadline, char *err,
                         size_t errlen)
{
    unix_transport *u = (unix_transport *)t;
    ssize_t n;
    int w;

    while (len > 0) {
        /* MSG_NOSIGNAL: a closed peer is an error here, never a SIGPIPE. */
        n = send(u->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if ((w = keyless_wait_fd(u->fd, POLLOUT, deadline, NULL)) == 0) {
                snprintf(err, errlen, "send: no progress within the deadline");
                return IO_TIMEOUT;
            }
            if (w > 0)
                continue;
        }
        snprintf(err, errlen, "send: %s", strerror(errno));
        return IO_ERR;
    }
    return IO_OK;
}

static int unix_recv_some(keyless_transport *t, unsigned char *buf, size_t len, size_t *got, int64_t deadline,
                          char *err, size_t errlen)
{
    unix_transport *u = (unix_transport *)t;
    ssize_t n;
    int w;

    *got = 0;
    for (;;) {
        n = recv(u->fd, buf, len, MSG_DONTWAIT);
        if (n > 0) {
            *got = (size_t)n;
            return IO_OK;
        }
        if (n == 0) {
            snprintf(err, errlen, "the key server closed the connection");
            return IO_ERR;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if ((w = keyless_wait_fd(u->fd, POLLIN, deadline, NULL)) == 0) {
                snprintf(err, errlen, "no answer within the deadline");
                return IO_TIMEOUT;
            }
            if (w > 0)
                continue;
        }
        snprintf(err, errlen, "recv: %s", strerror(errno));
        return IO_ERR;
    }
}

static int unix_usable(keyless_transport *t)
{
    unix_transport *u = (unix_transport *)t;
    struct pollfd pfd = { u->fd, POLLIN, 0 };

    /* Between requests nothing may be readable: readable means EOF (the key
     * server went away) or bytes nobody asked for. Either way: reconnect. */
    return poll(&pfd, 1, 0) == 0;
}

static void unix_close(keyless_transport *t)
{
    unix_transport *u = (unix_transport *)t;

    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
    t->connected = 0;
}

static void unix_destroy(keyless_transport *t)
{
    unix_close(t);
    OPENSSL_free(t);
}

static const keyless_transport_ops unix_ops = {
    unix_open, unix_send_all, unix_recv_some, unix_usable, unix_close, unix_destroy,
};

keyless_transport *keyless_unix_transport_new(const char *path, char *err, size_t errlen)
{
    unix_transport *u;

    if (path == NULL || *path == '\0' || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "socketPath must be a non-empty path of at most %zu bytes",
                 sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        return NULL;
    }
    if ((u = OPENSSL_zalloc(sizeof(*u))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    u->base.ops = &unix_ops;
    u->fd = -1;
    u->addr.sun_family = AF_UNIX;
    memcpy(u->addr.sun_path, path, strlen(path) + 1);
    snprintf(u->base.where, sizeof(u->base.where), "unix:%s", path);
    return &u->base;
}
