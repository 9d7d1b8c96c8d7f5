/*
 * Experiment only (bench/experiments/wake-cost): an LD_PRELOAD shim that makes a process poll
 * epoll without blocking for up to $SPIN_US microseconds before it blocks in epoll_wait.
 *
 * A process that is blocked in epoll_wait when a packet arrives on loopback is woken by the
 * sender's own system call, on the sender's CPU. While the receiver spins instead, the packet
 * only lands on its ready list. The shim lets the experiment remove that wake-up cost from the
 * load generator without changing either broker.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>

static int (*real_epoll_wait)(int, struct epoll_event *, int, int);
static int (*real_epoll_pwait)(int, struct epoll_event *, int, int, const sigset_t *);
static long spin_ns = -1;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void init(void) {
    if (spin_ns >= 0) return;
    const char *us = getenv("SPIN_US");
    real_epoll_wait = dlsym(RTLD_NEXT, "epoll_wait");
    real_epoll_pwait = dlsym(RTLD_NEXT, "epoll_pwait");
    spin_ns = us ? atol(us) * 1000L : 0;
}

int epoll_wait(int fd, struct epoll_event *events, int max, int timeout) {
    init();
    if (timeout != 0 && spin_ns > 0) {
        long end = now_ns() + spin_ns;
        do {
            int n = real_epoll_wait(fd, events, max, 0);
            if (n != 0) return n;
        } while (now_ns() < end);
    }
    return real_epoll_wait(fd, events, max, timeout);
}

int epoll_pwait(int fd, struct epoll_event *events, int max, int timeout, const sigset_t *mask) {
    init();
    if (timeout != 0 && spin_ns > 0) {
        long end = now_ns() + spin_ns;
        do {
            int n = real_epoll_pwait(fd, events, max, 0, mask);
            if (n != 0) return n;
        } while (now_ns() < end);
    }
    return real_epoll_pwait(fd, events, max, timeout, mask);
}
