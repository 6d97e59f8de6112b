/* The C ABI against its contract (ffi/API.md): every exported function, its statuses, its outputs,
 * refusals with every verdict field, the buffer-too-small protocol, failed reloads that keep the old
 * policy, and invalid handles (the null handle, double free, use after free, a handle of another kind
 * or another engine, made-up values), which must return a status, never crash.
 *
 * Engines run on a manual clock (COSTGUARD_ENGINE_MANUAL_CLOCK), so times are exact. Build with
 * -DCOSTGUARD_TEST_FAULTS against a library built with the fault-injection feature to add the
 * panic-boundary tests. Usage: api_test [SCRATCH_DIR] (for the policy files it writes; default /tmp). */
#define _POSIX_C_SOURCE 200809L

#include "costguard.h"
#include "test_policy.h"
#include "test_util.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *scratch_dir = "/tmp";

/* ------------------------------------------------------------------------------------------------ */
/* Helpers */

static costguard_engine new_engine(void) {
    costguard_engine e = {0};
    OK(costguard_engine_new_from_str(TEST_POLICY, strlen(TEST_POLICY), COSTGUARD_ENGINE_MANUAL_CLOCK, &e));
    return e;
}

static costguard_counter counter(costguard_engine e, const char *name) {
    costguard_counter c = {0};
    OK(costguard_engine_counter(e, name, strlen(name), &c));
    return c;
}

static costguard_level level(costguard_engine e, const char *name) {
    costguard_level l = {0};
    OK(costguard_engine_level(e, name, strlen(name), &l));
    return l;
}

static costguard_class class_(costguard_engine e, const char *name) {
    costguard_class c = {0};
    OK(costguard_engine_class(e, name, strlen(name), &c));
    return c;
}

static costguard_backend backend(costguard_engine e, const char *name) {
    costguard_backend b = {0};
    OK(costguard_engine_backend(e, name, strlen(name), &b));
    return b;
}

static costguard_budget begin(costguard_engine e, const char *cls, const char *id) {
    costguard_budget b = {0};
    OK(costguard_budget_begin(e, class_(e, cls), id, strlen(id), NULL, 0, &b, NULL));
    return b;
}

static uint64_t used(costguard_budget b, costguard_counter c) {
    uint64_t out = UINT64_MAX - 1;
    OK(costguard_budget_used(b, c, &out));
    return out;
}

static uint64_t remaining_of(costguard_budget b, costguard_counter c) {
    uint64_t out = 0;
    OK(costguard_budget_remaining_of(b, c, &out));
    return out;
}

static uint64_t level_of(costguard_budget b, costguard_level l) {
    uint64_t out = UINT64_MAX - 1;
    OK(costguard_budget_level(b, l, &out));
    return out;
}

/* A verdict full of a byte pattern: "outputs only on success" means it stays so on OK. */
static void poison(costguard_verdict *v) { memset(v, 0xA5, sizeof *v); }

static bool poisoned(const costguard_verdict *v) {
    const unsigned char *p = (const unsigned char *)v;
    for (size_t i = 0; i < sizeof *v; i++) {
        if (p[i] != 0xA5) {
            return false;
        }
    }
    return true;
}

/* The text of a caller-buffer function, into a malloc'd string the caller frees (NULL on failure). */
typedef costguard_status (*budget_text_fn)(costguard_budget, char *, size_t, size_t *);
typedef costguard_status (*engine_text_fn)(costguard_engine, char *, size_t, size_t *);

static char *budget_text(budget_text_fn fn, costguard_budget b) {
    size_t need = 0;
    EXPECT(fn(b, NULL, 0, &need), COSTGUARD_BUFFER_TOO_SMALL);
    if (need == 0) {
        return NULL;
    }
    char *buf = malloc(need);
    size_t len = 0;
    OK(fn(b, buf, need, &len));
    CHECK(len + 1 == need);
    return buf;
}

static char *engine_text(engine_text_fn fn, costguard_engine e) {
    size_t need = 0;
    EXPECT(fn(e, NULL, 0, &need), COSTGUARD_BUFFER_TOO_SMALL);
    if (need == 0) {
        return NULL;
    }
    char *buf = malloc(need + 4096); /* statistics may grow between the two calls */
    size_t len = 0;
    OK(fn(e, buf, need + 4096, &len));
    return buf;
}

static char *verdict_text(const costguard_verdict *v) {
    static char buf[512];
    size_t len = 0;
    buf[0] = '\0';
    OK(costguard_verdict_describe(v, buf, sizeof buf, &len));
    CHECK(len == strlen(buf));
    return buf;
}

static char *last_error_text(void) {
    static char buf[4096];
    size_t len = 0;
    buf[0] = '\0';
    OK(costguard_last_error(buf, sizeof buf, &len));
    return buf;
}

static char *write_file(const char *name, const char *text) {
    static char paths[4][512];
    static int next;
    char *path = paths[next++ % 4];
    snprintf(path, sizeof paths[0], "%s/costguard_api_test_%ld_%s", scratch_dir, (long)getpid(), name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return path;
}

/* ------------------------------------------------------------------------------------------------ */

static void test_statics(void) {
    CHECK_STR(costguard_version(), "0.1.0");
    CHECK_U64(costguard_abi_version(), 2);

    const char *seen[12];
    for (uint32_t s = 0; s <= 11; s++) {
        seen[s] = costguard_status_describe(s);
        CHECK(seen[s] != NULL && seen[s][0] != '\0');
        for (uint32_t t = 0; t < s; t++) {
            CHECK(seen[s] == NULL || seen[t] == NULL || strcmp(seen[s], seen[t]) != 0);
        }
    }
    CHECK_STR(costguard_status_describe(12), "unknown status");
    CHECK_STR(costguard_status_describe(UINT32_MAX), "unknown status");

    static const char *const reasons[] = {
        "limit_exceeded",   "cannot_fit",     "deadline_exceeded", "insufficient_time", "cancelled",
        "too_deep",         "unknown_class",  "concurrency_limit", "shed",              "key_concurrency",
        "rate_limited",     "pool_exhausted", "queue_full",        "queue_timeout",     "key_too_long",
        "circuit_open",     "bulkhead_full",  "connect_limit",     "no_healthy_host",   "retry_budget_exhausted",
        "not_retryable",
    };
    for (uint32_t r = 0; r < sizeof reasons / sizeof reasons[0]; r++) {
        CHECK_STR(costguard_reason_name(r), reasons[r]);
    }
    CHECK_U64(COSTGUARD_REASON_LIMIT_EXCEEDED, 0);
    CHECK_U64(COSTGUARD_REASON_CONCURRENCY_LIMIT, 7);
    CHECK_U64(COSTGUARD_REASON_NOT_RETRYABLE, 20);
    CHECK_STR(costguard_reason_name(21), "unknown");
    CHECK_STR(costguard_reason_name(UINT32_MAX), "unknown");

    /* No error yet on this thread: "". */
    char buf[8] = "xxxxxxx";
    size_t len = 99;
    OK(costguard_last_error(buf, sizeof buf, &len));
    CHECK_U64(len, 0);
    CHECK_STR(buf, "");
    EXPECT(costguard_last_error(buf, sizeof buf, NULL), COSTGUARD_NULL_ARGUMENT);
}

static void test_engine_new(void) {
    costguard_engine e = {0x1234};

    /* Invalid policies: every problem, with line and column, in last_error; out untouched. */
    static const char bad[] = "[dimensions]\nfile_lookups = \"counter\"\n[classes.parse]\n"
                              "wall_time = \"30 seconds\"\nlimits = { file_lookups = -5 }\n";
    EXPECT(costguard_engine_new_from_str(S(bad), 0, &e), COSTGUARD_POLICY_ERROR);
    CHECK_U64(e.bits, 0x1234);
    const char *err = last_error_text();
    CHECK_CONTAINS(err, "classes.parse.wall_time");
    CHECK_CONTAINS(err, "4:");
    CHECK_CONTAINS(err, "file_lookups");
    EXPECT(costguard_engine_new_from_str(S("this is not toml ["), 0, &e), COSTGUARD_POLICY_ERROR);
    EXPECT(costguard_engine_new_from_str(S("\xff\xfe"), 0, &e), COSTGUARD_INVALID_UTF8);
    EXPECT(costguard_engine_new_from_str(NULL, 10, 0, &e), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_new_from_str(TEST_POLICY, strlen(TEST_POLICY), 0, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_new_from_str(TEST_POLICY, strlen(TEST_POLICY), 0x80, &e), COSTGUARD_INVALID_ARGUMENT);
    CHECK_U64(e.bits, 0x1234);

    /* From files. */
    const char *good = write_file("good.toml", TEST_POLICY);
    OK(costguard_engine_new_from_file(good, strlen(good), COSTGUARD_ENGINE_MANUAL_CLOCK, &e));
    CHECK(e.bits != 0 && e.bits != 0x1234);
    OK(costguard_engine_free(e));

    costguard_engine f = {0};
    const char *badfile = write_file("bad.toml", bad);
    EXPECT(costguard_engine_new_from_file(badfile, strlen(badfile), 0, &f), COSTGUARD_POLICY_ERROR);
    CHECK_CONTAINS(last_error_text(), "bad.toml:4:");
    EXPECT(costguard_engine_new_from_file(S("/nonexistent/costguard/policy.toml"), 0, &f), COSTGUARD_IO_ERROR);
    CHECK(last_error_text()[0] != '\0');
    EXPECT(costguard_engine_new_from_file(NULL, 3, 0, &f), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_new_from_file(S("\xc3\x28"), 0, &f), COSTGUARD_INVALID_UTF8);
    CHECK_U64(f.bits, 0);
    unlink(good);
    unlink(badfile);

    /* A real-clock engine: advancing its clock is refused. */
    costguard_engine real = {0};
    OK(costguard_engine_new_from_str(TEST_POLICY, strlen(TEST_POLICY), 0, &real));
    EXPECT(costguard_engine_advance_clock(real, 1000), COSTGUARD_INVALID_ARGUMENT);
    costguard_budget b = begin(real, "batch", "real-1");
    uint64_t ns = 0;
    OK(costguard_budget_remaining_ns(b, &ns));
    CHECK_U64(ns, UINT64_MAX); /* wall_time = "none" */
    OK(costguard_budget_free(b));
    OK(costguard_engine_free(real));
}

static void test_reload(void) {
    costguard_engine e = new_engine();
    costguard_counter lookups = counter(e, "file_lookups");
    costguard_class parse = class_(e, "parse");
    uint64_t g0 = 0, g = 0;
    OK(costguard_engine_generation(e, &g0));
    CHECK_U64(g0, 1);
    EXPECT(costguard_engine_generation(e, NULL), COSTGUARD_NULL_ARGUMENT);

    costguard_budget before = begin(e, "parse", "before-reload");

    /* A good reload: file_lookups 500 -> 400 for budgets started from now on. */
    char *tighter = strdup(TEST_POLICY);
    char *at = strstr(tighter, "file_lookups = 500");
    CHECK(at != NULL);
    if (at) {
        memcpy(at, "file_lookups = 400", 18);
    }
    OK(costguard_engine_reload_from_str(e, tighter, strlen(tighter), &g));
    CHECK_U64(g, g0 + 1);
    OK(costguard_engine_generation(e, &g));
    CHECK_U64(g, g0 + 1);
    costguard_budget after = begin(e, "parse", "after-reload");
    CHECK_U64(remaining_of(after, lookups), 400);
    CHECK_U64(remaining_of(before, lookups), 500); /* running budgets keep their policy */

    /* Failed reloads keep the old policy and generation: invalid, incompatible (a counter turned into
     * a level), unreadable, not UTF-8. */
    g = 12345;
    EXPECT(costguard_engine_reload_from_str(e, S("[classes.parse]\nwall_time = \"0s\"\n"), &g), COSTGUARD_POLICY_ERROR);
    CHECK_U64(g, 12345);
    CHECK_CONTAINS(last_error_text(), "wall_time");
    char *incompatible = strdup(TEST_POLICY);
    at = strstr(incompatible, "file_lookups   = \"counter\"");
    CHECK(at != NULL);
    if (at) {
        memcpy(at, "file_lookups   = \"level\"  ", 26);
    }
    EXPECT(costguard_engine_reload_from_str(e, incompatible, strlen(incompatible), NULL), COSTGUARD_POLICY_ERROR);
    EXPECT(costguard_engine_reload_from_str(e, S("\x80"), NULL), COSTGUARD_INVALID_UTF8);
    EXPECT(costguard_engine_reload_from_file(e, S("/nonexistent/policy.toml"), NULL), COSTGUARD_IO_ERROR);
    const char *badfile = write_file("reload_bad.toml", "[dimensions]\nx = \"gauge\"\n");
    EXPECT(costguard_engine_reload_from_file(e, badfile, strlen(badfile), NULL), COSTGUARD_POLICY_ERROR);
    CHECK_CONTAINS(last_error_text(), "reload_bad.toml:2");
    OK(costguard_engine_generation(e, &g));
    CHECK_U64(g, g0 + 1);
    costguard_budget still = {0};
    OK(costguard_budget_begin(e, parse, S("still"), NULL, 0, &still, NULL));
    CHECK_U64(remaining_of(still, lookups), 400);

    /* Reload from a file (generation out is nullable); names stay valid across reloads. */
    const char *good = write_file("reload_good.toml", TEST_POLICY);
    OK(costguard_engine_reload_from_file(e, good, strlen(good), NULL));
    OK(costguard_engine_generation(e, &g));
    CHECK_U64(g, g0 + 2);
    costguard_budget third = {0};
    OK(costguard_budget_begin(e, parse, S("third"), NULL, 0, &third, NULL));
    CHECK_U64(remaining_of(third, lookups), 500);
    OK(costguard_budget_charge(third, lookups, 7, NULL));
    CHECK_U64(used(third, lookups), 7);

    EXPECT(costguard_engine_reload_from_str(e, NULL, 5, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_reload_from_file(e, NULL, 5, NULL), COSTGUARD_NULL_ARGUMENT);

    unlink(badfile);
    unlink(good);
    free(tighter);
    free(incompatible);
    OK(costguard_budget_free(before));
    OK(costguard_budget_free(after));
    OK(costguard_budget_free(still));
    OK(costguard_budget_free(third));
    OK(costguard_engine_free(e));
}

static void test_names_and_stats(void) {
    costguard_engine e = new_engine();
    costguard_counter c = {0x77};
    costguard_level l = {0x77};
    costguard_class k = {0x77};
    costguard_backend b = {0x77};
    costguard_host h = {0x77};

    EXPECT(costguard_engine_counter(e, S("no_such_counter"), &c), COSTGUARD_UNKNOWN_NAME);
    EXPECT(costguard_engine_level(e, S("no_such_level"), &l), COSTGUARD_UNKNOWN_NAME);
    EXPECT(costguard_engine_class(e, S("no_such_class"), &k), COSTGUARD_UNKNOWN_NAME);
    EXPECT(costguard_engine_backend(e, S("no_such_backend"), &b), COSTGUARD_UNKNOWN_NAME);
    CHECK(c.bits == 0x77 && l.bits == 0x77 && k.bits == 0x77 && b.bits == 0x77);
    /* A name of the wrong kind is not that kind. */
    CHECK(costguard_engine_counter(e, S("nesting_depth"), &c) != COSTGUARD_OK);
    CHECK(costguard_engine_level(e, S("file_lookups"), &l) != COSTGUARD_OK);
    EXPECT(costguard_engine_counter(e, S("\xff"), &c), COSTGUARD_INVALID_UTF8);
    EXPECT(costguard_engine_counter(e, NULL, 3, &c), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_counter(e, S("file_lookups"), NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_class(e, S("parse"), NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_level(e, S("nesting_depth"), NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_backend(e, S("kafka"), NULL), COSTGUARD_NULL_ARGUMENT);

    /* The built-in dimensions exist in every policy. */
    OK(costguard_engine_counter(e, S("retries"), &c));
    OK(costguard_engine_counter(e, S("file_lookups"), &c));
    OK(costguard_engine_level(e, S("nesting_depth"), &l));
    OK(costguard_engine_class(e, S("api"), &k));
    OK(costguard_engine_backend(e, S("kafka"), &b));
    OK(costguard_engine_host(e, b, S("kafka2:9092"), &h));
    EXPECT(costguard_engine_host(e, b, S("kafka9:9092"), &h), COSTGUARD_UNKNOWN_NAME);
    EXPECT(costguard_engine_host(e, backend(e, "db"), S("kafka1:9092"), &h), COSTGUARD_UNKNOWN_NAME);
    EXPECT(costguard_engine_host(e, b, S("kafka1:9092"), NULL), COSTGUARD_NULL_ARGUMENT);
    costguard_backend made_up = {0xdeadbeefcafeULL};
    CHECK(costguard_engine_host(e, made_up, S("kafka1:9092"), &h) == COSTGUARD_INVALID_HANDLE ||
          costguard_engine_host(e, made_up, S("kafka1:9092"), &h) == COSTGUARD_UNKNOWN_NAME);

    /* The buffer-too-small protocol, on the statistics. */
    size_t need = 0;
    EXPECT(costguard_engine_stats_json(e, NULL, 0, &need), COSTGUARD_BUFFER_TOO_SMALL);
    CHECK(need > 2);
    char *buf = malloc(need + 1);
    memset(buf, 'X', need + 1);
    size_t len = 0;
    EXPECT(costguard_engine_stats_json(e, buf, need - 1, &len), COSTGUARD_BUFFER_TOO_SMALL);
    CHECK_U64(len, need);
    CHECK(buf[0] == 'X' && buf[need - 2] == 'X'); /* nothing written */
    len = 0;
    OK(costguard_engine_stats_json(e, buf, need, &len));
    CHECK_U64(len, need - 1);
    CHECK(buf[len] == '\0' && strlen(buf) == len);
    CHECK(buf[0] == '{');
    CHECK_CONTAINS(buf, "\"parse\"");
    CHECK_CONTAINS(buf, "kafka1:9092");
    EXPECT(costguard_engine_stats_json(e, buf, need, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_stats_json(e, NULL, 10, &len), COSTGUARD_NULL_ARGUMENT);
    free(buf);

    char *prom = engine_text(costguard_engine_stats_prometheus, e);
    CHECK_CONTAINS(prom, "costguard_in_flight{class=\"parse\"} 0");
    CHECK_CONTAINS(prom, "costguard_concurrency_limit{class=\"parse\"} 2");
    CHECK_CONTAINS(prom, "costguard_pool_limit{pool=\"db\"} 60");
    free(prom);

    OK(costguard_engine_free(e));
}

static void test_budget_charges(void) {
    costguard_engine e = new_engine();
    costguard_counter lookups = counter(e, "file_lookups");
    costguard_counter db = counter(e, "db_queries");
    costguard_counter bytes = counter(e, "output_bytes");
    costguard_counter retries = counter(e, "retries");
    costguard_class parse = class_(e, "parse");
    costguard_verdict v;

    /* Beginning: request ids are 1..64 bytes of UTF-8. */
    costguard_budget b = {0x99};
    poison(&v);
    EXPECT(costguard_budget_begin(e, parse, NULL, 0, NULL, 0, &b, &v), COSTGUARD_INVALID_ARGUMENT);
    static const char long_id[] = "0123456789012345678901234567890123456789012345678901234567890123456789";
    EXPECT(costguard_budget_begin(e, parse, S(long_id), NULL, 0, &b, &v), COSTGUARD_INVALID_ARGUMENT);
    EXPECT(costguard_budget_begin(e, parse, S("caf\xc3"), NULL, 0, &b, &v), COSTGUARD_INVALID_UTF8);
    EXPECT(costguard_budget_begin(e, parse, NULL, 4, NULL, 0, &b, &v), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_begin(e, parse, S("r"), NULL, 0, NULL, &v), COSTGUARD_NULL_ARGUMENT);
    CHECK_U64(b.bits, 0x99);
    CHECK(poisoned(&v));
    OK(costguard_budget_begin(e, parse, long_id, 64, NULL, 0, &b, &v));
    CHECK(poisoned(&v)); /* the verdict is written only on REFUSED */
    OK(costguard_budget_free(b));
    OK(costguard_budget_begin(e, parse, S("req-1"), NULL, 0, &b, &v));

    /* Charges, used, remaining. */
    OK(costguard_budget_charge(b, lookups, 499, &v));
    CHECK(poisoned(&v));
    CHECK_U64(used(b, lookups), 499);
    CHECK_U64(remaining_of(b, lookups), 1);
    OK(costguard_budget_charge(b, lookups, 0, NULL));
    OK(costguard_budget_charge(b, lookups, 1, NULL));
    bool flag = true;
    OK(costguard_budget_is_cancelled(b, &flag));
    CHECK(!flag);

    /* A refusal: every field, and nothing changes. */
    EXPECT(costguard_budget_charge(b, lookups, 1, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_LIMIT_EXCEEDED);
    CHECK_U64(v.retry, COSTGUARD_RETRY_NEVER);
    CHECK_U64(v.retry_after_ns, UINT64_MAX);
    CHECK_U64(v.requested, 1);
    CHECK_U64(v.used, 500);
    CHECK_U64(v.limit, 500);
    CHECK_U64(v.unit, COSTGUARD_UNIT_COUNT);
    CHECK_STR(v.class_name, "parse");
    CHECK_STR(v.dimension, "file_lookups");
    CHECK_STR(v.request_id, "req-1");
    CHECK_STR(verdict_text(&v),
              "request req-1: parse/file_lookups: 1 more would exceed the limit (500 of 500 used); retrying cannot help");
    CHECK_U64(used(b, lookups), 500);
    EXPECT(costguard_budget_charge(b, lookups, 1, NULL), COSTGUARD_REFUSED); /* verdict is nullable */
    /* Running out flips the cancellation flag; check() says why. */
    OK(costguard_budget_is_cancelled(b, &flag));
    CHECK(flag);
    poison(&v);
    EXPECT(costguard_budget_check(b, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_LIMIT_EXCEEDED);
    CHECK_STR(v.dimension, "file_lookups");
    EXPECT(costguard_budget_check(b, NULL), COSTGUARD_REFUSED);

    /* Can never fit; u64::MAX; bytes. */
    EXPECT(costguard_budget_charge(b, db, 101, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CANNOT_FIT);
    CHECK_U64(v.retry, COSTGUARD_RETRY_NEVER);
    CHECK_U64(v.requested, 101);
    CHECK_U64(v.used, 0);
    CHECK_U64(v.limit, 100);
    CHECK_STR(verdict_text(&v), "request req-1: parse/db_queries: 101 can never fit in a limit of 100; retrying cannot help");
    EXPECT(costguard_budget_charge(b, db, UINT64_MAX, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CANNOT_FIT);
    CHECK_U64(used(b, db), 0);
    EXPECT(costguard_budget_charge(b, bytes, 3u << 20, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.unit, COSTGUARD_UNIT_BYTES);
    CHECK_STR(verdict_text(&v), "request req-1: parse/output_bytes: 3.0MiB can never fit in a limit of 2.0MiB; retrying cannot help");

    /* verdict_describe: the buffer protocol and NULL checks. */
    size_t need = 0, len = 0;
    EXPECT(costguard_verdict_describe(&v, NULL, 0, &need), COSTGUARD_BUFFER_TOO_SMALL);
    CHECK_U64(need, strlen(verdict_text(&v)) + 1);
    char small[8] = "1234567";
    EXPECT(costguard_verdict_describe(&v, small, sizeof small, &len), COSTGUARD_BUFFER_TOO_SMALL);
    CHECK_STR(small, "1234567");
    CHECK_U64(len, need);
    EXPECT(costguard_verdict_describe(NULL, small, sizeof small, &len), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_verdict_describe(&v, small, sizeof small, NULL), COSTGUARD_NULL_ARGUMENT);
    costguard_verdict odd = v;
    odd.reason = 999; /* a made-up reason must not crash */
    CHECK(costguard_verdict_describe(&odd, small, sizeof small, &len) != COSTGUARD_PANIC);
    odd = v;
    memset(odd.class_name, 'x', sizeof odd.class_name); /* no NUL: must not read past the field */
    memset(odd.request_id, 'y', sizeof odd.request_id);
    CHECK(costguard_verdict_describe(&odd, small, sizeof small, &len) != COSTGUARD_PANIC);

    /* charge_many: all or nothing; a counter may repeat. */
    costguard_budget m = {0};
    OK(costguard_budget_begin(e, parse, S("req-many"), NULL, 0, &m, NULL));
    costguard_charge both[] = {{lookups, 10}, {db, 99}, {db, 2}};
    EXPECT(costguard_budget_charge_many(m, both, 3, &v), COSTGUARD_REFUSED);
    CHECK_STR(v.dimension, "db_queries");
    CHECK_U64(used(m, lookups), 0);
    CHECK_U64(used(m, db), 0);
    OK(costguard_budget_charge_many(m, both, 2, &v));
    CHECK_U64(used(m, lookups), 10);
    CHECK_U64(used(m, db), 99);
    OK(costguard_budget_charge_many(m, NULL, 0, NULL));
    EXPECT(costguard_budget_charge_many(m, NULL, 2, NULL), COSTGUARD_NULL_ARGUMENT);

    /* Refunds are capped by what was charged through this budget. */
    uint64_t refunded = 0;
    OK(costguard_budget_refund(m, lookups, 4, &refunded));
    CHECK_U64(refunded, 4);
    OK(costguard_budget_refund(m, lookups, 100, &refunded));
    CHECK_U64(refunded, 6);
    CHECK_U64(used(m, lookups), 0);
    OK(costguard_budget_refund(m, db, 9, NULL)); /* refunded is nullable */
    CHECK_U64(used(m, db), 90);

    /* The tree's retry allowance (parse: 2). */
    OK(costguard_budget_try_retry(m, &v));
    OK(costguard_budget_try_retry(m, NULL));
    poison(&v);
    EXPECT(costguard_budget_try_retry(m, &v), COSTGUARD_REFUSED);
    CHECK_STR(v.dimension, "retries");
    CHECK_U64(v.limit, 2);
    CHECK_U64(used(m, retries), 2);

    /* Output pointers are required. */
    EXPECT(costguard_budget_used(m, lookups, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_remaining_of(m, lookups, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_remaining_ns(m, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_expired(m, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_is_cancelled(m, NULL), COSTGUARD_NULL_ARGUMENT);

    /* Unlimited counters report UINT64_MAX remaining (batch limits only output_bytes). */
    costguard_budget batch = begin(e, "batch", "req-batch");
    CHECK_U64(remaining_of(batch, lookups), UINT64_MAX);
    OK(costguard_budget_charge(batch, lookups, 1000000, NULL));
    CHECK_U64(used(batch, lookups), 1000000);

    OK(costguard_budget_free(batch));
    OK(costguard_budget_free(m));
    OK(costguard_budget_free(b));
    OK(costguard_engine_free(e));
}

static void test_reservations_and_levels(void) {
    costguard_engine e = new_engine();
    costguard_counter images = counter(e, "gallery_images");
    costguard_level depth = level(e, "nesting_depth");
    costguard_budget b = begin(e, "parse", "req-res");
    costguard_verdict v;
    costguard_reservation r = {0x55};

    /* Reserve, then settle down (refund) or up (charge the excess). */
    OK(costguard_budget_reserve(b, images, 100, &r, &v));
    CHECK(r.bits != 0 && r.bits != 0x55);
    CHECK_U64(used(b, images), 100);
    OK(costguard_reservation_settle(r, 40, &v));
    CHECK_U64(used(b, images), 40);
    EXPECT(costguard_reservation_settle(r, 40, &v), COSTGUARD_INVALID_HANDLE); /* settle freed it */
    EXPECT(costguard_reservation_free(r), COSTGUARD_INVALID_HANDLE);
    OK(costguard_budget_reserve(b, images, 100, &r, NULL));
    OK(costguard_reservation_settle(r, 150, NULL));
    CHECK_U64(used(b, images), 190);

    /* A 10,000-image gallery never fits in 1000: refused before any lookup. */
    costguard_reservation none = {0x55};
    poison(&v);
    EXPECT(costguard_budget_reserve(b, images, 10000, &none, &v), COSTGUARD_REFUSED);
    CHECK_U64(none.bits, 0x55);
    CHECK_U64(v.reason, COSTGUARD_REASON_CANNOT_FIT);
    CHECK_U64(v.requested, 10000);
    CHECK_U64(v.limit, 1000);
    CHECK_STR(v.dimension, "gallery_images");
    CHECK_U64(used(b, images), 190);
    EXPECT(costguard_budget_reserve(b, images, 900, &none, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_LIMIT_EXCEEDED);
    CHECK_U64(v.used, 190);

    /* Settling over the limit: refused, the estimate stays charged, the reservation is gone. */
    OK(costguard_budget_reserve(b, images, 800, &r, &v));
    CHECK_U64(used(b, images), 990);
    EXPECT(costguard_reservation_settle(r, 1200, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_LIMIT_EXCEEDED);
    CHECK_U64(v.requested, 400);
    CHECK_U64(used(b, images), 990);
    EXPECT(costguard_reservation_cancel(r), COSTGUARD_INVALID_HANDLE);

    /* cancel refunds it all; free keeps the estimate charged (as Rust's drop). */
    costguard_budget c = begin(e, "parse", "req-res2");
    OK(costguard_budget_reserve(c, images, 300, &r, NULL));
    OK(costguard_reservation_cancel(r));
    CHECK_U64(used(c, images), 0);
    EXPECT(costguard_reservation_cancel(r), COSTGUARD_INVALID_HANDLE);
    OK(costguard_budget_reserve(c, images, 300, &r, NULL));
    OK(costguard_reservation_free(r));
    CHECK_U64(used(c, images), 300);
    EXPECT(costguard_reservation_free(r), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_reserve(c, images, 1, NULL, NULL), COSTGUARD_NULL_ARGUMENT);
    /* A reservation outlives the budget handle it was made from. */
    OK(costguard_budget_reserve(c, images, 50, &r, NULL));
    OK(costguard_budget_free(c));
    OK(costguard_reservation_settle(r, 10, NULL));

    /* Levels: enter, nest, refuse past the limit, leave on free. */
    costguard_level_guard g1 = {0}, g2 = {0}, g3 = {0x66};
    OK(costguard_budget_enter(b, depth, 2, &g1, &v));
    CHECK_U64(level_of(b, depth), 2);
    OK(costguard_budget_enter(b, depth, 1, &g2, NULL));
    CHECK_U64(level_of(b, depth), 3);
    poison(&v);
    EXPECT(costguard_budget_enter(b, depth, 1, &g3, &v), COSTGUARD_REFUSED);
    CHECK_U64(g3.bits, 0x66);
    CHECK_U64(v.reason, COSTGUARD_REASON_LIMIT_EXCEEDED);
    CHECK_U64(v.retry, COSTGUARD_RETRY_LATER); /* a level comes down again */
    CHECK_STR(v.dimension, "nesting_depth");
    CHECK_U64(v.used, 3);
    CHECK_U64(v.limit, 3);
    EXPECT(costguard_budget_enter(b, depth, 4, &g3, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CANNOT_FIT);
    OK(costguard_level_guard_free(g2));
    CHECK_U64(level_of(b, depth), 2);
    EXPECT(costguard_level_guard_free(g2), COSTGUARD_INVALID_HANDLE);
    CHECK_U64(level_of(b, depth), 2);
    OK(costguard_level_guard_free(g1));
    CHECK_U64(level_of(b, depth), 0);
    EXPECT(costguard_budget_enter(b, depth, 1, NULL, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_level(b, depth, NULL), COSTGUARD_NULL_ARGUMENT);
    /* The report keeps the peak. */
    char *report = budget_text(costguard_budget_report_text, b);
    CHECK_CONTAINS(report, "nesting_depth");
    CHECK_CONTAINS(report, "highest 3 of 3");
    free(report);

    OK(costguard_level_guard_free((costguard_level_guard){0}));
    OK(costguard_reservation_free((costguard_reservation){0}));
    OK(costguard_budget_free(b));
    OK(costguard_engine_free(e));
}

static void test_time_cancel_children(void) {
    costguard_engine e = new_engine();
    costguard_counter lookups = counter(e, "file_lookups");
    costguard_class api = class_(e, "api");
    costguard_verdict v;
    uint64_t ns = 0;
    bool flag = true;

    costguard_budget b = begin(e, "parse", "req-time");
    OK(costguard_budget_remaining_ns(b, &ns));
    CHECK_U64(ns, 30000000000ull);
    OK(costguard_engine_advance_clock(e, 1000000000ull));
    OK(costguard_budget_remaining_ns(b, &ns));
    CHECK_U64(ns, 29000000000ull);
    OK(costguard_budget_expired(b, &flag));
    CHECK(!flag);
    OK(costguard_budget_check(b, &v));

    /* Children: same class (class NULL) or another; charges reach the parent; the child's deadline
     * is the parent's minus the parent's child margin (250ms). */
    costguard_budget child = {0}, apichild = {0}, grandchild = {0};
    poison(&v);
    OK(costguard_budget_child(b, NULL, &child, &v));
    CHECK(poisoned(&v));
    OK(costguard_budget_remaining_ns(child, &ns));
    CHECK_U64(ns, 28750000000ull);
    OK(costguard_budget_charge(child, lookups, 30, NULL));
    CHECK_U64(used(child, lookups), 30);
    CHECK_U64(used(b, lookups), 30);
    OK(costguard_budget_child(b, &api, &apichild, NULL));
    CHECK_U64(remaining_of(apichild, lookups), 50);
    OK(costguard_budget_charge(apichild, lookups, 50, NULL));
    EXPECT(costguard_budget_charge(apichild, lookups, 1, &v), COSTGUARD_REFUSED);
    CHECK_STR(v.class_name, "api");
    CHECK_U64(used(b, lookups), 80);
    OK(costguard_budget_child(child, NULL, &grandchild, NULL));
    EXPECT(costguard_budget_child(b, NULL, NULL, NULL), COSTGUARD_NULL_ARGUMENT);
    costguard_class made_up = {0xabcdef12345ULL};
    costguard_budget nope = {0};
    CHECK(costguard_budget_child(b, &made_up, &nope, NULL) != COSTGUARD_OK);
    CHECK_U64(nope.bits, 0);

    /* Too little time left for a child: refused up front. */
    OK(costguard_engine_advance_clock(e, 28800000000ull)); /* 200ms left */
    costguard_budget late = {0x42};
    EXPECT(costguard_budget_child(b, NULL, &late, &v), COSTGUARD_REFUSED);
    CHECK_U64(late.bits, 0x42);
    CHECK_U64(v.reason, COSTGUARD_REASON_INSUFFICIENT_TIME);
    CHECK_U64(v.unit, COSTGUARD_UNIT_NANOS);

    /* Past the deadline: expired, check refuses, remaining is 0; charges that fit still succeed. */
    OK(costguard_engine_advance_clock(e, 1000000000ull));
    OK(costguard_budget_expired(b, &flag));
    CHECK(flag);
    OK(costguard_budget_remaining_ns(b, &ns));
    CHECK_U64(ns, 0);
    poison(&v);
    EXPECT(costguard_budget_check(b, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_DEADLINE_EXCEEDED);
    CHECK_U64(v.retry, COSTGUARD_RETRY_NEVER);
    CHECK_STR(v.dimension, "wall_time");
    CHECK_U64(v.unit, COSTGUARD_UNIT_NANOS);
    CHECK_U64(v.limit, 30000000000ull);
    OK(costguard_budget_is_cancelled(b, &flag));
    CHECK(flag);
    OK(costguard_budget_charge(b, lookups, 1, NULL));

    /* Explicit cancel reaches descendants; new children are refused. */
    costguard_budget p = begin(e, "parse", "req-cancel");
    costguard_budget pc = {0};
    OK(costguard_budget_child(p, NULL, &pc, NULL));
    OK(costguard_budget_cancel(p));
    OK(costguard_budget_is_cancelled(pc, &flag));
    CHECK(flag);
    EXPECT(costguard_budget_check(p, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CANCELLED);
    EXPECT(costguard_budget_child(p, NULL, &late, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CANCELLED);
    OK(costguard_budget_charge(p, lookups, 1, NULL)); /* cancellation is advice */

    /* Nesting deeper than 16 is refused. */
    costguard_budget chain[20] = {{0}};
    chain[0] = begin(e, "batch", "req-deep");
    int depth = 1;
    costguard_status s = COSTGUARD_OK;
    while (depth < 20 && (s = costguard_budget_child(chain[depth - 1], NULL, &chain[depth], &v)) == COSTGUARD_OK) {
        depth++;
    }
    EXPECT(s, COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_TOO_DEEP);
    CHECK(depth == 16 || depth == 17);
    for (int i = depth - 1; i >= 0; i--) {
        OK(costguard_budget_free(chain[i]));
    }

    OK(costguard_budget_free(grandchild));
    OK(costguard_budget_free(apichild));
    OK(costguard_budget_free(child));
    OK(costguard_budget_free(pc));
    OK(costguard_budget_free(p));
    OK(costguard_budget_free(b));
    EXPECT(costguard_engine_advance_clock(e, 1), COSTGUARD_OK);
    OK(costguard_engine_free(e));
}

static void test_headers_and_reports(void) {
    costguard_engine e = new_engine();
    costguard_counter lookups = counter(e, "file_lookups");
    costguard_class api = class_(e, "api");
    costguard_verdict v;

    costguard_budget b = begin(e, "parse", "edit-42");
    OK(costguard_budget_charge(b, lookups, 480, NULL));
    char *header = budget_text(costguard_budget_to_header, b);
    CHECK(header != NULL && strncmp(header, "cg1;", 4) == 0);
    CHECK_CONTAINS(header, "id=edit-42");
    CHECK_CONTAINS(header, "file_lookups=20");

    /* Decoding. */
    size_t need = 0, len = 0;
    EXPECT(costguard_header_decode_json(header, strlen(header), NULL, 0, &need), COSTGUARD_BUFFER_TOO_SMALL);
    char *json = malloc(need);
    OK(costguard_header_decode_json(header, strlen(header), json, need, &len));
    CHECK_U64(len + 1, need);
    CHECK_CONTAINS(json, "\"request_id\"");
    CHECK_CONTAINS(json, "edit-42");
    CHECK_CONTAINS(json, "\"allowances\"");
    CHECK_CONTAINS(json, "\"file_lookups\":20");
    free(json);
    char out[64];
    EXPECT(costguard_header_decode_json(S("cg2;id=x"), out, sizeof out, &len), COSTGUARD_HEADER_ERROR);
    CHECK(last_error_text()[0] != '\0');
    EXPECT(costguard_header_decode_json(S("cg1;id=x;t=-5"), out, sizeof out, &len), COSTGUARD_HEADER_ERROR);
    /* A header comes from the network: bytes that are not UTF-8 make a malformed one. */
    EXPECT(costguard_header_decode_json(S("cg1;\xff"), out, sizeof out, &len), COSTGUARD_HEADER_ERROR);
    CHECK_CONTAINS(last_error_text(), "propagation header: not UTF-8 text (byte 4)");
    EXPECT(costguard_header_decode_json(NULL, 4, out, sizeof out, &len), COSTGUARD_NULL_ARGUMENT);

    /* A budget begun from the header: it can only tighten (api allows 50, the header 20). */
    costguard_budget callee = {0};
    OK(costguard_budget_begin(e, api, S("edit-42"), header, strlen(header), &callee, &v));
    CHECK_U64(remaining_of(callee, lookups), 20);
    costguard_budget bad = {0x31};
    EXPECT(costguard_budget_begin(e, api, S("edit-43"), S("cg1;id=;;;"), &bad, &v), COSTGUARD_HEADER_ERROR);
    CHECK_U64(bad.bits, 0x31);
    CHECK(last_error_text()[0] != '\0');
    EXPECT(costguard_budget_begin(e, api, S("edit-43"), S("cg1;id=\xc3"), &bad, &v), COSTGUARD_HEADER_ERROR);
    CHECK_U64(bad.bits, 0x31);
    free(header);

    /* The callee answers with its usage, and the caller charges it: 15 more lookups and a retry. */
    OK(costguard_budget_charge(callee, lookups, 15, NULL));
    OK(costguard_budget_try_retry(callee, NULL));
    char *usage = budget_text(costguard_budget_usage, callee);
    CHECK_STR(usage, "cgu1;retries=1;file_lookups=15");
    OK(costguard_budget_charge_usage(b, usage, strlen(usage), &v));
    CHECK_U64(remaining_of(b, lookups), 5);
    /* Six more do not fit: the verdict says why, and the five left are used up. */
    EXPECT(costguard_budget_charge_usage(b, S("cgu1;file_lookups=6"), &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_LIMIT_EXCEEDED);
    CHECK_U64(remaining_of(b, lookups), 0);
    EXPECT(costguard_budget_charge_usage(b, S("cg1;file_lookups=1"), &v), COSTGUARD_HEADER_ERROR);
    EXPECT(costguard_budget_charge_usage(b, NULL, 0, &v), COSTGUARD_HEADER_ERROR);
    EXPECT(costguard_budget_charge_usage(b, S("cgu1;retries=\x80"), &v), COSTGUARD_HEADER_ERROR);
    CHECK_CONTAINS(last_error_text(), "usage header: not UTF-8 text (byte 13)");
    EXPECT(costguard_budget_charge_usage(b, NULL, 4, &v), COSTGUARD_NULL_ARGUMENT);
    free(usage);

    /* Reports. */
    OK(costguard_engine_advance_clock(e, 2000000000ull));
    char *text = budget_text(costguard_budget_report_text, b);
    CHECK_CONTAINS(text, "limit report for request edit-42 (class parse");
    CHECK_CONTAINS(text, "file_lookups");
    CHECK_CONTAINS(text, "500 of 500"); /* 480, the callee's 15, and the 5 its overrun used up */
    CHECK_CONTAINS(text, "2.000s of 30.000s");
    free(text);
    char *rjson = budget_text(costguard_budget_report_json, b);
    CHECK(rjson != NULL && rjson[0] == '{');
    CHECK_CONTAINS(rjson, "edit-42");
    CHECK_CONTAINS(rjson, "file_lookups");
    free(rjson);
    char tiny[4] = "abc";
    EXPECT(costguard_budget_report_json(b, tiny, sizeof tiny, &len), COSTGUARD_BUFFER_TOO_SMALL);
    CHECK_STR(tiny, "abc");
    EXPECT(costguard_budget_to_header(b, tiny, sizeof tiny, NULL), COSTGUARD_NULL_ARGUMENT);

    OK(costguard_budget_free(callee));
    OK(costguard_budget_free(b));
    OK(costguard_engine_free(e));
}

static costguard_admit_request admit_request(costguard_class c, const char *id, const char *key) {
    costguard_admit_request r;
    memset(&r, 0, sizeof r);
    r.class_ = c;
    r.request_id = id;
    r.request_id_len = strlen(id);
    r.key = key;
    r.key_len = key ? strlen(key) : 0;
    r.priority = COSTGUARD_PRIORITY_DEFAULT;
    return r;
}

static void test_admission(void) {
    costguard_engine e = new_engine();
    costguard_class parse = class_(e, "parse");
    costguard_class api = class_(e, "api");
    costguard_counter db = counter(e, "db_queries");
    costguard_counter lookups = counter(e, "file_lookups");
    costguard_verdict v;
    costguard_grant g1 = {0}, g2 = {0}, g3 = {0x77};

    costguard_admit_request r1 = admit_request(parse, "adm-1", "user:1");
    poison(&v);
    OK(costguard_admit(e, &r1, &g1, &v));
    CHECK(poisoned(&v));
    CHECK(g1.bits != 0);

    /* The same key again: the key's share (1) is taken. */
    costguard_admit_request same = admit_request(parse, "adm-2", "user:1");
    EXPECT(costguard_admit(e, &same, &g3, &v), COSTGUARD_REFUSED);
    CHECK_U64(g3.bits, 0x77);
    CHECK_U64(v.reason, COSTGUARD_REASON_KEY_CONCURRENCY);
    CHECK_STR(v.request_id, "adm-2");

    /* The class's limit (2). */
    costguard_admit_request r2 = admit_request(parse, "adm-3", "user:2");
    OK(costguard_admit(e, &r2, &g2, NULL));
    costguard_admit_request r3 = admit_request(parse, "adm-4", "user:3");
    poison(&v);
    EXPECT(costguard_admit(e, &r3, &g3, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CONCURRENCY_LIMIT);
    CHECK(v.retry == COSTGUARD_RETRY_LATER || v.retry == COSTGUARD_RETRY_AFTER);
    CHECK_STR(v.class_name, "parse");
    CHECK_STR(v.request_id, "adm-4");
    CHECK_U64(v.used, 2);
    CHECK_U64(v.limit, 2);
    EXPECT(costguard_admit(e, &r3, &g3, NULL), COSTGUARD_REFUSED);
    char *prom = engine_text(costguard_engine_stats_prometheus, e);
    CHECK_CONTAINS(prom, "costguard_in_flight{class=\"parse\"} 2");
    CHECK_CONTAINS(prom, "costguard_admitted_total{class=\"parse\"} 2");
    CHECK_CONTAINS(prom, "costguard_refused_total{class=\"parse\",reason=\"concurrency_limit\"} 2");
    CHECK_CONTAINS(prom, "costguard_refused_total{class=\"parse\",reason=\"key_concurrency\"} 1");
    free(prom);

    /* The grant's budget: a separate handle that outlives the grant. */
    costguard_budget gb = {0};
    OK(costguard_grant_budget(g1, &gb));
    OK(costguard_budget_charge(gb, lookups, 5, NULL));
    CHECK_U64(used(gb, lookups), 5);
    EXPECT(costguard_grant_budget(g1, NULL), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_grant_finish(g1, 99), COSTGUARD_INVALID_ARGUMENT);
    OK(costguard_grant_finish(g1, COSTGUARD_OUTCOME_SUCCESS));
    EXPECT(costguard_grant_finish(g1, COSTGUARD_OUTCOME_SUCCESS), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_grant_free(g1), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_grant_budget(g1, &gb), COSTGUARD_INVALID_HANDLE);
    OK(costguard_budget_charge(gb, lookups, 5, NULL));
    CHECK_U64(used(gb, lookups), 10);
    OK(costguard_budget_free(gb));
    /* The permit is back: the third request gets in; grant_free releases as well. */
    OK(costguard_admit(e, &r3, &g3, NULL));
    OK(costguard_grant_free(g2));
    OK(costguard_grant_finish(g3, COSTGUARD_OUTCOME_OVERLOAD));
    prom = engine_text(costguard_engine_stats_prometheus, e);
    CHECK_CONTAINS(prom, "costguard_in_flight{class=\"parse\"} 0");
    free(prom);
    OK(costguard_grant_free((costguard_grant){0}));

    /* Estimates: larger than the class limit (50) can never fit; the pool (60) fills. */
    costguard_charge big = {db, 70}, mid = {db, 40};
    costguard_admit_request ra = admit_request(api, "adm-api-1", NULL);
    ra.estimates = &big;
    ra.estimates_len = 1;
    EXPECT(costguard_admit(e, &ra, &g1, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CANNOT_FIT);
    CHECK_U64(v.retry, COSTGUARD_RETRY_NEVER);
    ra.estimates = &mid;
    OK(costguard_admit(e, &ra, &g1, &v));
    costguard_admit_request rb = admit_request(api, "adm-api-2", NULL);
    rb.estimates = &mid;
    rb.estimates_len = 1;
    rb.flags = COSTGUARD_ADMIT_WAIT; /* a permit is free: no wait */
    EXPECT(costguard_admit(e, &rb, &g2, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_POOL_EXHAUSTED);
    CHECK_STR(v.dimension, "db"); /* the pool's name */
    CHECK_U64(v.requested, 40);
    CHECK_U64(v.used, 40);
    CHECK_U64(v.limit, 60);
    rb.estimates_len = 0;
    rb.estimates = NULL;
    rb.priority = COSTGUARD_PRIORITY_CRITICAL;
    rb.rate_cost = 3;
    OK(costguard_admit(e, &rb, &g2, &v));
    OK(costguard_grant_finish(g2, COSTGUARD_OUTCOME_CLIENT_ERROR));
    OK(costguard_grant_finish(g1, COSTGUARD_OUTCOME_CANCELLED));

    /* An admission with an incoming header: its budget is tightened. */
    costguard_budget caller = begin(e, "parse", "adm-hdr");
    OK(costguard_budget_charge(caller, lookups, 490, NULL));
    char *header = budget_text(costguard_budget_to_header, caller);
    costguard_admit_request rh = admit_request(api, "adm-hdr", NULL);
    rh.header = header;
    rh.header_len = header ? strlen(header) : 0;
    OK(costguard_admit(e, &rh, &g1, &v));
    OK(costguard_grant_budget(g1, &gb));
    CHECK_U64(remaining_of(gb, lookups), 10);
    OK(costguard_budget_free(gb));
    OK(costguard_grant_finish(g1, COSTGUARD_OUTCOME_SUCCESS));
    rh.header = "cg1;garbage";
    rh.header_len = strlen(rh.header);
    EXPECT(costguard_admit(e, &rh, &g1, &v), COSTGUARD_HEADER_ERROR);
    rh.header = "cg1;id=\xff";
    rh.header_len = strlen(rh.header);
    EXPECT(costguard_admit(e, &rh, &g1, &v), COSTGUARD_HEADER_ERROR);
    free(header);
    OK(costguard_budget_free(caller));

    /* Invalid requests. */
    costguard_admit_request bad = admit_request(parse, "adm-bad", "user:9");
    bad.priority = 9;
    EXPECT(costguard_admit(e, &bad, &g1, &v), COSTGUARD_INVALID_ARGUMENT);
    bad = admit_request(parse, "", NULL);
    EXPECT(costguard_admit(e, &bad, &g1, &v), COSTGUARD_INVALID_ARGUMENT);
    bad = admit_request(parse, "adm-bad", NULL);
    bad.request_id = NULL;
    EXPECT(costguard_admit(e, &bad, &g1, &v), COSTGUARD_NULL_ARGUMENT);
    bad = admit_request(parse, "adm-bad", NULL);
    bad.key_len = 4; /* key NULL with a length */
    EXPECT(costguard_admit(e, &bad, &g1, &v), COSTGUARD_NULL_ARGUMENT);
    bad = admit_request(parse, "adm-bad", NULL);
    bad.estimates_len = 1;
    EXPECT(costguard_admit(e, &bad, &g1, &v), COSTGUARD_NULL_ARGUMENT);
    bad = admit_request(parse, "adm-\xff", NULL);
    EXPECT(costguard_admit(e, &bad, &g1, &v), COSTGUARD_INVALID_UTF8);
    static char long_key[300];
    memset(long_key, 'k', sizeof long_key - 1);
    bad = admit_request(parse, "adm-long-key", long_key);
    EXPECT(costguard_admit(e, &bad, &g1, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_KEY_TOO_LONG);
    EXPECT(costguard_admit(e, NULL, &g1, &v), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_admit(e, &r1, NULL, &v), COSTGUARD_NULL_ARGUMENT);
    prom = engine_text(costguard_engine_stats_prometheus, e);
    CHECK_CONTAINS(prom, "costguard_in_flight{class=\"parse\"} 0");
    CHECK_CONTAINS(prom, "costguard_in_flight{class=\"api\"} 0");
    CHECK_CONTAINS(prom, "costguard_pool_in_use{pool=\"db\"} 0");
    free(prom);

    OK(costguard_engine_free(e));
}

static void test_backends(void) {
    costguard_engine e = new_engine();
    costguard_backend kafka = backend(e, "kafka");
    costguard_backend db = backend(e, "db");
    costguard_host kafka2 = {0};
    OK(costguard_engine_host(e, kafka, S("kafka2:9092"), &kafka2));
    costguard_budget b = begin(e, "parse", "req-backend");
    costguard_verdict v;
    costguard_attempt a = {0}, a2 = {0}, a3 = {0x88};
    char host[64];
    size_t len = 0;
    uint64_t ns = 0;

    /* An attempt on a pool picks a host; the timeout is the backend's (500ms) at most. */
    poison(&v);
    OK(costguard_attempt_begin(e, kafka, b, 0, &a, &v));
    CHECK(poisoned(&v));
    OK(costguard_attempt_host(a, host, sizeof host, &len));
    CHECK(strcmp(host, "kafka1:9092") == 0 || strcmp(host, "kafka2:9092") == 0);
    CHECK_U64(len, strlen(host));
    EXPECT(costguard_attempt_host(a, host, 3, &len), COSTGUARD_BUFFER_TOO_SMALL);
    CHECK_U64(len, 12);
    OK(costguard_attempt_timeout_ns(a, &ns));
    CHECK(ns > 0 && ns <= 500000000ull);
    EXPECT(costguard_attempt_timeout_ns(a, NULL), COSTGUARD_NULL_ARGUMENT);
    OK(costguard_attempt_connected(a));
    EXPECT(costguard_attempt_finish(a, 99, UINT64_MAX), COSTGUARD_INVALID_ARGUMENT);
    OK(costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SUCCESS, UINT64_MAX));
    EXPECT(costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SUCCESS, UINT64_MAX), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_attempt_connected(a), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_attempt_free(a), COSTGUARD_INVALID_HANDLE);

    /* One connection attempt at a time per host: that host is not free (an attempt on the backend
     * would go to another host). */
    OK(costguard_attempt_begin_on(e, kafka2, b, 0, &a, NULL));
    OK(costguard_attempt_host(a, host, sizeof host, &len));
    CHECK_STR(host, "kafka2:9092");
    poison(&v);
    EXPECT(costguard_attempt_begin_on(e, kafka2, b, 0, &a3, &v), COSTGUARD_REFUSED);
    CHECK_U64(a3.bits, 0x88);
    CHECK_U64(v.reason, COSTGUARD_REASON_NO_HEALTHY_HOST);
    CHECK_STR(v.request_id, "req-backend");
    OK(costguard_attempt_connected(a));
    OK(costguard_attempt_begin_on(e, kafka2, b, 1, &a2, NULL));
    OK(costguard_attempt_free(a2)); /* finished as cancelled */
    OK(costguard_attempt_finish(a, COSTGUARD_ATTEMPT_REFUSED, 2000000000ull));

    /* No pool: host is "". Bulkhead of 2 calls, 1 connecting. */
    OK(costguard_attempt_begin(e, db, b, 0, &a, NULL));
    OK(costguard_attempt_host(a, host, sizeof host, &len));
    CHECK_STR(host, "");
    CHECK_U64(len, 0);
    EXPECT(costguard_attempt_begin(e, db, b, 0, &a2, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CONNECT_LIMIT);
    OK(costguard_attempt_connected(a));
    OK(costguard_attempt_begin(e, db, b, 0, &a2, NULL));
    OK(costguard_attempt_connected(a2));
    EXPECT(costguard_attempt_begin(e, db, b, 0, &a3, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_BULKHEAD_FULL);
    CHECK_U64(v.used, 2);
    CHECK_U64(v.limit, 2);
    CHECK_STR(v.class_name, "db");
    OK(costguard_attempt_free(a2));
    OK(costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SUCCESS, UINT64_MAX));
    EXPECT(costguard_attempt_begin(e, db, b, 0, NULL, NULL), COSTGUARD_NULL_ARGUMENT);

    /* Three server errors in a row open db's breaker. */
    for (int i = 0; i < 3; i++) {
        OK(costguard_attempt_begin(e, db, b, 0, &a, NULL));
        OK(costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SERVER_ERROR, UINT64_MAX));
    }
    EXPECT(costguard_attempt_begin(e, db, b, 0, &a, &v), COSTGUARD_REFUSED);
    CHECK_U64(v.reason, COSTGUARD_REASON_CIRCUIT_OPEN);
    OK(costguard_engine_advance_clock(e, 5000000000ull)); /* past the jittered open time: a probe */
    OK(costguard_attempt_begin(e, db, b, 0, &a, NULL));
    OK(costguard_attempt_finish(a, COSTGUARD_ATTEMPT_SUCCESS, UINT64_MAX));

    /* HTTP statuses. */
    uint32_t outcome = 99;
    struct { uint16_t http; uint32_t want; } http[] = {
        {200, COSTGUARD_ATTEMPT_SUCCESS},        {304, COSTGUARD_ATTEMPT_SUCCESS},
        {404, COSTGUARD_ATTEMPT_CLIENT_ERROR},   {408, COSTGUARD_ATTEMPT_TIMEOUT},
        {429, COSTGUARD_ATTEMPT_REFUSED},        {500, COSTGUARD_ATTEMPT_SERVER_ERROR},
        {503, COSTGUARD_ATTEMPT_REFUSED},        {504, COSTGUARD_ATTEMPT_UPSTREAM_TIMEOUT},
    };
    for (size_t i = 0; i < sizeof http / sizeof http[0]; i++) {
        OK(costguard_attempt_outcome_from_http(http[i].http, &outcome));
        CHECK_U64(outcome, http[i].want);
    }
    EXPECT(costguard_attempt_outcome_from_http(200, NULL), COSTGUARD_NULL_ARGUMENT);

    /* Retry decisions: not for client errors; yes for server errors while the tree's allowance
     * (parse: 2) lasts; never sooner than a Retry-After. */
    uint64_t wait = 12345;
    poison(&v);
    EXPECT(costguard_retry(e, kafka, b, COSTGUARD_ATTEMPT_CLIENT_ERROR, UINT64_MAX, 1, &wait, &v), COSTGUARD_REFUSED);
    CHECK_U64(wait, 12345);
    CHECK_U64(v.reason, COSTGUARD_REASON_NOT_RETRYABLE);
    CHECK_U64(v.retry, COSTGUARD_RETRY_NEVER);
    poison(&v);
    OK(costguard_retry(e, kafka, b, COSTGUARD_ATTEMPT_SERVER_ERROR, UINT64_MAX, 1, &wait, &v));
    CHECK(poisoned(&v));
    CHECK(wait <= 1000000000ull);
    OK(costguard_retry(e, kafka, b, COSTGUARD_ATTEMPT_REFUSED, 300000000ull, 2, &wait, NULL));
    CHECK(wait >= 300000000ull);
    EXPECT(costguard_retry(e, kafka, b, COSTGUARD_ATTEMPT_TIMEOUT, UINT64_MAX, 3, &wait, &v), COSTGUARD_REFUSED);
    CHECK_STR(v.dimension, "retries");
    EXPECT(costguard_retry(e, kafka, b, 99, UINT64_MAX, 1, &wait, &v), COSTGUARD_INVALID_ARGUMENT);
    EXPECT(costguard_retry(e, kafka, b, COSTGUARD_ATTEMPT_SERVER_ERROR, UINT64_MAX, 1, NULL, &v), COSTGUARD_NULL_ARGUMENT);

    char *prom = engine_text(costguard_engine_stats_prometheus, e);
    CHECK_CONTAINS(prom, "costguard_backend_in_flight{backend=\"db\"} 0");
    CHECK_CONTAINS(prom, "costguard_backend_in_flight{backend=\"kafka\"} 0");
    CHECK_CONTAINS(prom, "costguard_backend_attempts_total{backend=\"db\",outcome=\"server_error\"} 3");
    CHECK_CONTAINS(prom, "costguard_backend_attempts_total{backend=\"kafka\",outcome=\"cancelled\"} 1");
    free(prom);

    OK(costguard_attempt_free((costguard_attempt){0}));
    OK(costguard_budget_free(b));
    OK(costguard_engine_free(e));
}

/* Invalid handles of every sort return a status, never undefined behaviour. */
static void test_invalid_handles(void) {
    costguard_engine e = new_engine();
    costguard_engine other = new_engine();
    costguard_counter lookups = counter(e, "file_lookups");
    costguard_counter other_lookups = counter(other, "file_lookups");
    costguard_class other_parse = class_(other, "parse");
    costguard_backend other_kafka = backend(other, "kafka");
    costguard_level other_depth = level(other, "nesting_depth");
    costguard_verdict v;
    uint64_t u = 0;
    bool flag = false;

    /* The null handle: free is a no-op, any other use NULL_ARGUMENT. */
    costguard_engine ne = {0};
    costguard_budget nb = {0};
    costguard_grant ng = {0};
    costguard_attempt na = {0};
    OK(costguard_engine_free(ne));
    OK(costguard_budget_free(nb));
    EXPECT(costguard_engine_generation(ne, &u), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_engine_counter(ne, S("file_lookups"), &lookups), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_charge(nb, lookups, 1, &v), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_used(nb, lookups, &u), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_grant_finish(ng, COSTGUARD_OUTCOME_SUCCESS), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_attempt_connected(na), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_reservation_settle((costguard_reservation){0}, 1, &v), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_reservation_cancel((costguard_reservation){0}), COSTGUARD_NULL_ARGUMENT);
    EXPECT(costguard_budget_begin(ne, other_parse, S("x"), NULL, 0, &nb, &v), COSTGUARD_NULL_ARGUMENT);

    /* Use after free and double free. */
    costguard_budget b = begin(e, "parse", "req-inv");
    OK(costguard_budget_free(b));
    EXPECT(costguard_budget_free(b), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_charge(b, lookups, 1, &v), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_used(b, lookups, &u), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_check(b, &v), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_is_cancelled(b, &flag), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_to_header(b, NULL, 0, &u), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_cancel(b), COSTGUARD_INVALID_HANDLE);
    costguard_budget child = {0};
    EXPECT(costguard_budget_child(b, NULL, &child, &v), COSTGUARD_INVALID_HANDLE);

    /* A handle's slot reused by a new handle: the old one stays invalid (generation check). */
    costguard_budget b2 = begin(e, "parse", "req-inv2");
    EXPECT(costguard_budget_charge(b, lookups, 1, &v), COSTGUARD_INVALID_HANDLE);
    CHECK(b.bits != b2.bits);

    /* Another kind: a budget handle used as a grant, reservation, guard, attempt, engine. */
    costguard_grant as_grant = {b2.bits};
    costguard_attempt as_attempt = {b2.bits};
    costguard_reservation as_res = {b2.bits};
    costguard_level_guard as_guard = {b2.bits};
    costguard_engine as_engine = {b2.bits};
    EXPECT(costguard_grant_finish(as_grant, COSTGUARD_OUTCOME_SUCCESS), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_grant_free(as_grant), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_attempt_free(as_attempt), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_reservation_free(as_res), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_level_guard_free(as_guard), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_engine_free(as_engine), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_engine_generation(as_engine, &u), COSTGUARD_INVALID_HANDLE);
    costguard_budget as_budget = {e.bits};
    EXPECT(costguard_budget_charge(as_budget, lookups, 1, &v), COSTGUARD_INVALID_HANDLE);
    OK(costguard_budget_charge(b2, lookups, 1, &v)); /* the real one is untouched */

    /* Another engine's names on this engine's budget, and the reverse. */
    EXPECT(costguard_budget_charge(b2, other_lookups, 1, &v), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_used(b2, other_lookups, &u), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_level(b2, other_depth, &u), COSTGUARD_INVALID_HANDLE);
    costguard_level_guard lg = {0};
    EXPECT(costguard_budget_enter(b2, other_depth, 1, &lg, &v), COSTGUARD_INVALID_HANDLE);
    costguard_reservation res = {0};
    EXPECT(costguard_budget_reserve(b2, other_lookups, 1, &res, &v), COSTGUARD_INVALID_HANDLE);
    costguard_charge mixed[] = {{lookups, 1}, {other_lookups, 1}};
    EXPECT(costguard_budget_charge_many(b2, mixed, 2, &v), COSTGUARD_INVALID_HANDLE);
    CHECK_U64(used(b2, lookups), 1);
    EXPECT(costguard_budget_child(b2, &other_parse, &child, &v), COSTGUARD_INVALID_HANDLE);
    costguard_budget fb = {0};
    EXPECT(costguard_budget_begin(e, other_parse, S("x"), NULL, 0, &fb, &v), COSTGUARD_INVALID_HANDLE);
    costguard_admit_request r = admit_request(other_parse, "foreign", NULL);
    costguard_grant g = {0};
    EXPECT(costguard_admit(e, &r, &g, &v), COSTGUARD_INVALID_HANDLE);
    costguard_attempt a = {0};
    EXPECT(costguard_attempt_begin(e, other_kafka, b2, 0, &a, &v), COSTGUARD_INVALID_HANDLE);
    costguard_host other_host = {0};
    OK(costguard_engine_host(other, other_kafka, S("kafka1:9092"), &other_host));
    EXPECT(costguard_attempt_begin_on(e, other_host, b2, 0, &a, &v), COSTGUARD_INVALID_HANDLE);
    costguard_budget ob = begin(other, "parse", "other-req");
    EXPECT(costguard_attempt_begin(e, backend(e, "kafka"), ob, 0, &a, &v), COSTGUARD_INVALID_HANDLE);
    uint64_t wait = 0;
    EXPECT(costguard_retry(e, other_kafka, b2, COSTGUARD_ATTEMPT_SERVER_ERROR, UINT64_MAX, 1, &wait, &v),
           COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_engine_host(e, other_kafka, S("kafka1:9092"), &other_host), COSTGUARD_INVALID_HANDLE);

    /* Made-up values. */
    static const uint64_t made_up[] = {1, 2, 0xdeadbeefULL, 0x8000000000000000ULL, UINT64_MAX, 0x0001000000000001ULL};
    for (size_t i = 0; i < sizeof made_up / sizeof made_up[0]; i++) {
        uint64_t bits = made_up[i];
        EXPECT(costguard_budget_charge((costguard_budget){bits}, lookups, 1, &v), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_budget_free((costguard_budget){bits}), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_grant_free((costguard_grant){bits}), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_grant_budget((costguard_grant){bits}, &child), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_attempt_free((costguard_attempt){bits}), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_attempt_host((costguard_attempt){bits}, NULL, 0, &u), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_reservation_free((costguard_reservation){bits}), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_level_guard_free((costguard_level_guard){bits}), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_engine_stats_json((costguard_engine){bits}, NULL, 0, &u), COSTGUARD_INVALID_HANDLE);
        EXPECT(costguard_engine_free((costguard_engine){bits}), COSTGUARD_INVALID_HANDLE);
        costguard_status s = costguard_budget_charge(b2, (costguard_counter){bits}, 1, &v);
        CHECK(s == COSTGUARD_INVALID_HANDLE || s == COSTGUARD_UNKNOWN_NAME);
        s = costguard_budget_level(b2, (costguard_level){bits}, &u);
        CHECK(s == COSTGUARD_INVALID_HANDLE || s == COSTGUARD_UNKNOWN_NAME);
        s = costguard_budget_begin(e, (costguard_class){bits}, S("x"), NULL, 0, &fb, &v);
        CHECK(s == COSTGUARD_INVALID_HANDLE || s == COSTGUARD_UNKNOWN_NAME);
        s = costguard_attempt_begin(e, (costguard_backend){bits}, b2, 0, &a, &v);
        CHECK(s == COSTGUARD_INVALID_HANDLE || s == COSTGUARD_UNKNOWN_NAME);
        s = costguard_attempt_begin_on(e, (costguard_host){bits}, b2, 0, &a, &v);
        CHECK(s == COSTGUARD_INVALID_HANDLE || s == COSTGUARD_UNKNOWN_NAME);
    }

    /* A freed engine: budgets made from it keep working; new ones need a live engine. */
    costguard_budget survivor = begin(other, "parse", "survivor");
    costguard_grant og = {0};
    costguard_admit_request orq = admit_request(other_parse, "other-grant", "k");
    OK(costguard_admit(other, &orq, &og, &v));
    OK(costguard_engine_free(other));
    EXPECT(costguard_engine_free(other), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_engine_counter(other, S("file_lookups"), &lookups), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_budget_begin(other, other_parse, S("y"), NULL, 0, &fb, &v), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_engine_reload_from_str(other, TEST_POLICY, strlen(TEST_POLICY), NULL), COSTGUARD_INVALID_HANDLE);
    EXPECT(costguard_engine_advance_clock(other, 1), COSTGUARD_INVALID_HANDLE);
    OK(costguard_budget_charge(survivor, other_lookups, 3, &v));
    CHECK_U64(used(survivor, other_lookups), 3);
    char *report = budget_text(costguard_budget_report_text, survivor);
    CHECK_CONTAINS(report, "survivor");
    free(report);
    costguard_budget ogb = {0};
    OK(costguard_grant_budget(og, &ogb));
    OK(costguard_budget_free(ogb));
    OK(costguard_grant_finish(og, COSTGUARD_OUTCOME_SUCCESS));
    OK(costguard_budget_free(survivor));
    OK(costguard_budget_free(ob));

    OK(costguard_budget_free(b2));
    OK(costguard_engine_free(e));
}

/* A free racing uses from other threads: every use completes or sees INVALID_HANDLE. */
struct race {
    costguard_budget budget;
    costguard_counter counter;
    int bad;
    int ok;
};

static void *race_charger(void *arg) {
    struct race *r = arg;
    for (int i = 0; i < 20000; i++) {
        costguard_verdict v;
        costguard_status s = costguard_budget_charge(r->budget, r->counter, 1, &v);
        if (s == COSTGUARD_OK || s == COSTGUARD_REFUSED) {
            __atomic_add_fetch(&r->ok, 1, __ATOMIC_RELAXED);
        } else if (s != COSTGUARD_INVALID_HANDLE) {
            __atomic_add_fetch(&r->bad, 1, __ATOMIC_RELAXED);
        }
        if (s == COSTGUARD_INVALID_HANDLE) {
            break;
        }
    }
    return NULL;
}

static void test_free_races_use(void) {
    costguard_engine e = new_engine();
    struct race r = {begin(e, "batch", "race"), counter(e, "file_lookups"), 0, 0};
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        CHECK(pthread_create(&t[i], NULL, race_charger, &r) == 0);
    }
    while (__atomic_load_n(&r.ok, __ATOMIC_RELAXED) < 100) {
        sched_yield();
    }
    OK(costguard_budget_free(r.budget));
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK_U64(r.bad, 0);
    EXPECT(costguard_budget_charge(r.budget, r.counter, 1, NULL), COSTGUARD_INVALID_HANDLE);
    OK(costguard_engine_free(e));
}

#ifdef COSTGUARD_TEST_FAULTS
/* A panic inside the library becomes COSTGUARD_PANIC; the process, the engine and later calls are
 * fine. */
static void test_panic_boundary(void) {
    costguard_engine e = new_engine();
    costguard_counter lookups = counter(e, "file_lookups");
    costguard_budget b = begin(e, "parse", "req-panic");
    costguard_admit_request r = admit_request(class_(e, "parse"), "req-panic-2", NULL);
    costguard_verdict v;

    /* Rust's default panic hook still prints each injected panic to stderr. */
    fprintf(stderr, "api_test: 3 injected panics follow (\"costguard: injected fault\"), as expected\n");
    costguard_debug_panic_after(1);
    EXPECT(costguard_budget_charge(b, lookups, 1, &v), COSTGUARD_PANIC);
    CHECK(last_error_text()[0] != '\0');
    OK(costguard_budget_charge(b, lookups, 1, &v));
    CHECK_U64(used(b, lookups), 1);

    costguard_debug_panic_after(2);
    OK(costguard_budget_charge(b, lookups, 1, &v));
    costguard_grant g = {0x5};
    EXPECT(costguard_admit(e, &r, &g, &v), COSTGUARD_PANIC);
    CHECK_U64(g.bits, 0x5);
    /* Nothing leaked from the panicking admission: both permits are there. */
    costguard_grant g1 = {0}, g2 = {0};
    OK(costguard_admit(e, &r, &g1, &v));
    r.request_id = "req-panic-3";
    r.request_id_len = strlen(r.request_id);
    OK(costguard_admit(e, &r, &g2, &v));
    OK(costguard_grant_free(g1));
    OK(costguard_grant_free(g2));
    char *prom = engine_text(costguard_engine_stats_prometheus, e);
    CHECK_CONTAINS(prom, "costguard_in_flight{class=\"parse\"} 0");
    free(prom);

    /* A panic in a text output writes nothing to the buffer. */
    char buf[512] = "untouched";
    size_t len = 12345;
    costguard_debug_panic_after(1);
    EXPECT(costguard_budget_to_header(b, buf, sizeof buf, &len), COSTGUARD_PANIC);
    CHECK_STR(buf, "untouched");
    CHECK_CONTAINS(last_error_text(), "injected fault");
    OK(costguard_budget_to_header(b, buf, sizeof buf, &len));
    CHECK(strncmp(buf, "cg1;", 4) == 0);

    /* Disarmed: nothing panics. */
    costguard_debug_panic_after(5);
    costguard_debug_panic_after(0);
    for (int i = 0; i < 10; i++) {
        OK(costguard_budget_charge(b, lookups, 1, &v));
    }
    OK(costguard_budget_free(b));
    OK(costguard_engine_free(e));
}
#endif

int main(int argc, char **argv) {
    if (argc > 1) {
        scratch_dir = argv[1];
    }
    test_statics();
    test_engine_new();
    test_reload();
    test_names_and_stats();
    test_budget_charges();
    test_reservations_and_levels();
    test_time_cancel_children();
    test_headers_and_reports();
    test_admission();
    test_backends();
    test_invalid_handles();
    test_free_races_use();
#ifdef COSTGUARD_TEST_FAULTS
    test_panic_boundary();
    return test_summary("api_test (with fault injection)");
#else
    return test_summary("api_test");
#endif
}
