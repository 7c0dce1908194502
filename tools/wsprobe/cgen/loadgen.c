/*
 * loadgen.c: the C client engine of `wsprobe bench` (wsprobe-cgen).
 *
 * One single-threaded process (epoll + timerfd, libc only) holding N WebSocket client
 * connections to a Gearhall server and running the benchmark's closed or open loop on them.
 * The Python side, tools/wsprobe/bench_c.py, spawns it and does all the thinking (tokens,
 * hello payloads, reading the welcome, building the plans); this program does the
 * per-message work, so that the generator costs a few microseconds per exchange.
 *
 * The protocol on stdin (commands, ASCII lines; a blob follows its line, its length in it)
 * and stdout (one JSON object per line) runs in four phases:
 *
 *   1. setup/path/subprotocol/origin/hello x N  ->  hello_reply (+ raw payload) or failed
 *      per client, then connected. Every client connects, upgrades and sends its hello.
 *   2. drop <i> | plan <i> <n> + n x frame ..., then go. A plan is the client's requests,
 *      each a prefix and a suffix around the request id, cycled forever.
 *   3. closed ... | open ...  ->  stats lines (at most every 10 ms), then run_done.
 *   4. close <timeout>  ->  closed; exit 0.
 *
 * Malformed input or an impossible situation: {"type":"fatal","reason":...} and exit 1.
 * EOF on stdin (the parent died): exit 1 silently. The other end of the pipe is
 * tools/wsprobe/bench_c.py.
 *
 * Design notes:
 * - Sockets are serviced whenever the program waits, including while it waits for stdin,
 *   so server pings are answered and closes handled between the phases.
 * - Each readable event does one read(). A connection with no partial frame left over reads
 *   into a shared buffer and parses the frames in place; only the tail of a split frame is
 *   copied into the connection's own buffer. Replies are parsed where they lie, requests are
 *   built in one shared buffer and sent at once: no allocation per message.
 * - A reply's head (t, rid, code) is read by a scan of the message's top-level keys that
 *   skips values without decoding them (see "Reading a reply's head").
 * - Sends go straight to the socket; what the kernel does not take is queued in the
 *   connection's out buffer and flushed on EPOLLOUT, which is watched only while the buffer
 *   is non-empty.
 * - Deadlines that need precision (the run's begin, end and the open loop's schedule) use a
 *   timerfd; coarser ones (connect timeouts, the stats interval, the close) use
 *   epoll_wait's millisecond timeout.
 */

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S 1000000000LL
#define MAX_MESSAGE (16u << 20)       /* a bigger server message is closed with 1009 */
#define MAX_HEAD 16384                /* the handshake response head */
#define MAX_LINE 4096                 /* a stdin command line */
#define MAX_CLIENTS 1000000u
#define MAX_KINDS 64
#define MAX_FRAMES (1u << 20)         /* frames in one plan */
#define RX_SIZE 65536                 /* the shared read buffer */
#define KEEP_BUF 4096                 /* per-connection buffers up to this are kept when empty */
#define STATS_EVERY_NS 10000000LL     /* 10 ms */
#define MAX_EVENTS 512
#define TAG_STDIN UINT64_MAX          /* epoll data of stdin and the timer; else a client index */
#define TAG_TIMER (UINT64_MAX - 1)
#define HIST_BUCKETS (55 * 128 + 256) /* bucket_of(INT64_MAX) == 7295 */

enum {
    OP_CONT = 0x0, OP_TEXT = 0x1, OP_BINARY = 0x2,
    OP_CLOSE = 0x8, OP_PING = 0x9, OP_PONG = 0xA
};

/* ============================================================================================
 * Utilities: failure, memory, clock, JSON output, random numbers
 * ========================================================================================== */

/* Escape n bytes as the inside of a JSON string into dst (room for 6 * n bytes); bytes
 * >= 0x80 are copied as they are (UTF-8 passes through). Returns the length written. */
static size_t json_escape(char *dst, const uint8_t *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = s[i];
        if (ch == '"' || ch == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)ch;
        } else if (ch < 0x20) {
            memcpy(dst + o, "\\u00", 4);
            dst[o + 4] = hex[ch >> 4];
            dst[o + 5] = hex[ch & 15];
            o += 6;
        } else {
            dst[o++] = (char)ch;
        }
    }
    return o;
}

static void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void fatal(const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof why ? (size_t)n : sizeof why - 1;
    char line[sizeof why * 6 + 64];
    size_t o = 26;
    memcpy(line, "{\"type\":\"fatal\",\"reason\":\"", o);
    o += json_escape(line + o, (const uint8_t *)why, len);
    memcpy(line + o, "\"}\n", 3);
    o += 3;
    fwrite(line, 1, o, stdout);
    fflush(stdout);
    exit(1);
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        fatal("out of memory (%zu bytes)", n);
    return q;
}

static void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p == NULL)
        fatal("out of memory (%zu x %zu bytes)", count, size);
    return p;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Seconds (as read from stdin, already range-checked) to nanoseconds, rounded. */
static int64_t s_to_ns(double s)
{
    double ns = s * 1e9;
    return (int64_t)(ns < 0 ? ns - 0.5 : ns + 0.5);
}

/* An epoll_wait timeout for a delay in ns, rounded up so that the wait does not end early. */
static int ms_until(int64_t delay_ns)
{
    if (delay_ns <= 0)
        return 0;
    int64_t ms = (delay_ns + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* A growable byte string, for the lines written to stdout. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_reserve(struct sbuf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void sb_add(struct sbuf *b, const void *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_str(struct sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_u64(struct sbuf *b, uint64_t v)
{
    char tmp[24], *e = tmp + sizeof tmp, *q = e;
    do
        *--q = (char)('0' + v % 10);
    while (v /= 10);
    sb_add(b, q, (size_t)(e - q));
}

/* A quoted, escaped JSON string. */
static void sb_json(struct sbuf *b, const void *s, size_t n)
{
    sb_reserve(b, 6 * n + 2);
    b->p[b->len++] = '"';
    b->len += json_escape(b->p + b->len, s, n);
    b->p[b->len++] = '"';
}

static struct sbuf g_out; /* the stdout line being built */
static struct sbuf g_req; /* the upgrade request being built */

/* Write g_out as one line, then `raw` (hello_reply's payload), and flush. A failing stdout
 * means the parent is gone: leave quietly. */
static void emit(const void *raw, size_t raw_len)
{
    sb_add(&g_out, "\n", 1);
    if (fwrite(g_out.p, 1, g_out.len, stdout) != g_out.len)
        exit(1);
    if (raw_len && fwrite(raw, 1, raw_len, stdout) != raw_len)
        exit(1);
    if (fflush(stdout) != 0)
        exit(1);
    g_out.len = 0;
}

/* xorshift64*: masking keys and handshake nonces (seeded from getrandom). */
static uint64_t g_rng;

static uint64_t rng_next(void)
{
    uint64_t x = g_rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g_rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void rng_seed(void)
{
    if (getrandom(&g_rng, sizeof g_rng, 0) != (ssize_t)sizeof g_rng)
        g_rng = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
    if (g_rng == 0) /* the one state xorshift never leaves */
        g_rng = 0x9E3779B97F4A7C15ULL;
}

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* ============================================================================================
 * SHA-1 and base64 (for Sec-WebSocket-Key / Sec-WebSocket-Accept)
 * ========================================================================================== */

static uint32_t rol32(uint32_t x, unsigned n) { return x << n | x >> (32 - n); }

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int t = 0; t < 16; t++)
        w[t] = be32(p + 4 * t);
    for (int t = 16; t < 80; t++)
        w[t] = rol32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k;
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t tmp = rol32(a, 5) + f + e + k + w[t];
        e = d;
        d = c;
        c = rol32(b, 30);
        b = a;
        a = tmp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t i = 0;
    for (; len - i >= 64; i += 64)
        sha1_block(h, msg + i);
    uint8_t block[64];
    size_t rest = len - i;
    memcpy(block, msg + i, rest);
    block[rest++] = 0x80;
    if (rest > 56) { /* no room for the length: one more block */
        memset(block + rest, 0, 64 - rest);
        sha1_block(h, block);
        rest = 0;
    }
    memset(block + rest, 0, 56 - rest);
    uint64_t bits = (uint64_t)len * 8;
    for (int k = 0; k < 8; k++)
        block[56 + k] = (uint8_t)(bits >> (56 - 8 * k));
    sha1_block(h, block);
    for (int k = 0; k < 5; k++) {
        out[4 * k] = (uint8_t)(h[k] >> 24);
        out[4 * k + 1] = (uint8_t)(h[k] >> 16);
        out[4 * k + 2] = (uint8_t)(h[k] >> 8);
        out[4 * k + 3] = (uint8_t)h[k];
    }
}

/* Standard base64 with padding; out needs 4 * ceil(n / 3) + 1 bytes. Returns the length. */
static size_t base64(const uint8_t *in, size_t n, char *out)
{
    static const char abc[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; n - i >= 3; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

/* ============================================================================================
 * Connection state and the program's globals
 * ========================================================================================== */

enum conn_state {
    ST_NEW,        /* not started yet */
    ST_CONNECTING, /* TCP connect in progress */
    ST_HANDSHAKE,  /* upgrade request sent, reading the response head */
    ST_HELLO,      /* upgraded, hello sent, waiting for its reply */
    ST_FAILED,     /* connect_failed or hello_failed: out of the game */
    ST_IDLE,       /* ready (between phases, or after the run): messages are ignored */
    ST_CLOSED_RUN, /* in the closed loop */
    ST_OPEN_RUN,   /* in the open loop */
    ST_CLOSING,    /* our close frame is sent; waiting for the server's */
};

/* One request of the open loop waiting for its reply. */
struct pending {
    int64_t timed_from, sent;
    uint32_t kind;
    bool measured, answered;
};

/* A plan is one buffer of records: this header, then prefix_len + suffix_len bytes. */
struct plan_frame {
    uint32_t prefix_len, suffix_len, kind;
};

struct conn {
    int fd;          /* -1 once the connection is over (or before it starts) */
    uint8_t state;   /* enum conn_state */
    uint32_t events; /* what epoll watches */
    bool close_sent, in_frag, got_hello, decided, planned;

    /* Read side: bytes not parsed yet (a split frame, or the handshake response head). */
    uint8_t *rbuf;
    size_t rlen, rcap;
    size_t head_scanned; /* handshake: bytes already searched for the blank line */
    uint8_t *frag;       /* a fragmented message's payload so far */
    size_t flen, fcap;

    /* Write side: obuf[ooff .. olen) is what the kernel has not taken yet. */
    uint8_t *obuf;
    size_t ooff, olen, ocap;

    /* Phase 1. */
    int64_t deadline;
    size_t hello_off, hello_len; /* in g_hellos */
    char key[25];                /* Sec-WebSocket-Key */

    /* The plan: requests cycle through it; rids count up from 2. */
    uint8_t *plan;
    size_t plan_len, plan_pos;
    uint64_t next_rid;

    /* Closed loop: the one request outstanding. */
    uint64_t rid;
    int64_t sent;
    uint32_t kind;
    bool outstanding, measured, finished;

    /* Open loop: a ring of pending requests, rids ring_rid .. ring_rid + rcount - 1 in order
     * (the open loop sends each client's rids consecutively, so the offset of a reply's rid
     * from ring_rid is its slot). Answered entries stay as tombstones until they reach the
     * head, so a reply out of order costs nothing more. */
    struct pending *ring;
    uint32_t rhead, rcount, ringcap, live; /* ringcap a power of two; live: unanswered */
    uint64_t ring_rid;
};

static struct {
    char host[256];
    char hostport[300]; /* for the Host header and messages */
    char port[8];
    uint32_t clients, concurrency;
    double open_timeout_s;
    int64_t open_timeout_ns;
    bool binary;
    unsigned kinds;
    uint8_t opcode;
    char *path, *subprotocol, *origin; /* NUL-terminated copies of the blobs */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char resolve_error[300]; /* non-empty: getaddrinfo failed, every connect fails */
} g_cfg;

static struct conn *g_conns;
static struct conn **g_planned; /* the planned clients in index order */
static uint32_t g_nplanned;
static uint8_t *g_hellos; /* every client's hello payload, end to end (phase 1 only) */
static uint32_t g_nopen;  /* sockets open */

static int g_ep = -1;  /* epoll */
static int g_tfd = -1; /* the run's timerfd */
static void (*g_on_timer)(void);

static uint8_t g_rx[RX_SIZE]; /* the shared read buffer */
static uint8_t *g_tx;         /* the shared frame building buffer */
static size_t g_txcap;

/* ============================================================================================
 * Recording: ops, errors by code, latency histograms; the stats lines
 * ========================================================================================== */

/* The layout of tools/wsprobe/stats.py: values below 256 have their own bucket, above that
 * each power of two is split into 128 linear sub-buckets. */
static uint32_t bucket_of(uint64_t v)
{
    int shift = v ? 64 - __builtin_clzll(v) - 8 : -8;
    return shift <= 0 ? (uint32_t)v : (uint32_t)shift * 128 + (uint32_t)(v >> shift);
}

struct hist {
    uint64_t *counts;
    uint32_t lo, hi; /* the range of buckets touched since the last stats line */
    uint64_t n, sum_us, max_us;
};

struct err_count {
    char *code;
    size_t len;
    uint64_t n;
};

static struct {
    uint64_t ops;
    uint64_t by_kind[MAX_KINDS];
    struct hist lat, svc;
    struct err_count *errs; /* codes are kept across lines: the table stops growing */
    size_t nerrs, errcap;
    bool dirty;
    int64_t last_emit;
} g_rec;

static void hist_add(struct hist *h, int64_t ns)
{
    uint64_t us = ns < 0 ? 0 : (uint64_t)(ns / 1000);
    uint32_t b = bucket_of(us);
    h->counts[b]++;
    if (h->n++ == 0) {
        h->lo = h->hi = b;
    } else {
        if (b < h->lo)
            h->lo = b;
        if (b > h->hi)
            h->hi = b;
    }
    h->sum_us += us;
    if (us > h->max_us)
        h->max_us = us;
}

static void error_add(const uint8_t *code, size_t len, uint64_t n)
{
    if (n == 0)
        return;
    g_rec.dirty = true;
    for (size_t i = 0; i < g_rec.nerrs; i++) {
        struct err_count *e = &g_rec.errs[i];
        if (e->len == len && memcmp(e->code, code, len) == 0) {
            e->n += n;
            return;
        }
    }
    if (g_rec.nerrs == g_rec.errcap) {
        g_rec.errcap = g_rec.errcap ? 2 * g_rec.errcap : 8;
        g_rec.errs = xrealloc(g_rec.errs, g_rec.errcap * sizeof *g_rec.errs);
    }
    struct err_count *e = &g_rec.errs[g_rec.nerrs++];
    e->code = xrealloc(NULL, len);
    if (len)
        memcpy(e->code, code, len);
    e->len = len;
    e->n = n;
}

static void error_str(const char *code, uint64_t n)
{
    error_add((const uint8_t *)code, strlen(code), n);
}

/* What the generator looks at in a server message (pointers into the message). */
struct head {
    const uint8_t *tag, *code;
    size_t tag_len, code_len;
    uint64_t rid;
    bool rid_null;
};

static bool head_is_error(const struct head *h)
{
    return h->tag_len == 5 && memcmp(h->tag, "error", 5) == 0;
}

/* A measured reply: an error by its code, or an op with its latency (and service time in
 * the open loop; svc_ns < 0 in the closed loop). */
static void record(const struct head *h, uint32_t kind, int64_t lat_ns, int64_t svc_ns)
{
    g_rec.dirty = true;
    if (head_is_error(h)) {
        if (h->code && h->code_len)
            error_add(h->code, h->code_len, 1);
        else
            error_str("unknown", 1);
        return;
    }
    g_rec.ops++;
    g_rec.by_kind[kind]++;
    hist_add(&g_rec.lat, lat_ns);
    if (svc_ns >= 0)
        hist_add(&g_rec.svc, svc_ns);
}

static void sb_hist(struct sbuf *b, const char *name, struct hist *h)
{
    sb_str(b, ",\"");
    sb_str(b, name);
    sb_str(b, "\":[");
    bool first = true;
    if (h->n) {
        for (uint32_t i = h->lo; i <= h->hi; i++) {
            if (!h->counts[i])
                continue;
            sb_str(b, first ? "[" : ",[");
            sb_u64(b, i);
            sb_str(b, ",");
            sb_u64(b, h->counts[i]);
            sb_str(b, "]");
            h->counts[i] = 0;
            first = false;
        }
    }
    sb_str(b, "],\"");
    sb_str(b, name);
    sb_str(b, "_sum_us\":");
    sb_u64(b, h->sum_us);
    sb_str(b, ",\"");
    sb_str(b, name);
    sb_str(b, "_max_us\":");
    sb_u64(b, h->max_us);
    h->n = h->sum_us = h->max_us = 0;
}

/* One stats line with what was recorded since the previous one; the recorder restarts. */
static void emit_stats(void)
{
    struct sbuf *b = &g_out;
    sb_str(b, "{\"type\":\"stats\",\"ops\":");
    sb_u64(b, g_rec.ops);
    sb_str(b, ",\"by_kind\":[");
    for (unsigned k = 0; k < g_cfg.kinds; k++) {
        if (k)
            sb_str(b, ",");
        sb_u64(b, g_rec.by_kind[k]);
        g_rec.by_kind[k] = 0;
    }
    sb_str(b, "],\"errors\":{");
    bool first = true;
    for (size_t i = 0; i < g_rec.nerrs; i++) {
        struct err_count *e = &g_rec.errs[i];
        if (!e->n)
            continue;
        if (!first)
            sb_str(b, ",");
        sb_json(b, e->code, e->len);
        sb_str(b, ":");
        sb_u64(b, e->n);
        e->n = 0;
        first = false;
    }
    sb_str(b, "}");
    sb_hist(b, "lat", &g_rec.lat);
    sb_hist(b, "svc", &g_rec.svc);
    sb_str(b, "}");
    emit(NULL, 0);
    g_rec.ops = 0;
    g_rec.dirty = false;
    g_rec.last_emit = now_ns();
}

/* ============================================================================================
 * The event loop's plumbing: epoll registration, the timer, stdin
 * ========================================================================================== */

static uint32_t conn_index(const struct conn *c) { return (uint32_t)(c - g_conns); }

static void conn_watch(struct conn *c, uint32_t events)
{
    if (events == c->events)
        return;
    struct epoll_event ev = {.events = events, .data.u64 = conn_index(c)};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        fatal("epoll_ctl: %s", strerror(errno));
    c->events = events;
}

/* Watch what the state needs: writability while connecting, else reads, plus writability
 * while the out buffer holds something. */
static void conn_update_watch(struct conn *c)
{
    if (c->state == ST_CONNECTING)
        conn_watch(c, EPOLLOUT);
    else
        conn_watch(c, EPOLLIN | (c->olen > c->ooff ? EPOLLOUT : 0));
}

static void timer_arm(int64_t at_ns)
{
    struct itimerspec its = {{0, 0}, {0, 0}};
    if (at_ns < 1) /* 0 would disarm it: the past is the past */
        at_ns = 1;
    its.it_value.tv_sec = at_ns / NS_PER_S;
    its.it_value.tv_nsec = at_ns % NS_PER_S;
    if (timerfd_settime(g_tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        fatal("timerfd_settime: %s", strerror(errno));
}

static void timer_disarm(void)
{
    struct itimerspec its = {{0, 0}, {0, 0}};
    if (timerfd_settime(g_tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        fatal("timerfd_settime: %s", strerror(errno));
}

static void conn_event(struct conn *c, uint32_t events);

static bool g_stdin_ready; /* stdin has something to read (or hit EOF) */

/* Wait for events (at most timeout_ms; -1: no limit) and handle them. */
static void loop_once(int timeout_ms)
{
    struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(g_ep, evs, MAX_EVENTS, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return;
        fatal("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
        uint64_t tag = evs[i].data.u64;
        if (tag == TAG_STDIN) {
            g_stdin_ready = true;
        } else if (tag == TAG_TIMER) {
            /* A timer re-armed or disarmed since the event was queued reads EAGAIN. */
            uint64_t expirations;
            if (read(g_tfd, &expirations, sizeof expirations) == (ssize_t)sizeof expirations &&
                g_on_timer)
                g_on_timer();
        } else {
            conn_event(&g_conns[tag], evs[i].events);
        }
    }
}

/* stdin: commands are read through a buffer; while waiting for more, the loop services the
 * sockets. stdin is watched one-shot, only while a command is awaited (a parent that died
 * mid-run must not make every epoll_wait return). A regular file cannot be polled: it is
 * read directly. */
static struct {
    uint8_t *buf;
    size_t pos, len, cap;
    bool added, pollable;
} g_in = {.pollable = true};

/* Read more of stdin, making room for `want` bytes from the current position. */
static void in_fill(size_t want)
{
    if (g_in.pos) {
        memmove(g_in.buf, g_in.buf + g_in.pos, g_in.len - g_in.pos);
        g_in.len -= g_in.pos;
        g_in.pos = 0;
    }
    size_t cap = g_in.cap;
    while (cap < want || cap - g_in.len < 4096)
        cap *= 2;
    if (cap != g_in.cap) {
        g_in.buf = xrealloc(g_in.buf, cap);
        g_in.cap = cap;
    }
    if (g_in.pollable) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = TAG_STDIN};
        if (epoll_ctl(g_ep, g_in.added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, 0, &ev) == 0) {
            g_in.added = true;
            g_stdin_ready = false;
            while (!g_stdin_ready)
                loop_once(-1);
        } else if (errno == EPERM) {
            g_in.pollable = false;
        } else {
            fatal("epoll_ctl(stdin): %s", strerror(errno));
        }
    }
    ssize_t k;
    do
        k = read(0, g_in.buf + g_in.len, g_in.cap - g_in.len);
    while (k < 0 && errno == EINTR);
    if (k == 0)
        exit(1); /* EOF: the parent died */
    if (k < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        fatal("reading stdin: %s", strerror(errno));
    }
    g_in.len += (size_t)k;
}

/* The next command line, NUL-terminated, without its '\n'; valid until the next in_* call. */
static char *in_line(void)
{
    size_t scanned = 0;
    for (;;) {
        size_t avail = g_in.len - g_in.pos;
        uint8_t *start = g_in.buf + g_in.pos;
        uint8_t *nl = avail > scanned ? memchr(start + scanned, '\n', avail - scanned) : NULL;
        if (nl) {
            *nl = '\0';
            g_in.pos = (size_t)(nl + 1 - g_in.buf);
            if (memchr(start, '\0', (size_t)(nl - start)))
                fatal("a command line holds a NUL byte");
            return (char *)start;
        }
        scanned = g_in.len - g_in.pos;
        if (scanned >= MAX_LINE)
            fatal("a command line longer than %d bytes", MAX_LINE);
        in_fill(0);
    }
}

/* The next n bytes of stdin; valid until the next in_* call. */
static const uint8_t *in_blob(size_t n)
{
    while (g_in.len - g_in.pos < n)
        in_fill(n);
    const uint8_t *p = g_in.buf + g_in.pos;
    g_in.pos += n;
    return p;
}

/* Split a command line at single spaces into at most max fields; -1 if it has more, or an
 * empty field (two spaces in a row, a leading or trailing space). */
static int split(char *line, char **argv, int max)
{
    int n = 0;
    for (char *s = line;;) {
        if (n == max)
            return -1;
        argv[n++] = s;
        char *sp = strchr(s, ' ');
        if (sp == NULL)
            break;
        *sp = '\0';
        s = sp + 1;
    }
    for (int i = 0; i < n; i++)
        if (argv[i][0] == '\0')
            return -1;
    return n;
}

static uint64_t parse_uint(const char *s, uint64_t max, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = isdigit((unsigned char)s[0]) ? strtoull(s, &end, 10) : 0;
    if (!isdigit((unsigned char)s[0]) || *end || errno || v > max)
        fatal("bad %s: '%.64s'", what, s);
    return v;
}

/* A decimal number of seconds (a time or a duration): finite, and within +-10^9 s. */
static double parse_seconds(const char *s, const char *what)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v > 1e9 || v < -1e9)
        fatal("bad %s: '%.64s'", what, s);
    return v;
}

/* Read "<name> <n>\n<n bytes>" and return the blob as a NUL-terminated string; it must not
 * hold control characters (it goes into a request head). */
static char *read_header_blob(const char *name)
{
    char *argv[3];
    char *line = in_line();
    if (split(line, argv, 3) != 2 || strcmp(argv[0], name) != 0)
        fatal("expected '%s <n>', got '%.64s'", name, argv[0]);
    size_t n = parse_uint(argv[1], MAX_LINE, "blob length");
    const uint8_t *p = in_blob(n);
    char *s = xrealloc(NULL, n + 1);
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] == 0x7f)
            fatal("the %s holds a control character", name);
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* ============================================================================================
 * Frame writer
 * ========================================================================================== */

static void conn_lose(struct conn *c, const char *why);

static void tx_reserve(size_t n)
{
    if (g_txcap >= n)
        return;
    size_t cap = g_txcap ? g_txcap : 65536;
    while (cap < n)
        cap *= 2;
    g_tx = xrealloc(g_tx, cap);
    g_txcap = cap;
}

/* Send bytes in order: straight to the socket when nothing is queued, the rest (or all, if
 * something is queued) into the out buffer. A failing socket loses the connection: callers
 * check c->fd afterwards. */
static void conn_write(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->fd < 0 || n == 0)
        return;
    if (c->olen == c->ooff) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_lose(c, "the connection dropped");
                return;
            }
            k = 0;
        }
        if ((size_t)k == n)
            return;
        p += k;
        n -= (size_t)k;
        c->ooff = c->olen = 0;
    }
    if (c->ocap - c->olen < n) {
        if (c->ooff) { /* reclaim what was flushed before growing */
            memmove(c->obuf, c->obuf + c->ooff, c->olen - c->ooff);
            c->olen -= c->ooff;
            c->ooff = 0;
        }
        size_t cap = c->ocap ? c->ocap : KEEP_BUF;
        while (cap - c->olen < n)
            cap *= 2;
        if (cap != c->ocap) {
            c->obuf = xrealloc(c->obuf, cap);
            c->ocap = cap;
        }
    }
    memcpy(c->obuf + c->olen, p, n);
    c->olen += n;
    conn_update_watch(c);
}

/* EPOLLOUT: send what is queued. */
static void conn_flush(struct conn *c)
{
    if (c->olen == c->ooff) {
        conn_update_watch(c);
        return;
    }
    ssize_t k = send(c->fd, c->obuf + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
    if (k < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_lose(c, "the connection dropped");
        return;
    }
    c->ooff += (size_t)k;
    if (c->ooff == c->olen) {
        c->ooff = c->olen = 0;
        if (c->ocap > KEEP_BUF) {
            free(c->obuf);
            c->obuf = NULL;
            c->ocap = 0;
        }
    }
    conn_update_watch(c);
}

/* XOR a payload with the masking key, eight bytes at a time. */
static void mask_payload(uint8_t *p, size_t n, const uint8_t key[4])
{
    uint8_t k8[8] = {key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]};
    uint64_t kw;
    memcpy(&kw, k8, 8);
    size_t i = 0;
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= kw;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++) /* i is a multiple of 8 here: the key's phase is i & 3 */
        p[i] ^= key[i & 3];
}

/* One FIN frame, masked with a fresh key, whose payload is the concatenation of three parts
 * (a request is prefix + rid + suffix). Nothing is sent after our close frame. */
static void send_frame(struct conn *c, unsigned opcode, const uint8_t *a, size_t na,
                       const uint8_t *b, size_t nb, const uint8_t *d, size_t nd)
{
    if (c->fd < 0 || c->close_sent)
        return;
    size_t n = na + nb + nd;
    tx_reserve(n + 14);
    uint8_t *f = g_tx;
    size_t h = 0;
    f[h++] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        f[h++] = (uint8_t)(0x80 | n);
    } else if (n <= 0xFFFF) {
        f[h++] = 0x80 | 126;
        f[h++] = (uint8_t)(n >> 8);
        f[h++] = (uint8_t)n;
    } else {
        f[h++] = 0x80 | 127;
        for (int s = 56; s >= 0; s -= 8)
            f[h++] = (uint8_t)((uint64_t)n >> s);
    }
    uint32_t key = (uint32_t)(rng_next() >> 32);
    memcpy(f + h, &key, 4); /* any four random bytes */
    const uint8_t *k = f + h;
    h += 4;
    uint8_t *pl = f + h;
    if (na)
        memcpy(pl, a, na);
    if (nb)
        memcpy(pl + na, b, nb);
    if (nd)
        memcpy(pl + na + nb, d, nd);
    mask_payload(pl, n, k);
    if (opcode == OP_CLOSE)
        c->close_sent = true;
    conn_write(c, f, h + n);
}

static void send_close(struct conn *c, unsigned code)
{
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    send_frame(c, OP_CLOSE, p, 2, NULL, 0, NULL, 0);
}

static const struct plan_frame *plan_peek(const struct conn *c)
{
    return (const struct plan_frame *)(const void *)(c->plan + c->plan_pos);
}

/* Send the client's next request (its plan's next frame with the next rid); returns the
 * request's kind. The plan's records are 4-byte aligned (see read_plan). */
static uint32_t send_request(struct conn *c)
{
    const struct plan_frame *fr = plan_peek(c);
    const uint8_t *prefix = (const uint8_t *)(fr + 1);
    const uint8_t *suffix = prefix + fr->prefix_len;
    uint32_t kind = fr->kind;
    uint64_t rid = c->next_rid++;
    uint8_t enc[24];
    const uint8_t *r;
    size_t rn;
    if (g_cfg.binary) { /* msgpack uint64 */
        enc[0] = 0xcf;
        for (int i = 0; i < 8; i++)
            enc[1 + i] = (uint8_t)(rid >> (56 - 8 * i));
        r = enc;
        rn = 9;
    } else { /* decimal digits, written from the end */
        uint8_t *e = enc + sizeof enc, *q = e;
        do
            *--q = (uint8_t)('0' + rid % 10);
        while (rid /= 10);
        r = q;
        rn = (size_t)(e - q);
    }
    size_t next = c->plan_pos + sizeof *fr + ((fr->prefix_len + fr->suffix_len + 3u) & ~3u);
    c->plan_pos = next >= c->plan_len ? 0 : next;
    send_frame(c, g_cfg.opcode, prefix, fr->prefix_len, r, rn, suffix, fr->suffix_len);
    return kind;
}

/* ============================================================================================
 * The end of a connection
 * ========================================================================================== */

static void p1_failed(struct conn *c, const char *code, const char *why);
static void closed_lost(struct conn *c);
static void open_lost(struct conn *c);

static void free_read_side(struct conn *c)
{
    free(c->rbuf);
    free(c->frag);
    c->rbuf = c->frag = NULL;
    c->rlen = c->rcap = c->flen = c->fcap = 0;
    c->in_frag = false;
}

/* Close the socket (one last try at what is queued, such as our close frame) and free the
 * connection's buffers; epoll forgets a closed descriptor by itself. */
static void conn_close_fd(struct conn *c)
{
    if (c->fd < 0)
        return;
    if (c->olen > c->ooff)
        (void)send(c->fd, c->obuf + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
    close(c->fd);
    c->fd = -1;
    g_nopen--;
    free_read_side(c);
    free(c->obuf);
    c->obuf = NULL;
    c->ooff = c->olen = c->ocap = 0;
}

/* The connection is over for `why`: close it, then tell whatever it was doing. */
static void conn_lose(struct conn *c, const char *why)
{
    if (c->fd < 0)
        return;
    conn_close_fd(c);
    switch (c->state) {
    case ST_CONNECTING:
    case ST_HANDSHAKE:
        p1_failed(c, "connect_failed", why);
        break;
    case ST_HELLO:
        p1_failed(c, "hello_failed", why);
        break;
    case ST_CLOSED_RUN:
        closed_lost(c);
        break;
    case ST_OPEN_RUN:
        open_lost(c);
        break;
    default:
        break;
    }
}

static void emit_warning(struct conn *c, const char *why)
{
    sb_str(&g_out, "{\"type\":\"warning\",\"client\":");
    sb_u64(&g_out, conn_index(c));
    sb_str(&g_out, ",\"reason\":");
    sb_json(&g_out, why, strlen(why));
    sb_str(&g_out, "}");
    emit(NULL, 0);
}

/* The server broke the protocol (1002) or sent too big a message (1009): close, warn. */
static void conn_violation(struct conn *c, unsigned code, const char *what)
{
    char why[256];
    snprintf(why, sizeof why, "%s: the server sent %s",
             code == 1009 ? "message too big" : "protocol error", what);
    send_close(c, code);
    emit_warning(c, why);
    conn_lose(c, why);
}

/* ============================================================================================
 * Reading a reply's head
 *
 * What the generator needs of a message is its tag `t`, its `rid` (an integer, null, or
 * absent: a push) and, in an error, its `code`. Gearhall's replies do not put `rid` at a
 * fixed place: msgspec writes the fields a Reply subclass declares before the kw_only `rid`
 * of the base class ({"t":"pong","tick":3,"rid":5}; the welcome carries the whole player
 * state before its rid), while ErrorReply declares `rid` itself, second, with `code` third.
 * So the top-level members are scanned in order, other values skipped without decoding
 * them (a few bytes for a pong), and the scan stops as soon as the head is complete.
 * Anything that is not an object/map of that shape is a push.
 * ========================================================================================== */

static bool head_done(const struct head *h, bool have_tag, bool have_rid)
{
    return have_tag && have_rid && (h->code != NULL || !head_is_error(h));
}

/* JSON: index past the string starting at p[i] == '"' (escapes skipped), or 0 if it is
 * unterminated (0 is never the end of a string). */
static size_t json_skip_string(const uint8_t *p, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (p[i] == '\\')
            i++;
        else if (p[i] == '"')
            return i + 1;
    }
    return 0;
}

static size_t json_skip_ws(const uint8_t *p, size_t n, size_t i)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

static bool json_delimiter(uint8_t ch)
{
    return ch == ',' || ch == '}' || ch == ']' || ch == ' ' || ch == '\t' || ch == '\n' ||
           ch == '\r';
}

/* JSON: index past the value starting at p[i]: a string; an object or an array (brackets
 * counted, strings inside skipped whole); or a number or a literal, up to a delimiter. */
static size_t json_skip_value(const uint8_t *p, size_t n, size_t i)
{
    size_t depth = 0;
    do {
        if (i >= n)
            return n;
        uint8_t ch = p[i];
        if (ch == '"') {
            i = json_skip_string(p, n, i);
            if (i == 0)
                return n;
        } else if (ch == '{' || ch == '[') {
            depth++;
            i++;
        } else if (ch == '}' || ch == ']') {
            if (depth == 0)
                return i; /* no value at all: the enclosing object ends */
            depth--;
            i++;
        } else if (depth == 0) {
            while (i < n && !json_delimiter(p[i]))
                i++;
            return i;
        } else {
            i++;
        }
    } while (depth > 0);
    return i;
}

static bool json_key_is(const uint8_t *k, size_t kn, const char *name)
{
    return kn == strlen(name) && memcmp(k, name, kn) == 0;
}

static bool head_text(const uint8_t *p, size_t n, struct head *h)
{
    bool have_tag = false, have_rid = false;
    size_t i = json_skip_ws(p, n, 0);
    if (i == n || p[i] != '{')
        return false;
    for (i = json_skip_ws(p, n, i + 1); i < n && p[i] == '"';) {
        size_t ks = i + 1;
        i = json_skip_string(p, n, i);
        if (i == 0)
            return false;
        const uint8_t *key = p + ks;
        size_t kn = i - 1 - ks;
        i = json_skip_ws(p, n, i);
        if (i == n || p[i] != ':')
            return false;
        i = json_skip_ws(p, n, i + 1);
        if (i == n)
            return false;
        size_t vs = i;
        if (json_key_is(key, kn, "t") || json_key_is(key, kn, "code")) {
            if (p[i] != '"')
                return false;
            i = json_skip_string(p, n, i);
            if (i == 0)
                return false;
            if (key[0] == 't') {
                h->tag = p + vs + 1;
                h->tag_len = i - vs - 2;
                have_tag = true;
            } else {
                h->code = p + vs + 1;
                h->code_len = i - vs - 2;
            }
        } else if (json_key_is(key, kn, "rid")) {
            if (n - i >= 4 && memcmp(p + i, "null", 4) == 0) {
                h->rid_null = true;
                i += 4;
            } else {
                uint64_t v = 0;
                if (!isdigit(p[i]))
                    return false; /* negative, or not a number: no rid of ours */
                for (; i < n && isdigit(p[i]); i++) {
                    unsigned digit = (unsigned)(p[i] - '0');
                    if (v > (UINT64_MAX - digit) / 10)
                        return false;
                    v = v * 10 + digit;
                }
                if (i < n && !json_delimiter(p[i]))
                    return false; /* 1.5, 1e3: not an integer */
                h->rid = v;
            }
            have_rid = true;
        } else {
            i = json_skip_value(p, n, i);
        }
        if (head_done(h, have_tag, have_rid))
            return true;
        i = json_skip_ws(p, n, i);
        if (i == n || p[i] != ',') /* the end of the object (or garbage) */
            break;
        i = json_skip_ws(p, n, i + 1);
    }
    /* The whole object was read: an error reply may lack a code. */
    return have_tag && have_rid;
}

/* MessagePack: the size of the object header at p[i] (type byte and any length or count
 * after it), the payload bytes that follow, and how many nested objects follow (arrays,
 * maps). false if it is truncated or not a valid type byte (0xc1). */
static bool mp_header(const uint8_t *p, size_t n, size_t i, size_t *hdr, uint64_t *payload,
                      uint64_t *items)
{
    if (i >= n)
        return false;
    uint8_t b = p[i];
    size_t w = 0; /* width of a big-endian length/count after the type byte */
    *hdr = 1, *payload = 0, *items = 0;
    if (b <= 0x7F || b >= 0xE0 || b == 0xC0 || b == 0xC2 || b == 0xC3)
        return true; /* fixint, nil, bool */
    if ((b & 0xE0) == 0xA0) { /* fixstr */
        *payload = b & 0x1F;
        return true;
    }
    if ((b & 0xF0) == 0x90) { /* fixarray */
        *items = b & 0x0F;
        return true;
    }
    if ((b & 0xF0) == 0x80) { /* fixmap */
        *items = 2u * (b & 0x0F);
        return true;
    }
    switch (b) {
    case 0xCC: case 0xD0: *payload = 1; return true;
    case 0xCD: case 0xD1: *payload = 2; return true;
    case 0xCA: case 0xCE: case 0xD2: *payload = 4; return true;
    case 0xCB: case 0xCF: case 0xD3: *payload = 8; return true;
    case 0xD4: *payload = 2; return true; /* fixext: type byte + data */
    case 0xD5: *payload = 3; return true;
    case 0xD6: *payload = 5; return true;
    case 0xD7: *payload = 9; return true;
    case 0xD8: *payload = 17; return true;
    case 0xC4: case 0xD9: case 0xC7: w = 1; break; /* bin8, str8, ext8 */
    case 0xC5: case 0xDA: case 0xC8: case 0xDC: case 0xDE: w = 2; break;
    case 0xC6: case 0xDB: case 0xC9: case 0xDD: case 0xDF: w = 4; break;
    default: return false; /* 0xc1 */
    }
    if (n - i - 1 < w)
        return false;
    uint64_t len = w == 1 ? p[i + 1] : w == 2 ? be16(p + i + 1) : be32(p + i + 1);
    *hdr = 1 + w;
    if (b == 0xDC || b == 0xDD)
        *items = len;
    else if (b == 0xDE || b == 0xDF)
        *items = 2 * len;
    else
        *payload = len + (b >= 0xC7 && b <= 0xC9); /* ext: its type byte */
    return true;
}

/* MessagePack: index past the object at p[i] and everything nested in it; n if truncated. */
static size_t mp_skip(const uint8_t *p, size_t n, size_t i)
{
    for (uint64_t left = 1; left > 0; left--) {
        size_t hdr;
        uint64_t payload, items;
        if (!mp_header(p, n, i, &hdr, &payload, &items) || n - i - hdr < payload)
            return n;
        i += hdr + (size_t)payload;
        left += items;
    }
    return i;
}

/* MessagePack: the str at p[*i]; false if it is something else. */
static bool mp_str(const uint8_t *p, size_t n, size_t *i, const uint8_t **s, size_t *len)
{
    size_t hdr;
    uint64_t payload, items;
    uint8_t b = *i < n ? p[*i] : 0;
    if (!((b & 0xE0) == 0xA0 || (b >= 0xD9 && b <= 0xDB)) ||
        !mp_header(p, n, *i, &hdr, &payload, &items) || n - *i - hdr < payload)
        return false;
    *s = p + *i + hdr;
    *len = (size_t)payload;
    *i += hdr + (size_t)payload;
    return true;
}

static bool head_msgpack(const uint8_t *p, size_t n, struct head *h)
{
    bool have_tag = false, have_rid = false;
    size_t i = 0, hdr;
    uint64_t payload, items;
    if (n == 0 || !((p[0] & 0xF0) == 0x80 || p[0] == 0xDE || p[0] == 0xDF) ||
        !mp_header(p, n, 0, &hdr, &payload, &items))
        return false;
    i = hdr;
    for (uint64_t pairs = items / 2; pairs > 0 && i < n; pairs--) {
        const uint8_t *key;
        size_t kn;
        if (!mp_str(p, n, &i, &key, &kn)) { /* a key that is not a str: skip the pair */
            i = mp_skip(p, n, mp_skip(p, n, i));
            continue;
        }
        if (json_key_is(key, kn, "t") || json_key_is(key, kn, "code")) {
            const uint8_t *s;
            size_t sn;
            if (!mp_str(p, n, &i, &s, &sn))
                return false;
            if (key[0] == 't') {
                h->tag = s;
                h->tag_len = sn;
                have_tag = true;
            } else {
                h->code = s;
                h->code_len = sn;
            }
        } else if (json_key_is(key, kn, "rid")) {
            if (i >= n)
                return false;
            uint8_t b = p[i++];
            if (b <= 0x7F) {
                h->rid = b;
            } else if (b == 0xC0) {
                h->rid_null = true;
            } else if (b >= 0xCC && b <= 0xD3 && b != 0xCA && b != 0xCB) {
                size_t w = (size_t)1 << ((b - 0xCC) & 3); /* uint then int, 1 to 8 bytes */
                if (n - i < w || (b >= 0xD0 && (p[i] & 0x80)))
                    return false; /* truncated, or negative: no rid of ours */
                h->rid = w == 1 ? p[i] : w == 2 ? be16(p + i) : w == 4 ? be32(p + i) : be64(p + i);
                i += w;
            } else {
                return false;
            }
            have_rid = true;
        } else {
            i = mp_skip(p, n, i);
        }
        if (head_done(h, have_tag, have_rid))
            return true;
    }
    return have_tag && have_rid;
}

/* false: the message has no rid (a push, or not a message of Gearhall's shape). */
static bool parse_head(const uint8_t *p, size_t n, struct head *h)
{
    memset(h, 0, sizeof *h);
    return g_cfg.binary ? head_msgpack(p, n, h) : head_text(p, n, h);
}

/* ============================================================================================
 * Frame reader
 * ========================================================================================== */

static void hello_message(struct conn *c, const uint8_t *m, size_t n);
static void closed_message(struct conn *c, const uint8_t *m, size_t n);
static void open_message(struct conn *c, const uint8_t *m, size_t n);

/* A whole message. The handlers read the message before anything that may lose the
 * connection (a send), since losing it frees the buffer the message may lie in. */
static void on_message(struct conn *c, const uint8_t *m, size_t n)
{
    switch (c->state) {
    case ST_HELLO:
        hello_message(c, m, n);
        break;
    case ST_CLOSED_RUN:
        closed_message(c, m, n);
        break;
    case ST_OPEN_RUN:
        open_message(c, m, n);
        break;
    default: /* between phases, after the run, while closing: dropped */
        break;
    }
}

static void frag_append(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->fcap - c->flen < n) {
        size_t cap = c->fcap ? c->fcap : KEEP_BUF;
        while (cap - c->flen < n)
            cap *= 2;
        c->frag = xrealloc(c->frag, cap);
        c->fcap = cap;
    }
    if (n)
        memcpy(c->frag + c->flen, p, n);
    c->flen += n;
}

static void on_close_frame(struct conn *c, const uint8_t *p, size_t n)
{
    char why[256];
    unsigned code = 1005; /* "no status received", as the closing handshake reports it */
    if (n >= 2) {
        code = be16(p);
        snprintf(why, sizeof why, "the server closed the connection (%u%s%.*s)", code,
                 n > 2 ? " " : "", (int)(n - 2), (const char *)p + 2);
    } else {
        snprintf(why, sizeof why, "the server closed the connection (%u)", code);
    }
    send_close(c, n >= 2 ? code : 1000); /* echo its code; nothing if ours went first */
    conn_lose(c, why);
}

/* Handle every complete frame in d[0 .. n); returns how many bytes they took. Stops early
 * when the connection is lost (c->fd < 0: the caller must not touch the buffers). */
static size_t parse_frames(struct conn *c, const uint8_t *d, size_t n)
{
    size_t pos = 0;
    char what[80];
    while (n - pos >= 2) {
        const uint8_t *f = d + pos;
        size_t avail = n - pos, h = 2;
        bool fin = f[0] & 0x80;
        unsigned op = f[0] & 0x0F;
        uint64_t len = f[1] & 0x7F;
        bool control = op & 0x8;
        if (f[0] & 0x70) {
            conn_violation(c, 1002, "a frame with reserved bits set");
            return pos;
        }
        if ((op > OP_BINARY && op < OP_CLOSE) || op > OP_PONG) {
            snprintf(what, sizeof what, "a frame with the reserved opcode 0x%X", op);
            conn_violation(c, 1002, what);
            return pos;
        }
        if (f[1] & 0x80) {
            conn_violation(c, 1002, "a masked frame");
            return pos;
        }
        if (control && !fin) {
            conn_violation(c, 1002, "a fragmented control frame");
            return pos;
        }
        if (op == OP_CONT && !c->in_frag) {
            conn_violation(c, 1002, "a continuation frame outside a fragmented message");
            return pos;
        }
        if ((op == OP_TEXT || op == OP_BINARY) && c->in_frag) {
            conn_violation(c, 1002, "a data frame inside a fragmented message");
            return pos;
        }
        if (len == 126) {
            if (avail < 4)
                break;
            len = be16(f + 2);
            h = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = be64(f + 2);
            h = 10;
        }
        if (control && len > 125) {
            conn_violation(c, 1002, "a control frame longer than 125 bytes");
            return pos;
        }
        /* Checked on the header, so that a huge frame is never buffered. */
        if (!control && len > MAX_MESSAGE - (op == OP_CONT ? c->flen : 0)) {
            conn_violation(c, 1009, "a message over 16 MiB");
            return pos;
        }
        if (avail - h < len)
            break;
        const uint8_t *p = f + h;
        size_t plen = (size_t)len;
        pos += h + plen;
        switch (op) {
        case OP_TEXT:
        case OP_BINARY:
            if (fin) {
                on_message(c, p, plen);
            } else {
                c->in_frag = true;
                c->flen = 0;
                frag_append(c, p, plen);
            }
            break;
        case OP_CONT:
            frag_append(c, p, plen);
            if (fin) {
                c->in_frag = false;
                on_message(c, c->frag, c->flen);
                if (c->fd >= 0) {
                    c->flen = 0;
                    if (c->fcap > KEEP_BUF) {
                        free(c->frag);
                        c->frag = NULL;
                        c->fcap = 0;
                    }
                }
            }
            break;
        case OP_PING:
            send_frame(c, OP_PONG, p, plen, NULL, 0, NULL, 0);
            break;
        case OP_PONG:
            break;
        case OP_CLOSE:
            if (plen == 1) {
                conn_violation(c, 1002, "a close frame with a 1-byte payload");
                return pos;
            }
            on_close_frame(c, p, plen);
            break;
        }
        if (c->fd < 0)
            return pos;
    }
    return pos;
}

static void rbuf_reserve(struct conn *c, size_t room)
{
    if (c->rcap - c->rlen >= room)
        return;
    size_t cap = c->rcap ? c->rcap : KEEP_BUF;
    while (cap - c->rlen < room)
        cap *= 2;
    c->rbuf = xrealloc(c->rbuf, cap);
    c->rcap = cap;
}

/* After parsing d[0 .. n), of which `used` bytes were whole frames: keep the rest (a split
 * frame) in the connection's buffer. */
static void keep_rest(struct conn *c, const uint8_t *d, size_t n, size_t used)
{
    size_t rest = n - used;
    if (d != c->rbuf) { /* the shared buffer */
        if (rest) {
            rbuf_reserve(c, rest);
            memcpy(c->rbuf, d + used, rest);
            c->rlen = rest;
        }
        return;
    }
    if (used && rest)
        memmove(c->rbuf, c->rbuf + used, rest);
    c->rlen = rest;
    if (rest == 0 && c->rcap > KEEP_BUF) { /* a big message went by: give its room back */
        free(c->rbuf);
        c->rbuf = NULL;
        c->rcap = 0;
    }
}

static void handshake_readable(struct conn *c);

/* EPOLLIN (or a hangup or an error): one read(), then every complete frame. */
static void conn_readable(struct conn *c)
{
    if (c->state == ST_HANDSHAKE) {
        handshake_readable(c);
        return;
    }
    const uint8_t *d;
    size_t n;
    ssize_t k;
    if (c->rlen == 0) {
        k = read(c->fd, g_rx, sizeof g_rx);
        d = g_rx;
    } else {
        rbuf_reserve(c, 4096);
        k = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        d = c->rbuf;
    }
    if (k <= 0) {
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_lose(c, "the connection dropped");
        return;
    }
    if (d == c->rbuf)
        c->rlen += (size_t)k;
    n = d == c->rbuf ? c->rlen : (size_t)k;
    size_t used = parse_frames(c, d, n);
    if (c->fd >= 0)
        keep_rest(c, d, n, used);
}

/* ============================================================================================
 * Connecting and the opening handshake
 * ========================================================================================== */

static void send_hello(struct conn *c)
{
    send_frame(c, g_cfg.opcode, g_hellos + c->hello_off, c->hello_len, NULL, 0, NULL, 0);
}

static void conn_start(struct conn *c)
{
    char why[400];
    c->deadline = now_ns() + g_cfg.open_timeout_ns;
    c->state = ST_CONNECTING;
    if (g_cfg.resolve_error[0]) {
        p1_failed(c, "connect_failed", g_cfg.resolve_error);
        return;
    }
    int fd = socket(g_cfg.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, sizeof why, "cannot create a socket: %s", strerror(errno));
        p1_failed(c, "connect_failed", why);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    g_nopen++;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = conn_index(c)};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        fatal("epoll_ctl: %s", strerror(errno));
    c->events = EPOLLOUT;
    if (connect(fd, (struct sockaddr *)&g_cfg.addr, g_cfg.addrlen) < 0 && errno != EINPROGRESS) {
        snprintf(why, sizeof why, "cannot connect to %s: %s", g_cfg.hostport, strerror(errno));
        conn_lose(c, why);
    }
    /* Even a connect that succeeded at once is handled on EPOLLOUT, in one place. */
}

/* The TCP connect finished (EPOLLOUT): send the upgrade request. */
static void conn_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        char why[400];
        snprintf(why, sizeof why, "cannot connect to %s: %s", g_cfg.hostport, strerror(err));
        conn_lose(c, why);
        return;
    }
    c->state = ST_HANDSHAKE;
    conn_update_watch(c);
    uint8_t nonce[16];
    uint64_t r0 = rng_next(), r1 = rng_next();
    memcpy(nonce, &r0, 8);
    memcpy(nonce + 8, &r1, 8);
    base64(nonce, sizeof nonce, c->key);
    struct sbuf *req = &g_req;
    req->len = 0;
    sb_str(req, "GET ");
    sb_str(req, g_cfg.path);
    sb_str(req, " HTTP/1.1\r\nHost: ");
    sb_str(req, g_cfg.hostport);
    sb_str(req, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    sb_str(req, c->key);
    sb_str(req, "\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ");
    sb_str(req, g_cfg.subprotocol);
    if (g_cfg.origin[0]) {
        sb_str(req, "\r\nOrigin: ");
        sb_str(req, g_cfg.origin);
    }
    sb_str(req, "\r\n\r\n");
    conn_write(c, (const uint8_t *)req->p, req->len);
}

static bool ieq(const char *a, size_t na, const char *b)
{
    return strlen(b) == na && strncasecmp(a, b, na) == 0;
}

/* Whether a comma-separated header value holds `token` (case-insensitive). */
static bool has_token(const char *v, size_t n, const char *token)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (ieq(v + s, e - s, token))
            return true;
    }
    return false;
}

/* Check the response head (ending with its blank line); false with why[] if refused. */
static bool check_response(const struct conn *c, const char *head, size_t n, char *why,
                           size_t whylen)
{
    const char *end = head + n, *eol = memmem(head, n, "\r\n", 2);
    size_t sl = (size_t)(eol - head);
    if (sl < 12 || memcmp(head, "HTTP/1.1 ", 9) != 0 || !isdigit((unsigned char)head[9]) ||
        !isdigit((unsigned char)head[10]) || !isdigit((unsigned char)head[11]) ||
        (sl > 12 && head[12] != ' ')) {
        snprintf(why, whylen, "the server sent an invalid status line: %.*s",
                 (int)(sl > 200 ? 200 : sl), head);
        return false;
    }
    if (memcmp(head + 9, "101", 3) != 0) {
        snprintf(why, whylen, "the server answered %.*s", (int)(sl > 200 ? 200 : sl), head);
        return false;
    }
    bool upgrade = false, connection = false;
    const char *accept = NULL, *proto = NULL;
    size_t accept_len = 0, proto_len = 0;
    int n_accept = 0, n_proto = 0;
    for (const char *line = eol + 2; line < end; line = eol + 2) {
        eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (eol == line) /* the blank line */
            break;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon == NULL) {
            snprintf(why, whylen, "the server sent an invalid header line: %.*s",
                     (int)(eol - line > 200 ? 200 : eol - line), line);
            return false;
        }
        const char *v = colon + 1, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t name_len = (size_t)(colon - line), vlen = (size_t)(ve - v);
        if (ieq(line, name_len, "Upgrade")) {
            upgrade = upgrade || ieq(v, vlen, "websocket");
        } else if (ieq(line, name_len, "Connection")) {
            connection = connection || has_token(v, vlen, "upgrade");
        } else if (ieq(line, name_len, "Sec-WebSocket-Accept")) {
            accept = v, accept_len = vlen, n_accept++;
        } else if (ieq(line, name_len, "Sec-WebSocket-Protocol")) {
            proto = v, proto_len = vlen, n_proto++;
        }
    }
    if (!upgrade) {
        snprintf(why, whylen, "the server's response has no 'Upgrade: websocket'");
        return false;
    }
    if (!connection) {
        snprintf(why, whylen, "the server's response has no 'Connection: Upgrade'");
        return false;
    }
    char expected[64];
    uint8_t digest[20];
    char concat[64];
    size_t kl = strlen(c->key);
    memcpy(concat, c->key, kl);
    memcpy(concat + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    sha1((const uint8_t *)concat, kl + 36, digest);
    base64(digest, sizeof digest, expected);
    if (n_accept != 1 || accept_len != strlen(expected) || memcmp(accept, expected, accept_len)) {
        snprintf(why, whylen, "the server sent %s Sec-WebSocket-Accept",
                 n_accept == 0 ? "no" : n_accept > 1 ? "more than one" : "a wrong");
        return false;
    }
    size_t want = strlen(g_cfg.subprotocol);
    if (n_proto != 1 || proto_len != want || memcmp(proto, g_cfg.subprotocol, want) != 0) {
        if (n_proto == 0)
            snprintf(why, whylen, "the server chose no subprotocol, not '%s'", g_cfg.subprotocol);
        else if (n_proto > 1)
            snprintf(why, whylen, "the server chose more than one subprotocol, not '%s'",
                     g_cfg.subprotocol);
        else
            snprintf(why, whylen, "the server chose subprotocol '%.*s', not '%s'",
                     (int)(proto_len > 100 ? 100 : proto_len), proto, g_cfg.subprotocol);
        return false;
    }
    return true;
}

/* ST_HANDSHAKE: read the response head (at most MAX_HEAD bytes, kept whole in rbuf). */
static void handshake_readable(struct conn *c)
{
    if (c->rbuf == NULL) {
        c->rbuf = xrealloc(NULL, MAX_HEAD);
        c->rcap = MAX_HEAD;
    }
    ssize_t k = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
    if (k <= 0) {
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_lose(c, "the connection dropped during the opening handshake");
        return;
    }
    c->rlen += (size_t)k;
    /* Search only the new bytes (and the three before them) for the blank line. */
    size_t from = c->head_scanned > 3 ? c->head_scanned - 3 : 0;
    const uint8_t *blank = memmem(c->rbuf + from, c->rlen - from, "\r\n\r\n", 4);
    if (blank == NULL) {
        c->head_scanned = c->rlen;
        if (c->rlen == c->rcap)
            conn_lose(c, "the server's response head is over 16 KiB");
        return;
    }
    size_t head_len = (size_t)(blank - c->rbuf) + 4;
    char why[512];
    if (!check_response(c, (const char *)c->rbuf, head_len, why, sizeof why)) {
        conn_lose(c, why);
        return;
    }
    /* Upgraded: what follows the head is the start of the frame stream. */
    c->state = ST_HELLO;
    keep_rest(c, c->rbuf, c->rlen, head_len);
    send_hello(c);
    if (c->fd < 0 || c->rlen == 0)
        return;
    size_t used = parse_frames(c, c->rbuf, c->rlen);
    if (c->fd >= 0)
        keep_rest(c, c->rbuf, c->rlen, used);
}

/* One epoll event on a connection. */
static void conn_event(struct conn *c, uint32_t events)
{
    if (c->fd < 0) /* lost earlier in this batch */
        return;
    if (c->state == ST_CONNECTING) {
        conn_connected(c);
        return;
    }
    if (events & EPOLLOUT) {
        conn_flush(c);
        if (c->fd < 0)
            return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        conn_readable(c);
}

/* ============================================================================================
 * Phase 1: connect every client and say hello
 * ========================================================================================== */

static struct {
    uint32_t next;   /* the next client to start */
    uint32_t oldest; /* no client before it is still in progress */
    uint32_t in_progress, resolved, connected;
} g_p1;

static bool p1_in_progress(const struct conn *c)
{
    return c->state == ST_CONNECTING || c->state == ST_HANDSHAKE || c->state == ST_HELLO;
}

static void p1_failed(struct conn *c, const char *code, const char *why)
{
    c->state = ST_FAILED;
    g_p1.in_progress--;
    g_p1.resolved++;
    sb_str(&g_out, "{\"type\":\"failed\",\"client\":");
    sb_u64(&g_out, conn_index(c));
    sb_str(&g_out, ",\"code\":\"");
    sb_str(&g_out, code);
    sb_str(&g_out, "\",\"reason\":");
    sb_json(&g_out, why, strlen(why));
    sb_str(&g_out, "}");
    emit(NULL, 0);
}

/* ST_HELLO: skip pushes; the reply is the first message with rid 1, or an error with a null
 * rid (the server could not read the hello). */
static void hello_message(struct conn *c, const uint8_t *m, size_t n)
{
    struct head h;
    if (!parse_head(m, n, &h))
        return;
    if (h.rid_null ? !head_is_error(&h) : h.rid != 1)
        return;
    sb_str(&g_out, "{\"type\":\"hello_reply\",\"client\":");
    sb_u64(&g_out, conn_index(c));
    sb_str(&g_out, ",\"bytes\":");
    sb_u64(&g_out, n);
    sb_str(&g_out, "}");
    emit(m, n);
    c->state = ST_IDLE;
    c->got_hello = true;
    g_p1.in_progress--;
    g_p1.resolved++;
    g_p1.connected++;
}

static void p1_timeout(struct conn *c)
{
    char why[200];
    const char *doing = c->state == ST_CONNECTING ? "connecting"
                        : c->state == ST_HANDSHAKE ? "in the opening handshake"
                                                   : "waiting for the hello's reply";
    snprintf(why, sizeof why, "timed out after %g s %s", g_cfg.open_timeout_s, doing);
    if (c->state == ST_HELLO)
        send_close(c, 1000);
    conn_lose(c, why);
}

static void read_setup(void)
{
    char *argv[9];
    char *line = in_line();
    if (split(line, argv, 9) != 8 || strcmp(argv[0], "setup") != 0)
        fatal("expected 'setup <host> <port> <clients> <concurrency> <open_timeout_s> "
              "<text|binary> <kinds>'");
    if (strlen(argv[1]) >= sizeof g_cfg.host)
        fatal("the host name is too long");
    for (const char *s = argv[1]; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            fatal("the host name holds a control character");
    strcpy(g_cfg.host, argv[1]);
    snprintf(g_cfg.port, sizeof g_cfg.port, "%u", (unsigned)parse_uint(argv[2], 65535, "port"));
    g_cfg.clients = (uint32_t)parse_uint(argv[3], MAX_CLIENTS, "clients");
    g_cfg.concurrency = (uint32_t)parse_uint(argv[4], UINT32_MAX, "concurrency");
    if (g_cfg.concurrency == 0)
        fatal("bad concurrency: 0");
    g_cfg.open_timeout_s = parse_seconds(argv[5], "open_timeout_s");
    if (g_cfg.open_timeout_s <= 0)
        fatal("bad open_timeout_s: '%.64s'", argv[5]);
    g_cfg.open_timeout_ns = s_to_ns(g_cfg.open_timeout_s);
    if (strcmp(argv[6], "text") == 0)
        g_cfg.binary = false;
    else if (strcmp(argv[6], "binary") == 0)
        g_cfg.binary = true;
    else
        fatal("bad mode: '%.64s' (text or binary)", argv[6]);
    g_cfg.opcode = g_cfg.binary ? OP_BINARY : OP_TEXT;
    g_cfg.kinds = (unsigned)parse_uint(argv[7], MAX_KINDS, "kinds");
    if (g_cfg.kinds == 0)
        fatal("bad kinds: 0");
    /* An IPv6 literal is bracketed in the Host header. */
    bool v6 = strchr(g_cfg.host, ':') != NULL;
    snprintf(g_cfg.hostport, sizeof g_cfg.hostport, "%s%s%s:%s", v6 ? "[" : "", g_cfg.host,
             v6 ? "]" : "", g_cfg.port);

    g_cfg.path = read_header_blob("path");
    g_cfg.subprotocol = read_header_blob("subprotocol");
    g_cfg.origin = read_header_blob("origin");
    if (g_cfg.path[0] != '/')
        fatal("the path must start with '/'");

    g_conns = xcalloc(g_cfg.clients, sizeof *g_conns);
    size_t off = 0, cap = 0;
    for (uint32_t i = 0; i < g_cfg.clients; i++) {
        struct conn *c = &g_conns[i];
        c->fd = -1;
        line = in_line();
        if (split(line, argv, 3) != 2 || strcmp(argv[0], "hello") != 0)
            fatal("expected 'hello <n>' for client %u", i);
        size_t n = parse_uint(argv[1], MAX_MESSAGE, "hello length");
        const uint8_t *p = in_blob(n);
        if (cap - off < n) {
            cap = cap ? cap : 65536;
            while (cap - off < n)
                cap *= 2;
            g_hellos = xrealloc(g_hellos, cap);
        }
        if (n)
            memcpy(g_hellos + off, p, n);
        c->hello_off = off;
        c->hello_len = n;
        off += n;
    }
}

static void resolve(void)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(g_cfg.host, g_cfg.port, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(g_cfg.resolve_error, sizeof g_cfg.resolve_error, "cannot resolve %s: %s",
                 g_cfg.host, rc ? gai_strerror(rc) : "no address");
    } else {
        memcpy(&g_cfg.addr, res->ai_addr, res->ai_addrlen);
        g_cfg.addrlen = res->ai_addrlen;
    }
    if (res)
        freeaddrinfo(res);
}

/* The soft limit was raised to the hard one at start; if that is still too low for the
 * clients, try to raise both (only a privileged process can). */
static void fit_fd_limit(rlim_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
        return;
    struct rlimit more = {need, rl.rlim_max >= need ? rl.rlim_max : need};
    (void)setrlimit(RLIMIT_NOFILE, &more); /* else connects fail with EMFILE, one by one */
}

static void phase_connect(void)
{
    read_setup();
    fit_fd_limit((rlim_t)g_cfg.clients + 16);
    if (g_cfg.clients)
        resolve();
    for (;;) {
        /* Start clients in index order up to the concurrency (a start may fail at once). */
        while (g_p1.in_progress < g_cfg.concurrency && g_p1.next < g_cfg.clients) {
            g_p1.in_progress++;
            conn_start(&g_conns[g_p1.next++]);
        }
        if (g_p1.resolved == g_cfg.clients)
            break;
        /* Clients start in index order with the same timeout: the oldest one in progress
         * has the nearest deadline. */
        int64_t now = now_ns();
        while (g_p1.oldest < g_p1.next) {
            struct conn *c = &g_conns[g_p1.oldest];
            if (p1_in_progress(c) && c->deadline > now)
                break;
            if (p1_in_progress(c))
                p1_timeout(c);
            g_p1.oldest++;
        }
        if (g_p1.resolved == g_cfg.clients)
            break;
        if (g_p1.in_progress < g_cfg.concurrency && g_p1.next < g_cfg.clients)
            continue;
        loop_once(ms_until(g_conns[g_p1.oldest].deadline - now));
    }
    free(g_hellos);
    g_hellos = NULL;
    sb_str(&g_out, "{\"type\":\"connected\",\"clients\":");
    sb_u64(&g_out, g_p1.connected);
    sb_str(&g_out, "}");
    emit(NULL, 0);
}

/* ============================================================================================
 * Phase 2: plans
 * ========================================================================================== */

static struct conn *decided_client(const char *arg)
{
    uint32_t i = (uint32_t)parse_uint(arg, g_cfg.clients ? g_cfg.clients - 1 : 0, "client");
    struct conn *c = &g_conns[i];
    if (g_cfg.clients == 0 || !c->got_hello)
        fatal("client %u did not get a hello reply", i);
    if (c->decided)
        fatal("client %u already has a plan or was dropped", i);
    c->decided = true;
    return c;
}

/* "plan <i> <n>" then n "frame <kind> <prefix_len> <suffix_len>" + bytes, into one buffer
 * of 4-byte aligned records (struct plan_frame, prefix, suffix, padding). */
static void read_plan(struct conn *c, uint32_t nframes)
{
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    char *argv[5];
    for (uint32_t f = 0; f < nframes; f++) {
        char *line = in_line();
        if (split(line, argv, 5) != 4 || strcmp(argv[0], "frame") != 0)
            fatal("expected 'frame <kind> <prefix_len> <suffix_len>'");
        struct plan_frame fr;
        fr.kind = (uint32_t)parse_uint(argv[1], g_cfg.kinds - 1, "kind");
        fr.prefix_len = (uint32_t)parse_uint(argv[2], MAX_MESSAGE, "prefix length");
        fr.suffix_len = (uint32_t)parse_uint(argv[3], MAX_MESSAGE, "suffix length");
        size_t body = (size_t)fr.prefix_len + fr.suffix_len;
        if (body > MAX_MESSAGE)
            fatal("a frame over 16 MiB");
        size_t rec = sizeof fr + ((body + 3) & ~(size_t)3);
        if (cap - len < rec) {
            cap = cap ? cap : 256;
            while (cap - len < rec)
                cap *= 2;
            buf = xrealloc(buf, cap);
        }
        const uint8_t *p = in_blob(body);
        memcpy(buf + len, &fr, sizeof fr);
        if (body)
            memcpy(buf + len + sizeof fr, p, body);
        memset(buf + len + sizeof fr + body, 0, rec - sizeof fr - body);
        len += rec;
    }
    c->plan = xrealloc(buf, len); /* shrink to fit */
    c->plan_len = len;
    c->plan_pos = 0;
    c->next_rid = 2;
    c->planned = true;
}

static void phase_plans(void)
{
    char *argv[4];
    for (;;) {
        char *line = in_line();
        int argc = split(line, argv, 4);
        if (argc == 1 && strcmp(argv[0], "go") == 0)
            break;
        if (argc == 2 && strcmp(argv[0], "drop") == 0) {
            struct conn *c = decided_client(argv[1]);
            /* Close politely: the socket closes when the server's close frame comes (or
             * at the close phase's timeout). */
            c->state = ST_CLOSING;
            send_close(c, 1000);
        } else if (argc == 3 && strcmp(argv[0], "plan") == 0) {
            struct conn *c = decided_client(argv[1]);
            uint32_t n = (uint32_t)parse_uint(argv[2], MAX_FRAMES, "frame count");
            if (n == 0)
                fatal("a plan needs at least one frame");
            read_plan(c, n);
        } else {
            fatal("expected 'plan', 'drop' or 'go', got '%.64s'", argc > 0 ? argv[0] : "");
        }
    }
    g_planned = xcalloc(g_p1.connected, sizeof *g_planned);
    for (uint32_t i = 0; i < g_cfg.clients; i++) {
        struct conn *c = &g_conns[i];
        if (c->got_hello && !c->decided)
            fatal("'go' before a plan or a drop for client %u", i);
        if (c->planned)
            g_planned[g_nplanned++] = c;
    }
}

/* ============================================================================================
 * Phase 3: the run
 * ========================================================================================== */

static struct {
    bool over;
    int64_t drain_ns;
    /* closed loop */
    int64_t start, end;
    enum { AT_BEGIN, RUNNING, DRAINING } stage;
    uint32_t unfinished;
    /* open loop */
    int64_t begin;
    double rate, phase;
    uint64_t j, first, stop;
    uint32_t next_client; /* j % g_nplanned */
    uint64_t pending;     /* requests pending on every client */
    bool sending_done;
    int64_t max_lag;
} g_run;

/* The run is over: count what never came back, say so, and let the clients idle. */
static void run_over(void)
{
    if (g_run.over)
        return;
    g_run.over = true;
    g_on_timer = NULL;
    timer_disarm();
    uint64_t no_reply = 0;
    for (uint32_t i = 0; i < g_nplanned; i++) {
        struct conn *c = g_planned[i];
        if (c->outstanding && c->measured)
            no_reply++;
        c->outstanding = false;
        for (uint32_t k = 0; k < c->rcount; k++) {
            const struct pending *p = &c->ring[(c->rhead + k) & (c->ringcap - 1)];
            no_reply += p->measured && !p->answered;
        }
        c->rcount = c->live = 0;
        if (c->state == ST_CLOSED_RUN || c->state == ST_OPEN_RUN)
            c->state = ST_IDLE;
    }
    error_str("no_reply", no_reply);
    emit_stats();
    char line[64];
    snprintf(line, sizeof line, "{\"type\":\"run_done\",\"max_lag_s\":%.9f}",
             (double)g_run.max_lag / 1e9);
    sb_str(&g_out, line);
    emit(NULL, 0);
}

/* --- closed loop --------------------------------------------------------------------------- */

static void closed_finish(struct conn *c)
{
    if (c->finished)
        return;
    c->finished = true;
    if (--g_run.unfinished == 0 && g_run.stage == DRAINING)
        run_over();
}

static void closed_send(struct conn *c)
{
    int64_t now = now_ns();
    c->rid = c->next_rid;
    c->sent = now;
    c->measured = now >= g_run.start;
    c->outstanding = true;
    c->kind = plan_peek(c)->kind;
    send_request(c); /* may lose the connection: closed_lost counts it */
}

static void closed_message(struct conn *c, const uint8_t *m, size_t n)
{
    struct head h;
    if (!c->outstanding || !parse_head(m, n, &h) || h.rid_null || h.rid != c->rid)
        return;
    int64_t now = now_ns();
    c->outstanding = false;
    if (c->measured)
        record(&h, c->kind, now - c->sent, -1);
    if (now < g_run.end)
        closed_send(c);
    else
        closed_finish(c);
}

static void closed_lost(struct conn *c)
{
    if (c->outstanding && c->measured)
        error_str("connection_closed", 1);
    c->outstanding = false;
    if (g_run.stage != AT_BEGIN)
        closed_finish(c);
}

static void closed_timer(void)
{
    switch (g_run.stage) {
    case AT_BEGIN:
        g_run.stage = RUNNING;
        for (uint32_t i = 0; i < g_nplanned; i++) {
            struct conn *c = g_planned[i];
            c->state = ST_CLOSED_RUN;
            if (c->fd < 0) { /* lost before the run: finished already */
                c->finished = true;
                continue;
            }
            g_run.unfinished++;
            closed_send(c);
        }
        timer_arm(g_run.end);
        break;
    case RUNNING:
        g_run.stage = DRAINING;
        if (g_run.unfinished == 0)
            run_over();
        else
            timer_arm(g_run.end + g_run.drain_ns);
        break;
    case DRAINING:
        run_over();
        break;
    }
}

/* --- open loop ----------------------------------------------------------------------------- */

static int64_t intended(uint64_t j)
{
    return g_run.begin + s_to_ns(((double)j + g_run.phase) / g_run.rate);
}

static struct pending *ring_push(struct conn *c, uint64_t rid)
{
    if (c->rcount == c->ringcap) { /* grow, unrolling the ring to the front */
        uint32_t cap = c->ringcap ? 2 * c->ringcap : 8;
        struct pending *ring = xrealloc(NULL, cap * sizeof *ring);
        for (uint32_t k = 0; k < c->rcount; k++)
            ring[k] = c->ring[(c->rhead + k) & (c->ringcap - 1)];
        free(c->ring);
        c->ring = ring;
        c->ringcap = cap;
        c->rhead = 0;
    }
    if (c->rcount == 0)
        c->ring_rid = rid;
    struct pending *p = &c->ring[(c->rhead + c->rcount) & (c->ringcap - 1)];
    c->rcount++;
    c->live++;
    g_run.pending++;
    return p;
}

static void open_check_done(void)
{
    if (g_run.sending_done && g_run.pending == 0)
        run_over();
}

/* Op j, intended at `at`, on its client. */
static void open_op(uint64_t j, int64_t at, int64_t now)
{
    struct conn *c = NULL;
    if (g_nplanned) {
        c = g_planned[g_run.next_client];
        if (++g_run.next_client == g_nplanned)
            g_run.next_client = 0;
    }
    bool in_window = j >= g_run.first;
    if (in_window && now - at > g_run.max_lag)
        g_run.max_lag = now - at;
    if (c == NULL || c->fd < 0) {
        if (in_window)
            error_str("client_down", 1);
        return;
    }
    struct pending *p = ring_push(c, c->next_rid);
    p->timed_from = at < now ? at : now;
    p->sent = now;
    p->kind = plan_peek(c)->kind;
    p->measured = in_window;
    p->answered = false;
    send_request(c); /* may lose the connection: open_lost counts it */
}

static void open_timer(void)
{
    if (g_run.sending_done) { /* the drain's deadline */
        run_over();
        return;
    }
    while (g_run.j < g_run.stop) {
        int64_t at = intended(g_run.j), now = now_ns();
        if (at > now) {
            timer_arm(at);
            return;
        }
        open_op(g_run.j++, at, now);
    }
    g_run.sending_done = true;
    timer_arm(now_ns() + g_run.drain_ns);
    open_check_done();
}

static void open_message(struct conn *c, const uint8_t *m, size_t n)
{
    struct head h;
    if (c->live == 0 || !parse_head(m, n, &h) || h.rid_null)
        return;
    uint64_t off = h.rid - c->ring_rid; /* wraps to huge below ring_rid */
    if (off >= c->rcount)
        return;
    uint32_t mask = c->ringcap - 1;
    struct pending *p = &c->ring[(c->rhead + off) & mask];
    if (p->answered)
        return;
    int64_t now = now_ns();
    p->answered = true;
    c->live--;
    g_run.pending--;
    if (p->measured)
        record(&h, p->kind, now - p->timed_from, now - p->sent);
    while (c->rcount && c->ring[c->rhead].answered) {
        c->rhead = (c->rhead + 1) & mask;
        c->rcount--;
        c->ring_rid++;
    }
    open_check_done();
}

static void open_lost(struct conn *c)
{
    uint64_t lost = 0;
    for (uint32_t k = 0; k < c->rcount; k++) {
        const struct pending *p = &c->ring[(c->rhead + k) & (c->ringcap - 1)];
        lost += p->measured && !p->answered;
    }
    error_str("connection_closed", lost);
    g_run.pending -= c->live;
    c->rcount = c->live = 0;
    open_check_done();
}

/* --- the run ------------------------------------------------------------------------------- */

static void phase_run(void)
{
    char *argv[8];
    char *line = in_line();
    int argc = split(line, argv, 8);
    if (argc == 5 && strcmp(argv[0], "closed") == 0) {
        int64_t begin = s_to_ns(parse_seconds(argv[1], "begin"));
        g_run.start = s_to_ns(parse_seconds(argv[2], "start"));
        g_run.end = s_to_ns(parse_seconds(argv[3], "end"));
        double drain = parse_seconds(argv[4], "drain_timeout_s");
        if (drain < 0)
            fatal("bad drain_timeout_s: '%.64s'", argv[4]);
        g_run.drain_ns = s_to_ns(drain);
        g_run.stage = AT_BEGIN;
        g_on_timer = closed_timer;
        timer_arm(begin);
    } else if (argc == 7 && strcmp(argv[0], "open") == 0) {
        g_run.begin = s_to_ns(parse_seconds(argv[1], "begin"));
        g_run.rate = parse_seconds(argv[2], "rate");
        g_run.phase = parse_seconds(argv[3], "phase");
        g_run.first = parse_uint(argv[4], UINT64_MAX, "first_measured");
        g_run.stop = parse_uint(argv[5], UINT64_MAX, "stop");
        double drain = parse_seconds(argv[6], "drain_timeout_s");
        if (g_run.rate <= 0)
            fatal("bad rate: '%.64s'", argv[2]);
        if (g_run.phase < 0)
            fatal("bad phase: '%.64s'", argv[3]);
        if (drain < 0)
            fatal("bad drain_timeout_s: '%.64s'", argv[6]);
        g_run.drain_ns = s_to_ns(drain);
        for (uint32_t i = 0; i < g_nplanned; i++)
            g_planned[i]->state = ST_OPEN_RUN;
        g_on_timer = open_timer;
        timer_arm(g_run.stop ? intended(0) : g_run.begin);
    } else {
        fatal("expected 'closed <begin> <start> <end> <drain_timeout_s>' or 'open <begin> "
              "<rate> <phase> <first_measured> <stop> <drain_timeout_s>'");
    }
    g_rec.last_emit = INT64_MIN / 2;
    while (!g_run.over) {
        int timeout = -1;
        if (g_rec.dirty) {
            int64_t due = g_rec.last_emit + STATS_EVERY_NS, now = now_ns();
            if (now >= due)
                emit_stats();
            else
                timeout = ms_until(due - now);
        }
        loop_once(timeout);
    }
}

/* ============================================================================================
 * Phase 4: close
 * ========================================================================================== */

static void phase_close(void)
{
    char *argv[3];
    char *line = in_line();
    if (split(line, argv, 3) != 2 || strcmp(argv[0], "close") != 0)
        fatal("expected 'close <timeout_s>'");
    double timeout = parse_seconds(argv[1], "timeout_s");
    if (timeout < 0)
        fatal("bad timeout_s: '%.64s'", argv[1]);
    int64_t deadline = now_ns() + s_to_ns(timeout);
    for (uint32_t i = 0; i < g_cfg.clients; i++) {
        struct conn *c = &g_conns[i];
        if (c->fd >= 0) {
            c->state = ST_CLOSING;
            send_close(c, 1000); /* no-op for the dropped ones: theirs is sent */
        }
    }
    /* The server's close frame (or EOF) closes each socket: see on_close_frame. */
    for (int64_t now = now_ns(); g_nopen > 0 && now < deadline; now = now_ns())
        loop_once(ms_until(deadline - now));
    for (uint32_t i = 0; i < g_cfg.clients; i++)
        conn_close_fd(&g_conns[i]);
    sb_str(&g_out, "{\"type\":\"closed\"}");
    emit(NULL, 0);
}

/* ============================================================================================
 * main
 * ========================================================================================== */

static void setup_process(void)
{
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl); /* best effort: connects fail with EMFILE otherwise */
    }
    rng_seed();
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0)
        fatal("epoll_create1: %s", strerror(errno));
    g_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (g_tfd < 0)
        fatal("timerfd_create: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_TIMER};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, g_tfd, &ev) < 0)
        fatal("epoll_ctl: %s", strerror(errno));
    g_in.cap = 65536;
    g_in.buf = xrealloc(NULL, g_in.cap);
    g_rec.lat.counts = xcalloc(HIST_BUCKETS, sizeof(uint64_t));
    g_rec.svc.counts = xcalloc(HIST_BUCKETS, sizeof(uint64_t));
}

static void teardown(void)
{
    for (uint32_t i = 0; i < g_cfg.clients; i++) {
        free(g_conns[i].plan);
        free(g_conns[i].ring);
    }
    free(g_conns);
    free(g_planned);
    for (size_t i = 0; i < g_rec.nerrs; i++)
        free(g_rec.errs[i].code);
    free(g_rec.errs);
    free(g_rec.lat.counts);
    free(g_rec.svc.counts);
    free(g_cfg.path);
    free(g_cfg.subprotocol);
    free(g_cfg.origin);
    free(g_tx);
    free(g_out.p);
    free(g_req.p);
    free(g_in.buf);
    close(g_tfd);
    close(g_ep);
}

int main(void)
{
    setup_process();
    phase_connect();
    phase_plans();
    phase_run();
    phase_close();
    teardown();
    return 0;
}
