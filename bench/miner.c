/* A stand-in CPU miner for bench/evasion.py.

   Burns CPU on -t threads at --duty percent of each (100 ms periods) and keeps a stratum-like TCP
   connection to its pool: mining.subscribe and mining.authorize when it connects, a mining.submit JSON
   line every 3 s, replies read and dropped. The pool comes from -o (host:port, with or without a
   stratum+tcp:// prefix) or from the "url" of a JSON config file (-c, as xmrig's config.json), and is
   reached directly or through an HTTP CONNECT proxy (-x host:port). Addresses are numeric IPv4 only:
   it refuses (exit 2) any pool or proxy address outside --allow (a CIDR) and 127.0.0.0/8, before
   connecting. It exits by itself after --seconds, so nothing outlives a benchmark that died.

   --on S --off S: mine (CPU and connection) S seconds, then idle and disconnected S seconds, repeated.
   --connect S --every S: connected only the first S seconds of every S seconds.
   --name N: the process name (prctl PR_SET_NAME); argv[0] is the launcher's choice. --nice N.
   Prints "connected" on stdout at each connection. -u and -p are accepted and ignored, as xmrig's.

   cc -O2 -pthread -o miner miner.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PERIOD 0.1       /* seconds of one busy + idle cycle */
#define SUBMIT_EVERY 3.0 /* seconds between two mining.submit lines */

struct endpoint {
    char host[64];
    int port;
    struct sockaddr_in addr;
};

static double duty = 1.0, on_s, off_s, connect_s, every_s, lifetime = 600.0, started;
static uint32_t allow_net, allow_mask;
static volatile uint64_t sink; /* keeps the hashing from being optimised away */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_for(double seconds) {
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
}

/* Seconds since start, modulo a cycle length (0: no cycle). */
static double phase(double t, double cycle) {
    long long ms = (long long)((t - started) * 1000.0), cycle_ms = (long long)(cycle * 1000.0);
    return cycle_ms > 0 ? (double)(ms % cycle_ms) / 1000.0 : 0.0;
}

static int mining(double t) { return on_s <= 0 || phase(t, on_s + off_s) < on_s; }

static int wants_connection(double t) { return mining(t) && (every_s <= 0 || phase(t, every_s) < connect_s); }

static void *burn(void *arg) {
    uint64_t h = (uint64_t)(uintptr_t)arg + 0x9e3779b97f4a7c15ULL;
    for (;;) {
        double t = now();
        if (!mining(t)) {
            pause_for(PERIOD);
            continue;
        }
        while (now() - t < PERIOD * duty)
            for (int i = 0; i < 20000; i++) h = (h ^ (h >> 29)) * 0xbf58476d1ce4e5b9ULL + (uint64_t)i;
        sink = h;
        double rest = PERIOD - (now() - t);
        if (rest > 0) pause_for(rest);
    }
    return NULL;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "miner: %s: %s\n", what, detail);
    exit(2);
}

/* host:port, after an optional scheme:// prefix; numeric IPv4 inside the allowed network only. */
static void parse_endpoint(const char *text, struct endpoint *out) {
    const char *scheme = strstr(text, "://");
    const char *rest = scheme ? scheme + 3 : text;
    const char *colon = strrchr(rest, ':');
    size_t length = colon ? (size_t)(colon - rest) : 0;
    if (!colon || length == 0 || length >= sizeof out->host) die("not host:port", text);
    memcpy(out->host, rest, length);
    out->host[length] = '\0';
    out->port = atoi(colon + 1);
    if (out->port <= 0 || out->port > 65535) die("bad port", text);
    memset(&out->addr, 0, sizeof out->addr);
    out->addr.sin_family = AF_INET;
    out->addr.sin_port = htons((uint16_t)out->port);
    if (inet_pton(AF_INET, out->host, &out->addr.sin_addr) != 1) die("not a numeric IPv4 address", out->host);
    uint32_t ip = ntohl(out->addr.sin_addr.s_addr);
    if ((ip >> 24) != 127 && (allow_mask == 0 || (ip & allow_mask) != allow_net))
        die("refused: outside the allowed network and loopback", out->host);
}

static void parse_allow(const char *cidr) {
    char net[32];
    const char *slash = strchr(cidr, '/');
    size_t length = slash ? (size_t)(slash - cidr) : 0;
    int bits = slash ? atoi(slash + 1) : -1;
    struct in_addr addr;
    if (!slash || length >= sizeof net || bits < 1 || bits > 32) die("bad --allow", cidr);
    memcpy(net, cidr, length);
    net[length] = '\0';
    if (inet_pton(AF_INET, net, &addr) != 1) die("bad --allow", cidr);
    allow_mask = bits == 32 ? 0xffffffffU : ~(0xffffffffU >> bits);
    allow_net = ntohl(addr.s_addr) & allow_mask;
}

/* The first "url": "..." value of a JSON config file. */
static void url_from_config(const char *path, char *url, size_t size) {
    static char text[65536];
    FILE *file = fopen(path, "r");
    if (!file) die("cannot read the config file", path);
    size_t n = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[n] = '\0';
    char *key = strstr(text, "\"url\"");
    char *open = key ? strchr(key + 5, '"') : NULL;
    char *close = open ? strchr(open + 1, '"') : NULL;
    if (!close || (size_t)(close - open) >= size) die("no \"url\" in the config file", path);
    memcpy(url, open + 1, (size_t)(close - open - 1));
    url[close - open - 1] = '\0';
}

static int send_line(int fd, const char *line) {
    size_t length = strlen(line);
    return send(fd, line, length, MSG_NOSIGNAL) == (ssize_t)length ? 0 : -1;
}

static int open_connection(const struct endpoint *pool, const struct endpoint *proxy) {
    const struct endpoint *first = proxy ? proxy : pool;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval timeout = {2, 0};
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    if (connect(fd, (const struct sockaddr *)&first->addr, sizeof first->addr) != 0) {
        close(fd);
        return -1;
    }
    if (proxy) {
        char request[256], answer[1024];
        size_t got = 0;
        snprintf(request, sizeof request, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", pool->host, pool->port,
                 pool->host, pool->port);
        if (send_line(fd, request) != 0) goto fail;
        while (got < sizeof answer - 1) { /* byte by byte: nothing of the pool's stream is read here */
            if (recv(fd, answer + got, 1, 0) != 1) goto fail;
            answer[++got] = '\0';
            if (got >= 4 && strcmp(answer + got - 4, "\r\n\r\n") == 0) break;
        }
        if (strncmp(answer, "HTTP/1.1 200", 12) != 0 && strncmp(answer, "HTTP/1.0 200", 12) != 0) goto fail;
    }
    return fd;
fail:
    close(fd);
    return -1;
}

int main(int argc, char **argv) {
    static const struct option options[] = {
        {"url", required_argument, 0, 'o'},     {"config", required_argument, 0, 'c'},
        {"proxy", required_argument, 0, 'x'},   {"threads", required_argument, 0, 't'},
        {"user", required_argument, 0, 'u'},    {"pass", required_argument, 0, 'p'},
        {"duty", required_argument, 0, 'd'},    {"on", required_argument, 0, 1},
        {"off", required_argument, 0, 2},       {"connect", required_argument, 0, 3},
        {"every", required_argument, 0, 4},     {"seconds", required_argument, 0, 5},
        {"name", required_argument, 0, 6},      {"nice", required_argument, 0, 7},
        {"allow", required_argument, 0, 8},     {0, 0, 0, 0},
    };
    const char *url = NULL, *config = NULL, *proxy_text = NULL;
    char config_url[256];
    int threads = 1, option;
    started = now();
    while ((option = getopt_long(argc, argv, "o:c:x:t:u:p:d:", options, NULL)) != -1) {
        switch (option) {
        case 'o': url = optarg; break;
        case 'c': config = optarg; break;
        case 'x': proxy_text = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'u': case 'p': break;
        case 'd': duty = atof(optarg) / 100.0; break;
        case 1: on_s = atof(optarg); break;
        case 2: off_s = atof(optarg); break;
        case 3: connect_s = atof(optarg); break;
        case 4: every_s = atof(optarg); break;
        case 5: lifetime = atof(optarg); break;
        case 6: prctl(PR_SET_NAME, optarg, 0, 0, 0); break;
        case 7: setpriority(PRIO_PROCESS, 0, atoi(optarg)); break;
        case 8: parse_allow(optarg); break;
        default: die("usage", "see the comment at the top of miner.c"); /* getopt printed what is wrong */
        }
    }
    if (config) {
        url_from_config(config, config_url, sizeof config_url);
        url = config_url;
    }
    if (!url) die("usage", "a pool is needed: -o host:port or -c config.json");
    if (duty <= 0 || duty > 1 || threads < 1 || threads > 64) die("usage", "--duty 1..100, -t 1..64");
    struct endpoint pool, proxy;
    parse_endpoint(url, &pool);
    if (proxy_text) parse_endpoint(proxy_text, &proxy);

    for (int i = 0; i < threads; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, burn, (void *)(uintptr_t)i) != 0) die("pthread_create", "failed");
        pthread_detach(thread);
    }
    int fd = -1, sent = 0;
    double last_send = 0, retry_at = 0;
    char line[256];
    while (now() - started < lifetime) {
        double t = now();
        if (fd >= 0 && !wants_connection(t)) {
            close(fd);
            fd = -1;
        } else if (fd < 0 && wants_connection(t) && t >= retry_at) {
            fd = open_connection(&pool, proxy_text ? &proxy : NULL);
            if (fd < 0) {
                retry_at = t + 1.0;
            } else if (send_line(fd, "{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"cpuminer/2.5.1\"]}\n") ||
                       send_line(fd, "{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"wallet\",\"x\"]}\n")) {
                close(fd);
                fd = -1;
            } else {
                printf("connected\n");
                fflush(stdout);
                last_send = t;
            }
        }
        if (fd >= 0 && t - last_send >= SUBMIT_EVERY) {
            snprintf(line, sizeof line,
                     "{\"id\":%d,\"method\":\"mining.submit\",\"params\":[\"wallet\",\"job-1\",\"%08x\",\"%016llx\"]}\n",
                     sent + 3, (unsigned)sent, (unsigned long long)sink);
            sent++;
            last_send = t;
            if (send_line(fd, line) != 0) {
                close(fd);
                fd = -1;
            }
        }
        if (fd < 0) {
            pause_for(PERIOD);
            continue;
        }
        struct pollfd ready = {fd, POLLIN, 0};
        if (poll(&ready, 1, (int)(PERIOD * 1000)) > 0) {
            char reply[4096];
            if (recv(fd, reply, sizeof reply, 0) <= 0) { /* the pool closed: connect again later */
                close(fd);
                fd = -1;
                retry_at = t + 1.0;
            }
        }
    }
    return 0;
}
