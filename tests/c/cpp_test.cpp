// The C++ wrapper (include/costguard.hpp) end to end: RAII types release on scope exit and on exception
// unwinding, move semantics, try_ results and exceptions, text outputs through the size-query
// protocol, and the gallery example: a 10,000-image gallery refused at the file-lookup limit, with its
// limit report.
//
// Usage: cpp_test [PATH/TO/examples/policy.toml]

#include "costguard.hpp"

extern "C" {
#include "test_policy.h"
}

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

int failures = 0;
int checks = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        ++checks;                                                                    \
        if (!(cond)) {                                                               \
            std::cerr << __FILE__ << ":" << __LINE__ << ": check failed: " #cond "\n"; \
            ++failures;                                                              \
        }                                                                            \
    } while (0)

#define CHECK_EQ(got, want)                                                                          \
    do {                                                                                             \
        ++checks;                                                                                    \
        const auto &got_ = (got);                                                                    \
        const auto &want_ = (want);                                                                  \
        if (!(got_ == want_)) {                                                                      \
            std::ostringstream o_;                                                                   \
            o_ << __FILE__ << ":" << __LINE__ << ": " #got " is \"" << got_ << "\", expected \""    \
               << want_ << "\"\n";                                                                   \
            std::cerr << o_.str();                                                                   \
            ++failures;                                                                              \
        }                                                                                            \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                                                       \
    do {                                                                                                  \
        ++checks;                                                                                         \
        const std::string hay_ = (hay);                                                                   \
        if (hay_.find(needle) == std::string::npos) {                                                     \
            std::cerr << __FILE__ << ":" << __LINE__ << ": " #hay " does not contain \"" << (needle)      \
                      << "\":\n  " << hay_ << "\n";                                                       \
            ++failures;                                                                                   \
        }                                                                                                 \
    } while (0)

// Runs `expr`, which must throw E; `then` gets the exception.
#define CHECK_THROWS(expr, E, then)                                                                     \
    do {                                                                                                \
        ++checks;                                                                                       \
        bool thrown_ = false;                                                                           \
        try {                                                                                           \
            (void)(expr);                                                                               \
        } catch (const E &e_) {                                                                         \
            thrown_ = true;                                                                             \
            then(e_);                                                                                   \
        } catch (const std::exception &other_) {                                                        \
            std::cerr << __FILE__ << ":" << __LINE__ << ": " #expr " threw another exception: " << other_.what() \
                      << "\n";                                                                          \
            ++failures;                                                                                 \
            thrown_ = true;                                                                             \
        }                                                                                               \
        if (!thrown_) {                                                                                 \
            std::cerr << __FILE__ << ":" << __LINE__ << ": " #expr " did not throw " #E "\n";           \
            ++failures;                                                                                 \
        }                                                                                               \
    } while (0)

namespace cg = costguard;

std::ostream &operator<<(std::ostream &o, cg::Status s) { return o << cg::describe(s); }
std::ostream &operator<<(std::ostream &o, cg::Reason r) { return o << cg::reason_name(r); }
std::ostream &operator<<(std::ostream &o, cg::RetryKind r) { return o << static_cast<unsigned>(r); }
std::ostream &operator<<(std::ostream &o, cg::AttemptOutcome r) { return o << static_cast<unsigned>(r); }

cg::Engine test_engine() { return cg::Engine::from_string(TEST_POLICY, cg::manual_clock); }

bool has_line(const cg::Engine &e, const std::string &line) {
    return e.stats_prometheus().find(line + "\n") != std::string::npos;
}

// The library, errors, lookups, text outputs.
void test_basics() {
    CHECK_EQ(cg::version(), std::string_view("0.1.0"));
    CHECK_EQ(cg::abi_version(), 2u);
    CHECK_EQ(cg::reason_name(cg::Reason::Shed), std::string_view("shed"));
    CHECK_EQ(cg::describe(cg::Status::Ok), std::string_view(costguard_status_describe(0)));

    // Misuse throws Error with the status and the library's text.
    CHECK_THROWS(cg::Engine::from_string("[classes.parse]\nwall_time = \"30 seconds\"\n"), cg::Error,
                 [](const cg::Error &e) {
                     CHECK_EQ(e.status(), cg::Status::PolicyError);
                     CHECK_CONTAINS(e.detail(), "classes.parse.wall_time");
                     CHECK_CONTAINS(e.what(), "costguard_engine_new_from_str");
                 });
    CHECK_THROWS(cg::Engine::from_file("/nonexistent/costguard.toml"), cg::Error,
                 [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::IoError); });

    cg::Engine engine = test_engine();
    CHECK(static_cast<bool>(engine));
    CHECK_THROWS(engine.counter("no_such_counter"), cg::Error, [](const cg::Error &e) {
        CHECK_EQ(e.status(), cg::Status::UnknownName);
        CHECK_CONTAINS(e.detail(), "no_such_counter");
    });
    CHECK_THROWS(engine.cls("no_such_class"), cg::Error, [](const cg::Error &) {});
    CHECK_THROWS(engine.level("file_lookups"), cg::Error, [](const cg::Error &) {});
    auto kafka = engine.backend("kafka");
    (void)engine.host(kafka, "kafka1:9092");
    CHECK_THROWS(engine.host(kafka, "kafka7:9092"), cg::Error,
                 [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::UnknownName); });

    // Reload: a good one bumps the generation; a bad one throws and keeps the policy.
    CHECK_EQ(engine.generation(), 1u);
    CHECK_EQ(engine.reload_from_string(TEST_POLICY), 2u);
    CHECK_THROWS(engine.reload_from_string("[dimensions]\nx = \"gauge\"\n"), cg::Error, [](const cg::Error &e) {
        CHECK_EQ(e.status(), cg::Status::PolicyError);
        CHECK(!e.detail().empty());
        CHECK_EQ(cg::last_error(), e.detail());
    });
    CHECK_THROWS(engine.reload_from_file("/nonexistent/costguard.toml"), cg::Error,
                 [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::IoError); });
    CHECK_EQ(engine.generation(), 2u);
    engine.advance_clock(std::chrono::seconds(1));
    CHECK_THROWS(engine.advance_clock(std::chrono::seconds(-1)), std::invalid_argument,
                 [](const std::invalid_argument &) {});

    // Text outputs of every size: the statistics are far larger than the first stack buffer.
    std::string json = engine.stats_json();
    CHECK(json.size() > 512 && json.front() == '{' && json.back() == '}');
    CHECK_EQ(json.size(), std::string(json.c_str()).size());
    std::string prom = engine.stats_prometheus();
    CHECK_CONTAINS(prom, "costguard_concurrency_limit{class=\"parse\"} 2\n");

    auto budget = engine.begin(engine.cls("parse"), "hdr-1");
    std::string header = budget.to_header();
    CHECK_EQ(header.rfind("cg1;", 0), 0u);
    CHECK_CONTAINS(cg::decode_header_json(header), "\"request_id\":\"hdr-1\"");
    CHECK_THROWS(cg::decode_header_json("cg1;;;"), cg::Error,
                 [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::HeaderError); });
    auto callee = engine.begin(engine.cls("api"), "hdr-1", header);
    CHECK(callee.remaining().has_value());
    CHECK(*callee.remaining() <= std::chrono::seconds(10));
    CHECK_THROWS(engine.begin(engine.cls("api"), "hdr-2", "cg9;nonsense"), cg::Error,
                 [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::HeaderError); });
    CHECK(!engine.begin(engine.cls("batch"), "no-deadline").remaining().has_value());
    // The callee's usage, charged to the caller.
    CHECK(!callee.try_retry().has_value());
    CHECK_EQ(callee.usage(), std::string("cgu1;retries=1"));
    CHECK(!budget.try_charge_usage(callee.usage()).has_value());
    CHECK_EQ(budget.used(engine.counter("retries")), 1u);
    CHECK_THROWS(budget.charge_usage("cg1;retries=1"), cg::Error,
                 [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::HeaderError); });
    CHECK_CONTAINS(budget.report_json(), "hdr-1");
    CHECK_CONTAINS(budget.report_text(), "limit report for request hdr-1");

    // Names of one engine on another's budget: misuse, an Error, not a refusal.
    cg::Engine other = test_engine();
    auto foreign = other.counter("file_lookups");
    CHECK_THROWS(budget.try_charge(foreign, 1), cg::Error,
                 [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::InvalidHandle); });
}

// try_ forms return refusals; the plain forms throw Refused.
void test_refusals() {
    cg::Engine engine = test_engine();
    auto lookups = engine.counter("file_lookups");
    auto db = engine.counter("db_queries");
    auto depth = engine.level("nesting_depth");
    auto budget = engine.begin(engine.cls("parse"), "ref-1");

    CHECK(!budget.try_charge(lookups, 499));
    budget.charge(lookups, 1);
    cg::Refusal refusal = budget.try_charge(lookups, 1);
    CHECK(refusal.has_value());
    if (refusal) {
        CHECK_EQ(refusal->reason(), cg::Reason::LimitExceeded);
        CHECK_EQ(refusal->reason_name(), std::string_view("limit_exceeded"));
        CHECK_EQ(refusal->retry(), cg::RetryKind::Never);
        CHECK(!refusal->retryable());
        CHECK(!refusal->retry_after().has_value());
        CHECK_EQ(refusal->requested(), 1u);
        CHECK_EQ(refusal->used(), 500u);
        CHECK_EQ(refusal->limit(), 500u);
        CHECK(refusal->unit() == cg::Unit::Count);
        CHECK_EQ(refusal->class_name(), std::string_view("parse"));
        CHECK_EQ(refusal->dimension(), std::string_view("file_lookups"));
        CHECK_EQ(refusal->request_id(), std::string_view("ref-1"));
        CHECK_EQ(refusal->describe(),
                 std::string("request ref-1: parse/file_lookups: 1 more would exceed the limit (500 of 500 used); "
                             "retrying cannot help"));
    }
    CHECK_THROWS(budget.charge(lookups, 1), cg::Refused, [](const cg::Refused &r) {
        CHECK_EQ(r.status(), cg::Status::Refused);
        CHECK_EQ(r.verdict().reason(), cg::Reason::LimitExceeded);
        CHECK_CONTAINS(r.what(), "500 of 500 used");
        CHECK_CONTAINS(r.what(), "costguard: refused: ");
    });
    CHECK(budget.is_cancelled());
    CHECK(budget.check().has_value());
    CHECK_EQ(budget.used(lookups), 500u);
    CHECK_EQ(budget.remaining_of(lookups), 0u);

    CHECK(budget.try_charge_many({{db, 10}, {db, 5}}) == std::nullopt);
    CHECK_EQ(budget.used(db), 15u);
    std::vector<cg::Charge> too_much{{db, 80}, {db, 6}};
    CHECK(budget.try_charge_many(too_much).has_value());
    CHECK_THROWS(budget.charge_many(too_much), cg::Refused, [](const cg::Refused &) {});
    CHECK_EQ(budget.refund(db, 100), 15u);
    CHECK(!budget.try_retry());
    CHECK(!budget.try_retry());
    CHECK(budget.try_retry().has_value());

    // Results: a value or the verdict; value() on a refusal throws Refused.
    auto fresh = engine.begin(engine.cls("parse"), "ref-2");
    cg::Result<cg::LevelGuard> entered = fresh.try_enter(depth, 4);
    CHECK(!entered);
    CHECK_EQ(entered.verdict().reason(), cg::Reason::CannotFit);
    CHECK(entered.refusal().has_value());
    CHECK_THROWS(fresh.enter(depth, 4), cg::Refused,
                 [](const cg::Refused &r) { CHECK_EQ(r.verdict().limit(), 3u); });
    CHECK_THROWS(std::move(entered).value(), cg::Refused, [](const cg::Refused &) {});
    auto child = fresh.try_child(engine.cls("api"));
    CHECK(child.ok());
    CHECK_EQ(child->remaining_of(lookups), 50u);
    fresh.cancel();
    CHECK_THROWS(fresh.child(), cg::Refused,
                 [](const cg::Refused &r) { CHECK_EQ(r.verdict().reason(), cg::Reason::Cancelled); });

    // Reservations: settle down, settle over, cancel.
    auto images = engine.counter("gallery_images");
    auto b = engine.begin(engine.cls("parse"), "ref-3");
    auto r1 = b.reserve(images, 100);
    CHECK(!r1.settle(30));
    CHECK(!r1);
    CHECK_EQ(b.used(images), 30u);
    auto r2 = b.reserve(images, 900);
    cg::Refusal over = r2.settle(1000);  // 100 more than reserved: 1030 of 1000
    CHECK(over.has_value() && over->reason() == cg::Reason::LimitExceeded);
    CHECK_EQ(b.used(images), 930u);
    auto r3 = b.try_reserve(images, 50);
    CHECK(r3.ok());
    r3->cancel();
    CHECK_EQ(b.used(images), 930u);
    CHECK_THROWS(b.reserve(images, 10000), cg::Refused, [](const cg::Refused &r) {
        CHECK_EQ(r.verdict().reason(), cg::Reason::CannotFit);
        CHECK_EQ(r.verdict().limit(), 1000u);
    });

    // Using an empty (moved-from) object is misuse: an Error, never a crash.
    cg::Budget moved = std::move(b);
    CHECK(!b);
    CHECK_THROWS(b.used(images), cg::Error,
                 [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::NullArgument); });
    CHECK_EQ(moved.used(images), 930u);
}

// Destructors give back what the objects hold, at the end of a scope and during unwinding.
void test_raii() {
    cg::Engine engine = test_engine();
    auto parse = engine.cls("parse");
    auto depth = engine.level("nesting_depth");
    auto images = engine.counter("gallery_images");
    auto lookups = engine.counter("file_lookups");
    auto db = engine.backend("db");

    {
        cg::Grant g1 = engine.admit(cg::AdmitRequest(parse, "raii-1").key("user:1"));
        cg::Grant g2 = engine.admit(cg::AdmitRequest(parse, "raii-2").key("user:2"));
        CHECK(has_line(engine, "costguard_in_flight{class=\"parse\"} 2"));
        auto third = engine.try_admit(cg::AdmitRequest(parse, "raii-3").key("user:3"));
        CHECK(!third);
        CHECK_EQ(third.verdict().reason(), cg::Reason::ConcurrencyLimit);
        CHECK(third.verdict().retryable());
        CHECK_THROWS(engine.admit(cg::AdmitRequest(parse, "raii-4")), cg::Refused,
                     [](const cg::Refused &r) { CHECK_EQ(r.verdict().request_id(), std::string_view("raii-4")); });
        auto same_key = engine.try_admit(cg::AdmitRequest(parse, "raii-5").key("user:1"));
        CHECK(!same_key);
    }
    CHECK(has_line(engine, "costguard_in_flight{class=\"parse\"} 0"));

    // Unwinding: a Refused thrown from deep inside a request, then a foreign exception.
    auto outer = engine.begin(parse, "unwind-outer");
    for (int round = 0; round < 2; ++round) {
        try {
            cg::Grant grant = engine.admit(cg::AdmitRequest(parse, "unwind").priority(cg::Priority::Critical));
            cg::Budget budget = grant.budget();
            cg::LevelGuard guard = outer.enter(depth, 2);
            cg::Attempt attempt = engine.begin_attempt(db, budget);
            cg::Reservation reservation = outer.reserve(images, 100);
            CHECK(has_line(engine, "costguard_in_flight{class=\"parse\"} 1"));
            CHECK_EQ(outer.level(depth), 2u);
            CHECK(has_line(engine, "costguard_backend_in_flight{backend=\"db\"} 1"));
            if (round == 0) {
                budget.charge(lookups, 400);
                budget.charge(lookups, 200);  // throws Refused
            } else {
                throw std::runtime_error("the extension failed");
            }
            CHECK(false);  // not reached
        } catch (const cg::Refused &r) {
            CHECK_EQ(round, 0);
            CHECK_EQ(r.verdict().dimension(), std::string_view("file_lookups"));
        } catch (const std::runtime_error &e) {
            CHECK_EQ(round, 1);
            CHECK_EQ(std::string(e.what()), std::string("the extension failed"));
        }
        CHECK(has_line(engine, "costguard_in_flight{class=\"parse\"} 0"));
        CHECK_EQ(outer.level(depth), 0u);
        CHECK(has_line(engine, "costguard_backend_in_flight{backend=\"db\"} 0"));
        CHECK(has_line(engine, "costguard_backend_connecting{backend=\"db\"} 0"));
        // A reservation destroyed unsettled keeps its estimate (nobody knows how much work ran).
        CHECK_EQ(outer.used(images), 100u * static_cast<unsigned>(round + 1));
    }
    // Attempts destroyed unfinished are finished as cancelled.
    CHECK(has_line(engine, "costguard_backend_attempts_total{backend=\"db\",outcome=\"cancelled\"} 2"));

    // Explicit finish: the destructor then does nothing.
    {
        cg::Grant g = engine.admit(cg::AdmitRequest(parse, "finish-1"));
        cg::Budget gb = g.budget();
        g.finish(cg::Outcome::Success);
        CHECK(!g);
        CHECK(has_line(engine, "costguard_in_flight{class=\"parse\"} 0"));
        gb.charge(lookups, 1);  // the budget outlives its grant
        CHECK_THROWS(g.finish(cg::Outcome::Success), cg::Error,
                     [](const cg::Error &e) { CHECK_EQ(e.status(), cg::Status::NullArgument); });
        // An out-of-range outcome is an Error and leaves the grant held (released by the destructor).
        cg::Grant held = engine.admit(cg::AdmitRequest(parse, "finish-2"));
        CHECK_THROWS(held.finish(static_cast<cg::Outcome>(99)), cg::Error, [](const cg::Error &e) {
            CHECK_EQ(e.status(), cg::Status::InvalidArgument);
            CHECK_CONTAINS(e.detail(), "unknown outcome 99");
        });
        CHECK(held);
        CHECK(has_line(engine, "costguard_in_flight{class=\"parse\"} 1"));
        held.finish(cg::Outcome::Success);
        CHECK(has_line(engine, "costguard_in_flight{class=\"parse\"} 0"));
        cg::Attempt a = engine.begin_attempt(db, gb);
        CHECK(a.host().empty());
        CHECK(a.timeout() <= std::chrono::seconds(2));
        a.connected();
        a.finish(cg::AttemptOutcome::Success);
        CHECK(!a);
        cg::LevelGuard l = gb.enter(depth);
        l.leave();
        l.leave();
        CHECK_EQ(gb.level(depth), 0u);
    }
    CHECK(has_line(engine, "costguard_backend_attempts_total{backend=\"db\",outcome=\"success\"} 1"));
}

void test_moves() {
    static_assert(!std::is_copy_constructible_v<cg::Grant> && !std::is_copy_assignable_v<cg::Grant>);
    static_assert(!std::is_copy_constructible_v<cg::Budget> && !std::is_copy_assignable_v<cg::Budget>);
    static_assert(!std::is_copy_constructible_v<cg::Attempt> && !std::is_copy_constructible_v<cg::Reservation>);
    static_assert(!std::is_copy_constructible_v<cg::LevelGuard> && !std::is_copy_constructible_v<cg::Engine>);
    static_assert(std::is_nothrow_move_constructible_v<cg::Grant> && std::is_nothrow_move_assignable_v<cg::Grant>);
    static_assert(std::is_nothrow_move_assignable_v<cg::Attempt> && std::is_nothrow_move_assignable_v<cg::Engine>);
    static_assert(std::is_nothrow_destructible_v<cg::Grant> && std::is_nothrow_destructible_v<cg::Attempt> &&
                  std::is_nothrow_destructible_v<cg::Reservation> && std::is_nothrow_destructible_v<cg::LevelGuard> &&
                  std::is_nothrow_destructible_v<cg::Budget> && std::is_nothrow_destructible_v<cg::Engine>);
    static_assert(std::is_copy_constructible_v<cg::Verdict>);

    cg::Engine first = test_engine();
    cg::Engine engine = std::move(first);
    CHECK(!first);
    CHECK(static_cast<bool>(engine));
    auto parse = engine.cls("parse");
    auto in_flight = [&](int n) {
        return has_line(engine, "costguard_in_flight{class=\"parse\"} " + std::to_string(n));
    };

    cg::Grant a = engine.admit(cg::AdmitRequest(parse, "move-a"));
    cg::Grant b = std::move(a);
    CHECK(!a && b);
    CHECK(in_flight(1));
    cg::Grant c;
    CHECK(!c);
    c = std::move(b);
    CHECK(!b && c);
    CHECK(in_flight(1));
    cg::Grant d = engine.admit(cg::AdmitRequest(parse, "move-d"));
    CHECK(in_flight(2));
    d = std::move(c);  // d's own grant is released, c's moves in
    CHECK(in_flight(1));
    cg::Grant &alias = d;
    d = std::move(alias);  // self-move keeps the grant
    CHECK(d);
    CHECK(in_flight(1));

    std::vector<cg::Grant> grants;
    grants.push_back(std::move(d));
    grants.emplace_back(engine.admit(cg::AdmitRequest(parse, "move-e")));
    grants.reserve(64);  // reallocation moves them
    CHECK(in_flight(2));
    grants.pop_back();
    CHECK(in_flight(1));
    grants.clear();
    CHECK(in_flight(0));

    // Result<T> moves its value out, by value() or by *, and reads it through a const reference.
    cg::Grant from_result = engine.try_admit(cg::AdmitRequest(parse, "move-f")).value();
    CHECK(in_flight(1));
    {
        cg::Grant by_star = *engine.try_admit(cg::AdmitRequest(parse, "move-g"));
        CHECK(in_flight(2));
    }
    CHECK(in_flight(1));
    {
        const cg::Result<cg::Grant> held = engine.try_admit(cg::AdmitRequest(parse, "move-h"));
        const cg::Grant &seen = *held;
        CHECK(static_cast<bool>(seen));
        CHECK(in_flight(2));
    }
    CHECK(in_flight(1));
    // release()/adopt(): ownership handed to C and back.
    costguard_grant raw = from_result.release();
    CHECK(!from_result);
    CHECK(in_flight(1));
    {
        cg::Grant back = cg::Grant::adopt(raw);
        CHECK(back);
    }
    CHECK(in_flight(0));
    CHECK_EQ(costguard_grant_free(raw), static_cast<unsigned>(COSTGUARD_INVALID_HANDLE));

    // Budgets, guards, attempts move the same way.
    auto depth = engine.level("nesting_depth");
    cg::Budget budget = engine.begin(parse, "move-budget");
    cg::LevelGuard g1 = budget.enter(depth, 2);
    cg::LevelGuard g2 = std::move(g1);
    CHECK(!g1 && g2);
    CHECK_EQ(budget.level(depth), 2u);
    g1 = std::move(g2);
    CHECK_EQ(budget.level(depth), 2u);
    g1 = cg::LevelGuard();
    CHECK_EQ(budget.level(depth), 0u);
    cg::Attempt at = engine.begin_attempt(engine.backend("kafka"), budget);
    cg::Attempt at2 = std::move(at);
    CHECK(!at && at2);
    CHECK(!at2.host().empty());
    at2 = cg::Attempt();
    CHECK(has_line(engine, "costguard_backend_in_flight{backend=\"kafka\"} 0"));
    cg::Verdict copy;
    {
        auto refused = budget.try_enter(depth, 9);
        CHECK(!refused);
        copy = refused.verdict();
    }
    CHECK_EQ(copy.reason(), cg::Reason::CannotFit);
}

void test_backends() {
    cg::Engine engine = test_engine();
    auto kafka = engine.backend("kafka");
    auto kafka1 = engine.host(kafka, "kafka1:9092");
    auto budget = engine.begin(engine.cls("parse"), "be-1");

    cg::Attempt a = engine.begin_attempt_on(kafka1, budget);
    CHECK_EQ(a.host(), std::string("kafka1:9092"));
    auto second = engine.try_begin_attempt_on(kafka1, budget, 1);
    CHECK(!second);
    CHECK_EQ(second.verdict().reason(), cg::Reason::NoHealthyHost);
    a.connected();
    a.finish(cg::AttemptOutcome::ServerError);

    CHECK_EQ(cg::outcome_from_http(200), cg::AttemptOutcome::Success);
    CHECK_EQ(cg::outcome_from_http(404), cg::AttemptOutcome::ClientError);
    CHECK_EQ(cg::outcome_from_http(503), cg::AttemptOutcome::Refused);

    auto wait = engine.retry(kafka, budget, cg::AttemptOutcome::ServerError, 1);
    CHECK(wait.ok());
    CHECK(*wait <= std::chrono::seconds(1));
    auto after = engine.retry(kafka, budget, cg::AttemptOutcome::Refused, 2, std::chrono::milliseconds(300));
    CHECK(after.ok());
    CHECK(*after >= std::chrono::milliseconds(300));
    auto no = engine.retry(kafka, budget, cg::AttemptOutcome::ClientError, 3);
    CHECK(!no);
    CHECK_EQ(no.verdict().reason(), cg::Reason::NotRetryable);
    auto spent = engine.retry(kafka, budget, cg::AttemptOutcome::Timeout, 3);
    CHECK(!spent);
    CHECK_EQ(spent.verdict().dimension(), std::string_view("retries"));
}

// The main job in miniature: a 10,000-image gallery in a page edit, as in 2015.
void test_gallery(const std::string &policy_path) {
    cg::Engine engine = cg::Engine::from_file(policy_path, cg::manual_clock);
    const auto parse = engine.cls("parse");
    const auto lookups = engine.counter("file_lookups");
    const auto images = engine.counter("gallery_images");
    const std::string id = "edit-20150423-0340";

    cg::Grant grant = engine.admit(cg::AdmitRequest(parse, id).key("user:Example"));
    cg::Budget budget = grant.budget();

    // Reserved up front: refused before any lookup, and retrying cannot help.
    auto reserved = budget.try_reserve(images, 10000);
    CHECK(!reserved);
    CHECK_EQ(reserved.verdict().reason(), cg::Reason::CannotFit);
    CHECK_EQ(reserved.verdict().describe(),
             std::string("request edit-20150423-0340: parse/gallery_images: 10000 can never fit in a limit of 1000; "
                         "retrying cannot help"));
    CHECK_EQ(budget.used(lookups), 0u);

    // Looked up image by image, as the 2015 parser did: refused at the file-lookup limit.
    unsigned rendered = 0;
    cg::Refusal stop;
    for (unsigned image = 0; image < 10000; ++image) {
        stop = budget.try_charge(lookups, 1);  // before the lookup, not after
        if (stop) {
            break;
        }
        ++rendered;  // render(image)
        engine.advance_clock(std::chrono::milliseconds(2));
    }
    CHECK_EQ(rendered, 500u);
    CHECK(stop.has_value());
    if (stop) {
        CHECK_EQ(stop->reason(), cg::Reason::LimitExceeded);
        CHECK_EQ(stop->dimension(), std::string_view("file_lookups"));
        CHECK_EQ(stop->used(), 500u);
        CHECK_EQ(stop->limit(), 500u);
        CHECK_EQ(stop->retry(), cg::RetryKind::Never);
        CHECK_EQ(stop->describe(),
                 std::string("request edit-20150423-0340: parse/file_lookups: 1 more would exceed the limit (500 of "
                             "500 used); retrying cannot help"));
        std::cout << "  gallery \"all of April\" (10000 images): rendered " << rendered << ", then stopped\n    "
                  << stop->describe() << "\n";
    }
    CHECK(budget.is_cancelled());

    const std::string report = budget.report_text();
    std::cout << report << (report.empty() || report.back() != '\n' ? "\n" : "");
    CHECK_CONTAINS(report, "limit report for request edit-20150423-0340 (class parse, priority normal, policy 1)");
    CHECK_CONTAINS(report, "file_lookups           500 of 500  (limit reached)");
    CHECK_CONTAINS(report, "wall_time              1.000s of 30.000s");
    CHECK_CONTAINS(budget.report_json(), "\"file_lookups\"");
    grant.finish(cg::Outcome::Success);
    CHECK(has_line(engine, "costguard_in_flight{class=\"parse\"} 0"));
}

}  // namespace

int main(int argc, char **argv) {
    const std::string policy = argc > 1 ? argv[1] : "examples/policy.toml";
    try {
        test_basics();
        test_refusals();
        test_raii();
        test_moves();
        test_backends();
        test_gallery(policy);
    } catch (const std::exception &e) {
        std::cerr << "cpp_test: unexpected exception: " << e.what() << "\n";
        ++failures;
    }
    if (failures) {
        std::cerr << "cpp_test: " << failures << " of " << checks << " checks FAILED\n";
        return 1;
    }
    std::cout << "cpp_test: all " << checks << " checks passed\n";
    return 0;
}
