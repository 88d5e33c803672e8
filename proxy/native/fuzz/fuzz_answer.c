/*
 * libFuzzer target: the key server's answer to a SIGN, as rpc.c reads it
 * (header checks, body, parse_answer), over a fake transport that serves the
 * fuzz input as the byte stream from the key server.
 *
 * Input: flags | sigmax selector | stream. flags bit 0: patch each answer
 * header's request id to the expected one (so the fuzzer reaches the body);
 * bits 1-3: the algorithm; bit 4: a stream that runs dry times out instead of
 * closing; bits 5-7: how much one recv returns at most (1 byte to all of it),
 * as a socket may split an answer anywhere. Up to 4 exchanges are run on the stream (a closed connection is
 * "reopened" on the rest of it), each with a signature buffer of exactly
 * sigmax bytes, so that ASan sees any write past it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/rpc.h"
#include "../src/transport.h"

typedef struct {
    keyless_transport base;
    const uint8_t *p;
    size_t left;
    int fix_id, dry_timeout;
    size_t chunk, served; /* most bytes one recv returns; bytes read since the request */
    unsigned char id[4];
} fake_transport;

static int f_open(keyless_transport *t, int64_t d, char *e, size_t el)
{
    (void)d, (void)e, (void)el;
    t->connected = 1;
    return IO_OK;
}

static int f_send(keyless_transport *t, const unsigned char *buf, size_t len, int64_t d, char *e, size_t el)
{
    fake_transport *f = (fake_transport *)t;

    (void)d, (void)e, (void)el;
    if (len < 12 || buf[0] != 1 || buf[1] != 0x03 || 12 + ((size_t)buf[8] << 24 | (size_t)buf[9] << 16 | (size_t)buf[10] << 8 | buf[11]) != len)
        abort(); /* rpc.c built a bad request */
    memcpy(f->id, buf + 4, 4);
    f->served = 0;
    return IO_OK;
}

static int f_recv(keyless_transport *t, unsigned char *buf, size_t len, size_t *got, int64_t d, char *e, size_t el)
{
    fake_transport *f = (fake_transport *)t;
    size_t n = len < f->chunk ? len : f->chunk, i;

    (void)d;
    *got = 0;
    if (f->left == 0) {
        snprintf(e, el, "dry");
        return f->dry_timeout ? IO_TIMEOUT : IO_ERR;
    }
    if (n > f->left)
        n = f->left;
    memcpy(buf, f->p, n);
    /* The answer's request id is bytes 4-7 of what this exchange reads first. */
    for (i = 0; f->fix_id && i < n; i++)
        if (f->served + i >= 4 && f->served + i < 8)
            buf[i] = f->id[f->served + i - 4];
    f->served += n;
    f->p += n;
    f->left -= n;
    *got = n;
    return IO_OK;
}

static int f_usable(keyless_transport *t)
{
    (void)t;
    return 1;
}

static void f_close(keyless_transport *t)
{
    t->connected = 0;
}

static void f_destroy(keyless_transport *t)
{
    (void)t;
}

static const keyless_transport_ops fake_ops = { f_open, f_send, f_recv, f_usable, f_close, f_destroy };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned char algs[8] = { 0x01, 0x02, 0x03, 0x11, 0x12, 0x13, 0x21, 0x23 };
    static const size_t sigmaxes[8] = { 72, 104, 139, 256, 384, 512, 1024, 1 };
    static const size_t chunks[8] = { SIZE_MAX, 1, 5, 12, 13, 100, 1000, SIZE_MAX };
    fake_transport f;
    unsigned char key_id[32] = { 0 }, digest[64] = { 0 };
    int i;

    if (size < 2)
        return 0;
    memset(&f, 0, sizeof(f));
    f.base.ops = &fake_ops;
    f.fix_id = data[0] & 1;
    f.dry_timeout = (data[0] >> 4) & 1;
    f.chunk = chunks[data[0] >> 5];
    f.p = data + 2;
    f.left = size - 2;
    for (i = 0; i < 4 && (i == 0 || f.left > 0); i++) {
        unsigned char alg = algs[(data[0] >> 1) & 7];
        size_t sigmax = sigmaxes[data[1] & 7], siglen = 0, dlen = (alg & 0x0f) == 1 ? 32 : (alg & 0x0f) == 2 ? 48 : 64;
        unsigned char *sig = malloc(sigmax);
        unsigned code = 0;
        char err[200];
        int st;

        f.base.connected = 1;
        st = keyless_rpc_exchange(&f.base, key_id, alg, digest, dlen, i & 1, sig, &siglen, sigmax, INT64_MAX, &code,
                                  err, sizeof(err));
        if (memchr(err, '\0', sizeof(err)) == NULL)
            abort(); /* unterminated message */
        if (st == RPC_OK && (siglen < 1 || siglen > sigmax))
            abort();
        if (st == RPC_E_REMOTE && code == 0)
            abort();
        if (st != RPC_OK && st != RPC_E_REMOTE && st != RPC_E_PROTOCOL && st != RPC_E_CONNECT && st != RPC_E_TIMEOUT
            && !(st == RPC_E_STALE && (i & 1)))
            abort();
        free(sig);
    }
    return 0;
}
