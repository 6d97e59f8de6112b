/* Small check macros shared by the C tests: a failed check prints the call, the status it returned
 * and the one expected (with their descriptions and this thread's last error), then the test goes on
 * so one run shows every failure. */
#ifndef COSTGUARD_TEST_UTIL_H
#define COSTGUARD_TEST_UTIL_H

#include "costguard.h"

#include <stdio.h>
#include <string.h>

static int test_failures;
static int test_checks;

static void test_print_last_error(void) {
    char text[512];
    size_t len = 0;
    if (costguard_last_error(text, sizeof text, &len) == COSTGUARD_OK && len > 0) {
        fprintf(stderr, "  last error: %s\n", text);
    }
}

#define CHECK(cond)                                                                   \
    do {                                                                              \
        test_checks++;                                                                \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);  \
            test_failures++;                                                          \
        }                                                                             \
    } while (0)

#define EXPECT(call, want)                                                                        \
    do {                                                                                          \
        unsigned got_ = (unsigned)(call);                                                         \
        unsigned want_ = (unsigned)(want);                                                        \
        test_checks++;                                                                            \
        if (got_ != want_) {                                                                      \
            fprintf(stderr, "%s:%d: %s\n  returned %u (%s), expected %u (%s)\n", __FILE__,       \
                    __LINE__, #call, got_, costguard_status_describe(got_), want_,                \
                    costguard_status_describe(want_));                                            \
            test_print_last_error();                                                              \
            test_failures++;                                                                      \
        }                                                                                         \
    } while (0)

#define OK(call) EXPECT(call, COSTGUARD_OK)

#define CHECK_STR(got, want)                                                                  \
    do {                                                                                      \
        const char *got_s_ = (got);                                                           \
        const char *want_s_ = (want);                                                         \
        test_checks++;                                                                        \
        if (got_s_ == NULL || strcmp(got_s_, want_s_) != 0) {                                 \
            fprintf(stderr, "%s:%d: %s\n  is \"%s\"\n  expected \"%s\"\n", __FILE__, __LINE__,  \
                    #got, got_s_ ? got_s_ : "(null)", want_s_);                               \
            test_failures++;                                                                  \
        }                                                                                     \
    } while (0)

#define CHECK_U64(got, want)                                                                      \
    do {                                                                                          \
        unsigned long long got_u_ = (unsigned long long)(got);                                    \
        unsigned long long want_u_ = (unsigned long long)(want);                                  \
        test_checks++;                                                                            \
        if (got_u_ != want_u_) {                                                                  \
            fprintf(stderr, "%s:%d: %s is %llu, expected %llu\n", __FILE__, __LINE__, #got, got_u_, \
                    want_u_);                                                                     \
            test_failures++;                                                                      \
        }                                                                                         \
    } while (0)

#define CHECK_CONTAINS(haystack, needle)                                                         \
    do {                                                                                         \
        const char *hay_ = (haystack);                                                           \
        test_checks++;                                                                           \
        if (hay_ == NULL || strstr(hay_, (needle)) == NULL) {                                    \
            fprintf(stderr, "%s:%d: %s does not contain \"%s\":\n  %s\n", __FILE__, __LINE__,    \
                    #haystack, (needle), hay_ ? hay_ : "(null)");                                \
            test_failures++;                                                                     \
        }                                                                                        \
    } while (0)

/* A string literal as the (pointer, length) pair the C ABI takes. */
#define S(lit) (lit), (sizeof(lit) - 1)

static int test_summary(const char *name) {
    if (test_failures) {
        fprintf(stderr, "%s: %d of %d checks FAILED\n", name, test_failures, test_checks);
        return 1;
    }
    printf("%s: all %d checks passed\n", name, test_checks);
    return 0;
}

#endif
