/* An engine across fork(), as php-fpm uses it: the parent builds an engine, its threads hold grants
 * and hammer the engine, and the main thread forks workers while they do. In every child:
 *
 *   - the handles made before the fork other than the engine (budgets, grants, attempts, reservations,
 *     level guards, whichever thread made them) are invalid: COSTGUARD_INVALID_HANDLE;
 *   - the engine admits up to the class's full concurrency limit: the parent's permits (one held by
 *     another thread, one by the forking thread) are not inherited; its counters start at zero;
 *   - nothing deadlocks, although other parent threads were inside costguard (reload, statistics,
 *     admission, attempts, name lookups) at the instant of the fork.
 *
 * A child reports through its exit status (0, or the number of the check that failed); alarm() bounds
 * it, so a deadlock fails the test (the child dies of SIGALRM) instead of hanging it. The parent checks
 * after every child that its own state is untouched.
 *
 * A child reports its result (0, or the number of the step that failed) through a pipe and its exit
 * status. Under valgrind, children are checked for invalid accesses (memcheck's error count must still
 * be 0 when the child is done, else it reports CHILD_MEMCHECK_ERRORS) but not for leaks: a child holds
 * copies of blocks that belonged to the parent's other threads (their calls in progress at the fork,
 * their thread-local state) and of the handles the library deliberately leaks there (never dropped, as
 * a drop could take a lock a parent thread held). Those are lost by the nature of fork(), so a child
 * under valgrind, once it has written its result, leaves by exec'ing a shell that exits with
 * it, which skips valgrind's exit-time leak check. The parent, which frees everything, is checked for leaks as strictly as the other tests.
 *
 * Environment: FORK_ROUNDS (default 200), FORK_CHILD_SECONDS (the child's alarm, default 10),
 * FORK_QUIESCE=1: the hammer threads step out of costguard before each fork (the holder thread keeps
 * charging its budget). For AddressSanitizer runs: older sanitizer runtimes (GCC 12's libasan among
 * them) take no lock around fork() in their own allocator, so a child forked while another thread is
 * inside malloc can deadlock in the sanitizer's allocator, whatever the program does (seen here: a
 * child stuck in __sanitizer::SizeClassAllocator64::GetFromAllocator). glibc's malloc, which the plain
 * and valgrind runs use, resets its locks in the child. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include "costguard.h"
#include "test_policy.h"
#include "test_util.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#define VALGRIND_COUNT_ERRORS 0
#endif

/* A child's exit status when memcheck found errors in it. */
#define CHILD_MEMCHECK_ERRORS 90

static costguard_engine engine;
static costguard_class parse_class, api_class;
static costguard_counter lookups;
static costguard_backend kafka;
static costguard_host kafka1;

/* Made by the holder thread, read (as plain values) by the children. */
static costguard_grant held_grant;
static costguard_budget held_budget;
static int holder_ready;
static int holder_release;
static int hammer_stop;
static unsigned long hammer_iterations[2];
static int pause_request;
static int paused;

static void *holder(void *arg) {
    (void)arg;
    costguard_admit_request r;
    memset(&r, 0, sizeof r);
    r.class_ = parse_class;
    r.request_id = "parent-holder";
    r.request_id_len = strlen(r.request_id);
    costguard_status s = costguard_admit(engine, &r, &held_grant, NULL);
    if (s != COSTGUARD_OK || costguard_grant_budget(held_grant, &held_budget) != COSTGUARD_OK) {
        fprintf(stderr, "holder: admit failed: %s\n", costguard_status_describe(s));
        exit(2);
    }
    __atomic_store_n(&holder_ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&holder_release, __ATOMIC_ACQUIRE)) {
        /* Keep using the budget while the parent forks. */
        (void)costguard_budget_charge(held_budget, lookups, 0, NULL);
        usleep(200);
    }
    OK(costguard_budget_free(held_budget));
    OK(costguard_grant_finish(held_grant, COSTGUARD_OUTCOME_SUCCESS));
    return NULL;
}

/* Two threads inside costguard all the time: cold paths with locks (reload, name lookups, statistics,
 * host choice) and the hot paths (admission, charges, attempts). */
static void *hammer(void *arg) {
    int which = (int)(intptr_t)arg;
    char small[64];
    char *big = malloc(1 << 16);
    size_t len;
    while (!__atomic_load_n(&hammer_stop, __ATOMIC_ACQUIRE)) {
        if (__atomic_load_n(&pause_request, __ATOMIC_ACQUIRE)) {
            __atomic_add_fetch(&paused, 1, __ATOMIC_ACQ_REL);
            while (__atomic_load_n(&pause_request, __ATOMIC_ACQUIRE)) {
                sched_yield();
            }
            __atomic_sub_fetch(&paused, 1, __ATOMIC_ACQ_REL);
        }
        costguard_counter c;
        costguard_class k;
        if (which == 0) {
            (void)costguard_engine_reload_from_str(engine, TEST_POLICY, strlen(TEST_POLICY), NULL);
            (void)costguard_engine_stats_json(engine, big, 1 << 16, &len);
            (void)costguard_engine_stats_prometheus(engine, big, 1 << 16, &len);
            (void)costguard_engine_counter(engine, S("db_queries"), &c);
            (void)costguard_engine_class(engine, S("batch"), &k);
            (void)costguard_engine_reload_from_str(engine, S("[classes.parse]\nwall_time = \"0s\"\n"), NULL);
            (void)costguard_last_error(small, sizeof small, &len);
        } else {
            costguard_admit_request r;
            memset(&r, 0, sizeof r);
            r.class_ = api_class;
            r.request_id = "hammer";
            r.request_id_len = 6;
            r.key = "user:hammer";
            r.key_len = 11;
            costguard_grant g = {0};
            costguard_budget b = {0};
            costguard_attempt a = {0};
            if (costguard_admit(engine, &r, &g, NULL) == COSTGUARD_OK) {
                if (costguard_grant_budget(g, &b) == COSTGUARD_OK) {
                    (void)costguard_budget_charge(b, lookups, 1, NULL);
                    if (costguard_attempt_begin(engine, kafka, b, 0, &a, NULL) == COSTGUARD_OK) {
                        (void)costguard_attempt_connected(a);
                        (void)costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SUCCESS, UINT64_MAX);
                    }
                    (void)costguard_budget_to_header(b, big, 1 << 16, &len);
                    (void)costguard_budget_report_json(b, big, 1 << 16, &len);
                    (void)costguard_budget_free(b);
                }
                (void)costguard_grant_finish(g, COSTGUARD_OUTCOME_SUCCESS);
            }
        }
        __atomic_add_fetch(&hammer_iterations[which], 1, __ATOMIC_RELAXED);
    }
    free(big);
    return NULL;
}

/* The child may not use stdio (a parent thread may have held its lock at the fork): messages go
 * straight to fd 2. */
static void child_say(const char *what, unsigned status) {
    char line[256];
    int n = snprintf(line, sizeof line, "fork child %ld: %s (status %u: %s)\n", (long)getpid(), what, status,
                     costguard_status_describe(status));
    if (n > 0) {
        ssize_t ignored = write(2, line, (size_t)n);
        (void)ignored;
    }
}

#define CHILD_EXPECT(step, call, want)                          \
    do {                                                        \
        unsigned got_ = (unsigned)(call);                       \
        if (got_ != (unsigned)(want)) {                         \
            child_say(#call, got_);                             \
            return (step);                                      \
        }                                                       \
    } while (0)

#define CHILD_CHECK(step, cond)                                 \
    do {                                                        \
        if (!(cond)) {                                          \
            child_say("check failed: " #cond, 0);               \
            return (step);                                      \
        }                                                       \
    } while (0)

/* Ends a child: writes its result to the pipe, then exits with it (or, under valgrind, ends itself
 * before the leak check; see the top of the file). */
static void child_finish(int fd, int code) {
    if (RUNNING_ON_VALGRIND && code == 0 && VALGRIND_COUNT_ERRORS != 0) {
        code = CHILD_MEMCHECK_ERRORS;
    }
    unsigned char byte = (unsigned char)code;
    ssize_t ignored = write(fd, &byte, 1);
    (void)ignored;
    if (RUNNING_ON_VALGRIND) {
        /* Valgrind runs its leak check at exit and on a fatal signal, not on exec (children are not
         * traced into other programs by default): leave through a shell that exits with the code. */
        char exit_code[32];
        snprintf(exit_code, sizeof exit_code, "exit %d", code);
        execl("/bin/sh", "sh", "-c", exit_code, (char *)NULL);
    }
    _exit(code);
}

/* Waits for a child; its result, or -1 when it died without one (a crash, or the alarm: a deadlock). */
static int child_result(pid_t pid, int fd, int *status) {
    unsigned char byte = 0;
    ssize_t n;
    do {
        n = read(fd, &byte, 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    while (waitpid(pid, status, 0) < 0) {
        if (errno != EINTR) {
            return -1;
        }
    }
    if (n != 1) {
        return -1;
    }
    if (WIFEXITED(*status) && WEXITSTATUS(*status) != byte) {
        return -1;
    }
    return byte;
}

struct pre_fork {
    costguard_budget budget;
    costguard_grant grant;
    costguard_reservation reservation;
    costguard_level_guard guard;
    costguard_attempt attempt;
};

static int in_child(const struct pre_fork *p) {
    costguard_verdict v;
    costguard_budget b2 = {0};
    uint64_t u = 0;

    /* 1. Handles from before the fork, made by this thread or the holder thread, are invalid. */
    CHILD_EXPECT(10, costguard_budget_charge(p->budget, lookups, 1, &v), COSTGUARD_INVALID_HANDLE);
    CHILD_EXPECT(11, costguard_budget_used(held_budget, lookups, &u), COSTGUARD_INVALID_HANDLE);
    CHILD_EXPECT(12, costguard_grant_budget(held_grant, &b2), COSTGUARD_INVALID_HANDLE);
    CHILD_EXPECT(13, costguard_grant_finish(held_grant, COSTGUARD_OUTCOME_SUCCESS), COSTGUARD_INVALID_HANDLE);
    CHILD_EXPECT(14, costguard_grant_free(p->grant), COSTGUARD_INVALID_HANDLE);
    CHILD_EXPECT(15, costguard_reservation_settle(p->reservation, 0, &v), COSTGUARD_INVALID_HANDLE);
    CHILD_EXPECT(16, costguard_level_guard_free(p->guard), COSTGUARD_INVALID_HANDLE);
    CHILD_EXPECT(17, costguard_attempt_connected(p->attempt), COSTGUARD_INVALID_HANDLE);
    CHILD_EXPECT(18, costguard_budget_free(p->budget), COSTGUARD_INVALID_HANDLE);

    /* 2. The engine works, as a fresh engine with the same policy. */
    CHILD_EXPECT(20, costguard_engine_generation(engine, &u), COSTGUARD_OK);
    costguard_admit_request r;
    memset(&r, 0, sizeof r);
    r.class_ = parse_class;
    r.request_id = "child";
    r.request_id_len = 5;
    costguard_grant g1 = {0}, g2 = {0}, g3 = {0};
    CHILD_EXPECT(21, costguard_admit(engine, &r, &g1, &v), COSTGUARD_OK);
    CHILD_EXPECT(22, costguard_admit(engine, &r, &g2, &v), COSTGUARD_OK); /* the full limit of 2 */
    CHILD_EXPECT(23, costguard_admit(engine, &r, &g3, &v), COSTGUARD_REFUSED);
    CHILD_CHECK(24, v.reason == COSTGUARD_REASON_CONCURRENCY_LIMIT && v.used == 2 && v.limit == 2);

    static char stats[1 << 16];
    size_t len = 0;
    CHILD_EXPECT(25, costguard_engine_stats_prometheus(engine, stats, sizeof stats, &len), COSTGUARD_OK);
    CHILD_CHECK(26, strstr(stats, "costguard_in_flight{class=\"parse\"} 2\n") != NULL);
    CHILD_CHECK(27, strstr(stats, "costguard_admitted_total{class=\"parse\"} 2\n") != NULL);
    CHILD_CHECK(28, strstr(stats, "costguard_in_flight{class=\"api\"} 0\n") != NULL);
    CHILD_CHECK(29, strstr(stats, "costguard_host_connecting{backend=\"kafka\",host=\"kafka1:9092\"} 0\n") != NULL);

    /* The connect permit the parent's attempt holds on kafka1 (cap 1) is not inherited either. */
    costguard_budget b = {0};
    costguard_attempt a = {0};
    CHILD_EXPECT(30, costguard_grant_budget(g1, &b), COSTGUARD_OK);
    CHILD_EXPECT(31, costguard_budget_charge(b, lookups, 500, &v), COSTGUARD_OK);
    CHILD_EXPECT(32, costguard_attempt_begin_on(engine, kafka1, b, 0, &a, &v), COSTGUARD_OK);
    CHILD_EXPECT(33, costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SUCCESS, UINT64_MAX), COSTGUARD_OK);

    /* Cold paths that take locks: reload (good and bad), name lookups, statistics, last error. */
    uint64_t gen = 0;
    CHILD_EXPECT(40, costguard_engine_reload_from_str(engine, TEST_POLICY, strlen(TEST_POLICY), &gen), COSTGUARD_OK);
    CHILD_EXPECT(41, costguard_engine_reload_from_str(engine, S("[classes.x]\nwall_time = \"0s\"\n"), NULL),
                 COSTGUARD_POLICY_ERROR);
    costguard_counter c;
    CHILD_EXPECT(42, costguard_engine_counter(engine, S("file_lookups"), &c), COSTGUARD_OK);
    CHILD_EXPECT(43, costguard_engine_stats_json(engine, stats, sizeof stats, &len), COSTGUARD_OK);
    CHILD_EXPECT(44, costguard_last_error(stats, sizeof stats, &len), COSTGUARD_OK);
    costguard_budget nb = {0};
    CHILD_EXPECT(45, costguard_budget_begin(engine, api_class, S("child-2"), NULL, 0, &nb, &v), COSTGUARD_OK);
    CHILD_EXPECT(46, costguard_budget_charge(nb, c, 50, &v), COSTGUARD_OK);
    CHILD_EXPECT(47, costguard_budget_charge(nb, c, 1, &v), COSTGUARD_REFUSED);

    /* A grandchild of the fork (a worker that forks again) gets a fresh engine too. */
    int pipefd[2];
    CHILD_CHECK(50, pipe(pipefd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        costguard_grant x = {0}, y = {0};
        int code = 0;
        if (costguard_grant_free(g1) != COSTGUARD_INVALID_HANDLE) {
            code = 51;
        } else if (costguard_admit(engine, &r, &x, &v) != COSTGUARD_OK || costguard_admit(engine, &r, &y, &v) != COSTGUARD_OK) {
            code = 52;
        } else if (costguard_grant_free(x) != COSTGUARD_OK || costguard_grant_free(y) != COSTGUARD_OK ||
                   costguard_engine_free(engine) != COSTGUARD_OK) {
            code = 53;
        }
        child_finish(pipefd[1], code);
    }
    close(pipefd[1]);
    CHILD_CHECK(54, pid > 0);
    int status = 0;
    int result = child_result(pid, pipefd[0], &status);
    if (result != 0) {
        child_say("the grandchild failed", (unsigned)result);
        return 55;
    }

    CHILD_EXPECT(60, costguard_budget_free(nb), COSTGUARD_OK);
    CHILD_EXPECT(61, costguard_budget_free(b), COSTGUARD_OK);
    CHILD_EXPECT(62, costguard_grant_finish(g1, COSTGUARD_OUTCOME_SUCCESS), COSTGUARD_OK);
    CHILD_EXPECT(63, costguard_grant_free(g2), COSTGUARD_OK);
    CHILD_EXPECT(64, costguard_engine_free(engine), COSTGUARD_OK);
    return 0;
}

static unsigned env_or(const char *name, unsigned fallback) {
    const char *v = getenv(name);
    return v && *v ? (unsigned)strtoul(v, NULL, 10) : fallback;
}

static bool prometheus_has(const char *needle) {
    static char stats[1 << 16];
    size_t len = 0;
    return costguard_engine_stats_prometheus(engine, stats, sizeof stats, &len) == COSTGUARD_OK &&
           strstr(stats, needle) != NULL;
}

int main(void) {
    unsigned rounds = env_or("FORK_ROUNDS", 200);
    unsigned child_seconds = env_or("FORK_CHILD_SECONDS", 10);
    bool quiesce = env_or("FORK_QUIESCE", 0) != 0;
    alarm(600); /* the whole test, in case the parent itself hangs */

    OK(costguard_engine_new_from_str(TEST_POLICY, strlen(TEST_POLICY), COSTGUARD_ENGINE_MANUAL_CLOCK, &engine));
    OK(costguard_engine_class(engine, S("parse"), &parse_class));
    OK(costguard_engine_class(engine, S("api"), &api_class));
    OK(costguard_engine_counter(engine, S("file_lookups"), &lookups));
    OK(costguard_engine_backend(engine, S("kafka"), &kafka));
    OK(costguard_engine_host(engine, kafka, S("kafka1:9092"), &kafka1));

    /* Handles of every kind, made by this (the forking) thread. */
    struct pre_fork p;
    memset(&p, 0, sizeof p);
    costguard_admit_request r;
    memset(&r, 0, sizeof r);
    r.class_ = parse_class;
    r.request_id = "parent-main";
    r.request_id_len = strlen(r.request_id);
    OK(costguard_admit(engine, &r, &p.grant, NULL));
    OK(costguard_grant_budget(p.grant, &p.budget));
    costguard_counter images;
    costguard_level depth;
    OK(costguard_engine_counter(engine, S("gallery_images"), &images));
    OK(costguard_engine_level(engine, S("nesting_depth"), &depth));
    OK(costguard_budget_reserve(p.budget, images, 10, &p.reservation, NULL));
    OK(costguard_budget_enter(p.budget, depth, 1, &p.guard, NULL));
    OK(costguard_attempt_begin_on(engine, kafka1, p.budget, 0, &p.attempt, NULL)); /* connecting */

    pthread_t holder_thread, hammer_threads[2];
    CHECK(pthread_create(&holder_thread, NULL, holder, NULL) == 0);
    while (!__atomic_load_n(&holder_ready, __ATOMIC_ACQUIRE)) {
        usleep(100);
    }
    for (int i = 0; i < 2; i++) {
        CHECK(pthread_create(&hammer_threads[i], NULL, hammer, (void *)(intptr_t)i) == 0);
    }
    while (__atomic_load_n(&hammer_iterations[0], __ATOMIC_RELAXED) < 2 ||
           __atomic_load_n(&hammer_iterations[1], __ATOMIC_RELAXED) < 2) {
        usleep(100);
    }
    CHECK(prometheus_has("costguard_in_flight{class=\"parse\"} 2\n"));

    unsigned deadlocks = 0, failed = 0;
    for (unsigned round = 0; round < rounds; round++) {
        fflush(stdout);
        fflush(stderr);
        int pipefd[2];
        if (pipe(pipefd) != 0) {
            perror("pipe");
            return 1;
        }
        if (quiesce) {
            __atomic_store_n(&pause_request, 1, __ATOMIC_RELEASE);
            while (__atomic_load_n(&paused, __ATOMIC_ACQUIRE) < 2) {
                sched_yield();
            }
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            close(pipefd[0]);
            alarm(child_seconds);
            child_finish(pipefd[1], in_child(&p));
        }
        close(pipefd[1]);
        __atomic_store_n(&pause_request, 0, __ATOMIC_RELEASE);
        int status = 0;
        int result = child_result(pid, pipefd[0], &status);
        if (result < 0) {
            if (WIFSIGNALED(status)) {
                fprintf(stderr, "round %u: child killed by signal %d%s\n", round, WTERMSIG(status),
                        WTERMSIG(status) == SIGALRM ? " (alarm: deadlocked or stuck)" : "");
                deadlocks += WTERMSIG(status) == SIGALRM;
            } else {
                fprintf(stderr, "round %u: child died without a result (status %#x)\n", round, status);
            }
            failed++;
        } else if (result == CHILD_MEMCHECK_ERRORS) {
            fprintf(stderr, "round %u: valgrind found errors in the child (above)\n", round);
            failed++;
        } else if (result != 0) {
            fprintf(stderr, "round %u: child failed at step %d\n", round, result);
            failed++;
        }
        /* Spread the forks over the hammer threads' operations. */
        usleep((useconds_t)(round * 37 % 500));
    }
    CHECK_U64(failed, 0);
    CHECK_U64(deadlocks, 0);

    /* The parent is untouched: its handles work, its permits are still held until released. */
    CHECK(prometheus_has("costguard_in_flight{class=\"parse\"} 2\n"));
    OK(costguard_budget_charge(p.budget, lookups, 1, NULL));
    __atomic_store_n(&hammer_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 2; i++) {
        pthread_join(hammer_threads[i], NULL);
    }
    __atomic_store_n(&holder_release, 1, __ATOMIC_RELEASE);
    pthread_join(holder_thread, NULL);
    OK(costguard_attempt_finish(p.attempt, COSTGUARD_ATTEMPT_SUCCESS, UINT64_MAX));
    OK(costguard_level_guard_free(p.guard));
    OK(costguard_reservation_settle(p.reservation, 10, NULL));
    OK(costguard_budget_free(p.budget));
    OK(costguard_grant_finish(p.grant, COSTGUARD_OUTCOME_SUCCESS));
    CHECK(prometheus_has("costguard_in_flight{class=\"parse\"} 0\n"));
    OK(costguard_engine_free(engine));

    printf("fork_test: %u forks while %s used the engine (%lu + %lu hammer iterations)\n", rounds,
           quiesce ? "1 thread (2 more paused at each fork)" : "3 threads",
           hammer_iterations[0], hammer_iterations[1]);
    return test_summary("fork_test");
}
