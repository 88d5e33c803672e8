/*
 * The pool of key servers behind keyless_rpc_sign: choice, failover within
 * the call's deadline, a breaker per server, health verdicts, counters.
 *
 * Threads: everything here runs under `lock`. Normally only node's main
 * thread signs (libssl calls us from inside a handshake); worker threads
 * doing TLS with keyless keys would queue on the mutex.
 *
 * Blocking: a call blocks its thread at most timeout_ms in total, connects
 * and failovers included; with every breaker open it does not block at all.
 *
 * Choice: among servers neither cooling (breaker open) nor down (waiting for
 * a health check), the lowest score: the EWMA of its sign latency, scaled by
 * TAU / (TAU + idle time) so that a server not used for a while looks better
 * and gets re-measured (the "peak EWMA" idea of Finagle's load balancers).
 * A server never measured (new, or just back) scores 0: it is tried first.
 * When no server qualifies, the servers whose breaker has closed are tried
 * anyway, down or not: with one key server this is the plain breaker.
 *
 * Failover: after a failed attempt the next server is tried, unless the
 * answer says the request itself is wrong (it would fail anywhere). An
 * attempt may use the larger of an equal share of the time left among the
 * servers still untried and twice the pool's sign latency (budget()), so one
 * hanging server in a fast pool cannot eat the whole deadline, and a pool
 * whose every server is slower than an equal share still signs.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "rpc.h"
#include "transport.h"

#define EWMA_ALPHA 0.3   /* weight of the newest sign: a few signs reflect a change */
#define IDLE_TAU_MS 1000 /* an idle server's score halves after a second unused */
#define RECENT_MS 100    /* answered this recently: no idle check (attempt); a worker signing 10/s or more saves it */

typedef struct {
    keyless_transport *transport;
    int64_t breaker_until; /* monotonic ms; skipped before it */
    int down;              /* out of the choice until a health check says up */
    int64_t last_used;     /* monotonic ms of its last successful sign */
    int measured;
    char breaker_cause[160];
    keyless_server_stats st;
} server;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static server servers[KEYLESS_MAX_SERVERS];
static int nservers; /* 0 until configured */
static int timeout_ms = 250;
static int breaker_ms = 200;
static int health_checked;
static keyless_rpc_stats totals;

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int name_ok(const char *name)
{
    size_t i, len = strlen(name);

    for (i = 0; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') || name[i] == '_'
              || name[i] == '-'))
            return 0;
    return len >= 1 && len <= KEYLESS_SERVER_NAME_MAX;
}

int keyless_rpc_configure(const keyless_rpc_config *cfg, char *err, size_t errlen)
{
    keyless_transport *made[KEYLESS_MAX_SERVERS], *old[KEYLESS_MAX_SERVERS];
    int i, nold;

    if (cfg->timeout_ms < 1 || cfg->timeout_ms > 60000 || cfg->breaker_ms < 0 || cfg->breaker_ms > 600000) {
        snprintf(err, errlen, "timeoutMs must be 1..60000 and breakerMs 0..600000");
        return 0;
    }
    if (cfg->nservers < 1 || cfg->nservers > KEYLESS_MAX_SERVERS) {
        snprintf(err, errlen, "between 1 and %d key servers", KEYLESS_MAX_SERVERS);
        return 0;
    }
    for (i = 0; i < cfg->nservers; i++) {
        const keyless_server_config *c = &cfg->servers[i];

        if (c->name != NULL && !name_ok(c->name)) {
            snprintf(err, errlen, "key server %d: name must be 1-%d of a-z 0-9 _ -", i, KEYLESS_SERVER_NAME_MAX);
            made[i] = NULL;
        } else if (c->socket_path != NULL)
            made[i] = keyless_unix_transport_new(c->socket_path, err, errlen);
        else
            made[i] = keyless_tls_transport_new(c->tls_host, c->tls_port, c->tls_servername, c->tls_ca_pem,
                                                c->tls_cert_pem, c->tls_key_pem, err, errlen);
        if (made[i] == NULL) {
            while (i-- > 0)
                made[i]->ops->destroy(made[i]);
            return 0;
        }
    }
    pthread_mutex_lock(&lock);
    nold = nservers;
    for (i = 0; i < nold; i++)
        old[i] = servers[i].transport;
    memset(servers, 0, sizeof(servers));
    for (i = 0; i < cfg->nservers; i++) {
        servers[i].transport = made[i];
        if (cfg->servers[i].name != NULL)
            snprintf(servers[i].st.name, sizeof(servers[i].st.name), "%s", cfg->servers[i].name);
        else
            snprintf(servers[i].st.name, sizeof(servers[i].st.name), "%d", i);
    }
    nservers = cfg->nservers;
    timeout_ms = cfg->timeout_ms;
    breaker_ms = cfg->breaker_ms;
    health_checked = cfg->health_checked;
    totals.generation++;
    pthread_mutex_unlock(&lock);
    for (i = 0; i < nold; i++)
        old[i]->ops->destroy(old[i]);
    return 1;
}

static int state_of(const server *s, int64_t now)
{
    return s->down ? KEYLESS_SERVER_DOWN : now < s->breaker_until ? KEYLESS_SERVER_COOLING : KEYLESS_SERVER_UP;
}

void keyless_rpc_get_stats(keyless_rpc_stats *out, keyless_server_stats *per, int max, int *n)
{
    int64_t now = keyless_now_ms();
    int i;

    pthread_mutex_lock(&lock);
    *out = totals;
    for (i = 0; i < nservers && i < max; i++) {
        per[i] = servers[i].st;
        per[i].state = state_of(&servers[i], now);
    }
    *n = nservers;
    pthread_mutex_unlock(&lock);
}

int keyless_rpc_set_health(uint32_t generation, int index, int up)
{
    server *s;
    int64_t now = keyless_now_ms();

    pthread_mutex_lock(&lock);
    if (generation != totals.generation || index < 0 || index >= nservers) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    s = &servers[index];
    if (up && (s->down || now < s->breaker_until)) {
        /* Back: measured afresh, so the next sign tries it. */
        s->down = 0;
        s->breaker_until = 0;
        s->measured = 0;
        s->st.latency_ewma_ms = 0;
        s->st.rejoins++;
    } else if (!up && !s->down) {
        s->down = 1;
        if (breaker_ms > 0 && s->breaker_until < now + breaker_ms)
            s->breaker_until = now + breaker_ms;
        snprintf(s->breaker_cause, sizeof(s->breaker_cause), "health check failed");
        if (s->transport->connected)
            s->transport->ops->close(s->transport);
    }
    pthread_mutex_unlock(&lock);
    return 1;
}

int keyless_rpc_set_tls(uint32_t generation, int index, const char *ca_pem, const char *cert_pem, const char *key_pem,
                        char *err, size_t errlen)
{
    /* Built outside the lock: parsing PEM and checking the key take a while, and signs must not wait for it. */
    SSL_CTX *ctx = keyless_tls_ctx_new(ca_pem, cert_pem, key_pem, err, errlen), *old = NULL;
    int applied = 0;

    if (ctx == NULL)
        return -1;
    pthread_mutex_lock(&lock);
    /* tls_open reads the transport's SSL_CTX under this lock (attempt, from keyless_rpc_sign). */
    if (generation == totals.generation && index >= 0 && index < nservers
        && (old = keyless_tls_swap_ctx(servers[index].transport, ctx)) != NULL) {
        applied = 1;
        /* The open connection goes too (idle: signs hold this lock), so the next sign presents the new identity.
         * Kept, it would carry the old one for as long as the key server keeps it: one that still takes the old
         * certificate but no longer authorises it answers each sign with NOT_AUTHORISED, an ERROR that keeps the
         * connection, and every handshake would fail on it. One reconnect per renewal is the cost. */
        if (servers[index].transport->connected)
            servers[index].transport->ops->close(servers[index].transport);
    }
    pthread_mutex_unlock(&lock);
    /* The replaced one, or the new one when nothing took it. An open connection's SSL holds its own reference. */
    SSL_CTX_free(applied ? old : ctx);
    return applied;
}

static double score(const server *s, int64_t now)
{
    if (!s->measured)
        return 0;
    return s->st.latency_ewma_ms * IDLE_TAU_MS / (double)(IDLE_TAU_MS + (now - s->last_used));
}

/* The best untried server: first among those up, else (last resort) among those whose breaker is closed.
 * *left gets how many servers that tier still holds, the chosen one included. */
static int choose(const int *tried, int64_t now, int *left)
{
    int tier, i, best = -1;

    for (tier = 0; tier < 2 && best < 0; tier++) {
        *left = 0;
        for (i = 0; i < nservers; i++) {
            const server *s = &servers[i];

            if (tried[i] || now < s->breaker_until || (tier == 0 && s->down))
                continue;
            ++*left;
            if (best < 0 || score(s, now) < score(&servers[best], now))
                best = i;
        }
    }
    return best;
}

/* How long an attempt may take, `left` servers (this one included) still untried, `rest` ms left.
 *
 * An equal share (rest / left) alone fails every sign of a pool whose servers are all slower than it
 * (a slow HSM, RSA-4096, a loaded key server: over 125 ms each with two servers and the default 250 ms),
 * though any one of them alone would answer in time; and each such timeout benches a healthy server.
 * So an attempt may also take up to twice the pool's sign latency: the highest latency EWMA among the
 * measured servers (the raw EWMA: the idle decay is for choosing only, a slow server stays slow when
 * idle). A server not measured yet (new, back from down) is judged by the others: in a slow pool it
 * gets the time a slow answer needs, in a fast one its share. With no server measured (a worker's first
 * sign, or after a sign timed out on every server, keyless_rpc_sign) nothing says how slow the pool is:
 * the attempt may take three quarters of the time left (all of it when it is the last server to try),
 * else a pool slower than the share would never be measured; the quarter kept is the next server's, so
 * a server that hangs, tried first with nothing measured (the first listed: unmeasured ones tie), does
 * not fail the sign, and the server after it gets measured. All of it, a hanging first-listed server
 * failed every sign of a pool without health checks whose breaker had closed again: the sign timed out
 * on it alone, the reset below forgot nothing it had, and the next sign began the same way.
 * The cost: a pool whose servers all answer in over three quarters of the deadline fails its signs
 * (timeoutMs must be over 4/3 of the slowest sign), and in a slow pool a hanging server costs up to
 * twice the latency instead of its share; in a fast pool (a few ms) a hang costs its share. */
static int64_t budget(int left, int64_t rest)
{
    double latency = -1;
    int64_t share = rest / left, slow;
    int i;

    for (i = 0; i < nservers; i++)
        if (servers[i].measured && servers[i].st.latency_ewma_ms > latency)
            latency = servers[i].st.latency_ewma_ms;
    if (latency < 0)
        slow = left > 1 ? rest - rest / 4 : rest;
    else
        slow = (int64_t)(2 * latency) + 1; /* + 1: never 0 ms, the clock counts whole ms */
    if (slow > rest)
        slow = rest;
    return share > slow ? share : slow;
}

/* Whether an ERROR answer means the request itself is wrong, so another server would refuse it too. */
static int request_at_fault(unsigned code)
{
    return code == ERR_MALFORMED_FRAME || code == ERR_UNSUPPORTED_VERSION || code == ERR_UNKNOWN_OP
           || code == ERR_ALGORITHM_MISMATCH || code == ERR_UNKNOWN_ALGORITHM || code == ERR_BAD_DIGEST_LENGTH;
}

/* Whether a failed attempt says something of the server, not only of the request or of one key.
 * SIGN_FAILED may be about one key (a token error on its object): benching on it would let a client
 * that keeps asking for a broken key's name bench every server of the pool, and fail every other
 * domain's handshakes in this worker for breakerMs each time; a server whose token fails every key
 * costs a quick refusal and a failover per sign instead, and its health checks still run. */
static int server_at_fault(int st, unsigned code)
{
    return st != RPC_E_REMOTE
           || !(request_at_fault(code) || code == ERR_UNKNOWN_KEY || code == ERR_NOT_AUTHORISED || code == ERR_SIGN_FAILED);
}

/* One attempt on one server; counts it there. */
static int attempt(server *s, const unsigned char *key_id, unsigned char alg, const unsigned char *digest,
                   size_t dlen, unsigned char *sig, size_t *siglen, size_t sigmax, int64_t deadline,
                   unsigned *code, char *msg, size_t msglen)
{
    keyless_transport *t = s->transport;
    int64_t started = now_us(), took;
    int st = RPC_OK, rc, open_failed = 0, reused, tries;

    *code = 0;
    /* A key server closes an idle connection at any time (at its connection cap, SPEC.md "Connection
     * caps"), and a request may be on its way when it does. So a reused connection that fails before any
     * byte of the answer (RPC_E_STALE) was stale, not the request: it goes once more on a new connection,
     * no failed sign. The idle check finds a stale connection before a request is written (no failed
     * write, no retry), which is where a close is likely: after a while idle. It costs a poll() per sign,
     * so after an answer less than RECENT_MS ago it is skipped and the retry alone covers it. */
    if (t->connected && started / 1000 - t->answered_at >= RECENT_MS && !t->ops->usable(t))
        t->ops->close(t);
    reused = t->connected;
    for (tries = 0; tries < 2; tries++) {
        if (!t->connected && (rc = t->ops->open(t, deadline, msg, msglen)) != IO_OK) {
            st = rc == IO_TIMEOUT ? RPC_E_TIMEOUT : RPC_E_CONNECT;
            open_failed = 1;
            break;
        }
        st = keyless_rpc_exchange(t, key_id, alg, digest, dlen, reused, sig, siglen, sigmax, deadline, code, msg,
                                  msglen);
        if (st != RPC_E_STALE)
            break;
        reused = 0; /* a new connection: whatever fails on it is a failure */
    }
    switch (st) {
    case RPC_OK:
        took = now_us() - started;
        s->st.signs++;
        s->st.sign_us_total += (uint64_t)took;
        s->st.latency_ewma_ms = s->measured ? s->st.latency_ewma_ms + EWMA_ALPHA * (took / 1000.0 - s->st.latency_ewma_ms)
                                            : took / 1000.0;
        s->measured = 1;
        s->last_used = keyless_now_ms();
        s->down = 0; /* it signs: whatever a health check said, it is up */
        return st;
    case RPC_E_REMOTE:
        s->st.remote++;
        break;
    case RPC_E_PROTOCOL:
        s->st.protocol++;
        break;
    case RPC_E_TIMEOUT:
        s->st.timeout++;
        break;
    default:
        s->st.connect++;
        break;
    }
    /* Gone, hanging or draining: skip it for a while (until a health check, when they run). In a pool,
     * after any failure that says something of the server too (garbled answers, refusals such as
     * OVERLOADED, connections dropped mid-answer): a server that never signs is never
     * measured, so it would score best and be tried first on every sign, each time a reconnect and an
     * exchange for nothing. Not after an answer about the request (request_at_fault) or that may be
     * about one key (UNKNOWN_KEY, NOT_AUTHORISED, SIGN_FAILED: the server may sign other keys; the
     * answer is quick and keeps the connection). Alone, a server is still tried on each sign: one bad answer does not fail the next. */
    if (open_failed || st == RPC_E_TIMEOUT || (st == RPC_E_REMOTE && *code == ERR_SHUTTING_DOWN)
        || (nservers > 1 && server_at_fault(st, *code))) {
        if (breaker_ms > 0)
            s->breaker_until = keyless_now_ms() + breaker_ms;
        if (health_checked)
            s->down = 1;
        snprintf(s->breaker_cause, sizeof(s->breaker_cause), "%s", msg);
    }
    return st;
}

int keyless_rpc_sign(const unsigned char *key_id, unsigned char alg, const unsigned char *digest, size_t dlen,
                     unsigned char *sig, size_t *siglen, size_t sigmax, char *err, size_t errlen)
{
    char msg[200] = "", kid[17];
    int tried[KEYLESS_MAX_SERVERS] = { 0 };
    int64_t now, deadline;
    int st = RPC_E_BREAKER, i, left, pick, prev = -1, last = -1, attempts = 0, timeouts = 0;
    unsigned code = 0;

    if (dlen > 64)
        return RPC_E_PROTOCOL; /* signature.c never does this */
    for (i = 0; i < 8; i++)
        snprintf(kid + 2 * i, 3, "%02x", key_id[i]);

    pthread_mutex_lock(&lock);
    if (nservers == 0) {
        snprintf(err, errlen, "keyless bridge not configured: call init() first");
        snprintf(totals.last_error, sizeof(totals.last_error), "%s", err);
        pthread_mutex_unlock(&lock);
        return RPC_E_NOTCONF;
    }
    now = keyless_now_ms();
    deadline = now + timeout_ms;
    ERR_set_mark(); /* transports may leave libssl errors: not the caller's */
    while (now < deadline && (pick = choose(tried, now, &left)) >= 0) {
        if (prev >= 0) {
            servers[prev].st.failovers++;
            totals.failovers++;
        }
        st = attempt(&servers[pick], key_id, alg, digest, dlen, sig, siglen, sigmax,
                     now + budget(left, deadline - now), &code, msg, sizeof(msg));
        last = pick;
        attempts++;
        if (st == RPC_OK || (st == RPC_E_REMOTE && request_at_fault(code)))
            break;
        timeouts += st == RPC_E_TIMEOUT;
        tried[pick] = 1;
        prev = pick;
        now = keyless_now_ms();
    }
    ERR_pop_to_mark();

    /* Every attempt timed out: the pool is slower than it measured (a timeout is no measurement), or
     * hangs. Its measurements are forgotten, so the next sign's first attempt may take the whole deadline
     * (budget()) and measure it afresh; kept, a pool that slowed down would keep its small budgets and
     * fail every sign for ever (with health checks a rejoin forgets too, without them nothing would). */
    if (st != RPC_OK && attempts > 0 && timeouts == attempts)
        for (i = 0; i < nservers; i++) {
            servers[i].measured = 0;
            servers[i].st.latency_ewma_ms = 0;
        }

    if (attempts == 0) {
        /* Every breaker open: fail at once, naming the server that closes first. */
        for (pick = 0, i = 1; i < nservers; i++)
            if (servers[i].breaker_until < servers[pick].breaker_until)
                pick = i;
        totals.breaker++;
        snprintf(err, errlen, "key server at %s unavailable, not retried for %lld ms (last failure: %s)",
                 servers[pick].transport->where, (long long)(servers[pick].breaker_until - now),
                 servers[pick].breaker_cause);
    } else {
        const char *where = servers[last].transport->where;
        const char *more = attempts > 1 ? " after failover" : "";

        switch (st) {
        case RPC_OK:
            totals.signs++;
            pthread_mutex_unlock(&lock);
            return st;
        case RPC_E_REMOTE:
            totals.remote++;
            snprintf(err, errlen, "key server at %s refused to sign with key id %s...%s: %s", where, kid, more, msg);
            break;
        case RPC_E_PROTOCOL:
            totals.protocol++;
            snprintf(err, errlen, "key server at %s (key id %s...)%s: %s", where, kid, more, msg);
            break;
        case RPC_E_TIMEOUT:
            totals.timeout++;
            snprintf(err, errlen, "key server at %s: %s (timeout %d ms, key id %s...)%s", where, msg, timeout_ms,
                     kid, more);
            break;
        default:
            totals.connect++;
            snprintf(err, errlen, "key server at %s: %s (key id %s...)%s", where, msg, kid, more);
            break;
        }
    }
    snprintf(totals.last_error, sizeof(totals.last_error), "%s", err);
    pthread_mutex_unlock(&lock);
    return st;
}
