// costguard.hpp: a header-only C++17 wrapper over the costguard C ABI (costguard.h).
//
// For C++ extension authors (HHVM, PHP extensions written in C++): the same engine, with owning,
// move-only types whose destructors give back what they hold, so a grant, an attempt or a level is
// released on every path out of a scope, exceptions included.
//
//     #include <costguard.hpp>
//
//     auto engine = costguard::Engine::from_file("/etc/costguard/policy.toml");
//     auto lookups = engine.counter("file_lookups");
//     auto grant = engine.admit(costguard::AdmitRequest(engine.cls("parse"), request_id).key(user));
//     auto budget = grant.budget();
//     for (const auto &image : gallery) {
//         if (auto refusal = budget.try_charge(lookups, 1)) {   // before the lookup, not after
//             log(refusal->describe());                         // names the limit and the amounts
//             break;
//         }
//         render(image);
//     }
//     grant.finish(costguard::Outcome::Success);                // or let the destructor release it
//
// Two ways to hear "no":
//   - `try_*` functions return a `Refusal` (std::optional<Verdict>: empty when the work may go on) or a
//     `Result<T>` (a T, or the Verdict that refused it). Refusals are the engine doing its job; they
//     are expected on the hot path and cost no exception.
//   - the plain functions (`charge`, `admit`, `begin`, `reserve`, `enter`, ...) throw `Refused`
//     (a `costguard::Error` that carries the Verdict).
// Misuse (an invalid handle, a name the policy does not have, an invalid policy, a bad header) always
// throws `costguard::Error`, which carries the C status and the library's last error text.
//
// Destructors are noexcept and never throw; a status a destructor gets from the C ABI is ignored (the
// C ABI never has undefined behaviour on a stale handle, it returns COSTGUARD_INVALID_HANDLE).
//
// Thread safety (from ffi/API.md): every C handle may be used from any thread, concurrently, and
// a free racing a use is safe (the use completes first or sees an invalid handle). The C++ objects add
// one rule of their own, the usual one for C++ values: `const` member functions may be called
// concurrently on one object from several threads (share a `const Budget &` with the threads of one
// request), but moving from, assigning to, destroying or consuming an object (`finish`, `settle`,
// `cancel`, `leave`, `reset`, `release`) must not race with any other use of that same object.
//
// Link with -lcostguard_ffi -lpthread -ldl -lm.

#ifndef COSTGUARD_HPP
#define COSTGUARD_HPP

#include "costguard.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace costguard {

// ---------------------------------------------------------------------------------------------------
// Plain values and enums

/// Names resolved once by an Engine (plain values, nothing to free; valid across reloads).
using Counter = costguard_counter;
using Level = costguard_level;
using Class = costguard_class;
using Backend = costguard_backend;
using Host = costguard_host;
/// One (counter, amount) pair for charge_many and admission estimates.
using Charge = costguard_charge;
/// Durations are nanoseconds, as in the C ABI.
using Nanos = std::chrono::nanoseconds;

/// Engine flags.
inline constexpr std::uint32_t manual_clock = COSTGUARD_ENGINE_MANUAL_CLOCK;

/// C status codes (stable numbers).
enum class Status : std::uint32_t {
    Ok = COSTGUARD_OK,
    Refused = COSTGUARD_REFUSED,
    NullArgument = COSTGUARD_NULL_ARGUMENT,
    InvalidHandle = COSTGUARD_INVALID_HANDLE,
    InvalidUtf8 = COSTGUARD_INVALID_UTF8,
    InvalidArgument = COSTGUARD_INVALID_ARGUMENT,
    UnknownName = COSTGUARD_UNKNOWN_NAME,
    PolicyError = COSTGUARD_POLICY_ERROR,
    HeaderError = COSTGUARD_HEADER_ERROR,
    IoError = COSTGUARD_IO_ERROR,
    BufferTooSmall = COSTGUARD_BUFFER_TOO_SMALL,
    Panic = COSTGUARD_PANIC,
};

/// Why the engine said no (Rust's costguard::Reason).
enum class Reason : std::uint32_t {
    LimitExceeded = COSTGUARD_REASON_LIMIT_EXCEEDED,
    CannotFit = COSTGUARD_REASON_CANNOT_FIT,
    DeadlineExceeded = COSTGUARD_REASON_DEADLINE_EXCEEDED,
    InsufficientTime = COSTGUARD_REASON_INSUFFICIENT_TIME,
    Cancelled = COSTGUARD_REASON_CANCELLED,
    TooDeep = COSTGUARD_REASON_TOO_DEEP,
    UnknownClass = COSTGUARD_REASON_UNKNOWN_CLASS,
    ConcurrencyLimit = COSTGUARD_REASON_CONCURRENCY_LIMIT,
    Shed = COSTGUARD_REASON_SHED,
    KeyConcurrency = COSTGUARD_REASON_KEY_CONCURRENCY,
    RateLimited = COSTGUARD_REASON_RATE_LIMITED,
    PoolExhausted = COSTGUARD_REASON_POOL_EXHAUSTED,
    QueueFull = COSTGUARD_REASON_QUEUE_FULL,
    QueueTimeout = COSTGUARD_REASON_QUEUE_TIMEOUT,
    KeyTooLong = COSTGUARD_REASON_KEY_TOO_LONG,
    CircuitOpen = COSTGUARD_REASON_CIRCUIT_OPEN,
    BulkheadFull = COSTGUARD_REASON_BULKHEAD_FULL,
    ConnectLimit = COSTGUARD_REASON_CONNECT_LIMIT,
    NoHealthyHost = COSTGUARD_REASON_NO_HEALTHY_HOST,
    RetryBudgetExhausted = COSTGUARD_REASON_RETRY_BUDGET_EXHAUSTED,
    NotRetryable = COSTGUARD_REASON_NOT_RETRYABLE,
};

/// Whether refused work may be tried again: never (it can not fit), later, or after a delay.
enum class RetryKind : std::uint32_t {
    Never = COSTGUARD_RETRY_NEVER,
    Later = COSTGUARD_RETRY_LATER,
    After = COSTGUARD_RETRY_AFTER,
};

/// The unit of a verdict's amounts.
enum class Unit : std::uint32_t {
    Count = COSTGUARD_UNIT_COUNT,
    Bytes = COSTGUARD_UNIT_BYTES,
    Nanoseconds = COSTGUARD_UNIT_NANOS,
};

enum class Priority : std::uint32_t {
    Default = COSTGUARD_PRIORITY_DEFAULT,  // the class's
    Critical = COSTGUARD_PRIORITY_CRITICAL,
    Normal = COSTGUARD_PRIORITY_NORMAL,
    Sheddable = COSTGUARD_PRIORITY_SHEDDABLE,
    Background = COSTGUARD_PRIORITY_BACKGROUND,
};

/// How an admitted request ended (feeds adaptive concurrency limits).
enum class Outcome : std::uint32_t {
    Success = COSTGUARD_OUTCOME_SUCCESS,
    ClientError = COSTGUARD_OUTCOME_CLIENT_ERROR,
    Overload = COSTGUARD_OUTCOME_OVERLOAD,
    Cancelled = COSTGUARD_OUTCOME_CANCELLED,
};

/// How a call to a backend ended (feeds breakers, ejection and retry decisions).
enum class AttemptOutcome : std::uint32_t {
    Success = COSTGUARD_ATTEMPT_SUCCESS,
    ClientError = COSTGUARD_ATTEMPT_CLIENT_ERROR,
    ServerError = COSTGUARD_ATTEMPT_SERVER_ERROR,
    Timeout = COSTGUARD_ATTEMPT_TIMEOUT,
    UpstreamTimeout = COSTGUARD_ATTEMPT_UPSTREAM_TIMEOUT,
    ConnectFailure = COSTGUARD_ATTEMPT_CONNECT_FAILURE,
    Refused = COSTGUARD_ATTEMPT_REFUSED,
    Cancelled = COSTGUARD_ATTEMPT_CANCELLED,
};

// ---------------------------------------------------------------------------------------------------
// Library-wide functions

/// The library version, "0.1.0".
inline std::string_view version() noexcept { return costguard_version(); }

/// The C ABI version this header was written for is 2; a different number means rebuild.
inline std::uint32_t abi_version() noexcept { return costguard_abi_version(); }

/// A status's description ("invalid handle", ...).
inline std::string_view describe(Status status) noexcept {
    return costguard_status_describe(static_cast<std::uint32_t>(status));
}

/// A reason's stable snake_case name ("limit_exceeded", ...).
inline std::string_view reason_name(Reason reason) noexcept {
    return costguard_reason_name(static_cast<std::uint32_t>(reason));
}

namespace detail {

/// Reads a text output with the C ABI's size-query protocol: one call into a stack buffer (enough for
/// most texts), then, on COSTGUARD_BUFFER_TOO_SMALL, one call with exactly the capacity the library
/// asked for. The text may grow between the calls (statistics), so that repeats a few times.
template <class Fill>
costguard_status read_text(Fill fill, std::string &out) {
    char small[512];
    std::size_t len = 0;
    costguard_status s = fill(small, sizeof small, &len);
    if (s == COSTGUARD_OK) {
        out.assign(small, len);
        return s;
    }
    for (int tries = 0; s == COSTGUARD_BUFFER_TOO_SMALL && tries < 8; ++tries) {
        std::vector<char> big(len > 0 ? len : 1);
        std::size_t needed = big.size();
        s = fill(big.data(), big.size(), &needed);
        if (s == COSTGUARD_OK) {
            out.assign(big.data(), needed);
            return s;
        }
        len = needed;
    }
    return s;
}

inline const char *ptr(std::string_view s) noexcept { return s.empty() ? nullptr : s.data(); }

inline std::uint64_t to_ns(std::optional<Nanos> d) noexcept {
    if (!d) {
        return UINT64_MAX;
    }
    auto n = d->count();
    return n <= 0 ? 0 : static_cast<std::uint64_t>(n);
}

/// UINT64_MAX ("none") to nullopt; other values saturate at Nanos::max().
inline std::optional<Nanos> from_ns(std::uint64_t ns) noexcept {
    if (ns == UINT64_MAX) {
        return std::nullopt;
    }
    constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<Nanos::rep>::max());
    return Nanos(static_cast<Nanos::rep>(ns > max ? max : ns));
}

inline std::string_view bounded(const char *field, std::size_t cap) noexcept {
    std::size_t n = 0;
    while (n < cap && field[n] != '\0') {
        ++n;
    }
    return std::string_view(field, n);
}

}  // namespace detail

/// This thread's last error message (policy problems with file:line, header errors, panic
/// messages); "" if none.
inline std::string last_error() {
    std::string text;
    if (detail::read_text([](char *b, std::size_t c, std::size_t *l) { return costguard_last_error(b, c, l); },
                          text) != COSTGUARD_OK) {
        text.clear();
    }
    return text;
}

// ---------------------------------------------------------------------------------------------------
// Errors and verdicts

/// A call the C ABI did not complete: misuse (invalid or foreign handle, unknown name), an invalid
/// policy, an unreadable file, a malformed header, a caught panic, or (as the subclass Refused) a
/// refusal from a throwing function.
class Error : public std::runtime_error {
public:
    Error(Status status, std::string_view function, std::string detail)
        : std::runtime_error(message(status, function, detail)), status_(status), detail_(std::move(detail)) {}

    /// The C status.
    Status status() const noexcept { return status_; }
    /// The library's last error text for this thread when the error was raised ("" if none): every
    /// policy problem with file:line for PolicyError, where a header is malformed for HeaderError.
    const std::string &detail() const noexcept { return detail_; }

private:
    static std::string message(Status status, std::string_view function, const std::string &detail) {
        std::string m(function);
        m += ": ";
        m += describe(status);
        if (!detail.empty()) {
            m += ": ";
            m += detail;
        }
        return m;
    }

    Status status_;
    std::string detail_;
};

namespace detail {

[[noreturn]] inline void fail(costguard_status s, const char *function) {
    // The library sets its thread-local message for exactly these statuses (API.md); for the others
    // (a NULL argument, an invalid handle) an older message may still be there, and would mislead.
    std::string text;
    if (s == COSTGUARD_POLICY_ERROR || s == COSTGUARD_HEADER_ERROR || s == COSTGUARD_IO_ERROR ||
        s == COSTGUARD_PANIC || s == COSTGUARD_UNKNOWN_NAME || s == COSTGUARD_INVALID_ARGUMENT ||
        s == COSTGUARD_INVALID_UTF8) {
        text = last_error();
    }
    throw Error(static_cast<Status>(s), function, std::move(text));
}

inline void check(costguard_status s, const char *function) {
    if (s != COSTGUARD_OK) {
        fail(s, function);
    }
}

}  // namespace detail

/// A refusal: which limit said no, by how much, for which request, and whether retrying can help.
/// A plain value (copyable, thread-compatible).
class Verdict {
public:
    Verdict() noexcept : raw_{} {}
    explicit Verdict(const costguard_verdict &raw) noexcept : raw_(raw) {}

    Reason reason() const noexcept { return static_cast<Reason>(raw_.reason); }
    std::string_view reason_name() const noexcept { return costguard::reason_name(reason()); }
    RetryKind retry() const noexcept { return static_cast<RetryKind>(raw_.retry); }
    /// The Retry-After to send, or nullopt when retrying cannot help or no time can be promised.
    std::optional<Nanos> retry_after() const noexcept {
        return retry() == RetryKind::After ? detail::from_ns(raw_.retry_after_ns) : std::nullopt;
    }
    /// False when the same work can never succeed: do not retry it.
    bool retryable() const noexcept { return retry() != RetryKind::Never; }
    std::uint64_t requested() const noexcept { return raw_.requested; }
    std::uint64_t used() const noexcept { return raw_.used; }
    std::uint64_t limit() const noexcept { return raw_.limit; }
    Unit unit() const noexcept { return static_cast<Unit>(raw_.unit); }
    /// The class whose limit refused; "" when none.
    std::string_view class_name() const noexcept { return detail::bounded(raw_.class_name, sizeof raw_.class_name); }
    /// The dimension that refused ("file_lookups", "wall_time", ...); "" when none.
    std::string_view dimension() const noexcept { return detail::bounded(raw_.dimension, sizeof raw_.dimension); }
    /// The request the verdict is about; "" when none.
    std::string_view request_id() const noexcept { return detail::bounded(raw_.request_id, sizeof raw_.request_id); }

    /// The sentence Rust's Display gives, e.g. "request edit-42: parse/file_lookups: 1 more would
    /// exceed the limit (500 of 500 used); retrying cannot help".
    std::string describe() const {
        std::string text;
        costguard_status s = detail::read_text(
            [this](char *b, std::size_t c, std::size_t *l) { return costguard_verdict_describe(&raw_, b, c, l); },
            text);
        detail::check(s, "costguard_verdict_describe");
        return text;
    }

    const costguard_verdict &native() const noexcept { return raw_; }

private:
    costguard_verdict raw_;
};

/// The outcome of a try_ function with no other result: empty when the work may go on, the Verdict
/// when it was refused.  `if (auto refusal = budget.try_charge(c, 1)) { ... refusal->describe() ... }`
using Refusal = std::optional<Verdict>;

/// Thrown by the throwing forms (charge, admit, begin, ...) when the engine refuses.
class Refused : public Error {
public:
    explicit Refused(const Verdict &verdict)
        : Error(Status::Refused, "costguard", text(verdict)), verdict_(verdict) {}
    const Verdict &verdict() const noexcept { return verdict_; }

private:
    static std::string text(const Verdict &v) {
        try {
            return v.describe();
        } catch (...) {
            return std::string(v.reason_name());
        }
    }
    Verdict verdict_;
};

/// A T, or the Verdict that refused it. `if (auto r = engine.try_admit(req)) { use(*r); } else {
/// respond_503(r.verdict()); }`. value() on a refusal throws Refused.
template <class T>
class Result {
public:
    Result(T value) noexcept(std::is_nothrow_move_constructible_v<T>) : value_(std::move(value)) {}
    Result(const Verdict &verdict) noexcept : verdict_(verdict) {}

    bool ok() const noexcept { return value_.has_value(); }
    explicit operator bool() const noexcept { return ok(); }

    T &value() & {
        if (!value_) {
            throw Refused(verdict_);
        }
        return *value_;
    }
    const T &value() const & {
        if (!value_) {
            throw Refused(verdict_);
        }
        return *value_;
    }
    /// Moves the value out (`Grant g = engine.try_admit(r).value();`).
    T value() && {
        if (!value_) {
            throw Refused(verdict_);
        }
        return std::move(*value_);
    }
    T &operator*() & { return value(); }
    const T &operator*() const & { return value(); }
    /// Moves the value out (`Budget b = *engine.try_begin(...);`).
    T operator*() && { return std::move(*this).value(); }
    T *operator->() { return &value(); }
    const T *operator->() const { return &value(); }

    /// The refusal; a default (all-zero) Verdict when ok().
    const Verdict &verdict() const noexcept { return verdict_; }
    Refusal refusal() const { return ok() ? Refusal() : Refusal(verdict_); }

private:
    std::optional<T> value_;
    Verdict verdict_;
};

namespace detail {

/// One owned C handle: frees it in the destructor, move-only.
template <class Raw, costguard_status (*Free)(Raw)>
class Owned {
public:
    Owned() noexcept : raw_{} {}
    explicit Owned(Raw raw) noexcept : raw_(raw) {}
    Owned(const Owned &) = delete;
    Owned &operator=(const Owned &) = delete;
    Owned(Owned &&other) noexcept : raw_(other.take()) {}
    Owned &operator=(Owned &&other) noexcept {
        if (this != &other) {
            reset();
            raw_ = other.take();
        }
        return *this;
    }
    ~Owned() { reset(); }

    Raw get() const noexcept { return raw_; }
    bool valid() const noexcept { return raw_.bits != 0; }
    Raw take() noexcept {
        Raw r = raw_;
        raw_ = Raw{};
        return r;
    }
    void reset() noexcept {
        if (valid()) {
            (void)Free(take());
        }
    }

private:
    Raw raw_;
};

}  // namespace detail

class Engine;
class Budget;

// ---------------------------------------------------------------------------------------------------
// Grants

/// A level held (nesting depth, sub-requests in flight): left when destroyed or on leave().
/// Move-only. Thread safety: as the module comment; leave() consumes.
class LevelGuard {
public:
    LevelGuard() noexcept = default;
    static LevelGuard adopt(costguard_level_guard raw) noexcept { return LevelGuard(raw); }

    explicit operator bool() const noexcept { return h_.valid(); }
    costguard_level_guard native() const noexcept { return h_.get(); }
    costguard_level_guard release() noexcept { return h_.take(); }

    /// Leaves the level now (idempotent).
    void leave() noexcept { h_.reset(); }

private:
    explicit LevelGuard(costguard_level_guard raw) noexcept : h_(raw) {}
    detail::Owned<costguard_level_guard, costguard_level_guard_free> h_;
};

/// An estimate charged up front, to be settled to the actual amount. Destroyed unsettled, it keeps
/// the whole estimate charged (as Rust's drop: after an exception nobody knows how much work ran);
/// cancel() gives it all back. Move-only; settle() and cancel() consume it.
class Reservation {
public:
    Reservation() noexcept = default;
    static Reservation adopt(costguard_reservation raw) noexcept { return Reservation(raw); }

    explicit operator bool() const noexcept { return h_.valid(); }
    costguard_reservation native() const noexcept { return h_.get(); }
    costguard_reservation release() noexcept { return h_.take(); }

    /// Settles to `actual`: refunds what the estimate over-counted, or charges the excess (all or
    /// nothing; when it does not fit the estimate stays charged and the refusal says by how much).
    Refusal settle(std::uint64_t actual) {
        costguard_verdict v;
        costguard_status s = costguard_reservation_settle(h_.take(), actual, &v);
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, "costguard_reservation_settle");
        return std::nullopt;
    }
    /// Gives the whole estimate back: the work did not happen.
    void cancel() { detail::check(costguard_reservation_cancel(h_.take()), "costguard_reservation_cancel"); }

private:
    explicit Reservation(costguard_reservation raw) noexcept : h_(raw) {}
    detail::Owned<costguard_reservation, costguard_reservation_free> h_;
};

// ---------------------------------------------------------------------------------------------------
// Budget

/// One request's budget. Owns one C budget handle (freed in the destructor); the budget itself lives
/// on while a grant, a child or another handle uses it. Move-only.
///
/// Thread safety: share a `const Budget &` with the threads of one request; every const member may
/// be called concurrently (charges are atomic, all or nothing).
class Budget {
public:
    Budget() noexcept = default;
    /// Takes ownership of a handle made through the C ABI.
    static Budget adopt(costguard_budget raw) noexcept { return Budget(raw); }

    explicit operator bool() const noexcept { return h_.valid(); }
    costguard_budget native() const noexcept { return h_.get(); }
    /// Gives up ownership: the caller frees the handle with costguard_budget_free.
    costguard_budget release() noexcept { return h_.take(); }
    void reset() noexcept { h_.reset(); }

    /// Charges `amount` to this budget and every ancestor, all or nothing.
    [[nodiscard]] Refusal try_charge(Counter counter, std::uint64_t amount) const {
        costguard_verdict v;
        return refusal(costguard_budget_charge(h_.get(), counter, amount, &v), v, "costguard_budget_charge");
    }
    /// As try_charge; throws Refused.
    void charge(Counter counter, std::uint64_t amount) const { or_throw(try_charge(counter, amount)); }

    /// Charges several counters at once, all or nothing.
    [[nodiscard]] Refusal try_charge_many(const Charge *charges, std::size_t n) const {
        costguard_verdict v;
        return refusal(costguard_budget_charge_many(h_.get(), charges, n, &v), v, "costguard_budget_charge_many");
    }
    [[nodiscard]] Refusal try_charge_many(std::initializer_list<Charge> charges) const {
        return try_charge_many(charges.begin(), charges.size());
    }
    [[nodiscard]] Refusal try_charge_many(const std::vector<Charge> &charges) const {
        return try_charge_many(charges.data(), charges.size());
    }
    void charge_many(std::initializer_list<Charge> charges) const { or_throw(try_charge_many(charges)); }
    void charge_many(const std::vector<Charge> &charges) const { or_throw(try_charge_many(charges)); }

    /// Gives back up to `amount` charged through this budget; returns how much was given back.
    std::uint64_t refund(Counter counter, std::uint64_t amount) const {
        std::uint64_t refunded = 0;
        detail::check(costguard_budget_refund(h_.get(), counter, amount, &refunded), "costguard_budget_refund");
        return refunded;
    }

    /// Takes one retry from the request tree's shared retry allowance.
    [[nodiscard]] Refusal try_retry() const {
        costguard_verdict v;
        return refusal(costguard_budget_try_retry(h_.get(), &v), v, "costguard_budget_try_retry");
    }

    [[nodiscard]] Result<Reservation> try_reserve(Counter counter, std::uint64_t estimate) const {
        costguard_reservation r{};
        costguard_verdict v;
        costguard_status s = costguard_budget_reserve(h_.get(), counter, estimate, &r, &v);
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, "costguard_budget_reserve");
        return Reservation::adopt(r);
    }
    Reservation reserve(Counter counter, std::uint64_t estimate) const {
        return try_reserve(counter, estimate).value();
    }

    /// Raises a level by `n` for as long as the guard lives.
    [[nodiscard]] Result<LevelGuard> try_enter(Level level, std::uint64_t n = 1) const {
        costguard_level_guard g{};
        costguard_verdict v;
        costguard_status s = costguard_budget_enter(h_.get(), level, n, &g, &v);
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, "costguard_budget_enter");
        return LevelGuard::adopt(g);
    }
    LevelGuard enter(Level level, std::uint64_t n = 1) const { return try_enter(level, n).value(); }

    /// A child budget (same class, or `cls`), drawing from this one, with a staggered deadline.
    [[nodiscard]] Result<Budget> try_child(std::optional<Class> cls = std::nullopt) const {
        costguard_budget out{};
        costguard_verdict v;
        costguard_status s = costguard_budget_child(h_.get(), cls ? &*cls : nullptr, &out, &v);
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, "costguard_budget_child");
        return Budget(out);
    }
    Budget child(std::optional<Class> cls = std::nullopt) const { return try_child(cls).value(); }

    /// Charged through this budget.
    std::uint64_t used(Counter counter) const {
        std::uint64_t out = 0;
        detail::check(costguard_budget_used(h_.get(), counter, &out), "costguard_budget_used");
        return out;
    }
    /// What can still be charged here and in every ancestor; UINT64_MAX when unlimited.
    std::uint64_t remaining_of(Counter counter) const {
        std::uint64_t out = 0;
        detail::check(costguard_budget_remaining_of(h_.get(), counter, &out), "costguard_budget_remaining_of");
        return out;
    }
    std::uint64_t level(Level level) const {
        std::uint64_t out = 0;
        detail::check(costguard_budget_level(h_.get(), level, &out), "costguard_budget_level");
        return out;
    }
    /// Time left until the deadline; nullopt when there is no deadline.
    std::optional<Nanos> remaining() const {
        std::uint64_t out = 0;
        detail::check(costguard_budget_remaining_ns(h_.get(), &out), "costguard_budget_remaining_ns");
        return detail::from_ns(out);
    }
    bool expired() const {
        bool out = false;
        detail::check(costguard_budget_expired(h_.get(), &out), "costguard_budget_expired");
        return out;
    }
    /// One relaxed load: cheap inside hot loops.
    bool is_cancelled() const {
        bool out = false;
        detail::check(costguard_budget_is_cancelled(h_.get(), &out), "costguard_budget_is_cancelled");
        return out;
    }
    /// Empty while work may go on; otherwise why it should stop.
    [[nodiscard]] Refusal check() const {
        costguard_verdict v;
        return refusal(costguard_budget_check(h_.get(), &v), v, "costguard_budget_check");
    }
    /// Cancels this budget and every descendant.
    void cancel() const { detail::check(costguard_budget_cancel(h_.get()), "costguard_budget_cancel"); }

    /// The propagation header for the next hop ("cg1;id=...").
    std::string to_header() const { return text(costguard_budget_to_header, "costguard_budget_to_header"); }
    /// What this budget used, as the usage header value to answer its caller with ("cgu1;retries=2;...").
    std::string usage() const { return text(costguard_budget_usage, "costguard_budget_usage"); }
    /// Charges the usage a callee answered with (a malformed value throws Error). Usage that does not
    /// fit is refused and charged as far as the limits allow, and the budget is cancelled.
    [[nodiscard]] Refusal try_charge_usage(std::string_view usage) const {
        costguard_verdict v;
        return refusal(costguard_budget_charge_usage(h_.get(), usage.data(), usage.size(), &v), v,
                       "costguard_budget_charge_usage");
    }
    /// As try_charge_usage; throws Refused.
    void charge_usage(std::string_view usage) const { or_throw(try_charge_usage(usage)); }
    /// The limit report as JSON and as text.
    std::string report_json() const { return text(costguard_budget_report_json, "costguard_budget_report_json"); }
    std::string report_text() const { return text(costguard_budget_report_text, "costguard_budget_report_text"); }

private:
    friend class Engine;
    friend class Grant;
    explicit Budget(costguard_budget raw) noexcept : h_(raw) {}

    static Refusal refusal(costguard_status s, const costguard_verdict &v, const char *function) {
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, function);
        return std::nullopt;
    }
    static void or_throw(const Refusal &r) {
        if (r) {
            throw Refused(*r);
        }
    }
    std::string text(costguard_status (*fn)(costguard_budget, char *, std::size_t, std::size_t *),
                     const char *function) const {
        std::string out;
        costguard_budget b = h_.get();
        detail::check(detail::read_text([fn, b](char *buf, std::size_t c, std::size_t *l) { return fn(b, buf, c, l); }, out),
                      function);
        return out;
    }

    detail::Owned<costguard_budget, costguard_budget_free> h_;
};

// ---------------------------------------------------------------------------------------------------
// Admission

/// What to admit. Holds views: the strings passed in must outlive the admit call.
class AdmitRequest {
public:
    AdmitRequest(Class cls, std::string_view request_id) noexcept : cls_(cls), id_(request_id) {}

    /// A per-key fairness key (user, IP, tenant).
    AdmitRequest &key(std::string_view key) noexcept {
        key_ = key;
        return *this;
    }
    AdmitRequest &priority(Priority p) noexcept {
        priority_ = p;
        return *this;
    }
    /// Wait in the class's queue (blocks the calling thread) instead of refusing at once.
    AdmitRequest &wait(bool yes = true) noexcept {
        wait_ = yes;
        return *this;
    }
    /// A declared estimate: refused up front if it can never fit; held in pools while running.
    AdmitRequest &estimate(Counter counter, std::uint64_t amount) {
        estimates_.push_back(Charge{counter, amount});
        return *this;
    }
    /// The cost against the key's rate (0 or unset: 1).
    AdmitRequest &rate_cost(std::uint64_t cost) noexcept {
        rate_cost_ = cost;
        return *this;
    }
    /// An incoming propagation header: the budget can only be tightened by it.
    AdmitRequest &header(std::string_view header) noexcept {
        header_ = header;
        return *this;
    }

    /// The C struct, pointing into this object and the strings it views.
    costguard_admit_request native() const noexcept {
        costguard_admit_request r;
        std::memset(&r, 0, sizeof r);
        r.class_ = cls_;
        r.request_id = detail::ptr(id_);
        r.request_id_len = id_.size();
        r.key = detail::ptr(key_);
        r.key_len = key_.size();
        r.priority = static_cast<std::uint32_t>(priority_);
        r.flags = wait_ ? COSTGUARD_ADMIT_WAIT : 0u;
        r.estimates = estimates_.empty() ? nullptr : estimates_.data();
        r.estimates_len = estimates_.size();
        r.rate_cost = rate_cost_;
        r.header = detail::ptr(header_);
        r.header_len = header_.size();
        return r;
    }

private:
    Class cls_;
    std::string_view id_;
    std::string_view key_;
    Priority priority_ = Priority::Default;
    bool wait_ = false;
    std::vector<Charge> estimates_;
    std::uint64_t rate_cost_ = 0;
    std::string_view header_;
};

/// An admitted request: its concurrency permit, its key's share, its pool amounts and its budget.
/// Released exactly once: by finish(), or by the destructor (by return or by exception unwinding).
/// Move-only. Thread safety: budget() is const; finish() consumes.
class Grant {
public:
    Grant() noexcept = default;
    static Grant adopt(costguard_grant raw) noexcept { return Grant(raw); }

    explicit operator bool() const noexcept { return h_.valid(); }
    costguard_grant native() const noexcept { return h_.get(); }
    costguard_grant release() noexcept { return h_.take(); }

    /// A new handle on the request's budget (it stays usable after the grant is released).
    Budget budget() const {
        costguard_budget out{};
        detail::check(costguard_grant_budget(h_.get(), &out), "costguard_grant_budget");
        return Budget(out);
    }
    /// Records how the request ended (for adaptive limits) and releases everything now.
    void finish(Outcome outcome) {
        costguard_status s = costguard_grant_finish(h_.get(), static_cast<std::uint32_t>(outcome));
        if (s != COSTGUARD_INVALID_ARGUMENT) {  // an out-of-range outcome leaves the grant held
            h_.take();
        }
        detail::check(s, "costguard_grant_finish");
    }

private:
    explicit Grant(costguard_grant raw) noexcept : h_(raw) {}
    detail::Owned<costguard_grant, costguard_grant_free> h_;
};

// ---------------------------------------------------------------------------------------------------
// Backends

/// One call to a backend. Destroyed unfinished, it is finished as cancelled (an exception unwinding
/// through a call never leaves a connect permit or a probe slot taken). Move-only.
/// Thread safety: timeout() and host() are const; connected() and finish() must not race other uses.
class Attempt {
public:
    Attempt() noexcept = default;
    static Attempt adopt(costguard_attempt raw) noexcept { return Attempt(raw); }

    explicit operator bool() const noexcept { return h_.valid(); }
    costguard_attempt native() const noexcept { return h_.get(); }
    costguard_attempt release() noexcept { return h_.take(); }

    /// The smaller of the backend's timeout and the request's remaining time minus a margin.
    Nanos timeout() const {
        std::uint64_t out = 0;
        detail::check(costguard_attempt_timeout_ns(h_.get(), &out), "costguard_attempt_timeout_ns");
        return detail::from_ns(out).value_or(Nanos::max());
    }
    /// The chosen host ("" when the backend has no pool).
    std::string host() const {
        std::string out;
        costguard_attempt a = h_.get();
        detail::check(detail::read_text(
                          [a](char *b, std::size_t c, std::size_t *l) { return costguard_attempt_host(a, b, c, l); }, out),
                      "costguard_attempt_host");
        return out;
    }
    /// The connection is up: frees the connect permit.
    void connected() { detail::check(costguard_attempt_connected(h_.get()), "costguard_attempt_connected"); }
    /// Reports how the call ended; `retry_after` for AttemptOutcome::Refused.
    void finish(AttemptOutcome outcome, std::optional<Nanos> retry_after = std::nullopt) {
        costguard_status s =
            costguard_attempt_finish(h_.get(), static_cast<std::uint32_t>(outcome), detail::to_ns(retry_after));
        if (s != COSTGUARD_INVALID_ARGUMENT) {  // an out-of-range outcome leaves the attempt open
            h_.take();
        }
        detail::check(s, "costguard_attempt_finish");
    }

private:
    explicit Attempt(costguard_attempt raw) noexcept : h_(raw) {}
    detail::Owned<costguard_attempt, costguard_attempt_free> h_;
};

/// The outcome an HTTP status maps to (2xx success, 4xx client error, 5xx server error, ...).
inline AttemptOutcome outcome_from_http(std::uint16_t http_status) {
    std::uint32_t out = 0;
    detail::check(costguard_attempt_outcome_from_http(http_status, &out), "costguard_attempt_outcome_from_http");
    return static_cast<AttemptOutcome>(out);
}

/// Validates a cg1 propagation header and gives its fields as JSON; throws Error (HeaderError, with
/// where it is malformed in detail()).
inline std::string decode_header_json(std::string_view header) {
    std::string out;
    detail::check(detail::read_text(
                      [header](char *b, std::size_t c, std::size_t *l) {
                          return costguard_header_decode_json(detail::ptr(header), header.size(), b, c, l);
                      },
                      out),
                  "costguard_header_decode_json");
    return out;
}

// ---------------------------------------------------------------------------------------------------
// Engine

/// The engine: the compiled policy (hot-reloadable), admission state and backend state of a process.
/// Move-only; the destructor frees the handle, and budgets, grants and attempts made from it keep
/// working. Thread safety: every const member may be called from any thread concurrently, reload
/// included (running budgets keep their policy).
///
/// Forking servers: after fork() the child's engine behaves as a fresh engine with the same policy;
/// every Budget, Grant, Attempt, Reservation and LevelGuard copied into the child is invalid there
/// (its permits belong to the parent). Let the child's copies go out of scope, or release() them: their
/// destructors only get COSTGUARD_INVALID_HANDLE, which they ignore.
class Engine {
public:
    Engine() noexcept = default;
    static Engine adopt(costguard_engine raw) noexcept { return Engine(raw); }

    /// From TOML text; throws Error (PolicyError: every problem, with line and column, in detail()).
    static Engine from_string(std::string_view toml, std::uint32_t flags = 0) {
        costguard_engine e{};
        detail::check(costguard_engine_new_from_str(detail::ptr(toml), toml.size(), flags, &e),
                      "costguard_engine_new_from_str");
        return Engine(e);
    }
    /// From a TOML file; throws Error (IoError, PolicyError with file:line).
    static Engine from_file(std::string_view path, std::uint32_t flags = 0) {
        costguard_engine e{};
        detail::check(costguard_engine_new_from_file(detail::ptr(path), path.size(), flags, &e),
                      "costguard_engine_new_from_file");
        return Engine(e);
    }

    explicit operator bool() const noexcept { return h_.valid(); }
    costguard_engine native() const noexcept { return h_.get(); }
    costguard_engine release() noexcept { return h_.take(); }

    /// Applies a new policy to budgets started from now on and returns its generation. A policy that
    /// fails validation throws Error and changes nothing.
    std::uint64_t reload_from_string(std::string_view toml) const {
        std::uint64_t g = 0;
        detail::check(costguard_engine_reload_from_str(h_.get(), detail::ptr(toml), toml.size(), &g),
                      "costguard_engine_reload_from_str");
        return g;
    }
    std::uint64_t reload_from_file(std::string_view path) const {
        std::uint64_t g = 0;
        detail::check(costguard_engine_reload_from_file(h_.get(), detail::ptr(path), path.size(), &g),
                      "costguard_engine_reload_from_file");
        return g;
    }
    std::uint64_t generation() const {
        std::uint64_t g = 0;
        detail::check(costguard_engine_generation(h_.get(), &g), "costguard_engine_generation");
        return g;
    }
    /// Manual-clock engines only (Error InvalidArgument otherwise). The clock only moves forward:
    /// a negative duration throws std::invalid_argument, as in the PHP binding.
    void advance_clock(Nanos by) const {
        if (by.count() < 0) {
            throw std::invalid_argument("costguard::Engine::advance_clock: a negative duration");
        }
        detail::check(costguard_engine_advance_clock(h_.get(), detail::to_ns(by)), "costguard_engine_advance_clock");
    }

    /// Names, resolved once; Error UnknownName when the policy has no such name.
    Counter counter(std::string_view name) const {
        Counter out{};
        detail::check(costguard_engine_counter(h_.get(), detail::ptr(name), name.size(), &out), "costguard_engine_counter");
        return out;
    }
    Level level(std::string_view name) const {
        Level out{};
        detail::check(costguard_engine_level(h_.get(), detail::ptr(name), name.size(), &out), "costguard_engine_level");
        return out;
    }
    Class cls(std::string_view name) const {
        Class out{};
        detail::check(costguard_engine_class(h_.get(), detail::ptr(name), name.size(), &out), "costguard_engine_class");
        return out;
    }
    Backend backend(std::string_view name) const {
        Backend out{};
        detail::check(costguard_engine_backend(h_.get(), detail::ptr(name), name.size(), &out), "costguard_engine_backend");
        return out;
    }
    Host host(Backend backend, std::string_view name) const {
        Host out{};
        detail::check(costguard_engine_host(h_.get(), backend, detail::ptr(name), name.size(), &out), "costguard_engine_host");
        return out;
    }

    /// Every admission and backend counter, as JSON and in Prometheus' text format.
    std::string stats_json() const { return text(costguard_engine_stats_json, "costguard_engine_stats_json"); }
    std::string stats_prometheus() const {
        return text(costguard_engine_stats_prometheus, "costguard_engine_stats_prometheus");
    }

    /// A budget without admission (optionally tightened by an incoming header).
    [[nodiscard]] Result<Budget> try_begin(Class cls, std::string_view request_id, std::string_view header = {}) const {
        costguard_budget out{};
        costguard_verdict v;
        costguard_status s = costguard_budget_begin(h_.get(), cls, detail::ptr(request_id), request_id.size(),
                                                    detail::ptr(header), header.size(), &out, &v);
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, "costguard_budget_begin");
        return Budget(out);
    }
    Budget begin(Class cls, std::string_view request_id, std::string_view header = {}) const {
        return try_begin(cls, request_id, header).value();
    }

    /// Admission control at the door.
    [[nodiscard]] Result<Grant> try_admit(const AdmitRequest &request) const {
        costguard_admit_request r = request.native();
        costguard_grant out{};
        costguard_verdict v;
        costguard_status s = costguard_admit(h_.get(), &r, &out, &v);
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, "costguard_admit");
        return Grant::adopt(out);
    }
    Grant admit(const AdmitRequest &request) const { return try_admit(request).value(); }

    /// One attempt on a backend (a healthy host is chosen when it has a pool); `retry` is 0 for a
    /// first attempt, else the retry number.
    [[nodiscard]] Result<Attempt> try_begin_attempt(Backend backend, const Budget &budget, std::uint32_t retry = 0) const {
        costguard_attempt out{};
        costguard_verdict v;
        return attempt(costguard_attempt_begin(h_.get(), backend, budget.native(), retry, &out, &v), out, v,
                       "costguard_attempt_begin");
    }
    Attempt begin_attempt(Backend backend, const Budget &budget, std::uint32_t retry = 0) const {
        return try_begin_attempt(backend, budget, retry).value();
    }
    /// One attempt on a given host of a backend's pool.
    [[nodiscard]] Result<Attempt> try_begin_attempt_on(Host host, const Budget &budget, std::uint32_t retry = 0) const {
        costguard_attempt out{};
        costguard_verdict v;
        return attempt(costguard_attempt_begin_on(h_.get(), host, budget.native(), retry, &out, &v), out, v,
                       "costguard_attempt_begin_on");
    }
    Attempt begin_attempt_on(Host host, const Budget &budget, std::uint32_t retry = 0) const {
        return try_begin_attempt_on(host, budget, retry).value();
    }

    /// Whether to retry after `outcome` (the `attempts`-th): the wait before retrying, or the
    /// verdict that says stop.
    [[nodiscard]] Result<Nanos> retry(Backend backend, const Budget &budget, AttemptOutcome outcome, std::uint32_t attempts,
                        std::optional<Nanos> retry_after = std::nullopt) const {
        std::uint64_t wait = 0;
        costguard_verdict v;
        costguard_status s = costguard_retry(h_.get(), backend, budget.native(), static_cast<std::uint32_t>(outcome),
                                             detail::to_ns(retry_after), attempts, &wait, &v);
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, "costguard_retry");
        return detail::from_ns(wait).value_or(Nanos::max());
    }

private:
    explicit Engine(costguard_engine raw) noexcept : h_(raw) {}

    static Result<Attempt> attempt(costguard_status s, costguard_attempt out, const costguard_verdict &v,
                                   const char *function) {
        if (s == COSTGUARD_REFUSED) {
            return Verdict(v);
        }
        detail::check(s, function);
        return Attempt::adopt(out);
    }
    std::string text(costguard_status (*fn)(costguard_engine, char *, std::size_t, std::size_t *),
                     const char *function) const {
        std::string out;
        costguard_engine e = h_.get();
        detail::check(detail::read_text([fn, e](char *buf, std::size_t c, std::size_t *l) { return fn(e, buf, c, l); }, out),
                      function);
        return out;
    }

    detail::Owned<costguard_engine, costguard_engine_free> h_;
};

static_assert(!std::is_copy_constructible_v<Budget> && std::is_nothrow_move_constructible_v<Budget> &&
              std::is_nothrow_move_assignable_v<Budget> && std::is_nothrow_destructible_v<Budget>);
static_assert(!std::is_copy_constructible_v<Grant> && std::is_nothrow_move_constructible_v<Grant> &&
              std::is_nothrow_destructible_v<Grant>);
static_assert(!std::is_copy_constructible_v<Attempt> && std::is_nothrow_move_constructible_v<Attempt>);
static_assert(!std::is_copy_constructible_v<Engine> && std::is_nothrow_move_constructible_v<Engine>);

}  // namespace costguard

#endif  // COSTGUARD_HPP
