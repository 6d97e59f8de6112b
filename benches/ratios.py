#!/usr/bin/env python3
"""Prints the ratios of the benchmarks against the baselines measured in the same run.

Reads criterion's output (target/criterion/<group>/<bench>/new/{benchmark,estimates,sample}.json)
after

    cargo bench --bench budget            # or one group, e.g. `cargo bench --bench budget -- charge`
    cargo bench --bench admission         # or e.g. `cargo bench --bench admission -- '^admit/'`
    cargo bench --bench backend

and prints, for every pair below, the subject's and the baseline's time per iteration and their ratio
(for the contention groups, the ratio of aggregate throughputs), with the goal where there is one.
Only the benches with results are shown (`--bench` picks one).

Two statistics are shown for every ratio:
  - criterion's median (or --stat mean/slope): what criterion prints;
  - the fastest sample (sample.json, time/iterations of the best of the ~100 samples). On a shared
    machine a neighbour can only ever add time, so the fastest sample is the steadiest estimate of
    the intrinsic cost; the median moves with whatever the neighbours did during those 4 seconds.
    (Not for the contention rows, where the fastest sample is an uncontended one.)

    python3 benches/ratios.py [--bench budget|admission|backend] [--stat median|mean|slope] [--markdown]
                              [--criterion-dir DIR]

Exit status: 0 when every goal is met by at least one of the two statistics (contention: by the
criterion estimate), 1 when a goal is missed, 2 when a figure is missing or a contention run is not
valid (its scaling reference shows the machine did not give it two cores; see SCALING_REFERENCE).
Only the Python standard library is used.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

# (group, subject, baseline, kind, goal[, strict])
#   kind "time": ratio = subject time / baseline time; goal is a maximum (with strict=True, the ratio
#     must be below it: "faster than").
#   kind "throughput": ratio = subject ops/s / baseline ops/s, both aggregate (criterion's
#     Throughput::Elements per iteration = number of threads); goal is a minimum.
#   kind "abs_ns": the subject's own time in nanoseconds; goal is a maximum; the baseline is only shown.
PAIRS = [
    ("charge", "try_charge_root", "atomic_cas_add_if_below", "time", 1.5),
    ("charge", "try_charge_root", "atomic_fetch_add", "time", None),
    ("charge", "try_charge_root_whole_result", "atomic_cas_add_if_below", "time", None),
    ("charge", "atomic_fetch_add", "atomic_cas_add_if_below", "time", None),
    ("charge", "try_charge_child_depth1", "atomic_cas_add_if_below_x2", "time", None),
    ("charge", "try_charge_child_depth3", "atomic_cas_add_if_below", "time", None),
    ("charge", "try_charge_many_2dims", "atomic_cas_add_if_below_x2", "time", None),
    ("charge", "refund", "atomic_cas_add_if_below", "time", None),
    ("charge", "enter_drop_level_guard", "atomic_cas_add_if_below", "time", None),
    ("charge", "refused_limit_exceeded", "atomic_cas_add_if_below", "time", None),
    ("charge", "refused_cannot_fit", "atomic_cas_add_if_below", "time", None),
    ("cancel_flag", "is_cancelled", "relaxed_load_u32", "time", 1.5),
    ("deadline", "expired_monotonic_coarse", "relaxed_load_u64", "abs_ns", 3.0),
    ("deadline", "expired_monotonic_coarse", "relaxed_load_u64", "time", None),
    ("deadline", "check_monotonic_coarse", "relaxed_load_u64", "time", None),
    ("deadline", "expired_manual", "relaxed_load_u64", "time", None),
    ("deadline", "check_manual", "relaxed_load_u64", "time", None),
    ("deadline", "check_manual_whole_result", "relaxed_load_u64", "time", None),
    ("deadline", "instant_now", "relaxed_load_u64", "time", None),
    ("deadline", "expired_monotonic_coarse", "instant_now", "time", None),
    ("deadline", "remaining_monotonic_precise", "instant_now", "time", None),
    ("contention", "try_charge_2threads_shared", "try_charge_1thread", "throughput", 0.40),
    ("contention", "cas_2threads_shared", "cas_1thread", "throughput", None),
    ("contention", "fetch_add_2threads_shared", "fetch_add_1thread", "throughput", None),
    ("contention", "try_charge_2threads_shared", "cas_2threads_shared", "throughput", None),
    ("contention", "try_charge_2threads_separate", "try_charge_1thread", "throughput", None),
    ("contention", "try_charge_1thread", "cas_1thread", "time", None),
    # benches/backend.rs
    ("attempt", "begin_finish_no_hosts", "atomic_fetch_add_sub", "time", 3.0),
    ("attempt", "begin_finish_no_hosts", "failsafe_call", "time", 0.5),
    ("attempt", "begin_finish_3_hosts", "atomic_fetch_add_sub", "time", 3.0),
    ("attempt", "begin_finish_3_hosts", "failsafe_call", "time", 0.5),
    ("attempt", "failsafe_call", "atomic_fetch_add_sub", "time", None),
    ("attempt", "begin_finish_no_hosts_retry1", "atomic_fetch_add_sub", "time", None),
    ("attempt", "begin_finish_no_hosts_full_retry_budget", "atomic_fetch_add_sub", "time", None),
    ("attempt", "begin_finish_no_hosts_full_retry_budget", "failsafe_call", "time", None),
    ("attempt", "begin_finish_no_hosts_monotonic", "atomic_fetch_add_sub", "time", None),
    ("attempt", "begin_finish_no_hosts_monotonic", "failsafe_call", "time", None),
    ("attempt", "begin_finish_no_hosts_tsc", "failsafe_call", "time", None),
    ("attempt", "begin_finish_no_hosts_tsc", "begin_finish_no_hosts_monotonic", "time", None),
    ("attempt", "instant_now", "atomic_fetch_add_sub", "time", None),
    ("attempt_contention", "attempt_2threads_shared", "attempt_1thread", "throughput", None),
    ("attempt_contention", "fetch_add_sub_2threads_shared", "fetch_add_sub_1thread", "throughput",
     None),
    ("attempt_contention", "failsafe_2threads_shared", "failsafe_1thread", "throughput", None),
    ("attempt_contention", "attempt_2threads_separate_engines", "attempt_1thread", "throughput",
     None),
    ("attempt_contention", "attempt_2threads_shared", "failsafe_2threads_shared", "throughput",
     None),
    ("attempt_contention", "attempt_3hosts_2threads_shared", "attempt_3hosts_1thread", "throughput",
     None),
    ("attempt_contention", "retry_2threads_shared", "retry_1thread", "throughput", None),
    ("retry", "retry_granted", "atomic_compare_exchange", "time", 4.0),
    ("retry", "retry_granted_refund", "atomic_compare_exchange", "time", None),
    ("retry", "budget_try_retry", "atomic_compare_exchange", "time", None),
    # benches/admission.rs
    ("admit", "try_admit", "atomic_fetch_add_sub", "time", 3.0),
    ("admit", "try_admit", "tokio_semaphore_try_acquire", "time", 1.0, True),
    ("admit", "tokio_semaphore_try_acquire", "atomic_fetch_add_sub", "time", None),
    ("admit", "try_admit_10_counters", "atomic_fetch_add_sub", "time", None),
    ("admit", "try_admit_10_counters", "try_admit", "time", None),
    ("admit", "try_admit_monotonic", "tokio_semaphore_try_acquire", "time", None),
    ("admit", "try_admit_tsc", "tokio_semaphore_try_acquire", "time", None),
    ("admit", "try_admit_tsc", "try_admit_monotonic", "time", None),
    ("admit", "begin", "atomic_fetch_add_sub", "time", None),
    ("admit", "try_admit", "begin", "time", None),
    ("admit_keys", "random_key_100k_idle", "same_key_idle", "time", 2.0),
    ("admit_keys", "random_key_100k_held", "same_key_held", "time", 2.0),
    ("admit_keys", "same_key_idle", "no_key", "time", None),
    ("admit_keys", "same_key_held", "no_key", "time", None),
    ("admit_contention", "try_admit_2threads_shared", "try_admit_1thread", "throughput", 0.50),
    ("admit_contention", "fetch_add_sub_2threads_shared", "fetch_add_sub_1thread", "throughput",
     None),
    ("admit_contention", "tokio_semaphore_2threads_shared", "tokio_semaphore_1thread", "throughput",
     None),
    ("admit_contention", "try_admit_2threads_separate_classes", "try_admit_1thread", "throughput",
     None),
    ("admit_contention", "try_admit_2threads_separate_engines", "try_admit_1thread", "throughput",
     None),
    ("admit_contention", "try_admit_2threads_shared", "try_admit_2threads_separate_engines",
     "throughput", None),
    ("admit_contention", "try_admit_2threads_shared", "tokio_semaphore_2threads_shared",
     "throughput", None),
    ("admit_contention", "try_admit_1thread", "tokio_semaphore_1thread", "time", None),
]

# Per contention group, the scaling reference (two threads sharing nothing / one thread): when it is
# below SCALING_OK the machine did not give the run two cores' worth of work, whatever the CPU-time
# rule saw (a neighbour on the other hyperthread, or the hypervisor taking the vCPU, is invisible to
# it), and the rows with a goal say so.
SCALING_REFERENCE = {
    "admit_contention": ("try_admit_2threads_separate_engines", "try_admit_1thread"),
    "attempt_contention": ("attempt_2threads_separate_engines", "attempt_1thread"),
}
SCALING_OK = 1.5

# The bench each group belongs to.
BENCHES = {
    "charge": "budget", "cancel_flag": "budget", "deadline": "budget", "contention": "budget",
    "admit": "admission", "admit_keys": "admission", "admit_contention": "admission",
    "attempt": "backend", "retry": "backend", "attempt_contention": "backend",
}

# Figures whose files were written further apart than this are probably not from the same run.
SAME_RUN_SECONDS = 5 * 60


class Bench:
    def __init__(self, estimates, samples, elements, mtime, parallelism):
        self.estimates = estimates
        self.samples = samples
        self.elements = elements
        self.mtime = mtime
        self.parallelism = parallelism

    def nanos(self, stat):
        """Time per iteration, in nanoseconds, by `stat` (a criterion estimate, or "min")."""
        if stat == "min":
            if not self.samples:
                return None
            return min(t / n for t, n in zip(self.samples["times"], self.samples["iters"]))
        est = self.estimates.get(stat)
        if est is None and stat == "slope":
            est = self.estimates.get("mean")
        return None if est is None else est["point_estimate"]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def load(criterion_dir):
    """Maps (group, function) to a Bench."""
    found = {}
    for bench_json in Path(criterion_dir).glob("**/new/benchmark.json"):
        new = bench_json.parent
        if not (new / "estimates.json").exists():
            continue
        meta = load_json(bench_json)
        samples = load_json(new / "sample.json") if (new / "sample.json").exists() else None
        throughput = meta.get("throughput") or {}
        elements = throughput.get("Elements", 1) if isinstance(throughput, dict) else 1
        par_json = new.parent / "parallelism.json"
        parallelism = load_json(par_json) if par_json.exists() else None
        key = (meta.get("group_id"), meta.get("function_id"))
        found[key] = Bench(load_json(new / "estimates.json"), samples, elements,
                           os.path.getmtime(new / "estimates.json"), parallelism)
    return found


def ratio(kind, s, b, s_ns, b_ns):
    if kind == "time":
        return s_ns / b_ns
    if kind == "throughput":
        return (s.elements / s_ns) / (b.elements / b_ns)
    return s_ns  # abs_ns


def fmt(kind, value):
    if kind == "time":
        return f"{value:.2f}x"
    if kind == "throughput":
        return f"{value:.2f}"
    return f"{value:.2f} ns"


def meets(kind, value, goal, strict=False):
    if kind == "throughput":
        return value >= goal
    return value < goal if strict else value <= goal


def occupancy_note(criterion_dir, subject):
    """For the per-key rows: how many of the keys had an entry of their own when the table was
    populated (saved by benches/admission.rs as admit_keys/occupancy_<idle|held>.json)."""
    for how in ("idle", "held"):
        if subject.endswith("_" + how):
            path = Path(criterion_dir) / "admit_keys" / f"occupancy_{how}.json"
            if path.exists():
                o = load_json(path)
                return (f"{how}: {o['occupied']} of {o['keys']} keys with an entry "
                        f"(capacity {o['capacity']})")
    return None


def main():
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stat", choices=["median", "mean", "slope"], default="median",
                        help="criterion estimate for the first ratio column (default: median)")
    parser.add_argument("--bench", choices=sorted(set(BENCHES.values())),
                        help="only this bench's pairs (default: every bench with results)")
    parser.add_argument("--criterion-dir", default=str(here.parent / "target" / "criterion"))
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    data = load(args.criterion_dir)
    if not data:
        print(f"no criterion results under {args.criterion_dir}; run `cargo bench --bench budget` "
              "or `cargo bench --bench admission`", file=sys.stderr)
        return 2
    # A bench with no result at all was not run: its pairs are left out rather than reported missing.
    ran = {BENCHES.get(group) for group, _ in data}
    benches = {args.bench} if args.bench else ran

    header = ("group", "subject", "baseline", f"subject ns ({args.stat})",
              f"baseline ns ({args.stat})", f"ratio ({args.stat})", "ratio (fastest)", "goal", "",
              "note")
    rows = []
    status = 0
    for group, subject, baseline, kind, goal, *strict in PAIRS:
        strict = bool(strict and strict[0])
        if BENCHES[group] not in benches:
            continue
        s = data.get((group, subject))
        b = data.get((group, baseline))
        if s is None or b is None:
            missing = subject if s is None else baseline
            rows.append((group, subject, baseline, "-", "-", "-", "-", "", "?",
                         "missing: " + missing))
            status = max(status, 2)
            continue
        s_ns, b_ns = s.nanos(args.stat), b.nanos(args.stat)
        s_min, b_min = s.nanos("min"), b.nanos("min")
        main_value = ratio(kind, s, b, s_ns, b_ns)
        # For the contention rows the fastest sample is not a steadier estimate: a sample in which the
        # threads never ran at once (timed over all its chunks, see benches/budget.rs) is faster than
        # a contended one. Those rows use the criterion estimate only.
        min_value = (None if kind == "throughput" or s_min is None or b_min is None
                     else ratio(kind, s, b, s_min, b_min))
        notes = []
        if kind == "throughput":
            notes.append(f"{s.elements * 1e3 / s_ns:.0f} vs {b.elements * 1e3 / b_ns:.0f} Mops/s")
            if s.parallelism is not None:
                notes.append(f"parallelism {s.parallelism.get('parallelism', 0):.2f}, "
                             f"{100 * s.parallelism.get('parallel_chunks', 0):.0f}% of chunks "
                             "with all threads running")
        invalid = False
        reference = SCALING_REFERENCE.get(group)
        if kind == "throughput" and goal is not None and reference:
            r_s, r_b = data.get((group, reference[0])), data.get((group, reference[1]))
            if r_s is not None and r_b is not None:
                scaling = ratio("throughput", r_s, r_b, r_s.nanos(args.stat), r_b.nanos(args.stat))
                if scaling < SCALING_OK:
                    invalid = True
                    notes.append(f"NOT VALID: scaling reference {reference[0]} only {scaling:.2f} "
                                 f"(< {SCALING_OK}): this run did not get two cores")
        if group == "admit_keys":
            note = occupancy_note(args.criterion_dir, subject)
            if note:
                notes.append(note)
        if abs(s.mtime - b.mtime) > SAME_RUN_SECONDS:
            notes.append("different runs?")
        verdict, goal_text = "", ""
        if goal is not None:
            goal_text = {"time": f"{'<' if strict else '<='} {goal}x",
                         "throughput": f">= {goal:.2f}", "abs_ns": f"< {goal} ns"}[kind]
            ok_main = meets(kind, main_value, goal, strict)
            ok_min = min_value is not None and meets(kind, min_value, goal, strict)
            if invalid:
                verdict = "not valid"
                status = max(status, 2)
            elif min_value is None:
                verdict = "met" if ok_main else "MISSED"
                status = max(status, 0 if ok_main else 1)
            elif ok_main and ok_min:
                verdict = "met"
            elif ok_main or ok_min:
                verdict = f"met ({args.stat if ok_main else 'fastest'} only)"
            else:
                verdict = "MISSED"
                status = max(status, 1)
        rows.append((group, subject, baseline, f"{s_ns:.2f}", f"{b_ns:.2f}",
                     fmt(kind, main_value), "-" if min_value is None else fmt(kind, min_value),
                     goal_text, verdict, "; ".join(notes)))

    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        for r in [header] + rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\nratio ({args.stat}): criterion's {args.stat} time per iteration; ratio (fastest): the "
          "fastest sample of each benchmark.\nthroughput rows (contention groups) compare aggregate "
          "operations per second, timed only over chunks in which every thread had a core;\n"
          "parallelism = the threads' CPU time / wall time over all chunks (2.00 when both threads "
          "always had a core).")
    return status


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into `head`
    sys.exit(main())
