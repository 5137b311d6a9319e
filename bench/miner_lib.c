/* A stand-in for a miner that comes as a shared object, for bench/evasion.py: loaded into a process
   that is already known (LD_PRELOAD into a program's start, or dlopen by a compromised application),
   it mines on a thread of that process, so no new executable runs and no new process starts.

   When loaded, its constructor reads DDC_LIB_DUTY (percent of one core, 0 to 100; unset or 0: it
   does nothing, which is how the benchmark loads it as an ordinary plug-in) and DDC_LIB_SECONDS (how
   long, default 600), and starts one thread that hashes for DDC_LIB_DUTY % of every 100 ms. The thread
   stops by itself at the end, so nothing outlives a benchmark that died, or when the process calls
   ddc_lib_stop() (before it unloads the library: bench/evasion_app.py). It opens no connection: the
   scenarios that use it measure what the host's programs do with their CPU and the code they map.

   cc -O2 -shared -fPIC -pthread -o miner_lib.so miner_lib.c */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define PERIOD 0.1 /* seconds of one busy + idle cycle */

static double duty, lifetime = 600.0;
static volatile uint64_t sink; /* keeps the hashing from being optimised away */
static volatile int stopping;
static pthread_t thread;
static int running;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_for(double seconds) {
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
}

static void *mine(void *unused) {
    (void)unused;
    double end = now() + lifetime;
    uint64_t x = 88172645463325252ULL;
    while (!stopping && now() < end) {
        double busy_until = now() + PERIOD * duty;
        while (now() < busy_until) {
            for (int i = 0; i < 1000; i++) { /* xorshift: work that cannot be skipped */
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            sink = x;
        }
        if (duty < 1.0)
            pause_for(PERIOD * (1.0 - duty));
    }
    return NULL;
}

__attribute__((constructor)) static void start(void) {
    const char *text = getenv("DDC_LIB_DUTY");
    const char *seconds = getenv("DDC_LIB_SECONDS");
    duty = text ? atof(text) / 100.0 : 0.0;
    if (seconds && atof(seconds) > 0)
        lifetime = atof(seconds);
    if (!(duty > 0.0))
        return;
    if (duty > 1.0)
        duty = 1.0;
    running = pthread_create(&thread, NULL, mine, NULL) == 0;
}

/* Stop the thread and wait for it: the library may then be unloaded. */
void ddc_lib_stop(void) {
    stopping = 1;
    if (running)
        pthread_join(thread, NULL);
    running = 0;
}
